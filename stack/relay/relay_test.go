package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// deadline bounds every wait of these tests: generous, only a hang or a
// missing mechanism misses it.
const deadline = 30 * time.Second

func listenTCP(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// server accepts connections on a fresh loopback listener and hands each
// to handle in its own goroutine.
func server(t *testing.T, handle func(net.Conn)) net.Listener {
	t.Helper()
	l := listenTCP(t)
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); handle(c) }()
		}
	}()
	return l
}

func echo(c net.Conn) { io.Copy(c, c) }

// relayTo starts a TCP relay with limits in front of target and returns
// its address and Group.
func relayTo(t *testing.T, target string, limits Limits) (string, *Group) {
	t.Helper()
	g := NewGroup(limits, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- ServeTCP(g, l, func(ctx context.Context, _ net.Addr) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", target)
		})
	}()
	t.Cleanup(func() {
		g.Close()
		if err := <-done; err != nil {
			t.Errorf("ServeTCP: %v", err)
		}
	})
	return l.Addr().String(), g
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, deadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(deadline))
	return c.(*net.TCPConn)
}

// wasReset dials addr (from src, if given) and reports whether the
// connection was reset: at connect, when the relay resets it before the
// connect completed, or at the first read.
func wasReset(t *testing.T, addr, src string) bool {
	t.Helper()
	d := net.Dialer{Timeout: deadline}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return errors.Is(err, syscall.ECONNRESET)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	_, err = io.ReadAll(c)
	return errors.Is(err, syscall.ECONNRESET)
}

// roundTrip writes msg and reads it back (through an echo server).
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo: %q, %v", got, err)
	}
}

// TestPipeCarriesDataIntact: 32 MiB each way at once arrive unchanged.
func TestPipeCarriesDataIntact(t *testing.T) {
	l := server(t, echo)
	addr, _ := relayTo(t, l.Addr().String(), Limits{})
	c := dial(t, addr)
	data := make([]byte, 32<<20)
	rand.Read(data)
	go func() { c.Write(data); c.CloseWrite() }()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("read %d bytes, %v; want %d", n, err, len(data))
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("data changed on the way")
	}
}

// TestPipeHalfClose: the client's FIN reaches the server, which still
// answers after it; the server's FIN then reaches the client.
func TestPipeHalfClose(t *testing.T) {
	l := server(t, func(c net.Conn) {
		got, err := io.ReadAll(c) // until the client's FIN
		if err != nil {
			return
		}
		c.Write(append([]byte("got "), got...))
	})
	addr, _ := relayTo(t, l.Addr().String(), Limits{})
	c := dial(t, addr)
	c.Write([]byte("request"))
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got request" {
		t.Fatalf("read %q, %v; want the answer sent after the half-close, then EOF", got, err)
	}
}

// TestPipeResetReachesTheClient: a server that resets its connection
// makes the client read ECONNRESET, not an orderly EOF.
func TestPipeResetReachesTheClient(t *testing.T) {
	l := server(t, func(c net.Conn) {
		b := make([]byte, 1)
		io.ReadFull(c, b)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	addr, _ := relayTo(t, l.Addr().String(), Limits{})
	c := dial(t, addr)
	c.Write([]byte("x"))
	_, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %v, want ECONNRESET", err)
	}
}

// TestPipeResetReachesTheServer: a client that resets makes the server
// read ECONNRESET.
func TestPipeResetReachesTheServer(t *testing.T) {
	serverErr := make(chan error, 1)
	l := server(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(deadline))
		_, err := io.ReadAll(c)
		serverErr <- err
	})
	addr, _ := relayTo(t, l.Addr().String(), Limits{})
	c := dial(t, addr)
	roundTripOneWay(t, c)
	c.SetLinger(0)
	c.Close()
	if err := <-serverErr; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server read %v, want ECONNRESET", err)
	}
}

// roundTripOneWay makes sure the relay has connected to the server.
func roundTripOneWay(t *testing.T, c net.Conn) {
	t.Helper()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the bytes cross before the reset
}

