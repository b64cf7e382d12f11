package stack

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewValidation(t *testing.T) {
	v4 := []netip.Prefix{netip.MustParsePrefix("100.64.0.2/10")}
	v46 := append(v4[:1:1], netip.MustParsePrefix("fd7a:115c:a1e0::2/48"))
	cases := []struct {
		name string
		cfg  Config
	}{
		{"no address", Config{}},
		{"MTU too small", Config{Addresses: v4, MTU: 575}},
		{"MTU negative", Config{Addresses: v4, MTU: -1}},
		{"MTU too large", Config{Addresses: v4, MTU: 9001}},
		{"IPv6 below 1280", Config{Addresses: v46, MTU: 1279}},
		{"two IPv4", Config{Addresses: []netip.Prefix{v4[0], netip.MustParsePrefix("100.64.0.3/10")}}},
		{"unspecified", Config{Addresses: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/10")}}},
		{"invalid prefix", Config{Addresses: []netip.Prefix{{}}}},
		{"mapped", Config{Addresses: []netip.Prefix{netip.MustParsePrefix("::ffff:100.64.0.2/106")}}},
		{"bad mode", Config{Mode: 7, Addresses: v4}},
	}
	for _, tc := range cases {
		tc.cfg.Logger = quiet
		s, err := New(tc.cfg)
		if err == nil {
			s.Close()
			t.Errorf("%s: New accepted %+v", tc.name, tc.cfg)
		} else if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: error %v does not wrap ErrInvalidConfig", tc.name, err)
		}
	}
	for _, mtu := range []int{0, 576, 1280, 9000} {
		s, err := New(Config{Addresses: v4, MTU: mtu, Logger: quiet})
		if err != nil {
			t.Fatalf("New MTU %d: %v", mtu, err)
		}
		want := mtu
		if mtu == 0 {
			want = DefaultMTU
		}
		if got, _ := s.Device().MTU(); s.MTU() != want || got != want {
			t.Errorf("MTU %d: stack %d device %d, want %d", mtu, s.MTU(), got, want)
		}
		if got := s.Addresses(); len(got) != 1 || got[0] != v4[0] {
			t.Errorf("Addresses = %v", got)
		}
		s.Close()
	}
}

// transfer sends n random bytes from a to an echo server on b and checks
// the echoed bytes' SHA-256.
func transfer(t testing.TB, p *pair, port uint16, n int) {
	t.Helper()
	l, err := p.b.ListenTCP(port)
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		echoReadingOn(c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := p.a.DialContext(ctx, "tcp", netip.AddrPortFrom(addrB, port).String())
	if err != nil {
		t.Fatalf("DialContext: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, n)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() { _, err := c.Write(data); werr <- err }()
	h := sha256.New()
	if _, err := io.CopyN(h, c, int64(n)); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if want := sha256.Sum256(data); string(h.Sum(nil)) != string(want[:]) {
		t.Fatal("echoed data differs")
	}
}

// echoReadingOn sends back what c receives, and keeps reading while a
// write back waits. A one-goroutine echo (io.Copy(c, c)) stops reading
// while its write waits for the peer's acknowledgements, and gVisor's TCP
// can then stall for good: when its free receive space is below one unit
// of the window scale, it advertises a zero window but its acceptance
// test also takes the window as zero, so it drops the bytes the peer
// sent into the space advertised before, and, with them, the ACKs of
// every later segment the peer sends (their sequence number lies beyond
// the window). The write waits for those ACKs, and nothing reads.
func echoReadingOn(c net.Conn) {
	var (
		mu      sync.Mutex
		pending []byte
		ended   bool
	)
	ready := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			mu.Lock()
			pending = append(pending, buf[:n]...)
			ended = err != nil
			mu.Unlock()
			select {
			case ready <- struct{}{}:
			default: // a wake-up is already pending
			}
			if err != nil {
				return
			}
		}
	}()
	var out []byte
	for range ready {
		mu.Lock()
		out, pending = append(out[:0], pending...), pending[:0]
		done := ended
		mu.Unlock()
		if len(out) > 0 {
			if _, err := c.Write(out); err != nil {
				return
			}
		}
		if done {
			return
		}
	}
}

func TestUserspaceTCPEcho(t *testing.T) {
	p := newPair(t, 0)
	transfer(t, p, 7000, 4<<20)
	ca, cb := p.a.Counters(), p.b.Counters()
	if ca.Outbound.AcceptedBytes < 4<<20 || cb.Inbound.AcceptedBytes < 4<<20 || ca.Inbound.AcceptedPackets == 0 {
		t.Fatalf("counters do not reflect the transfer: A %+v B %+v", ca, cb)
	}
	if got := p.ab.maxSize.Load(); got > DefaultMTU {
		t.Fatalf("packet of %d bytes crossed a %d MTU device", got, DefaultMTU)
	}
}

func TestUserspaceMTU(t *testing.T) {
	p := newPair(t, 1280)
	transfer(t, p, 7002, 1<<20)
	for name, l := range map[string]*link{"A→B": p.ab, "B→A": p.ba} {
		if got := l.maxSize.Load(); got > 1280 || got < 1200 {
			t.Errorf("%s: largest packet %d bytes, want full-size segments ≤ 1280", name, got)
		}
	}
	// UDP datagrams above the MTU are fragmented by the stack, never sent
	// as oversized packets.
	udpRoundTrip(t, p, 7003, 3000)
	if got := p.ab.maxSize.Load(); got > 1280 {
		t.Errorf("UDP: packet of %d bytes crossed the device", got)
	}
}

func udpRoundTrip(t *testing.T, p *pair, port uint16, size int) {
	t.Helper()
	srv, err := p.b.ListenUDP(port)
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	}()
	c, err := p.a.DialContext(context.Background(), "udp4", netip.AddrPortFrom(addrB, port).String())
	if err != nil {
		t.Fatalf("Dial udp: %v", err)
	}
	defer c.Close()
	msg := make([]byte, size)
	rand.Read(msg)
	buf := make([]byte, 65536)
	for try := 0; try < 5; try++ {
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("udp write: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			if string(buf[:n]) != string(msg) {
				t.Fatal("udp echo differs")
			}
			return
		}
	}
	t.Fatal("no UDP echo after 5 tries")
}

