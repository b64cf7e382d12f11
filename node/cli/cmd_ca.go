package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/vault"
)

// defaultCAValidity is how long a new CA is valid unless --duration says
// otherwise: long enough that rotating it is a planned event.
const defaultCAValidity = 5 * 365 * 24 * time.Hour

func caCommand() *command {
	return &command{
		name:    "ca",
		summary: "create a certificate authority and revoke certificates",
		sub:     []*command{caInitCommand(), caRevokeCommand()},
	}
}

type caInitOpts struct {
	name, domain, vaultPath, out string
	duration                     time.Duration
	force                        bool
	keys                         vaultKeyFlags
	networks                     stringList
}

func caInitCommand() *command {
	return &command{
		name:    "init",
		summary: "create a CA: an Ed25519 key in a vault and a self-signed certificate",
		usage:   "--name NAME --domain DOMAIN --ca-vault ca.vault --out ca.crt [--networks PREFIX,...] [--duration D]",
		help: `The CA certificate carries an X.509 name constraint that permits only
URIs in DOMAIN, so every node certificate it signs provably belongs to that
governance domain. The CA key never leaves the vault (created if missing).

--networks (e.g. 100.64.0.0/10,fd7a:115c:a1e0::/48; repeatable) adds X.509
IP name constraints: 'cert issue' refuses addresses outside these networks,
and every node refuses a certificate of this CA that holds one. A CA with
only IPv4 networks permits no IPv6 address. Without --networks the CA
permits any address.`,
		flags: func(fs *flag.FlagSet) any {
			o := &caInitOpts{}
			fs.StringVar(&o.name, "name", "", "CA name (certificate CN)")
			fs.StringVar(&o.domain, "domain", "", "governance domain, e.g. corp.example")
			fs.StringVar(&o.vaultPath, "ca-vault", "", "vault that keeps the CA key (created if missing)")
			aliasFlag(fs, "vault", "ca-vault")
			fs.StringVar(&o.out, "out", "ca.crt", "where to write the CA certificate (PEM)")
			fs.DurationVar(&o.duration, "duration", defaultCAValidity, "validity of the CA certificate")
			fs.BoolVar(&o.force, "force", false, "replace an existing --out file")
			fs.Var(&o.networks, "networks", "overlay networks its node certificates must fall within, e.g. 100.64.0.0/10 (comma-separated or repeated; default: any)")
			o.keys.register(fs, "ca-", "the CA vault")
			aliasFlag(fs, "vault-key-file", "ca-vault-key-file")
			return o
		},
		run: func(_ context.Context, env Env, opts any, args []string) error {
			o := opts.(*caInitOpts)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			if o.name == "" || o.domain == "" || o.vaultPath == "" {
				return usageError("--name, --domain and --ca-vault are required")
			}
			networks, err := parseNetworks(o.networks)
			if err != nil {
				return err
			}
			ca, err := cert.NewCA(o.name, o.domain, o.duration, env.Now(), cert.WithNetworks(networks...))
			if err != nil {
				return fmt.Errorf("create CA: %w", err)
			}
			if !o.force {
				if _, err := os.Stat(o.out); err == nil {
					return fmt.Errorf("%s exists (use --force to replace it)", o.out)
				}
			}
			v, err := openOrCreateVault(o.vaultPath, o.keys, env)
			if err != nil {
				return err
			}
			defer v.Close()
			if _, _, err := v.Get(identity.ItemCAKey); err == nil {
				return fmt.Errorf("vault %s already holds a CA key; use a new vault", o.vaultPath)
			} else if !errors.Is(err, vault.ErrNotFound) {
				return fmt.Errorf("check existing CA key: %w", err)
			}
			pemBytes := cert.EncodeCertPEM(ca.Cert)
			if err := v.Put(identity.ItemCAKey, vault.ClassKey, ca.Key); err != nil {
				return fmt.Errorf("store CA key: %w", err)
			}
			if err := v.Put(identity.ItemCACert, vault.ClassCert, pemBytes); err != nil {
				return fmt.Errorf("store CA certificate: %w", err)
			}
			if err := writeFileNew(o.out, pemBytes, 0o644, o.force); err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "CA %q for domain %s created\ncertificate: %s (valid until %s)\nkey: in vault %s\nfingerprint: %s\n",
				o.name, ca.Domain(), o.out, ca.Cert.NotAfter.UTC().Format(time.RFC3339), o.vaultPath, fingerprint(ca.Cert))
			fmt.Fprintf(env.Stdout, "networks: %s\n", networksText(ca.Networks()))
			return nil
		},
	}
}

