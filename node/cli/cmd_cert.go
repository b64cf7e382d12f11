package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/vault"
)

// defaultNodeValidity is a node certificate's validity unless --duration
// says otherwise: a year, as nebula-cert does; short-lived certificates are
// one flag away.
const defaultNodeValidity = 365 * 24 * time.Hour

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func keygenCommand() *command {
	type opts struct {
		vaultPath, name, csr string
		force                bool
		keys                 vaultKeyFlags
	}
	return &command{
		name:    "keygen",
		summary: "make a node's keys in its vault and write a certificate request",
		usage:   "--vault node.vault --name NAME --csr node.csr",
		help: `Both keys are made here and never leave the vault: an Ed25519 identity
key and an X25519 WireGuard key. The request (PKCS#10, signed by the identity
key) carries the node name and the WireGuard public key; take it to the CA
for 'gridnet cert issue --csr'.`,
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			fs.StringVar(&o.vaultPath, "vault", "", "node vault (created if missing)")
			fs.StringVar(&o.name, "name", "", "node name")
			fs.StringVar(&o.csr, "csr", "node.csr", "where to write the certificate request (PEM)")
			fs.BoolVar(&o.force, "force", false, "replace an existing --csr file")
			o.keys.register(fs, "", "the node vault")
			return o
		},
		run: func(_ context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			if o.vaultPath == "" || o.name == "" {
				return usageError("--vault and --name are required")
			}
			keys, err := identity.GenerateKeys()
			if err != nil {
				return err
			}
			wgPub, err := keys.WireGuardPublic()
			if err != nil {
				return err
			}
			der, err := cert.CreateCSR(o.name, keys.Identity, wgPub)
			if err != nil {
				return fmt.Errorf("create request: %w", err)
			}
			if !o.force {
				if _, err := os.Stat(o.csr); err == nil {
					return fmt.Errorf("%s exists (use --force to replace it)", o.csr)
				}
			}
			v, err := openOrCreateVault(o.vaultPath, o.keys, env)
			if err != nil {
				return err
			}
			defer v.Close()
			if err := identity.StoreKeys(v, o.name, keys); err != nil {
				return err
			}
			if err := writeFileNew(o.csr, cert.EncodeCSRPEM(der), 0o644, o.force); err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "node %q: keys stored in %s\nrequest: %s\nWireGuard public key: %s\n",
				o.name, o.vaultPath, o.csr, base64.StdEncoding.EncodeToString(wgPub[:]))
			return nil
		},
	}
}

func certCommand() *command {
	return &command{
		name:    "cert",
		summary: "issue, show and import node certificates",
		sub:     []*command{certIssueCommand(), certShowCommand(), certImportCommand(), certRequestCommand(), certReloadCommand()},
	}
}

type certIssueOpts struct {
	caVault, caCert, csr, out, outVault, name string
	ips                                       stringList
	groups                                    string
	attrs                                     stringList
	duration                                  time.Duration
	force                                     bool
	caKeys, outKeys                           vaultKeyFlags
}

func certIssueCommand() *command {
	return &command{
		name:    "issue",
		summary: "sign a node certificate with the CA",
		usage:   "--ca-vault ca.vault --ca-cert ca.crt (--csr node.csr | --name NAME --out-vault node.vault) --ip 100.64.0.2/10 [--groups a,b] [--attr k=v ...] [--duration D] --out node.crt",
		help: `With --csr the node made its own keys (gridnet keygen) and the CA
signs its request after checking the request's signature. Without --csr the
keys are made here, straight into a new node vault (--out-vault), as
'nebula-cert sign' does; the node certificate and the CA certificate are
stored in that vault as well.

--ip takes the overlay address with the overlay's prefix length; repeat it
for several addresses (e.g. one IPv4 and one IPv6).`,
		flags: func(fs *flag.FlagSet) any {
			o := &certIssueOpts{}
			fs.StringVar(&o.caVault, "ca-vault", "", "vault holding the CA key")
			fs.StringVar(&o.caCert, "ca-cert", "ca.crt", "CA certificate (PEM)")
			fs.StringVar(&o.csr, "csr", "", "certificate request made by 'gridnet keygen'")
			fs.StringVar(&o.name, "name", "", "node name (only without --csr)")
			fs.StringVar(&o.outVault, "out-vault", "", "new node vault for keys made here (only without --csr)")
			fs.Var(&o.ips, "ip", "overlay address with prefix length, e.g. 100.64.0.2/10 (repeatable)")
			fs.StringVar(&o.groups, "groups", "", "comma-separated groups")
			fs.Var(&o.attrs, "attr", "attribute key=value signed into the certificate (repeatable)")
			fs.DurationVar(&o.duration, "duration", defaultNodeValidity, "certificate validity (capped at the CA's)")
			fs.StringVar(&o.out, "out", "node.crt", "where to write the certificate (PEM)")
			fs.BoolVar(&o.force, "force", false, "replace an existing --out file")
			o.caKeys.register(fs, "ca-", "the CA vault")
			o.outKeys.register(fs, "out-", "the new node vault")
			return o
		},
		run: runCertIssue,
	}
}

