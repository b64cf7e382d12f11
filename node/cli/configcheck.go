package cli

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/internal/configfile"
	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/policy"
	"github.com/aigrid/gridnet/vault"
)

// checkConfig runs the checks of `gridnet up --test` that look beyond the
// config file: every file it names is read; the node certificate is
// verified against the CA bundle and the CRL (foreign CA, expired, not yet
// valid, revoked) and matched with the keys in the vault; the listen port
// is bound and released at once; the control socket's place is checked,
// and that no running node holds the vault. Nothing is created or changed. It returns every problem found, each
// naming the line of the key at fault in the file at path, which cfg was
// loaded from.
func checkConfig(cfg *node.Config, path string, env Env) []error {
	ck := &configCheck{cfg: cfg, env: env, now: time.Now(), lines: map[string]int{}}
	if data, err := configfile.Read(path); err == nil {
		ck.lines = configfile.Lines(data, reflect.TypeFor[node.Config]())
	}
	if env.Now != nil {
		ck.now = env.Now()
	}
	ck.vault()
	ck.trust()
	ck.certificate()
	if err := checkListen(cfg.Listen.Port()); err != nil {
		ck.fail("listen", err)
	}
	if err := checkControlSocket(cfg.Control.Socket); err != nil {
		ck.fail("control.socket", err)
	}
	if err := vault.CheckClaim(cfg.Vault.Path); err != nil {
		ck.fail("vault.path", fmt.Errorf("%w (one node per vault)", err))
	}
	ck.relays()
	return ck.problems
}

// configCheck carries what one run of checkConfig found so far.
type configCheck struct {
	cfg *node.Config
	// lines maps the dotted path of every key in the config file
	// ("vault.path") to its line.
	lines    map[string]int
	env      Env
	now      time.Time
	problems []error

	v    *vault.Vault   // nil: not opened
	keys *identity.Keys // nil: not read
	pool *cert.Pool     // nil: no usable CA bundle
	node *x509.Certificate
}

// fail records a problem with the value of key (a dotted path): at its
// line if the file sets it, else as a default.
func (ck *configCheck) fail(key string, err error) {
	line, set := ck.lines[key]
	if !set {
		key += " (default)"
	}
	ck.problems = append(ck.problems, &configfile.LineError{Line: line, Err: fmt.Errorf("%s: %w", key, err)})
}

// vault opens the vault (when its key is available) and reads the node's
// keys from it.
func (ck *configCheck) vault() {
	c := ck.cfg
	keyOK := true
	if c.Vault.KeyFile != "" {
		if _, err := os.ReadFile(c.Vault.KeyFile); err != nil {
			ck.fail("vault.key_file", err)
			keyOK = false
		}
	}
	fi, err := os.Stat(c.Vault.Path)
	switch {
	case err != nil:
		ck.fail("vault.path", err)
		return
	case !fi.Mode().IsRegular():
		ck.fail("vault.path", fmt.Errorf("%s is not a vault file", c.Vault.Path))
		return
	case !keyOK:
		return
	}
	v, err := openVault(c.Vault.Path, vaultKeyFlags{keyFile: c.Vault.KeyFile}, ck.env)
	if err != nil {
		ck.fail("vault.path", err)
		return
	}
	ck.v = v
	defer func() { ck.v.Close(); ck.v = nil }()
	keys, _, err := identity.LoadKeys(v)
	if err != nil {
		ck.fail("vault.path", err)
	} else {
		ck.keys = &keys
	}
	// The CA bundle and the certificate may live in the vault; read them
	// while it is open.
	ck.trustFrom(ck.readVaultItem("ca", identity.ItemCACert, "CA bundle"))
	ck.node = ck.parseNodeCert(ck.readVaultItem("cert", identity.ItemNodeCert, "node certificate"))
}

// readVaultItem reads item from the open vault when key (ca or cert) does
// not name a file instead; nil when the file is used or the item is
// missing (a problem then).
func (ck *configCheck) readVaultItem(key, item, what string) []byte {
	if ck.fileFor(key) != "" {
		return nil
	}
	b, _, err := ck.v.Get(item)
	if err != nil {
		ck.fail("vault.path", fmt.Errorf("no %s in %s and no %s: file given: %w", what, ck.cfg.Vault.Path, key, err))
		return nil
	}
	return b
}

// fileFor returns the file named by key (ca or cert).
func (ck *configCheck) fileFor(key string) string {
	if key == "ca" {
		return ck.cfg.CA
	}
	return ck.cfg.Cert
}

