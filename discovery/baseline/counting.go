package baseline

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// countingTransport is memberlist's own transport with a count of the
// payload bytes sent: datagrams, and bytes written on streams this member
// dialed or accepted.
type countingTransport struct {
	memberlist.Transport
	sent    atomic.Uint64
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
}

// newCountingTransport wraps t; accepted streams are handed on counted.
func newCountingTransport(t memberlist.Transport) *countingTransport {
	c := &countingTransport{Transport: t, streams: make(chan net.Conn), done: make(chan struct{})}
	go c.forwardStreams()
	return c
}

func (c *countingTransport) forwardStreams() {
	for {
		select {
		case conn := <-c.Transport.StreamCh():
			select {
			case c.streams <- &countingConn{Conn: conn, sent: &c.sent}:
			case <-c.done:
				conn.Close()
				return
			}
		case <-c.done:
			return
		}
	}
}

// WriteTo sends a datagram and counts its bytes.
func (c *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	at, err := c.Transport.WriteTo(b, addr)
	if err == nil {
		c.sent.Add(uint64(len(b)))
	}
	return at, err
}

// DialTimeout opens a stream whose writes are counted.
func (c *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	conn, err := c.Transport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: conn, sent: &c.sent}, nil
}

// StreamCh hands on accepted streams, their writes counted.
func (c *countingTransport) StreamCh() <-chan net.Conn { return c.streams }

// Shutdown stops forwarding streams and shuts the wrapped transport down.
// Streams the wrapped transport accepts meanwhile are closed: memberlist's
// NetTransport hands each accepted stream over an unbuffered channel and
// its Shutdown waits for the goroutine doing that, so a stream accepted
// after memberlist stopped reading (it stops before it shuts the
// transport down) kept Shutdown waiting for ever (seen once in the gossip
// benchmark's baseline).
func (c *countingTransport) Shutdown() error {
	c.once.Do(func() { close(c.done) })
	stop := make(chan struct{})
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			select {
			case conn := <-c.Transport.StreamCh():
				conn.Close()
			case <-stop:
				return
			}
		}
	}()
	err := c.Transport.Shutdown()
	close(stop)
	<-drained
	return err
}

// countingConn counts the bytes written on a stream.
type countingConn struct {
	net.Conn
	sent *atomic.Uint64
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.sent.Add(uint64(n))
	return n, err
}
