package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/nodetest"
	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/policy"
)

// Bounds of the in-process tests.
const (
	// Generous deadlines: a working node needs well under a second for
	// either, on any machine; these only catch a hang.
	admitTimeout = 60 * time.Second
	ioTimeout    = 60 * time.Second
	// pingTimeout bounds one Ping (which resends every 250 ms).
	pingTimeout = 20 * time.Second
)

var loopback = netip.MustParseAddr("127.0.0.1")

// fabric is a set of in-process nodes on 127.0.0.1 under one throwaway CA.
type fabric struct {
	t     testing.TB
	ca    *nodetest.LocalCA
	nodes []*node.Node
	// test holds each node's test-only controls (crash, counters).
	test map[*node.Node]*nodetest.Node
}

func newFabric(t testing.TB) *fabric {
	t.Helper()
	ca, err := nodetest.NewLocalCA("test-ca", "test.gridnet")
	if err != nil {
		t.Fatal(err)
	}
	// Honest certificates are issued as if two hours ago and valid for
	// four, so that a node whose clock is behind still accepts them.
	ca.Now = func() time.Time { return time.Now().Add(-2 * time.Hour) }
	return &fabric{t: t, ca: ca, test: map[*node.Node]*nodetest.Node{}}
}

// add starts node name at overlay address 100.64.0.<host>/10 with the
// given static peers.
func (f *fabric) add(name string, host int, peers ...*node.Node) *node.Node {
	f.t.Helper()
	opts, err := f.ca.NodeOptions(name, overlayPrefix(host), []string{"test"}, 4*time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	return f.start(opts, peers...)
}

// allowAll is the fabric's firewall unless a test sets its own: every
// admitted peer may reach every port.
const allowAll = "inbound:\n  - {port: any, proto: any, host: any}\n"

func mustRules(t testing.TB, yaml string) *policy.Config {
	t.Helper()
	c, err := parseRules(yaml)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func parseRules(yaml string) (*policy.Config, error) {
	c, err := policy.ParseConfig([]byte(yaml))
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	return c, nil
}

func (f *fabric) start(opts node.Options, peers ...*node.Node) *node.Node {
	f.t.Helper()
	return f.startWith(opts, nodetest.Switches{}, peers...)
}

// startWith is start with test switches.
func (f *fabric) startWith(opts node.Options, sw nodetest.Switches, peers ...*node.Node) *node.Node {
	f.t.Helper()
	if opts.Firewall == nil {
		opts.Firewall = mustRules(f.t, allowAll)
	}
	for _, p := range peers {
		opts.Peers = append(opts.Peers, underlay(p))
	}
	if os.Getenv("GRIDNET_TEST_LOG") != "" {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	tn, err := nodetest.Start(context.Background(), opts, sw)
	if err != nil {
		f.t.Fatalf("start: %v", err)
	}
	n := tn.Node
	f.t.Cleanup(func() { n.Close() })
	f.nodes = append(f.nodes, n)
	f.test[n] = tn
	return n
}

// testOf is the test-only controls of a node the fabric started.
func (f *fabric) testOf(n *node.Node) *nodetest.Node {
	f.t.Helper()
	tn, ok := f.test[n]
	if !ok {
		f.t.Fatalf("node %s was not started by this fabric", n.Identity().Name)
	}
	return tn
}

func overlayPrefix(host int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(host >> 8), byte(host)}), 10)
}

func underlay(n *node.Node) netip.AddrPort { return netip.AddrPortFrom(loopback, n.UnderlayPort()) }