// trust reads the CA bundle file and the CRL file.
func (ck *configCheck) trust() {
	c := ck.cfg
	if c.CA != "" {
		b, err := os.ReadFile(c.CA)
		if err != nil {
			ck.fail("ca", err)
		} else {
			ck.trustFrom(b)
		}
	}
	if c.Cert != "" {
		b, err := os.ReadFile(c.Cert)
		if err != nil {
			ck.fail("cert", err)
		} else {
			ck.node = ck.parseNodeCert(b)
		}
	}
	if c.CRL == "" {
		return
	}
	b, err := os.ReadFile(c.CRL)
	if errors.Is(err, os.ErrNotExist) {
		return // documented: a missing CRL file is no CRL yet
	}
	if err != nil {
		ck.fail("crl", err)
		return
	}
	crl, err := cert.ParseCRLPEM(b)
	if err != nil {
		ck.fail("crl", fmt.Errorf("%s: %w", c.CRL, err))
		return
	}
	if ck.pool == nil {
		return
	}
	if _, err := ck.pool.ApplyCRL(crl, ck.now); err != nil {
		ck.fail("crl", fmt.Errorf("%s: not a CRL of a trusted CA: %w", c.CRL, err))
	}
}

// trustFrom builds the trust pool from a PEM bundle (nil: none read).
func (ck *configCheck) trustFrom(pemBytes []byte) {
	if pemBytes == nil {
		return
	}
	key, where := ck.source("ca", ck.cfg.CA, "CA bundle")
	cas, err := cert.ParseCertsPEM(pemBytes)
	if err != nil {
		ck.fail(key, fmt.Errorf("%s: %w", where, err))
		return
	}
	pool, err := cert.NewPool(cas...)
	if err != nil {
		ck.fail(key, fmt.Errorf("%s: %w", where, err))
		return
	}
	ck.pool = pool
}

// parseNodeCert parses the node certificate (nil: none read).
func (ck *configCheck) parseNodeCert(pemBytes []byte) *x509.Certificate {
	if pemBytes == nil {
		return nil
	}
	c, err := cert.ParseCertPEM(pemBytes)
	if err != nil {
		key, where := ck.source("cert", ck.cfg.Cert, "node certificate")
		ck.fail(key, fmt.Errorf("%s: %w", where, err))
		return nil
	}
	return c
}

// source names where a file-or-vault item comes from: the config key to
// blame and a description.
func (ck *configCheck) source(key, file, what string) (string, string) {
	if file != "" {
		return key, what + " " + file
	}
	return "vault.path", what + " in the vault " + ck.cfg.Vault.Path
}

// certificate verifies the node certificate against the trust pool (with
// the CRL applied) and the vault's keys.
func (ck *configCheck) certificate() {
	if ck.node == nil || ck.pool == nil {
		return
	}
	c := ck.node
	key, where := ck.source("cert", ck.cfg.Cert, "node certificate")
	_, caWhere := ck.source("ca", ck.cfg.CA, "CA bundle")
	id, err := ck.pool.Verify(c, ck.now)
	switch {
	case err == nil:
	case errors.Is(err, cert.ErrUnknownCA):
		err = fmt.Errorf("%s (%q) is not signed by any CA of the %s: its issuer is %q, a CA this node does not trust", where, c.Subject.CommonName, caWhere, c.Issuer.CommonName)
	case errors.Is(err, cert.ErrExpired) && ck.now.After(c.NotAfter):
		err = fmt.Errorf("%s (%q) expired at %s; renew it (gridnet cert request, cert issue --csr, cert import)", where, c.Subject.CommonName, c.NotAfter.UTC().Format(time.RFC3339))
	case errors.Is(err, cert.ErrNotYetValid) && ck.now.Before(c.NotBefore):
		err = fmt.Errorf("%s (%q) is not valid before %s; is this machine's clock right?", where, c.Subject.CommonName, c.NotBefore.UTC().Format(time.RFC3339))
	case errors.Is(err, cert.ErrRevoked):
		err = fmt.Errorf("%s (%q, serial %x) is revoked by the CRL %s", where, c.Subject.CommonName, c.SerialNumber, ck.cfg.CRL)
	default:
		err = fmt.Errorf("%s: %w", where, err)
	}
	if err != nil {
		ck.fail(key, err)
		return
	}
	if ck.keys == nil {
		return
	}
	if err := ck.keys.Match(id); err != nil {
		ck.fail(key, fmt.Errorf("%s does not belong to the keys in the vault %s: %w", where, ck.cfg.Vault.Path, err))
	}
}

// checkListen binds the underlay UDP port as the WireGuard device will
// (IPv4 and IPv6, every address) and releases it at once.
func checkListen(port uint16) error {
	inUse := func(err error) error {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("UDP port %d is already in use (another gridnet node or another program); stop it or choose another port", port)
		}
		return fmt.Errorf("cannot bind UDP port %d: %w", port, err)
	}
	c4, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.IPv4Unspecified(), port)))
	if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
		return inUse(err)
	}
	if c4 != nil {
		defer c4.Close()
	}
	if port == 0 {
		return nil // any free port will do
	}
	c6, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.IPv6Unspecified(), port)))
	if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
		return inUse(err)
	}
	if c6 != nil {
		c6.Close()
	}
	return nil
}