// TestPipeIdleTimeout: a connection on which nothing moves is closed
// after the idle timeout; one that keeps talking is not.
func TestPipeIdleTimeout(t *testing.T) {
	l := server(t, echo)
	// The busy side talks every 100 ms against a 3 s idle timeout: only a
	// stall of seconds on a loaded machine could make it look idle.
	addr, g := relayTo(t, l.Addr().String(), Limits{IdleTimeout: 3 * time.Second})
	quiet := dial(t, addr)
	busy := dial(t, addr)
	stop := make(chan struct{})
	busyErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				busyErr <- nil
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := busy.Write([]byte("k")); err != nil {
				busyErr <- err
				return
			}
			if _, err := io.ReadFull(busy, make([]byte, 1)); err != nil {
				busyErr <- err
				return
			}
		}
	}()
	_, err := io.ReadAll(quiet)
	if err != nil {
		t.Fatalf("idle connection: %v, want EOF", err)
	}
	close(stop)
	if err := <-busyErr; err != nil {
		t.Fatalf("the busy connection failed: %v", err)
	}
	// The client sees EOF when the relay closes its side, a moment before
	// the relay's own bookkeeping of the pipe ends.
	for end := time.Now().Add(deadline); g.Stats().Active != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("active %d after the idle one closed, want 1", g.Stats().Active)
		}
	}
}

// TestPipeBackpressure: when the server does not read, the client's
// writes stall after the buffers on the way are full; the relay does not
// keep reading into memory.
func TestPipeBackpressure(t *testing.T) {
	release := make(chan struct{})
	l := server(t, func(c net.Conn) {
		<-release
		io.Copy(io.Discard, c)
	})
	defer close(release)
	addr, _ := relayTo(t, l.Addr().String(), Limits{})
	c := dial(t, addr)
	var written atomic.Int64
	go func() {
		buf := make([]byte, 64<<10)
		for written.Load() < 1<<30 {
			n, err := c.Write(buf)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	// Wait until the writes stall: no progress for a second.
	last := int64(-1)
	for end := time.Now().Add(deadline); ; time.Sleep(time.Second) {
		now := written.Load()
		if now == last {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("writes never stalled: %d bytes taken", now)
		}
		last = now
	}
	// Socket buffers (client, relay both ways, server) hold a few MiB on
	// loopback; an unbounded relay would have taken the whole GiB.
	if last > 64<<20 {
		t.Fatalf("%d bytes taken while the server read nothing", last)
	}
}

// TestGroupCapRefusesAtOnceAndServesTheOthers: beyond MaxConns a new
// connection is reset at once; the open ones keep working.
func TestGroupCapRefusesAtOnceAndServesTheOthers(t *testing.T) {
	l := server(t, echo)
	addr, g := relayTo(t, l.Addr().String(), Limits{MaxConns: 2})
	a, b := dial(t, addr), dial(t, addr)
	roundTrip(t, a, "a")
	roundTrip(t, b, "b")
	if !wasReset(t, addr, "") {
		t.Fatal("third connection was not reset")
	}
	roundTrip(t, a, "a again")
	roundTrip(t, b, "b again")
	if st := g.Stats(); st.Rejected != 1 || st.Active != 2 {
		t.Errorf("stats %+v, want 1 rejected and 2 active", st)
	}
	// A freed slot is taken by the next connection.
	a.Close()
	for end := time.Now().Add(deadline); g.Stats().Active != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("closing a connection did not free its slot")
		}
	}
	roundTrip(t, dial(t, addr), "c")
}

// TestGroupCapPerSource: one source address at its cap is refused while
// another source is still served.
func TestGroupCapPerSource(t *testing.T) {
	l := server(t, echo)
	addr, _ := relayTo(t, l.Addr().String(), Limits{MaxConns: 10, MaxConnsPerSource: 2})
	from := func(src string) *net.TCPConn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: deadline}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(deadline))
		return c.(*net.TCPConn)
	}
	greedy := []*net.TCPConn{from("127.0.0.1"), from("127.0.0.1")}
	for _, c := range greedy {
		roundTrip(t, c, "mine")
	}
	if !wasReset(t, addr, "127.0.0.1") {
		t.Fatal("third connection from one source was not reset")
	}
	roundTrip(t, from("127.0.0.2"), "another source")
}

