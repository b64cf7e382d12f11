package node

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/aigrid/gridnet/node/internal/configfile"
	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/vault"
)

// StartFromConfig starts a node from a YAML config file, as `gridnet up`
// does, in one call: it reads the config (docs/CONFIG.md), opens the vault
// it names and starts the node with OptionsFromConfig's options. The
// control socket and memory_limit_mib are settings of the gridnet
// process and are left out: an embedding program has its own. Like `up`,
// it claims the vault for the node's lifetime (one node per vault): a
// vault another node runs on is refused with an error naming it.
func StartFromConfig(ctx context.Context, path string) (*Node, error) {
	cfg, err := LoadConfig(path)
	if err != nil {
		return nil, err
	}
	claim, err := vault.ClaimVault(cfg.Vault.Path, vault.Holder{PID: os.Getpid()}, vault.DefaultLockTimeout)
	if err != nil {
		return nil, err
	}
	opts, err := OptionsFromConfig(cfg)
	if err != nil {
		claim.Release()
		return nil, err
	}
	n, err := Start(ctx, opts)
	if err != nil {
		claim.Release()
		return nil, err
	}
	n.claim = claim
	return n, nil
}

// OptionsFromConfig returns the Options `gridnet up` starts a node with
// for cfg: keys from the vault cfg names, the certificate and CA bundle
// from the files cfg names or else from the vault, the CRL file if it
// exists, and every section of the config mapped to its option. Logs go
// to standard error as cfg's log section says. The vault key comes from
// cfg's key file, else $GRIDNET_VAULT_PASSPHRASE or
// $CREDENTIALS_DIRECTORY/gridnet-vault-key; it never prompts.
func OptionsFromConfig(cfg *Config) (Options, error) {
	return OptionsFromConfigKeys(cfg, vault.KeySource{LookupEnv: os.LookupEnv})
}

// OptionsFromConfigKeys is OptionsFromConfig with the vault key from keys,
// as OptionsFromVault takes it: a program that may ask its user for the
// passphrase sets keys.Prompt and keys.IsTerminal (as `gridnet up` does),
// and keys.LookupEnv reads the environment (nil: none is read). keys.Vault
// and keys.KeyFile default to cfg's vault path and key file.
func OptionsFromConfigKeys(cfg *Config, keys vault.KeySource) (Options, error) {
	if keys.Vault == "" {
		keys.Vault = cfg.Vault.Path
	}
	if keys.KeyFile == "" {
		keys.KeyFile = cfg.Vault.KeyFile
	}
	li, err := loadIdentityFrom(cfg.Vault.Path, keys, cfg.Cert, cfg.CA, cfg.CRL, stderrLog())
	if err != nil {
		return Options{}, err
	}
	proxyOpts, serve, forward, err := relayOptions(cfg)
	if err != nil {
		return Options{}, err
	}
	opts := li.options()
	opts.Listen = cfg.Listen.AddrPort.AddrPort
	opts.Peers = addrPorts(cfg.Peers)
	opts.TunMode = cfg.Tun.Mode
	opts.TunName = cfg.Tun.Name
	opts.MTU = int(cfg.Tun.MTU)
	opts.Firewall = cfg.FirewallRules
	opts.Gossip = gossipOptions(cfg.Gossip)
	opts.Proxy = proxyOpts
	opts.Serve = serve
	opts.Forward = forward
	opts.DNS = dnsOptions(cfg.DNS)
	opts.Metrics = metricsOptions(cfg.Metrics)
	opts.Logger = configfile.NewLogger(os.Stderr, cfg.Log.Level.Level, cfg.Log.Format)
	return opts, nil
}

// OptionsFromVault returns Options for the node whose keys, certificate
// and CA bundle are in the vault at path (as `gridnet cert import` or
// `gridnet cert issue --out-vault` leave them), with the key from keys
// (keys.Vault defaults to path). The options listen on a random UDP port
// of every address and have no static peers; set Listen, Peers and the
// rest before Start.
func OptionsFromVault(path string, keys vault.KeySource) (Options, error) {
	if keys.Vault == "" {
		keys.Vault = path
	}
	li, err := loadIdentityFrom(path, keys, "", "", "", stderrLog())
	if err != nil {
		return Options{}, err
	}
	return li.options(), nil
}

// stderrLog gets the vault's notices (the upgrade of a format 1 vault) in
// slog's text format on standard error.
func stderrLog() *slog.Logger { return slog.New(slog.NewTextHandler(os.Stderr, nil)) }

// metricsOptions is the metrics section as Options: nil when off.
func metricsOptions(c MetricsConfig) *MetricsOptions {
	if !c.Listen.IsValid() {
		return nil
	}
	return &MetricsOptions{Listen: c.Listen.String()}
}

// gossipOptions is the gossip section as Options: nil when off.
func gossipOptions(c GossipConfig) *GossipOptions {
	if !c.Enabled {
		return nil
	}
	return &GossipOptions{Port: c.Port, Advertise: addrPorts(c.Advertise)}
}

// addrPorts unwraps the config's addresses.
func addrPorts(in []AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(in))
	for _, a := range in {
		out = append(out, a.AddrPort)
	}
	return out
}

// loadedIdentity is what a node reads from its vault and files.
type loadedIdentity struct {
	keys identity.Keys
	cert []byte
	cas  []*x509.Certificate
	crls []*x509.RevocationList
	// vaultOpen is how long opening the vault took (key derivation
	// included), for the metrics.
	vaultOpen time.Duration
}

// options are the identity part of a node's Options.
func (li *loadedIdentity) options() Options {
	return Options{
		IdentityKey:  li.keys.Identity,
		WireGuardKey: li.keys.WireGuard,
		Certificate:  li.cert,
		CAs:          li.cas,
		CRLs:         li.crls,
		vaultOpen:    li.vaultOpen,
	}
}

// loadIdentityFrom opens the vault at path with the key from keys and
// reads the node's keys, its certificate (from certPath, else the vault),
// the CA bundle (from caPath, else the vault) and the CRL at crlPath (none
// if it is "" or does not exist). log gets the vault's notices.
func loadIdentityFrom(path string, keys vault.KeySource, certPath, caPath, crlPath string, log *slog.Logger) (*loadedIdentity, error) {
	if path == "" {
		return nil, errors.New("a vault path is required")
	}
	start := time.Now()
	key, _, err := keys.Resolve(false)
	if err != nil {
		return nil, err
	}
	v, err := identity.OpenVault(path, key, log)
	if err != nil {
		return nil, err
	}
	opened := time.Since(start)
	defer v.Close()
	nk, _, err := identity.LoadKeys(v)
	if err != nil {
		return nil, err
	}
	li := &loadedIdentity{keys: nk, vaultOpen: opened}
	certPEM, err := identity.ReadFileOrItem(certPath, func() ([]byte, error) { b, _, err := v.Get(identity.ItemNodeCert); return b, err })
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	c, err := cert.ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	li.cert = c.Raw
	caPEM, err := identity.ReadFileOrItem(caPath, func() ([]byte, error) { b, _, err := v.Get(identity.ItemCACert); return b, err })
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	if li.cas, err = cert.ParseCertsPEM(caPEM); err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	if crlPath != "" {
		crl, err := identity.ReadCRL(crlPath)
		if err != nil {
			return nil, err
		}
		if crl != nil {
			li.crls = append(li.crls, crl)
		}
	}
	return li, nil
}