// waitPeers waits until every node in set lists every other one as a
// peer with a WireGuard session.
func waitPeers(t testing.TB, set ...*node.Node) {
	t.Helper()
	deadline := time.Now().Add(admitTimeout)
	for {
		missing := ""
		for _, n := range set {
			for _, m := range set {
				if n != m && !hasPeer(n, m.Identity().Name) {
					missing = n.Identity().Name + " lacks " + m.Identity().Name
				}
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no full mesh after %s: %s", admitTimeout, missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hasPeer reports whether n has admitted name and holds a WireGuard
// session with it.
func hasPeer(n *node.Node, name string) bool {
	for _, p := range n.Peers() {
		if p.Name == name && !p.LastHandshake.IsZero() {
			return true
		}
	}
	return false
}

// checkGoroutines fails the test if goroutines started during it are still
// running a few seconds after its cleanups.
func checkGoroutines(t testing.TB) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(30 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
		}
	})
}

// tcpEcho serves echo connections on n's overlay address until the test
// ends; cleanup closes the listener and every open connection (a peer that
// vanished never sends its FIN).
func tcpEcho(t testing.TB, n *node.Node, port uint16) {
	t.Helper()
	ln, err := n.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// bulkEcho sends size random bytes from a to the echo service on b and
// checks the SHA-256 of what comes back.
func bulkEcho(t testing.TB, a, b *node.Node, port uint16, size int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	conn, err := a.Dial(ctx, "tcp", fmt.Sprintf("%s:%d", b.Identity().Name, port))
	if err != nil {
		t.Fatalf("%s dial %s: %v", a.Identity().Name, b.Identity().Name, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(ioTimeout))
	payload := make([]byte, size)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	errc := make(chan error, 1)
	go func() { _, err := conn.Write(payload); errc <- err }()
	h := sha256.New()
	if _, err := io.CopyN(h, conn, int64(size)); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("echoed bytes differ")
	}
}

func TestTwoNodesTCPUDPPing(t *testing.T) {
	checkGoroutines(t)
	f := newFabric(t)
	a := f.add("alpha", 1)
	b := f.add("beta", 2, a)
	waitPeers(t, a, b)

	tcpEcho(t, b, 8000)
	bulkEcho(t, a, b, 8000, 16<<20)

	// UDP: a datagram to beta comes back from beta's overlay address.
	pc, err := b.ListenPacket("udp", ":8001")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	uc, err := a.Dial(ctx, "udp", "beta:8001")
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(ioTimeout))
	got := make([]byte, 64)
	for i := 0; ; i++ { // UDP may lose the first datagram while ARP-free netstack settles; bounded retries
		if _, err := uc.Write([]byte("hello over udp")); err != nil {
			t.Fatal(err)
		}
		uc.SetReadDeadline(time.Now().Add(time.Second))
		n, err := uc.Read(got)
		if err == nil {
			if string(got[:n]) != "hello over udp" {
				t.Fatalf("udp echo %q", got[:n])
			}
			break
		}
		if i == 5 {
			t.Fatalf("no UDP echo: %v", err)
		}
	}

	for i := 0; i < 3; i++ {
		pctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
		rtt, err := a.Ping(pctx, "beta")
		cancel()
		if err != nil || rtt <= 0 {
			t.Fatalf("ping beta: %v (rtt %v)", err, rtt)
		}
	}
	if c := b.Counters(); c.Inbound.AcceptedPackets == 0 {
		t.Errorf("beta's hook counted no inbound packets: %+v", c)
	}
	st := a.Status()
	if len(st.Peers) != 1 || st.Peers[0].Name != "beta" || st.Peers[0].RxBytes == 0 {
		t.Errorf("alpha status: %+v", st)
	}
}

func TestThreeNodesFullMesh(t *testing.T) {
	checkGoroutines(t)
	f := newFabric(t)
	a := f.add("alpha", 1)
	b := f.add("beta", 2, a)
	c := f.add("gamma", 3, a, b)
	waitPeers(t, a, b, c)
	nodes := []*node.Node{a, b, c}
	for _, n := range nodes {
		tcpEcho(t, n, 9000)
	}
	for _, x := range nodes {
		for _, y := range nodes {
			if x != y {
				bulkEcho(t, x, y, 9000, 1<<20)
			}
		}
	}
}

// TestRefusedNodes: each bad node is refused with its typed reason and never
// becomes a WireGuard peer of the honest node.
func TestRefusedNodes(t *testing.T) {
	checkGoroutines(t)
	f := newFabric(t)
	honest := f.add("honest", 1)
	victim := f.add("victim", 2, honest)
	waitPeers(t, honest, victim)

	rogueCA, err := nodetest.NewLocalCA("rogue", "test.gridnet")
	if err != nil {
		t.Fatal(err)
	}
	other, err := f.ca.NodeOptions("other", overlayPrefix(50), nil, 4*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	victimOpts, err := f.ca.NodeOptions("victim2", overlayPrefix(51), nil, 4*time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		opts func(t *testing.T) node.Options
		want overlay.Reason
		// revoke marks the node's certificate revoked on the honest node first.
		revoke bool
	}{
		{"untrusted CA", func(t *testing.T) node.Options {
			return must(t)(rogueCA.NodeOptions("intruder", overlayPrefix(10), nil, time.Hour))
		}, overlay.ReasonUnknownCA, false},
		{"expired", func(t *testing.T) node.Options {
			// Issued 2h30m ago for one hour: it expired 90 minutes ago.
			old := *f.ca
			old.Now = func() time.Time { return time.Now().Add(-150 * time.Minute) }
			o := must(t)(old.NodeOptions("expired", overlayPrefix(11), nil, time.Hour))
			// Its own clock is 105 minutes behind: it believes its
			// certificate valid, and the honest nodes' (issued two hours
			// ago, see newFabric) too.
			o.Now = func() time.Time { return time.Now().Add(-105 * time.Minute) }
			return o
		}, overlay.ReasonExpired, false},
		{"revoked", func(t *testing.T) node.Options {
			return must(t)(f.ca.NodeOptions("revoked", overlayPrefix(12), nil, 4*time.Hour))
		}, overlay.ReasonRevoked, true},
		{"wireguard key not the certificate's", func(t *testing.T) node.Options {
			o := must(t)(f.ca.NodeOptions("mismatch", overlayPrefix(13), nil, 4*time.Hour))
			o.WireGuardKey = other.WireGuardKey
			return o
		}, overlay.ReasonKeyMismatch, false},
		{"replayed certificate, own keys", func(t *testing.T) node.Options {
			o := other
			o.Certificate = victimOpts.Certificate
			return o
		}, overlay.ReasonKeyMismatch, false},
		{"replayed certificate, its WireGuard key stolen", func(t *testing.T) node.Options {
			o := other
			o.Certificate = victimOpts.Certificate
			o.WireGuardKey = victimOpts.WireGuardKey
			return o
		}, overlay.ReasonSignature, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts(t)
			if tt.revoke {
				crl, err := f.ca.CA.Revoke(nil, []*big.Int{mustParse(t, opts.Certificate).SerialNumber}, time.Now())
				if err != nil {
					t.Fatal(err)
				}
				if applied, err := honest.ApplyCRL(crl); err != nil || !applied {
					t.Fatalf("apply CRL: %v %v", applied, err)
				}
			}
			bad := f.startWith(opts, nodetest.Switches{SkipSelfCheck: true})
			defer bad.Close()

			// The bad node knocks: the honest node refuses it for the reason.
			// A refused initiator keeps knocking until its context ends (the
			// other side may change its mind), so once the honest node has
			// counted the refusal and the bad node has heard it, the
			// knocking is cut short.
			before := f.testOf(honest).OverlayStats().Rejected[tt.want]
			ctx, cancel := context.WithTimeout(context.Background(), admitTimeout)
			admitted := make(chan error, 1)
			go func() {
				_, err := bad.Admit(ctx, underlay(honest))
				admitted <- err
			}()
			var err error
			// The untrusted-CA node refuses the honest node itself (it does
			// not trust our CA either) before the honest node can judge it.
			if tt.want != overlay.ReasonUnknownCA {
				deadline := time.Now().Add(admitTimeout)
				for (f.testOf(honest).OverlayStats().Rejected[tt.want] <= before || len(bad.Status().Refusals) == 0) && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				if after := f.testOf(honest).OverlayStats().Rejected[tt.want]; after <= before {
					t.Errorf("honest node's %s counter did not grow (%d -> %d)", tt.want, before, after)
				}
				cancel()
			}
			err = <-admitted
			cancel()
			if err == nil {
				t.Fatal("bad node was admitted")
			}
			var refused *overlay.RefusedError
			if tt.want != overlay.ReasonUnknownCA && !errors.As(err, &refused) {
				t.Errorf("bad node's Admit: %v; want it to name the honest node's refusal", err)
			}

			// The honest node calls the bad one: a typed refusal.
			ctx, cancel = context.WithTimeout(context.Background(), admitTimeout)
			_, err = honest.Admit(ctx, underlay(bad))
			cancel()
			var rej *overlay.RejectError
			if !errors.As(err, &rej) || rej.Reason != tt.want {
				t.Errorf("honest.Admit(bad) = %v, want a refusal for %s", err, tt.want)
			}
			for _, p := range honest.Peers() {
				if p.Name != "victim" {
					t.Errorf("honest node lists %q as a peer", p.Name)
				}
			}
			if strings.Contains(ipcPeers(t, f.testOf(honest)), hexKey(wireGuardPublic(t, opts.WireGuardKey))) {
				t.Error("bad node's key is a WireGuard peer of the honest node")
			}
		})
	}
	// The honest pair still works.
	tcpEcho(t, victim, 8100)
	bulkEcho(t, honest, victim, 8100, 1<<20)
}

// must fails the test on err and returns the options.
func must(t *testing.T) func(node.Options, error) node.Options {
	return func(o node.Options, err error) node.Options {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
}

// ipcPeers is the honest node's WireGuard configuration as wireguard-go
// reports it.
func ipcPeers(t *testing.T, n *nodetest.Node) string {
	t.Helper()
	s, err := n.WireGuardConfig()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// wireGuardPublic is the public key of a WireGuard private key.
func wireGuardPublic(t *testing.T, private [32]byte) [32]byte {
	t.Helper()
	pub, err := nodetest.WireGuardPublicKey(private)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func hexKey(k [32]byte) string { return "public_key=" + hex.EncodeToString(k[:]) }

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMutualStaticPeers: two nodes that name each other as static peers
// (both initiate at once, as two `gridnet up` with each other in `peers`
// do) form one working tunnel without flapping.
func TestMutualStaticPeers(t *testing.T) {
	checkGoroutines(t)
	f := newFabric(t)
	for round := 0; round < 3; round++ {
		a := f.add(fmt.Sprintf("a%d", round), 10+2*round)
		b := f.add(fmt.Sprintf("b%d", round), 11+2*round)
		a.AddPeer(underlay(b))
		b.AddPeer(underlay(a))
		waitPeers(t, a, b)
		for i := 0; i < 10; i++ {
			pctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
			_, err := a.Ping(pctx, b.Identity().Name)
			cancel()
			if err != nil {
				t.Fatalf("round %d ping %d: %v", round, i, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if removed := f.testOf(a).OverlayStats().Removed + f.testOf(b).OverlayStats().Removed; removed != 0 {
			t.Errorf("round %d: %d peers removed while both sides admitted each other", round, removed)
		}
	}
}

// TestRestartSameIdentity: a node that restarts with the same keys and
// certificate (a new process, a new port) is admitted again and gets a
// working session at once, although its peer still holds the old session.
func TestRestartSameIdentity(t *testing.T) {
	checkGoroutines(t)
	f := newFabric(t)
	a := f.add("alpha", 1)
	opts, err := f.ca.NodeOptions("beta", overlayPrefix(2), nil, 4*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b := f.start(opts, a)
	waitPeers(t, a, b)
	tcpEcho(t, a, 8200)
	bulkEcho(t, b, a, 8200, 64<<10)
	b.Close()

	start := time.Now()
	b2 := f.start(opts, a)
	waitPeers(t, a, b2)
	bulkEcho(t, b2, a, 8200, 64<<10)
	// Without a fresh session the old one is only replaced by WireGuard's
	// own timers (a keepalive after 10 s, then a handshake after the 5 s
	// rekey timeout): at least 15 s. A working restart needs well under a
	// second, so this bound only a stale session misses.
	if took := time.Since(start); took > 14*time.Second {
		t.Errorf("restarted node took %v to get a working session, want well under WireGuard's rekey timers", took)
	}
}