func TestUserspaceUDPAndPing(t *testing.T) {
	p := newPair(t, 0)
	udpRoundTrip(t, p, 7001, 100)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rtt, err := p.a.Ping(ctx, addrB, 56)
	if err != nil || rtt <= 0 {
		t.Fatalf("Ping = %v, %v; want RTT > 0", rtt, err)
	}
	if _, err := p.a.Ping(ctx, addrB, DefaultMTU); err == nil {
		t.Error("Ping accepted a payload larger than the MTU")
	}
	if _, err := p.a.Ping(ctx, netip.MustParseAddr("192.0.2.1"), 8); !errors.Is(err, ErrNotOverlay) {
		t.Errorf("Ping outside the overlay: %v, want ErrNotOverlay", err)
	}
	if _, err := p.a.DialContext(ctx, "tcp", "192.0.2.1:80"); !errors.Is(err, ErrNotOverlay) {
		t.Errorf("Dial outside the overlay: %v, want ErrNotOverlay", err)
	}
	for _, bad := range [][2]string{{"tcp", "host:80"}, {"tcp6", "100.64.0.2:80"}, {"sctp", "100.64.0.2:80"}} {
		if _, err := p.a.DialContext(ctx, bad[0], bad[1]); err == nil {
			t.Errorf("Dial %s %s succeeded", bad[0], bad[1])
		}
	}

	// A Ping whose reply is dropped fails when the context ends.
	p.a.SetHooks(Hooks{Inbound: dropAll{}})
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if _, err := p.a.Ping(short, addrB, 8); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Ping with dropped replies = %v, want deadline exceeded", err)
	}
}

