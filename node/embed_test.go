package node

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/vault"

	"github.com/aigrid/gridnet/node/nodetest/freeport"
)

// TestListenAddresses: Listen and ListenPacket take net-style networks and
// addresses on the node's own overlay addresses, and refuse the rest.
func TestListenAddresses(t *testing.T) {
	f := newFabricCA(t)
	alpha := f.node("alpha", 1, "", nil)
	for _, tc := range []struct{ network, address string }{
		{"tcp", ":0"}, {"tcp4", ":0"}, {"tcp", "0.0.0.0:0"}, {"tcp", "[::]:0"}, {"tcp", "100.64.0.1:0"}, {"tcp4", "100.64.0.1:http"},
		{"udp", ":0"}, {"udp4", "100.64.0.1:0"},
	} {
		var c io.Closer
		var err error
		if strings.HasPrefix(tc.network, "tcp") {
			c, err = alpha.Listen(tc.network, tc.address)
		} else {
			c, err = alpha.ListenPacket(tc.network, tc.address)
		}
		if err != nil {
			t.Errorf("listen %s %s: %v", tc.network, tc.address, err)
			continue
		}
		c.Close()
	}
	for _, tc := range []struct{ network, address, want string }{
		{"tcp", "100.64.0.2:80", "not one of the node's overlay addresses"},
		{"tcp", "127.0.0.1:80", "not one of the node's overlay addresses"},
		{"tcp6", ":80", "no IPv6 overlay address"},
		{"tcp6", "100.64.0.1:80", "family mismatch"},
		{"tcp", "web:80", "host must be empty"},
		{"tcp", "80", "missing port"},
		{"unix", ":80", "unsupported network"},
		{"tcpx", ":80", "unsupported network"},
	} {
		if ln, err := alpha.Listen(tc.network, tc.address); err == nil || !strings.Contains(err.Error(), tc.want) {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("Listen(%q, %q) = %v, want an error with %q", tc.network, tc.address, err, tc.want)
		}
	}
	if pc, err := alpha.ListenPacket("tcp", ":80"); err == nil {
		pc.Close()
		t.Error("ListenPacket accepted tcp")
	}
}

// TestListenPacketEcho: a UDP socket from ListenPacket answers a peer.
func TestListenPacketEcho(t *testing.T) {
	f := newFabricCA(t)
	alpha := f.node("alpha", 1, "inbound:\n  - {proto: udp, port: 5300, host: any}\n", nil)
	beta := f.node("beta", 2, "", nil, alpha)
	pc, err := alpha.ListenPacket("udp", ":5300")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	waitSession(t, beta, "alpha")
	ctx, cancel := context.WithTimeout(context.Background(), relayDeadline)
	defer cancel()
	c, err := beta.Dial(ctx, "udp", "alpha:5300")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for {
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write([]byte("marco"))
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) == "marco" {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("no echo over ListenPacket: %v", err)
		}
	}
}

// tlsServer accepts on ln and, for each connection, finishes the
// handshake and writes "hello NAME" with the client's verified name, or
// sends the handshake error on errs.
func tlsServer(t *testing.T, n *Node, ln net.Listener) <-chan error {
	t.Helper()
	return tlsServerNamer(ln, func(cs *tls.ConnectionState) (string, error) {
		id, err := n.PeerIdentity(cs)
		if err != nil {
			return "", err
		}
		return id.Name, nil
	})
}

// tlsServerNamer is tlsServer with the client's name from name.
func tlsServerNamer(ln net.Listener, name func(*tls.ConnectionState) (string, error)) <-chan error {
	errs := make(chan error, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				ctx, cancel := context.WithTimeout(context.Background(), relayDeadline)
				defer cancel()
				if err := tc.HandshakeContext(ctx); err != nil {
					errs <- err
					return
				}
				cs := tc.ConnectionState()
				who, err := name(&cs)
				if err != nil {
					errs <- err
					return
				}
				errs <- nil
				fmt.Fprintf(tc, "hello %s", who)
			}()
		}
	}()
	return errs
}