func runCertIssue(_ context.Context, env Env, a any, args []string) error {
	o := a.(*certIssueOpts)
	if len(args) != 0 {
		return usageError("unexpected arguments %q", args)
	}
	if o.caVault == "" {
		return usageError("--ca-vault is required")
	}
	if (o.csr == "") == (o.outVault == "") {
		return usageError("give either --csr or --out-vault (with --name)")
	}
	if o.csr != "" && o.name != "" {
		return usageError("--name comes from the request; drop it or drop --csr")
	}
	if o.outVault != "" && o.name == "" {
		return usageError("--name is required with --out-vault")
	}
	addrs, err := parsePrefixes(o.ips)
	if err != nil {
		return err
	}
	if len(addrs) == 0 {
		return usageError("at least one --ip is required")
	}
	attrs, err := parseAttrs(o.attrs)
	if err != nil {
		return err
	}
	groups := splitList(o.groups)
	if !o.force {
		if _, err := os.Stat(o.out); err == nil {
			return fmt.Errorf("%s exists (use --force to replace it)", o.out)
		}
	}

	var (
		req     *cert.CSR
		newKeys *identity.Keys
	)
	if o.csr != "" {
		b, err := os.ReadFile(o.csr)
		if err != nil {
			return fmt.Errorf("read request: %w", err)
		}
		req, err = cert.ParseCSRPEM(b)
		if err != nil {
			return fmt.Errorf("request %s refused: %w", o.csr, err)
		}
	} else {
		if _, err := os.Stat(o.outVault); err == nil {
			return fmt.Errorf("%s exists: --out-vault makes a new vault", o.outVault)
		}
		k, err := identity.GenerateKeys()
		if err != nil {
			return err
		}
		pub, err := k.WireGuardPublic()
		if err != nil {
			return err
		}
		newKeys = &k
		req = &cert.CSR{Name: o.name, IdentityKey: k.Identity.Public().(ed25519.PublicKey), WireGuardKey: pub}
	}

	caVault, err := openVault(o.caVault, o.caKeys, env)
	if err != nil {
		return err
	}
	ca, err := loadCA(caVault, o.caCert)
	caVault.Close()
	if err != nil {
		return err
	}
	var c *x509.Certificate
	if newKeys != nil {
		c, err = ca.Issue(cert.IssueRequest{
			Name: req.Name, IdentityKey: req.IdentityKey, WireGuardKey: req.WireGuardKey,
			Addresses: addrs, Groups: groups, Attributes: attrs, Validity: o.duration,
		}, env.Now())
	} else {
		c, err = ca.IssueFromCSR(req, addrs, groups, attrs, o.duration, env.Now())
	}
	if err != nil {
		return fmt.Errorf("issue: %w", err)
	}
	certPEM := cert.EncodeCertPEM(c)
	if newKeys != nil {
		nv, err := openOrCreateVault(o.outVault, o.outKeys, env)
		if err != nil {
			return err
		}
		err = identity.StoreKeys(nv, req.Name, *newKeys)
		if err == nil {
			err = storeCerts(nv, certPEM, cert.EncodeCertPEM(ca.Cert))
		}
		nv.Close()
		if err != nil {
			return err
		}
	}
	if err := writeFileNew(o.out, certPEM, 0o644, o.force); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "issued %s for %q (serial %x, valid until %s)\n", o.out, req.Name, c.SerialNumber, c.NotAfter.UTC().Format(time.RFC3339))
	if newKeys != nil {
		fmt.Fprintf(env.Stdout, "keys, certificate and CA certificate stored in %s\n", o.outVault)
	}
	return nil
}

// storeCerts keeps the node certificate and the trusted CA bundle in v.
func storeCerts(v *vault.Vault, nodePEM, caPEM []byte) error {
	if err := v.Put(identity.ItemNodeCert, vault.ClassCert, nodePEM); err != nil {
		return fmt.Errorf("store node certificate: %w", err)
	}
	if err := v.Put(identity.ItemCACert, vault.ClassCert, caPEM); err != nil {
		return fmt.Errorf("store CA certificate: %w", err)
	}
	return nil
}

