package overlay

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/internal/session"
	"github.com/aigrid/gridnet/stack"
	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// checkLeaks fails the test if goroutines from this package or wireguard-go
// outlive it. Register it first so it runs after every other cleanup.
func checkLeaks(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		var leaked []string
		deadline := time.Now().Add(30 * time.Second)
		for {
			leaked = leakedGoroutines()
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(leaked) > 0 {
			t.Errorf("%d goroutine(s) leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
	})
}

func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	gs := strings.Split(string(buf), "\n\n")
	var out []string
	for _, g := range gs[1:] { // gs[0] is the calling goroutine
		if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*T).Run") {
			continue
		}
		if strings.Contains(g, "gridnet/overlay") || strings.Contains(g, "golang.zx2c4.com/wireguard/") {
			out = append(out, g)
		}
	}
	return out
}

// fixture is a CA with its pool.
type fixture struct {
	t    testing.TB
	ca   *cert.CA
	pool *cert.Pool
	now  time.Time
}

func newFixture(t testing.TB, name string) *fixture {
	t.Helper()
	now := time.Now()
	ca, err := cert.NewCA(name, name+".example", 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := cert.NewPool(ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, ca: ca, pool: pool, now: now}
}

// keys is a node's key material.
type keys struct {
	wgPriv [32]byte
	wgPub  [32]byte
	idKey  ed25519.PrivateKey
}

func newKeys(t testing.TB) keys {
	t.Helper()
	var k keys
	if _, err := rand.Read(k.wgPriv[:]); err != nil {
		t.Fatal(err)
	}
	pub, err := curve25519.X25519(k.wgPriv[:], curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	copy(k.wgPub[:], pub)
	_, k.idKey, _ = ed25519.GenerateKey(rand.Reader)
	return k
}

// issue issues a node certificate for k with overlay address addr (/10).
func (f *fixture) issue(name string, k keys, addr string, validity time.Duration) *x509.Certificate {
	f.t.Helper()
	c, err := f.ca.Issue(cert.IssueRequest{
		Name:         name,
		IdentityKey:  k.idKey.Public().(ed25519.PublicKey),
		WireGuardKey: k.wgPub,
		Addresses:    []netip.Prefix{netip.MustParsePrefix(addr + "/10")},
		Groups:       []string{"test"},
		Validity:     validity,
	}, f.now)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// node is a running overlay with a userspace inner network (gridnet's own
// stack: wireguard-go's netstack device can panic with "send on closed
// channel" when closed while TCP timers still write, see
// stack/shutdown_test.go).
type node struct {
	*Overlay
	name string
	addr netip.Addr
	net  *stack.Stack // nil when the test gave its own TUN
	keys keys
	der  []byte
	ep   netip.AddrPort
}

type nodeOpts struct {
	keys     *keys            // default: fresh keys
	der      []byte           // default: issued by fixture
	verifier Verifier         // default: fixture pool
	now      func() time.Time // default: time.Now
	tun      tun.Device       // default: netstack
	validity time.Duration
	rate     float64
	burst    int
	logger   *slog.Logger // default: testLogger
	refusals float64      // refusals per second per source; 0: the default
	// timers switch session timers off (noKick, noGrace), so that a test
	// sees one mechanism at work and can wait generously for it without
	// another one doing the job meanwhile.
	timers []func(*session.Timers)
}

// never is how late a switched-off session timer fires.
const never = 24 * time.Hour

// beforeWireGuardRetry is how long a test may wait for a session that a
// mechanism of gridnet must bring, when WireGuard's own retry (5 s after an
// unanswered initiation) would bring it too: a working node needs a few
// milliseconds, so only a missing mechanism comes near this bound.
const beforeWireGuardRetry = 4500 * time.Millisecond

// sessionTimeout is a deadline for a session that nothing else than the
// mechanism under test can bring.
const sessionTimeout = 30 * time.Second

func noKick(t *session.Timers)  { t.Kick, t.KickMax = never, never }
func noGrace(t *session.Timers) { t.Grace = never }

func startNode(t testing.TB, f *fixture, name, addr string, o nodeOpts) *node {
	t.Helper()
	k := newKeys(t)
	if o.keys != nil {
		k = *o.keys
	}
	der := o.der
	if der == nil {
		validity := o.validity
		if validity == 0 {
			validity = 12 * time.Hour
		}
		der = f.issue(name, k, addr, validity).Raw
	}
	if o.verifier == nil {
		o.verifier = f.pool
	}
	n := &node{name: name, addr: netip.MustParseAddr(addr), keys: k, der: der}
	td := o.tun
	if td == nil {
		var err error
		n.net, err = stack.New(stack.Config{
			Addresses: []netip.Prefix{netip.PrefixFrom(n.addr, 10)}, // the overlay 100.64.0.0/10
			MTU:       1420,
			Logger:    slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		td = n.net.Device()
	}
	logger := o.logger
	if logger == nil {
		logger = testLogger(t, name)
	}
	cfg := Config{
		Logger:         logger,
		WireGuardKey:   k.wgPriv,
		IdentityKey:    k.idKey,
		Certificate:    der,
		Verifier:       o.verifier,
		TUN:            td,
		Now:            o.now,
		HandshakeRate:  o.rate,
		HandshakeBurst: o.burst,
		RefusalRate:    o.refusals,
	}
	// New, with the test's timers set before the goroutines start.
	ov, err := newOverlay(cfg)
	if err != nil {
		td.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	for _, set := range o.timers {
		set(&ov.timers)
	}
	if ov, err = ov.start(cfg); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	n.Overlay = ov
	n.ep = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ov.Port())
	t.Cleanup(func() {
		ov.Close()
		if n.net != nil {
			n.net.Close()
		}
	})
	return n
}

// wgPeerKeys lists the public keys in the device's IpcGet dump.
func wgPeerKeys(t testing.TB, o *Overlay) map[[32]byte]bool {
	t.Helper()
	st, err := o.wgStats()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[[32]byte]bool)
	for k := range st {
		out[k] = true
	}
	return out
}

// admit runs a.Admit(b) with a deadline and fails the test on error.
func admit(t testing.TB, a, b *node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := a.Admit(ctx, b.ep)
	if err != nil {
		t.Fatalf("%s admit %s: %v", a.name, b.name, err)
	}
	if id.Name != b.name {
		t.Fatalf("%s admitted %q, want %q", a.name, id.Name, b.name)
	}
}

// exchange sends payload over TCP from a to b across the tunnel and checks
// the echo.
func exchange(t testing.TB, a, b *node, port uint16, payload []byte, timeout time.Duration) error {
	t.Helper()
	ln, err := b.net.ListenTCP(port)
	if err != nil {
		return err
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		io.Copy(c, c)
	}()
	defer wg.Wait()
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := a.net.DialContext(ctx, "tcp", netip.AddrPortFrom(b.addr, port).String())
	if err != nil {
		return fmt.Errorf("dial %s->%s: %w", a.name, b.name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		errc <- err
	}()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read %s->%s: %w", a.name, b.name, err)
	}
	if err := <-errc; err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo mismatch %s->%s", a.name, b.name)
	}
	return nil
}

// ping sends one ICMP echo from a to b across the tunnel.
func ping(a, b *node, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if _, err := a.net.Ping(ctx, b.addr, 4); err != nil {
		return fmt.Errorf("ping %s->%s: %w", a.name, b.name, err)
	}
	return nil
}

// udpSender is a plain UDP socket on loopback for junk.
func udpSender(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// testLogger logs to stderr in -v runs and discards otherwise.
func testLogger(t testing.TB, name string) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", name)
}

func tuntestTUN() tun.Device { return tuntest.NewChannelTUN().TUN() }

// exchangeTimeout bounds one exchange that must succeed: a working pair
// needs milliseconds, so only a tunnel that does not carry traffic misses
// it, on any machine.
const exchangeTimeout = 60 * time.Second

// readFromPeer reads the next datagram that sock gets from peer before
// its read deadline, skipping any from elsewhere: other test processes
// on this machine use loopback ports too, and a node of theirs may still
// send to a port this socket now holds.
func readFromPeer(sock *net.UDPConn, peer netip.AddrPort, buf []byte) (int, error) {
	for {
		n, from, err := sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			return 0, err
		}
		if from.Addr().Unmap() == peer.Addr().Unmap() && from.Port() == peer.Port() {
			return n, nil
		}
	}
}