type caRevokeOpts struct {
	caVault, caCert, certPath, crlPath string
	serials                            stringList
	keys                               vaultKeyFlags
}

func caRevokeCommand() *command {
	return &command{
		name:    "revoke",
		summary: "revoke a certificate: create or extend the CA's CRL",
		usage:   "--ca-vault ca.vault --ca-cert ca.crt (--cert node.crt | --serial HEX) --crl crl.pem",
		help: `The CRL is a standard X.509 CRL signed by the CA. Each revocation keeps
the earlier entries and raises the CRL number by one; nodes apply only a
validly signed CRL whose number is higher than the one they hold.

--cert is refused unless this CA issued the certificate: its serial in
this CA's CRL would revoke nothing. A --serial is taken as given.`,
		flags: func(fs *flag.FlagSet) any {
			o := &caRevokeOpts{}
			fs.StringVar(&o.caVault, "ca-vault", "", "vault holding the CA key")
			fs.StringVar(&o.caCert, "ca-cert", "ca.crt", "CA certificate (PEM)")
			fs.StringVar(&o.certPath, "cert", "", "certificate to revoke (PEM)")
			fs.Var(&o.serials, "serial", "serial number to revoke, hex (repeatable)")
			fs.StringVar(&o.crlPath, "crl", "crl.pem", "CRL file to create or extend")
			o.keys.register(fs, "ca-", "the CA vault")
			aliasFlag(fs, "vault-key-file", "ca-vault-key-file")
			return o
		},
		run: func(_ context.Context, env Env, opts any, args []string) error {
			o := opts.(*caRevokeOpts)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			if o.caVault == "" || (o.certPath == "" && len(o.serials) == 0) {
				return usageError("--ca-vault and --cert or --serial are required")
			}
			var serials []*big.Int
			var target *x509.Certificate
			if o.certPath != "" {
				c, err := readCertFile(o.certPath)
				if err != nil {
					return err
				}
				target = c
				serials = append(serials, c.SerialNumber)
			}
			for _, s := range o.serials {
				n, ok := new(big.Int).SetString(s, 16)
				if !ok || n.Sign() <= 0 {
					return usageError("--serial %q is not a positive hex number", s)
				}
				serials = append(serials, n)
			}
			var prev *x509.RevocationList
			if b, err := os.ReadFile(o.crlPath); err == nil {
				prev, err = cert.ParseCRLPEM(b)
				if err != nil {
					return fmt.Errorf("existing CRL %s: %w", o.crlPath, err)
				}
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("read CRL: %w", err)
			}
			v, err := openVault(o.caVault, o.keys, env)
			if err != nil {
				return err
			}
			defer v.Close()
			ca, err := loadCA(v, o.caCert)
			if err != nil {
				return err
			}
			if target != nil {
				if err := ca.CheckIssued(target); err != nil {
					return fmt.Errorf("will not revoke %s: %w", o.certPath, err)
				}
			}
			if prev != nil {
				if err := prev.CheckSignatureFrom(ca.Cert); err != nil {
					return fmt.Errorf("existing CRL %s is not signed by this CA: %w", o.crlPath, err)
				}
			}
			crl, err := ca.Revoke(prev, serials, env.Now())
			if err != nil {
				return fmt.Errorf("revoke: %w", err)
			}
			if err := writeFileAtomic(o.crlPath, cert.EncodeCRLPEM(crl), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "CRL %s: number %s, %d revoked certificate(s)\n", o.crlPath, crl.Number, len(crl.RevokedCertificateEntries))
			for _, s := range serials {
				fmt.Fprintf(env.Stdout, "revoked serial %x\n", s)
			}
			return nil
		},
	}
}

// parseNetworks parses --networks values: prefixes, comma-separated or
// repeated.
func parseNetworks(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		for _, part := range splitList(s) {
			p, err := netip.ParsePrefix(part)
			if err != nil {
				return nil, usageError("--networks %q: want a network prefix, e.g. 100.64.0.0/10", part)
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// anyNetwork is how a CA without networks is shown.
const anyNetwork = "any (no IP name constraint)"

// networksText shows a CA's networks; none means any address.
func networksText(networks []netip.Prefix) string {
	if len(networks) == 0 {
		return anyNetwork
	}
	s := make([]string, len(networks))
	for i, n := range networks {
		s[i] = n.String()
	}
	return strings.Join(s, ", ")
}