// TestTargetUnreachableResets: when the target refuses, the client's
// connection is reset, not left open.
func TestTargetUnreachableResets(t *testing.T) {
	l := listenTCP(t)
	target := l.Addr().String()
	l.Close()
	addr, _ := relayTo(t, target, Limits{})
	if !wasReset(t, addr, "") {
		t.Fatal("the connection to an unreachable target was not reset")
	}
}

// TestGroupCloseEndsEverything: closing the Group closes the listener
// and every relayed connection, and ServeTCP returns nil.
func TestGroupCloseEndsEverything(t *testing.T) {
	l := server(t, echo)
	g := NewGroup(Limits{}, nil)
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- ServeTCP(g, rl, func(ctx context.Context, _ net.Addr) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", l.Addr().String())
		})
	}()
	c := dial(t, rl.Addr().String())
	roundTrip(t, c, "x")
	g.Close()
	if err := <-done; err != nil {
		t.Fatalf("ServeTCP after Close: %v", err)
	}
	if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("relayed connection after Close: %v", err)
	}
	if _, err := net.DialTimeout("tcp", rl.Addr().String(), deadline); err == nil {
		t.Fatal("the listener still accepts after Close")
	}
}

func udpEcho(t *testing.T) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc
}

// udpRelayTo starts a UDP relay with limits in front of target.
func udpRelayTo(t *testing.T, target string, limits Limits) (string, *Group) {
	t.Helper()
	g := NewGroup(limits, nil)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- ServeUDP(g, pc, func(ctx context.Context, _ net.Addr) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", target)
		})
	}()
	t.Cleanup(func() {
		g.Close()
		if err := <-done; err != nil {
			t.Errorf("ServeUDP: %v", err)
		}
	})
	return pc.LocalAddr().String(), g
}

// udpAsk sends msg from c and waits (resending) for the echo; false when
// none came within wait.
func udpAsk(t *testing.T, c net.Conn, msg string, wait time.Duration) bool {
	t.Helper()
	buf := make([]byte, 100)
	for end := time.Now().Add(wait); time.Now().Before(end); {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) == msg {
			return true
		}
	}
	return false
}

func dialUDP(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestUDPRelaySessions: each client gets its own session and its own
// answers; beyond MaxConns sessions a new client gets nothing while the
// others are served; an idle session ends and frees its slot.
func TestUDPRelaySessions(t *testing.T) {
	target := udpEcho(t)
	addr, g := udpRelayTo(t, target.LocalAddr().String(), Limits{MaxConns: 2, IdleTimeout: 3 * time.Second}) // far above a round of asks, even on a loaded machine
	a, b := dialUDP(t, addr), dialUDP(t, addr)
	if !udpAsk(t, a, "from a", deadline) || !udpAsk(t, b, "from b", deadline) {
		t.Fatal("no echo through the relay")
	}
	// Keep a and b busy while c knocks: c is beyond the cap.
	c := dialUDP(t, addr)
	for range 5 {
		udpAsk(t, a, "a", deadline)
		udpAsk(t, b, "b", deadline)
		if udpAsk(t, c, "c", 100*time.Millisecond) {
			t.Fatal("a third session passed a cap of 2")
		}
	}
	if st := g.Stats(); st.Rejected == 0 {
		t.Errorf("stats %+v: no refusal counted", st)
	}
	// a and b go quiet: their sessions idle out and c gets a slot.
	if !udpAsk(t, c, "c after idle", deadline) {
		t.Fatal("idle sessions never freed their slots")
	}
}

func TestSourceAddr(t *testing.T) {
	for _, tc := range []struct {
		in   net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("100.64.0.2"), Port: 1}, "100.64.0.2"},
		{&net.UDPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 1}, "10.0.0.1"},
		{&net.UnixAddr{Name: "@x", Net: "unix"}, "invalid IP"},
		{nil, "invalid IP"},
	} {
		if got := SourceAddr(tc.in); got.String() != tc.want {
			t.Errorf("SourceAddr(%v) = %v, want %s", tc.in, got, tc.want)
		}
	}
}