func certRequestCommand() *command {
	type opts struct {
		keys      vaultKeyFlags
		vaultPath string
		csr       string
		force     bool
	}
	return &command{
		name:    "request",
		summary: "write a certificate request for the keys already in a node vault (renewal)",
		usage:   "--vault node.vault --csr node.csr",
		help: `For renewal: the CA signs the request with 'cert issue --csr', the node
stores the result with 'cert import' and picks it up on SIGHUP or 'gridnet
reload' without a restart.`,
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			fs.StringVar(&o.vaultPath, "vault", "", "node vault")
			fs.StringVar(&o.csr, "csr", "node.csr", "where to write the request (PEM)")
			fs.BoolVar(&o.force, "force", false, "replace an existing --csr file")
			o.keys.register(fs, "", "the node vault")
			return o
		},
		run: func(_ context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			v, err := openVault(o.vaultPath, o.keys, env)
			if err != nil {
				return err
			}
			defer v.Close()
			keys, name, err := identity.LoadKeys(v)
			if err != nil {
				return err
			}
			pub, err := keys.WireGuardPublic()
			if err != nil {
				return err
			}
			der, err := cert.CreateCSR(name, keys.Identity, pub)
			if err != nil {
				return fmt.Errorf("create request: %w", err)
			}
			if err := writeFileNew(o.csr, cert.EncodeCSRPEM(der), 0o644, o.force); err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "request for %q written to %s\n", name, o.csr)
			return nil
		},
	}
}

func certReloadCommand() *command {
	c := reloadCommand()
	c.summary = "make the running node pick up its renewed certificate and spread it (as SIGHUP does)"
	return c
}

func certImportCommand() *command {
	type opts struct {
		keys      vaultKeyFlags
		vaultPath string
	}
	return &command{
		name:    "import",
		summary: "store a node certificate and the CA bundle beside the node's keys",
		usage:   "--vault node.vault node.crt ca.crt",
		help: `The certificate must be for this vault's keys (identity key and
WireGuard key) and must verify against the CA bundle; otherwise nothing is
stored.`,
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			fs.StringVar(&o.vaultPath, "vault", "", "node vault made by 'gridnet keygen'")
			o.keys.register(fs, "", "the node vault")
			return o
		},
		run: func(_ context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 2 {
				return usageError("want NODE_CERT and CA_BUNDLE")
			}
			nodePEM, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("read node certificate: %w", err)
			}
			caPEM, err := os.ReadFile(args[1])
			if err != nil {
				return fmt.Errorf("read CA bundle: %w", err)
			}
			nodeCert, err := cert.ParseCertPEM(nodePEM)
			if err != nil {
				return fmt.Errorf("parse %s: %w", args[0], err)
			}
			cas, err := cert.ParseCertsPEM(caPEM)
			if err != nil {
				return fmt.Errorf("parse %s: %w", args[1], err)
			}
			pool, err := cert.NewPool(cas...)
			if err != nil {
				return fmt.Errorf("CA bundle %s: %w", args[1], err)
			}
			id, err := pool.Verify(nodeCert, env.Now())
			if err != nil {
				return fmt.Errorf("certificate %s does not verify: %w", args[0], err)
			}
			v, err := openVault(o.vaultPath, o.keys, env)
			if err != nil {
				return err
			}
			defer v.Close()
			keys, name, err := identity.LoadKeys(v)
			if err != nil {
				return err
			}
			wgPub, err := keys.WireGuardPublic()
			if err != nil {
				return err
			}
			if !keys.Identity.Public().(ed25519.PublicKey).Equal(nodeCert.PublicKey) {
				return fmt.Errorf("certificate %s is for another identity key than the one in %s", args[0], o.vaultPath)
			}
			if id.WireGuardKey != wgPub {
				return fmt.Errorf("certificate %s carries another WireGuard key than the one in %s", args[0], o.vaultPath)
			}
			if id.Name != name {
				return fmt.Errorf("certificate is for %q but the vault's node is %q", id.Name, name)
			}
			if err := storeCerts(v, nodePEM, caPEM); err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "imported certificate for %q (%s) and %d CA certificate(s) into %s\n", id.Name, id.Domain, len(cas), o.vaultPath)
			return nil
		},
	}
}

