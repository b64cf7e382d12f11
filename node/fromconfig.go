package node

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"time"

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
	return optionsFromConfig(cfg, processEnv())
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
	li, err := loadIdentityFrom(path, keys, "", "", "", processEnv())
	if err != nil {
		return Options{}, err
	}
	return li.options(), nil
}

// processEnv is the Env of an embedding program: the process's
// environment and standard error, no prompt.
func processEnv() Env {
	return Env{Stderr: os.Stderr, LookupEnv: os.LookupEnv, Now: time.Now}
}

// optionsFromConfig is OptionsFromConfig with the key sources and the
// standard error of env.
func optionsFromConfig(cfg *Config, env Env) (Options, error) {
	keys := vaultKeyFlags{keyFile: cfg.Vault.KeyFile}
	li, err := loadIdentityFrom(cfg.Vault.Path, keys.keySource(cfg.Vault.Path, env), cfg.Cert, cfg.CA, cfg.CRL, env)
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
	var w io.Writer = os.Stderr
	if env.Stderr != nil {
		w = env.Stderr
	}
	opts.Logger = newLogger(w, cfg.Log)
	return opts, nil
}

// loadedIdentity is what a node reads from its vault and files.
type loadedIdentity struct {
	keys nodeKeys
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
		IdentityKey:  li.keys.identity,
		WireGuardKey: li.keys.wireGuard,
		Certificate:  li.cert,
		CAs:          li.cas,
		CRLs:         li.crls,
		vaultOpen:    li.vaultOpen,
	}
}

// loadIdentityFrom opens the vault at path with the key from keys and
// reads the node's keys, its certificate (from certPath, else the vault),
// the CA bundle (from caPath, else the vault) and the CRL at crlPath (none
// if it is "" or does not exist).
func loadIdentityFrom(path string, keys vault.KeySource, certPath, caPath, crlPath string, env Env) (*loadedIdentity, error) {
	if path == "" {
		return nil, usageError("a vault path is required")
	}
	start := time.Now()
	key, _, err := keys.Resolve(false)
	if err != nil {
		return nil, err
	}
	v, err := openWithKey(path, key, env)
	if err != nil {
		return nil, err
	}
	opened := time.Since(start)
	defer v.Close()
	nk, _, err := loadNodeKeys(v)
	if err != nil {
		return nil, err
	}
	li := &loadedIdentity{keys: nk, vaultOpen: opened}
	certPEM, err := readFileOrItem(certPath, func() ([]byte, error) { b, _, err := v.Get(itemNodeCert); return b, err })
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	c, err := cert.ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	li.cert = c.Raw
	caPEM, err := readFileOrItem(caPath, func() ([]byte, error) { b, _, err := v.Get(itemCACert); return b, err })
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	if li.cas, err = cert.ParseCertsPEM(caPEM); err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	if crlPath != "" {
		crl, err := readCRL(crlPath)
		if err != nil {
			return nil, err
		}
		if crl != nil {
			li.crls = append(li.crls, crl)
		}
	}
	return li, nil
}