// TestListenTLS: a node serves mutual TLS on the overlay with its own
// certificate; another node connects with its own and each side sees the
// other's verified identity. A client certificate of a foreign CA, a
// certificate used from an address it does not hold and no certificate
// are refused; a client refuses a server that is not the node it named.
func TestListenTLS(t *testing.T) {
	f := newFabricCA(t)
	alpha := f.node("alpha", 1, "inbound:\n  - {proto: tcp, port: 8443, host: any}\n", nil)
	beta := f.node("beta", 2, "", nil, alpha)
	gamma := f.node("gamma", 3, "", nil, alpha)
	ln, err := alpha.ListenTLS("tcp", ":8443")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serverErrs := tlsServer(t, alpha, ln)
	waitSession(t, beta, "alpha")
	waitSession(t, gamma, "alpha")
	ctx, cancel := context.WithTimeout(context.Background(), relayDeadline)
	defer cancel()

	for _, target := range []string{"alpha:8443", "alpha.corp.example:8443", "100.64.0.1:8443"} {
		tc, err := beta.DialTLS(ctx, "tcp", target)
		if err != nil {
			t.Fatalf("DialTLS %s: %v", target, err)
		}
		cs := tc.ConnectionState()
		if cs.Version != tls.VersionTLS13 {
			t.Errorf("TLS version %x, want 1.3", cs.Version)
		}
		server, err := beta.PeerIdentity(&cs)
		if err != nil || server.Name != "alpha" || server.Domain != "corp.example" {
			t.Errorf("server identity %+v, %v; want alpha.corp.example", server, err)
		}
		got, err := io.ReadAll(tc)
		tc.Close()
		if err != nil || string(got) != "hello beta" {
			t.Errorf("%s: server said %q, %v; want hello beta", target, got, err)
		}
		if err := <-serverErrs; err != nil {
			t.Errorf("server side: %v", err)
		}
	}

	// The client names another node: it refuses alpha's certificate.
	c, err := beta.Dial(ctx, "tcp", "alpha:8443")
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, beta.TLSClientConfig("gamma"))
	if err := tc.HandshakeContext(ctx); err == nil || !strings.Contains(err.Error(), `not "gamma"`) {
		t.Errorf("a client expecting gamma accepted alpha: %v", err)
	}
	tc.Close()
	<-serverErrs // the server sees the client's alert

	// Clients with the wrong certificate, over an admitted node's tunnel.
	rogue, err := newLocalCA("rogue", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	rogueOpts, err := rogue.NodeOptions("beta", netip.MustParsePrefix("100.64.0.2/10"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	deltaOpts, err := f.ca.NodeOptions("delta", netip.MustParsePrefix("100.64.0.4/10"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certOf := func(o Options) []tls.Certificate {
		return []tls.Certificate{{Certificate: [][]byte{o.Certificate}, PrivateKey: o.IdentityKey}}
	}
	for _, tc := range []struct {
		name   string
		from   *Node
		certs  []tls.Certificate
		server string // what the server's error says
	}{
		{"foreign CA", beta, certOf(rogueOpts), "not signed by a trusted CA"},
		{"another node's address", gamma, certOf(deltaOpts), "does not hold the address 100.64.0.3"},
		{"no certificate", beta, nil, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.from.Dial(ctx, "tcp", "alpha:8443")
			if err != nil {
				t.Fatal(err)
			}
			cfg := tc.from.TLSClientConfig("alpha")
			cfg.GetClientCertificate = nil
			cfg.Certificates = tc.certs
			conn := tls.Client(c, cfg)
			defer conn.Close()
			// In TLS 1.3 the client's handshake ends before the server
			// has judged its certificate: the refusal shows on the first
			// read.
			err = conn.HandshakeContext(ctx)
			if err == nil {
				conn.SetReadDeadline(time.Now().Add(relayDeadline))
				_, err = conn.Read(make([]byte, 1))
			}
			if err == nil {
				t.Error("the server accepted the client")
			}
			serr := <-serverErrs
			if serr == nil || !strings.Contains(serr.Error(), tc.server) {
				t.Errorf("server error %v, want one with %q", serr, tc.server)
			}
		})
	}
}

// TestStandardTLSClient: a plain Go TLS client that trusts the CA and
// names the server by its overlay address verifies a ListenTLS server
// (the certificate's IP SANs), as any mTLS client would.
func TestStandardTLSClient(t *testing.T) {
	f := newFabricCA(t)
	alpha := f.node("alpha", 1, "inbound:\n  - {proto: tcp, port: 8443, host: any}\n", nil)
	betaOpts, err := f.ca.NodeOptions("beta", netip.MustParsePrefix("100.64.0.2/10"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	beta := f.node("beta", 2, "", func(o *Options) {
		peers := o.Peers
		*o = betaOpts
		o.Peers = peers
	}, alpha)
	ln, err := alpha.ListenTLS("tcp", ":8443")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serverErrs := tlsServer(t, alpha, ln)
	waitSession(t, beta, "alpha")
	ctx, cancel := context.WithTimeout(context.Background(), relayDeadline)
	defer cancel()
	c, err := beta.Dial(ctx, "tcp", "100.64.0.1:8443")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.CA.Cert)
	tc := tls.Client(c, &tls.Config{
		RootCAs:      roots,
		ServerName:   "100.64.0.1",
		Certificates: []tls.Certificate{{Certificate: [][]byte{betaOpts.Certificate}, PrivateKey: betaOpts.IdentityKey}},
	})
	defer tc.Close()
	if err := tc.HandshakeContext(ctx); err != nil {
		t.Fatalf("standard client: %v", err)
	}
	if got, err := io.ReadAll(tc); err != nil || string(got) != "hello beta" {
		t.Errorf("server said %q, %v", got, err)
	}
	if err := <-serverErrs; err != nil {
		t.Errorf("server side: %v", err)
	}
}

// TestStartFromConfig: a node starts from a config file in one call, with
// what `gridnet up` would read; OptionsFromVault reads a vault with the key
// source given and fails without one.
func TestStartFromConfig(t *testing.T) {
	t.Setenv("GRIDNET_VAULT_PASSPHRASE", "")
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	ca, err := newLocalCA("ca", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	writeNodeVault(t, ca, p("web.vault"), p("k"), "web", netip.MustParsePrefix("100.64.0.9/10"))
	port := freeUDPPort(t)
	cfg := fmt.Sprintf("vault: {path: web.vault, key_file: k}\nlisten: 0.0.0.0:%d\nfirewall:\n  inbound:\n    - {proto: tcp, port: 80, host: any}\n", port)
	if err := os.WriteFile(p("web.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := StartFromConfig(t.Context(), p("web.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.Identity().Name != "web" || n.Addr() != netip.MustParseAddr("100.64.0.9") || int(n.UnderlayPort()) != port {
		t.Errorf("started %s at %v port %d, want web at 100.64.0.9 port %d", n.Identity().Name, n.Addr(), n.UnderlayPort(), port)
	}
	if d := n.vaultOpen.Load(); d <= 0 {
		t.Errorf("vault open duration %d not recorded", d)
	}
	// One node per vault, as with `gridnet up`.
	if second, err := StartFromConfig(t.Context(), p("web.yaml")); !errors.Is(err, vault.ErrClaimed) {
		if second != nil {
			second.Close()
		}
		t.Errorf("a second StartFromConfig on the same vault: %v, want vault.ErrClaimed", err)
	}
	loaded, err := LoadConfig(p("web.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	fromCfg, err := OptionsFromConfig(loaded)
	if err != nil {
		t.Fatal(err)
	}
	if fromCfg.Firewall == nil || len(fromCfg.Firewall.Inbound) != 1 || int(fromCfg.Listen.Port()) != port || fromCfg.Logger == nil {
		t.Errorf("OptionsFromConfig: firewall %+v, listen %v, logger %v", fromCfg.Firewall, fromCfg.Listen, fromCfg.Logger)
	}

	// The config's key file unless the source names one; a source
	// without any key fails.
	if _, err := OptionsFromConfigKeys(loaded, vault.KeySource{}); err != nil {
		t.Errorf("OptionsFromConfigKeys with the config's key file: %v", err)
	}
	noKey := *loaded
	noKey.Vault.KeyFile = ""
	if _, err := OptionsFromConfigKeys(&noKey, vault.KeySource{}); !errors.Is(err, vault.ErrNoKeySource) {
		t.Errorf("OptionsFromConfigKeys without a key: %v, want ErrNoKeySource", err)
	}
	if _, err := OptionsFromConfigKeys(&noKey, vault.KeySource{KeyFile: p("k")}); err != nil {
		t.Errorf("OptionsFromConfigKeys with the source's key file: %v", err)
	}

	opts, err := OptionsFromVault(p("web.vault"), vault.KeySource{KeyFile: p("k")})
	if err != nil {
		t.Fatal(err)
	}
	if string(opts.Certificate) != string(n.Identity().Raw) || len(opts.CAs) != 1 || opts.IdentityKey == nil {
		t.Errorf("OptionsFromVault: certificate or CAs differ from the running node's")
	}
	if _, err := OptionsFromVault(p("web.vault"), vault.KeySource{LookupEnv: func(string) (string, bool) { return "", false }}); !errors.Is(err, vault.ErrNoKeySource) {
		t.Errorf("OptionsFromVault without a key: %v, want ErrNoKeySource", err)
	}
	if _, err := StartFromConfig(t.Context(), p("missing.yaml")); err == nil {
		t.Error("StartFromConfig of a missing file succeeded")
	}
}

// writeNodeVault leaves at path what `gridnet cert issue --out-vault`
// does: a vault, opened with a new key file at keyFile, that holds the
// keys and name of a node called name, its certificate from ca for addr
// and ca's certificate as the CA bundle.
func writeNodeVault(t *testing.T, ca *localCA, path, keyFile, name string, addr netip.Prefix) {
	t.Helper()
	if err := vault.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	key, err := vault.ReadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := identity.GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := keys.WireGuardPublic()
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.CA.Issue(cert.IssueRequest{
		Name: name, IdentityKey: keys.Identity.Public().(ed25519.PublicKey), WireGuardKey: pub,
		Addresses: []netip.Prefix{addr}, Validity: time.Hour,
	}, ca.Now())
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Create(path, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := identity.StoreKeys(v, name, keys); err != nil {
		t.Fatal(err)
	}
	if err := v.Put(identity.ItemNodeCert, vault.ClassCert, cert.EncodeCertPEM(c)); err != nil {
		t.Fatal(err)
	}
	if err := v.Put(identity.ItemCACert, vault.ClassCert, cert.EncodeCertPEM(ca.CA.Cert)); err != nil {
		t.Fatal(err)
	}
}

// freeUDPPort returns a port for a node to bind that no other socket
// gets meanwhile (see package freeport).
func freeUDPPort(t *testing.T) int { return int(freeport.UDP(t, 1)[0]) }

// TestListenTLSResumptionChecksRevocation: a client that resumes a TLS
// session with a ticket is checked again: once its certificate is
// revoked, the ticket does not let it in.
func TestListenTLSResumptionChecksRevocation(t *testing.T) {
	f := newFabricCA(t)
	alpha := f.node("alpha", 1, "inbound:\n  - {proto: tcp, port: 8443, host: any}\n", nil)
	beta := f.node("beta", 2, "", nil, alpha)
	ln, err := alpha.ListenTLS("tcp", ":8443")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The server takes the name from the certificate the handshake
	// accepted, without checking it again: the handshake alone must
	// refuse.
	serverErrs := tlsServerNamer(ln, func(cs *tls.ConnectionState) (string, error) {
		return cs.PeerCertificates[0].Subject.CommonName, nil
	})
	waitSession(t, beta, "alpha")
	ctx, cancel := context.WithTimeout(context.Background(), relayDeadline)
	defer cancel()

	// A second certificate for beta's address, used only for TLS, so that
	// revoking it leaves beta's tunnel up.
	tlsOpts, err := f.ca.NodeOptions("beta-tls", netip.MustParsePrefix("100.64.0.2/10"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cache := tls.NewLRUClientSessionCache(4)
	connect := func() (resumed bool, err error) {
		c, err := beta.Dial(ctx, "tcp", "alpha:8443")
		if err != nil {
			t.Fatal(err)
		}
		cfg := beta.TLSClientConfig("alpha")
		cfg.GetClientCertificate = nil
		cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{tlsOpts.Certificate}, PrivateKey: tlsOpts.IdentityKey}}
		cfg.ClientSessionCache = cache
		tc := tls.Client(c, cfg)
		defer tc.Close()
		if err := tc.HandshakeContext(ctx); err != nil {
			return false, err
		}
		tc.SetReadDeadline(time.Now().Add(relayDeadline))
		got, err := io.ReadAll(tc) // also takes in the session ticket
		if err == nil && string(got) != "hello beta-tls" {
			err = fmt.Errorf("server said %q", got)
		}
		return tc.ConnectionState().DidResume, err
	}
	for i := range 2 {
		resumed, err := connect()
		if err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		if serr := <-serverErrs; serr != nil {
			t.Fatalf("connection %d, server side: %v", i+1, serr)
		}
		if i == 1 && !resumed {
			t.Fatal("the second connection did not resume the session: the test needs it to")
		}
	}

	crl, err := f.ca.CA.Revoke(nil, []*big.Int{mustCert(t, tlsOpts.Certificate).SerialNumber}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if applied, err := alpha.ApplyCRL(crl); err != nil || !applied {
		t.Fatalf("apply CRL: %v, %v", applied, err)
	}
	if _, err := connect(); err == nil {
		t.Error("a revoked client certificate got in with its session ticket")
	}
	if serr := <-serverErrs; serr == nil || !strings.Contains(serr.Error(), "revoked") {
		t.Errorf("server error %v, want a revocation", serr)
	}
}

func mustCert(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
