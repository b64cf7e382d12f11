package stack

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// acceptOne listens on port of p.b and returns the first accepted
// connection on the channel.
func acceptOne(t *testing.T, p *pair, port uint16) <-chan net.Conn {
	t.Helper()
	l, err := p.b.ListenTCP(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(ch)
			return
		}
		t.Cleanup(func() { c.Close() })
		ch <- c
	}()
	return ch
}

func dialB(t *testing.T, p *pair, port uint16) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := p.a.DialContext(ctx, "tcp", net.JoinHostPort(addrB.String(), itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

func itoa(p uint16) string { return (&net.TCPAddr{Port: int(p)}).String()[1:] }

// TestUserspaceTCPResetIsECONNRESET: SetLinger(0) and Close reset the
// connection, and the other side reads syscall.ECONNRESET, as from a
// kernel socket (a relay tells a reset from an orderly close by it).
func TestUserspaceTCPResetIsECONNRESET(t *testing.T) {
	p := newPair(t, 0)
	accepted := acceptOne(t, p, 7100)
	c := dialB(t, p, 7100)
	s := <-accepted
	if s == nil {
		t.Fatal("no connection accepted")
	}
	lc, ok := s.(interface{ SetLinger(int) error })
	if !ok {
		t.Fatalf("accepted %T has no SetLinger", s)
	}
	if err := lc.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	buf := make([]byte, 10)
	_, err := c.Read(buf)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after the peer's reset: %v, want ECONNRESET", err)
	}
}

// TestUserspaceTCPCloseWriteHalfCloses: after CloseWrite the peer reads
// EOF and can still send; an orderly close is EOF, not a reset.
func TestUserspaceTCPCloseWriteHalfCloses(t *testing.T) {
	p := newPair(t, 0)
	accepted := acceptOne(t, p, 7101)
	c := dialB(t, p, 7101)
	s := <-accepted
	if s == nil {
		t.Fatal("no connection accepted")
	}
	s.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "ping" {
		t.Fatalf("server read %q, %v; want ping then EOF", got, err)
	}
	if _, err := s.Write([]byte("pong")); err != nil {
		t.Fatalf("write after the peer's half-close: %v", err)
	}
	s.Close()
	got, err = io.ReadAll(c)
	if err != nil || string(got) != "pong" {
		t.Fatalf("client read %q, %v; want pong then EOF", got, err)
	}
}

// TestUserspaceTCPRefusedIsECONNREFUSED: a dial to a port nobody listens
// on fails at once with syscall.ECONNREFUSED.
func TestUserspaceTCPRefusedIsECONNREFUSED(t *testing.T) {
	p := newPair(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := p.a.DialContext(ctx, "tcp", "100.64.0.2:7102")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port: %v, want ECONNREFUSED", err)
	}
}