// certView is the JSON form of `gridnet cert show`.
type certView struct {
	Kind          string            `json:"kind"`
	Name          string            `json:"name"`
	Domain        string            `json:"domain,omitempty"`
	Groups        []string          `json:"groups,omitempty"`
	Attributes    map[string]string `json:"attributes,omitempty"`
	Addresses     []string          `json:"addresses,omitempty"`
	NotBefore     time.Time         `json:"not_before"`
	NotAfter      time.Time         `json:"not_after"`
	Serial        string            `json:"serial"`
	Fingerprint   string            `json:"fingerprint"`
	WireGuardKey  string            `json:"wireguard_key,omitempty"`
	Issuer        string            `json:"issuer"`
	IsCA          bool              `json:"is_ca"`
	PermittedURIs []string          `json:"permitted_uri_domains,omitempty"`
	// Networks are a CA's permitted IP ranges; absent means any address.
	Networks []string `json:"networks,omitempty"`
}

func certShowCommand() *command {
	type opts struct{ json bool }
	return &command{
		name:    "show",
		summary: "print what a certificate says (without verifying it)",
		usage:   "FILE [--json]",
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			fs.BoolVar(&o.json, "json", false, "print JSON")
			return o
		},
		run: func(_ context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 1 {
				return usageError("want one certificate file")
			}
			c, err := readCertFile(args[0])
			if err != nil {
				return err
			}
			view := certView{
				Name: c.Subject.CommonName, NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
				Serial: fmt.Sprintf("%x", c.SerialNumber), Fingerprint: fingerprint(c),
				Issuer: c.Issuer.CommonName, IsCA: c.IsCA,
			}
			if c.IsCA {
				view.Kind = "ca"
				view.PermittedURIs = c.PermittedURIDomains
				if len(c.PermittedURIDomains) == 1 {
					view.Domain = c.PermittedURIDomains[0]
				}
				networks, err := cert.CANetworks(c)
				if err != nil {
					return fmt.Errorf("%s: %w", args[0], err)
				}
				for _, n := range networks {
					view.Networks = append(view.Networks, n.String())
				}
			} else {
				view.Kind = "node"
				id, err := cert.Describe(c)
				if err != nil {
					return fmt.Errorf("%s is not a gridnet node certificate: %w", args[0], err)
				}
				view.Domain, view.Groups, view.Attributes = id.Domain, id.Groups, id.Attributes
				for _, p := range id.Addresses {
					view.Addresses = append(view.Addresses, p.String())
				}
				view.WireGuardKey = base64.StdEncoding.EncodeToString(id.WireGuardKey[:])
			}
			if o.json {
				return printJSON(env.Stdout, view)
			}
			printCertView(env, view)
			return nil
		},
	}
}

func printCertView(env Env, v certView) {
	w := env.Stdout
	fmt.Fprintf(w, "kind:         %s\n", v.Kind)
	fmt.Fprintf(w, "name:         %s\n", v.Name)
	fmt.Fprintf(w, "domain:       %s\n", v.Domain)
	if v.Kind == "ca" {
		networks := strings.Join(v.Networks, ", ")
		if networks == "" {
			networks = anyNetwork
		}
		fmt.Fprintf(w, "networks:     %s\n", networks)
	}
	if v.Kind == "node" {
		fmt.Fprintf(w, "groups:       %s\n", strings.Join(v.Groups, ", "))
		keys := make([]string, 0, len(v.Attributes))
		for k := range v.Attributes {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		attrs := make([]string, 0, len(keys))
		for _, k := range keys {
			attrs = append(attrs, k+"="+v.Attributes[k])
		}
		fmt.Fprintf(w, "attributes:   %s\n", strings.Join(attrs, ", "))
		fmt.Fprintf(w, "addresses:    %s\n", strings.Join(v.Addresses, ", "))
		fmt.Fprintf(w, "wireguard:    %s\n", v.WireGuardKey)
	}
	fmt.Fprintf(w, "issuer:       %s\n", v.Issuer)
	fmt.Fprintf(w, "not before:   %s\n", v.NotBefore.Format(time.RFC3339))
	fmt.Fprintf(w, "not after:    %s\n", v.NotAfter.Format(time.RFC3339))
	fmt.Fprintf(w, "serial:       %s\n", v.Serial)
	fmt.Fprintf(w, "fingerprint:  %s\n", v.Fingerprint)
}

func parsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		for _, part := range splitList(s) {
			p, err := netip.ParsePrefix(part)
			if err != nil {
				return nil, usageError("--ip %q: want an address with prefix length, e.g. 100.64.0.2/10", part)
			}
			out = append(out, p)
		}
	}
	return out, nil
}

func parseAttrs(list []string) (map[string]string, error) {
	if len(list) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(list))
	for _, kv := range list {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageError("--attr %q: want key=value", kv)
		}
		if _, dup := m[k]; dup {
			return nil, usageError("--attr %q given twice", k)
		}
		m[k] = v
	}
	return m, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