func TestUserspaceInboundDropBlocksDial(t *testing.T) {
	p := newPair(t, 0)
	l, err := p.b.ListenTCP(7004)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p.b.SetHooks(Hooks{Inbound: dropAll{}})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c, err := p.a.DialContext(ctx, "tcp", "100.64.0.2:7004")
	if err == nil {
		c.Close()
		t.Fatal("dial succeeded through a drop-all inbound hook")
	}
	if got := p.b.Counters().Inbound; got.DroppedPackets == 0 || got.AcceptedPackets != 0 {
		t.Fatalf("B inbound counters %+v, want drops and no accepts", got)
	}
	// Removing the hook restores connectivity.
	p.b.SetHooks(Hooks{})
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	c, err = p.a.DialContext(ctx2, "tcp", "100.64.0.2:7004")
	if err != nil {
		t.Fatalf("dial after removing the hook: %v", err)
	}
	c.Close()
}

func TestClosedStack(t *testing.T) {
	s, err := New(Config{Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/10")}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.ListenTCP(1); !errors.Is(err, ErrClosed) {
		t.Errorf("ListenTCP after Close: %v", err)
	}
	if _, err := s.DialContext(context.Background(), "tcp", "100.64.0.2:1"); !errors.Is(err, ErrClosed) {
		t.Errorf("Dial after Close: %v", err)
	}
}

func TestDualStackListeners(t *testing.T) {
	cfg := func(v4, v6 string) Config {
		return Config{Addresses: []netip.Prefix{netip.MustParsePrefix(v4), netip.MustParsePrefix(v6)}, Logger: quiet}
	}
	a, err := New(cfg("100.64.0.1/10", "fd7a:115c:a1e0::1/48"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg("100.64.0.2/10", "fd7a:115c:a1e0::2/48"))
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	p := &pair{a: a, b: b, ab: startLink(t, a.Device(), b.Device()), ba: startLink(t, b.Device(), a.Device())}
	t.Cleanup(p.close(t))
	l, err := b.ListenTCP(7005)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u, err := b.ListenUDP(7005)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := u.ReadFrom(buf)
			if err != nil {
				return
			}
			u.WriteTo(buf[:n], from)
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, dst := range []string{"100.64.0.2", "fd7a:115c:a1e0::2"} {
		ap := netip.AddrPortFrom(netip.MustParseAddr(dst), 7005).String()
		c, err := a.DialContext(ctx, "tcp", ap)
		if err != nil {
			t.Fatalf("tcp %s: %v", dst, err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != "hi" {
			t.Fatalf("tcp %s: got %q", dst, got)
		}
		uc, err := a.DialContext(ctx, "udp", ap)
		if err != nil {
			t.Fatalf("udp %s: %v", dst, err)
		}
		uc.SetDeadline(time.Now().Add(5 * time.Second))
		uc.Write([]byte("ping"))
		buf := make([]byte, 10)
		n, err := uc.Read(buf)
		uc.Close()
		if err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("udp %s: %q, %v", dst, buf[:n], err)
		}
		if rtt, err := a.Ping(ctx, netip.MustParseAddr(dst), 16); err != nil || rtt <= 0 {
			t.Fatalf("ping %s: %v, %v", dst, rtt, err)
		}
	}
	u.SetReadDeadline(time.Now().Add(-time.Second))
	if _, _, err := u.ReadFrom(make([]byte, 1)); !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "timeout") {
		t.Errorf("ReadFrom past deadline: %v", err)
	}
}

// TestNoGoroutineLeak checks that closing userspace stacks (with
// connections, listeners and pings used) returns the goroutine count to its
// baseline.
func TestNoGoroutineLeak(t *testing.T) {
	run := func() {
		p := &pair{}
		var err error
		if p.a, err = New(Config{Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/10")}, Logger: quiet}); err != nil {
			t.Fatal(err)
		}
		if p.b, err = New(Config{Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/10")}, Logger: quiet}); err != nil {
			t.Fatal(err)
		}
		p.ab, p.ba = startLink(t, p.a.Device(), p.b.Device()), startLink(t, p.b.Device(), p.a.Device())
		transfer(t, p, 7010, 64<<10)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := p.a.Ping(ctx, addrB, 8); err != nil {
			t.Fatal(err)
		}
		p.close(t)()
	}
	run() // warm up package-level state (gVisor's global goroutines, if any)
	settle(runtime.NumGoroutine(), time.Second)
	base := runtime.NumGoroutine()
	run()
	if n := settle(base, 5*time.Second); n > base {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after Close, baseline %d:\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
}

// settle polls until the goroutine count is at most want or d elapses.
func settle(want int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		n := runtime.NumGoroutine()
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestListenOnAddresses: port 0 picks one port for every address, a
// listener on one address does not take the other's connections, and an
// address the interface does not hold is refused.
func TestListenOnAddresses(t *testing.T) {
	cfg := func(v4, v6 string) Config {
		return Config{Addresses: []netip.Prefix{netip.MustParsePrefix(v4), netip.MustParsePrefix(v6)}, Logger: quiet}
	}
	a, err := New(cfg("100.64.0.1/10", "fd7a:115c:a1e0::1/48"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg("100.64.0.2/10", "fd7a:115c:a1e0::2/48"))
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	p := &pair{a: a, b: b, ab: startLink(t, a.Device(), b.Device()), ba: startLink(t, b.Device(), a.Device())}
	t.Cleanup(p.close(t))

	l, err := b.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ml, ok := l.(*multiListener)
	if !ok {
		t.Fatalf("listener on two addresses is a %T", l)
	}
	port := boundPort(ml.ls[0].Addr())
	if port == 0 || boundPort(ml.ls[1].Addr()) != port {
		t.Fatalf("port 0 bound %v and %v, want one port", ml.ls[0].Addr(), ml.ls[1].Addr())
	}
	u, err := b.ListenUDP(0)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	mu, ok := u.(*multiPacketConn)
	if !ok {
		t.Fatalf("UDP socket on two addresses is a %T", u)
	}
	if up := boundPort(mu.cs[0].LocalAddr()); up == 0 || boundPort(mu.cs[1].LocalAddr()) != up {
		t.Fatalf("UDP port 0 bound %v and %v, want one port", mu.cs[0].LocalAddr(), mu.cs[1].LocalAddr())
	}

	v6 := netip.MustParseAddr("fd7a:115c:a1e0::2")
	l6, err := b.ListenTCPOn([]netip.Addr{v6}, 7006)
	if err != nil {
		t.Fatal(err)
	}
	defer l6.Close()
	go func() {
		for {
			c, err := l6.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.DialContext(ctx, "tcp", netip.AddrPortFrom(v6, 7006).String())
	if err != nil {
		t.Fatalf("dial the IPv6 listener: %v", err)
	}
	c.Close()
	if c, err := a.DialContext(ctx, "tcp", "100.64.0.2:7006"); err == nil {
		c.Close()
		t.Error("a listener on the IPv6 address took a connection to the IPv4 one")
	}

	for _, bad := range []string{"100.64.0.1", "127.0.0.1"} {
		if l, err := b.ListenTCPOn([]netip.Addr{netip.MustParseAddr(bad)}, 7007); err == nil || !errors.Is(err, ErrNotOverlay) {
			if l != nil {
				l.Close()
			}
			t.Errorf("ListenTCPOn(%s) = %v, want ErrNotOverlay", bad, err)
		}
		if c, err := b.ListenUDPOn([]netip.Addr{netip.MustParseAddr(bad)}, 7007); err == nil || !errors.Is(err, ErrNotOverlay) {
			if c != nil {
				c.Close()
			}
			t.Errorf("ListenUDPOn(%s) = %v, want ErrNotOverlay", bad, err)
		}
	}
}

// TestSegmentationOffloadReported: a userspace stack reports its offload
// as configured.
func TestSegmentationOffloadReported(t *testing.T) {
	for _, off := range []bool{false, true} {
		s, err := New(Config{Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/10")}, NoOffload: off, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.SegmentationOffload(); got == off {
			t.Errorf("NoOffload %v: SegmentationOffload() = %v", off, got)
		}
		s.Close()
	}
}