// checkControlSocket checks that `up` can create its control socket at
// path: nothing but a stale socket is in the way, no running node holds
// it, and the directories up would create can be created.
func checkControlSocket(path string) error {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return fmt.Errorf("%s exists and is not a socket; up will not replace it", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return fmt.Errorf("%s is in use by a running gridnet node", path)
		}
		return nil // a stale socket: up replaces it
	}
	for dir := filepath.Dir(path); ; {
		fi, err := os.Stat(dir)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s is not a directory", dir)
			}
			if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
				return fmt.Errorf("cannot create the socket %s: %s is not writable by this user (choose a control.socket path you may write)", path, dir)
			}
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		dir = parent
	}
}

// effectiveYAML writes cfg as the YAML config it amounts to: every key
// with its effective value (defaults filled in), the firewall section with
// every trust and flood setting, paths absolute when the config was
// loaded from a file. `up` reads the output back into the same
// configuration.
func effectiveYAML(c *node.Config) ([]byte, error) {
	e := *c
	rules := c.FirewallRules
	if rules == nil {
		rules = policy.DefaultConfig()
	}
	fw, err := rules.MarshalYAML()
	if err != nil {
		return nil, fmt.Errorf("print firewall section: %w", err)
	}
	// Node.Encode drops comments: encode the rest, then put the firewall
	// section's node in place.
	e.Firewall = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}
	var root yaml.Node
	if err := root.Encode(&e); err != nil {
		return nil, fmt.Errorf("print config: %w", err)
	}
	if n := mappingValue(&root, "firewall"); n != nil {
		*n = *fw.(*yaml.Node)
	}
	comment := func(when bool, text string, path ...string) {
		if n := mappingValue(&root, path...); when && n != nil {
			n.LineComment = text
		}
	}
	comment(c.Vault.KeyFile == "", "empty: $GRIDNET_VAULT_PASSPHRASE, $CREDENTIALS_DIRECTORY/gridnet-vault-key or a prompt", "vault", "key_file")
	comment(c.CA == "", "empty: the CA bundle in the vault", "ca")
	comment(c.Cert == "", "empty: the certificate in the vault", "cert")
	comment(c.CRL == "", "empty: no CRL file", "crl")
	comment(len(c.Gossip.Advertise) == 0, fmt.Sprintf("empty: 127.0.0.1:%d (the listen port)", c.Listen.Port()), "gossip", "advertise")
	comment(c.MemoryLimitMiB == -1, "no limit", "memory_limit_mib")
	comment(!c.Proxy.SOCKS5.IsValid(), "empty: no SOCKS5 proxy", "proxy", "socks5")
	comment(!c.Proxy.HTTP.IsValid(), "empty: no HTTP proxy", "proxy", "http")
	comment(!c.Metrics.Listen.IsValid(), "empty: no metrics endpoint", "metrics", "listen")
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&root); err != nil {
		return nil, fmt.Errorf("print config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("print config: %w", err)
	}
	return b.Bytes(), nil
}

// mappingValue returns the value at path in nested mappings, or nil.
func mappingValue(n *yaml.Node, path ...string) *yaml.Node {
	for _, key := range path {
		if n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return nil
		}
		n = next
	}
	return n
}

// relays checks for `up --test` what the proxy and forward sections need
// on this host: the users' password files are readable and the local
// addresses can be bound (they are released at once).
func (ck *configCheck) relays() {
	c := ck.cfg
	for i, u := range c.Proxy.Users {
		if _, err := configfile.ReadPasswordFile(u.PasswordFile); err != nil {
			ck.fail(fmt.Sprintf("proxy.users[%d].password_file", i), err)
		}
	}
	bind := func(key string, proto node.RelayProto, a netip.AddrPort) {
		var err error
		if proto == node.RelayUDP {
			var pc net.PacketConn
			if pc, err = net.ListenPacket("udp", a.String()); err == nil {
				pc.Close()
			}
		} else {
			var l net.Listener
			if l, err = net.Listen("tcp", a.String()); err == nil {
				l.Close()
			}
		}
		if err != nil {
			ck.fail(key, fmt.Errorf("cannot listen on %s %s (in use by another program, or not an address of this host): %w", proto, a, err))
		}
	}
	if c.Proxy.SOCKS5.IsValid() {
		bind("proxy.socks5", node.RelayTCP, c.Proxy.SOCKS5.AddrPort)
	}
	if c.Proxy.HTTP.IsValid() {
		bind("proxy.http", node.RelayTCP, c.Proxy.HTTP.AddrPort)
	}
	if c.Metrics.Listen.IsValid() {
		bind("metrics.listen", node.RelayTCP, c.Metrics.Listen.AddrPort)
	}
	for i, f := range c.Forward {
		bind(fmt.Sprintf("forward[%d].listen", i), f.Proto, f.Listen.AddrPort)
	}
}
