package relay

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
)

// Bounds of a UDP relay.
const (
	// maxDatagram is the largest UDP payload (IPv4); every read buffer
	// has room for it.
	maxDatagram = 65535
	// sessionQueue is how many datagrams from a client wait while its
	// session's socket is being made or is slow; more are dropped, as a
	// full socket buffer drops them.
	sessionQueue = 64
)

// ServeUDP relays the datagrams that arrive on pc: the first datagram
// from a source address (IP and port) opens a session, a socket that dial
// makes towards the target (within ConnectTimeout); the source's
// datagrams go out of that socket and what it receives goes back to the
// source from pc. g's limits count sessions; a datagram that would open a
// session beyond them is dropped. A session ends after IdleTimeout
// without a datagram either way, or when its socket fails. ServeUDP
// returns nil when g is closed, or the error that ends pc.
func ServeUDP(g *Group, pc net.PacketConn, dial DialFunc) error {
	untrack, err := g.Track(pc)
	if err != nil {
		return nil
	}
	defer untrack()
	u := &udpRelay{g: g, pc: pc, dial: dial, sessions: map[string]*session{}}
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if g.Context().Err() != nil {
				return nil
			}
			return err
		}
		u.deliver(from, buf[:n])
	}
}

type udpRelay struct {
	g    *Group
	pc   net.PacketConn
	dial DialFunc

	mu       sync.Mutex
	sessions map[string]*session
}

// session is one client's flow through the relay.
type session struct {
	from    net.Addr
	in      chan []byte // datagrams from the client, to the target
	idle    *Idle       // set once the target socket is made
	release func()
	done    chan struct{}
	once    sync.Once
}

func (s *session) touch() {
	if s.idle != nil {
		s.idle.Touch()
	}
}

func (s *session) end() { s.once.Do(func() { close(s.done) }) }

// deliver hands one datagram from a client to its session, opening one if
// the limits allow.
func (u *udpRelay) deliver(from net.Addr, b []byte) {
	key := from.String()
	u.mu.Lock()
	s := u.sessions[key]
	if s == nil {
		release, err := u.g.Admit(SourceAddr(from))
		if err != nil {
			u.mu.Unlock()
			return
		}
		s = &session{from: from, in: make(chan []byte, sessionQueue), release: release, done: make(chan struct{})}
		u.sessions[key] = s
		if !u.g.Go(func() { u.run(key, s) }) {
			delete(u.sessions, key)
			release()
			u.mu.Unlock()
			return
		}
	}
	u.mu.Unlock()
	select {
	case s.in <- append([]byte(nil), b...):
	default: // the session is behind: drop, as a full socket would
	}
}

// run makes the session's socket and moves datagrams both ways until the
// session idles out, fails or the Group closes.
func (u *udpRelay) run(key string, s *session) {
	defer func() {
		u.mu.Lock()
		delete(u.sessions, key)
		u.mu.Unlock()
		s.release()
	}()
	ctx := u.g.Context()
	if d := u.g.limits.ConnectTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	out, err := u.dial(ctx, s.from)
	if err != nil {
		if u.g.Context().Err() == nil {
			u.g.Warn("relay: target unreachable; session dropped", "from", s.from, "err", err)
		}
		return
	}
	untrack, err := u.g.Track(out)
	if err != nil {
		return
	}
	defer untrack()
	defer out.Close()

	idle := NewIdle(u.g.limits.IdleTimeout, s.end)
	defer idle.Stop()
	s.idle = idle

	replies := make(chan struct{})
	go func() {
		defer close(replies)
		buf := make([]byte, maxDatagram)
		for {
			n, err := out.Read(buf)
			if err != nil {
				s.end()
				return
			}
			s.touch()
			if _, err := u.pc.WriteTo(buf[:n], s.from); err != nil && errors.Is(err, net.ErrClosed) {
				s.end()
				return
			}
		}
	}()
	defer func() { out.Close(); <-replies }()
	for {
		select {
		case b := <-s.in:
			s.touch()
			if _, err := out.Write(b); err != nil && !isTransient(err) {
				return
			}
		case <-s.done:
			return
		case <-u.g.Context().Done():
			return
		}
	}
}

// isTransient reports whether a UDP write error leaves the socket usable
// (a refusal reported by ICMP for an earlier datagram, a full buffer).
func isTransient(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOBUFS)
}
