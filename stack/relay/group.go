package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Limits bound what one listener (a serve or forward entry, a proxy) may
// hold, so that no client can exhaust the host.
type Limits struct {
	// MaxConns caps the connections (UDP: sessions) open at once; 0
	// means no cap. Beyond it a new connection is refused at once (a RST,
	// or the protocol's refusal) and the open ones are served as before.
	MaxConns int
	// MaxConnsPerSource caps the connections from one source address
	// (an overlay peer for serve); 0 means no cap of its own.
	MaxConnsPerSource int
	// IdleTimeout closes a connection (UDP: a session) when nothing moved
	// either way for that long; 0 means never.
	IdleTimeout time.Duration
	// ConnectTimeout bounds the connection to the target; 0 means no
	// bound but the target's own.
	ConnectTimeout time.Duration
}

// Stats are a Group's counters.
type Stats struct {
	// Active is the number of connections (UDP: sessions) open now.
	Active int
	// Accepted and Rejected count the connections let in and refused
	// by the limits since the Group was made.
	Accepted, Rejected uint64
}

// Group is the set of connections of one listener: it admits new ones
// within its Limits, tracks them and the connections made for them, and
// Close ends them all and waits for their goroutines. A Group is safe for
// concurrent use.
type Group struct {
	limits Limits
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	active   int
	bySource map[netip.Addr]int
	closers  map[io.Closer]struct{}

	// bufs holds the copy buffers of Pipe.
	bufs sync.Pool

	accepted, rejected atomic.Uint64
	// lastWarn is when a refusal was last logged (UnixNano); refusals in
	// between are only counted.
	lastWarn     atomic.Int64
	warnedRefuse atomic.Uint64
	// lastFail is when a failure was last logged by Warn (UnixNano);
	// failures in between are counted in failed.
	lastFail atomic.Int64
	failed   atomic.Uint64
}

// rejectLogEvery is how often at most a Group logs that it refused
// connections.
const rejectLogEvery = 10 * time.Second

// NewGroup makes an empty Group; log (nil: discarded) gets refusals and
// failures.
func NewGroup(limits Limits, log *slog.Logger) *Group {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Group{limits: limits, log: log, ctx: ctx, cancel: cancel, bySource: map[netip.Addr]int{}, closers: map[io.Closer]struct{}{},
		bufs: sync.Pool{New: newBuf}}
}

// Limits returns the Group's limits.
func (g *Group) Limits() Limits { return g.limits }

// Context is cancelled when the Group is closed.
func (g *Group) Context() context.Context { return g.ctx }

// Stats returns the Group's counters.
func (g *Group) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Stats{Active: g.active, Accepted: g.accepted.Load(), Rejected: g.rejected.Load()}
}

// ErrClosed is returned by a Group that was closed.
var ErrClosed = errors.New("relay: closed")

// admit takes a slot for a connection from src, or reports the limit that
// refuses it.
func (g *Group) admit(src netip.Addr) (release func(), err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.closed:
		return nil, ErrClosed
	case g.limits.MaxConns > 0 && g.active >= g.limits.MaxConns:
		return nil, fmt.Errorf("%d connections open, the cap", g.active)
	case g.limits.MaxConnsPerSource > 0 && src.IsValid() && g.bySource[src] >= g.limits.MaxConnsPerSource:
		return nil, fmt.Errorf("%d connections open from %v, the cap per source", g.bySource[src], src)
	}
	g.active++
	if src.IsValid() {
		g.bySource[src]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.active--
			if src.IsValid() {
				if g.bySource[src]--; g.bySource[src] <= 0 {
					delete(g.bySource, src)
				}
			}
			g.mu.Unlock()
		})
	}, nil
}

// Admit takes a slot for a connection or session from src (a zero
// address counts only towards MaxConns). The caller calls release when it
// ends. A refusal is counted and logged at most every 10 s.
func (g *Group) Admit(src netip.Addr) (release func(), err error) {
	release, err = g.admit(src)
	if err != nil {
		if !errors.Is(err, ErrClosed) {
			g.refused(src, err)
		}
		return nil, err
	}
	g.accepted.Add(1)
	return release, nil
}

func (g *Group) refused(src netip.Addr, why error) {
	g.rejected.Add(1)
	now := time.Now().UnixNano()
	last := g.lastWarn.Load()
	if now-last < int64(rejectLogEvery) || !g.lastWarn.CompareAndSwap(last, now) {
		return
	}
	total := g.rejected.Load()
	g.log.Warn("connection refused: limit reached", "from", src, "why", why.Error(), "refused_since_last_log", total-g.warnedRefuse.Swap(total))
}

// Warn logs a failure (a target that cannot be reached, say) at most
// every 10 s, with the number of failures since the last one logged.
func (g *Group) Warn(msg string, args ...any) {
	n := g.failed.Add(1)
	now := time.Now().UnixNano()
	last := g.lastFail.Load()
	if now-last < int64(rejectLogEvery) || !g.lastFail.CompareAndSwap(last, now) {
		return
	}
	g.failed.Store(0)
	g.log.Warn(msg, append(args, "failures_since_last_log", n)...)
}

// Track registers c (a connection, listener or socket) to be closed by
// Close. untrack removes it; if the Group is closed already, c is closed
// and ErrClosed returned.
func (g *Group) Track(c io.Closer) (untrack func(), err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		c.Close()
		return nil, ErrClosed
	}
	g.closers[c] = struct{}{}
	return func() {
		g.mu.Lock()
		delete(g.closers, c)
		g.mu.Unlock()
	}, nil
}

// Go runs f in a goroutine that Close waits for; it reports false (and
// does not run f) once the Group is closed.
func (g *Group) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// Close closes every tracked listener and connection, cancels Context and
// waits for the goroutines started with Go.
func (g *Group) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		g.wg.Wait()
		return nil
	}
	g.closed = true
	cs := make([]io.Closer, 0, len(g.closers))
	for c := range g.closers {
		cs = append(cs, c)
	}
	clear(g.closers)
	g.mu.Unlock()
	g.cancel()
	for _, c := range cs {
		c.Close()
	}
	g.wg.Wait()
	return nil
}

// Listen wraps l: Accept returns only the connections the limits admit,
// each tracked by the Group and holding its slot until closed. A
// connection the limits refuse is handed to reject at once (nil: Abort,
// a RST) and Accept waits for the next one. Closing the Group closes l.
func (g *Group) Listen(l net.Listener, reject func(net.Conn)) (net.Listener, error) {
	if reject == nil {
		reject = Abort
	}
	untrack, err := g.Track(l)
	if err != nil {
		return nil, err
	}
	return &listener{Listener: l, g: g, reject: reject, untrack: untrack}, nil
}

type listener struct {
	net.Listener
	g       *Group
	reject  func(net.Conn)
	untrack func()
}

// Accept returns the next admitted connection. Temporary accept errors
// (too many open files) are retried after a pause, as net/http does.
func (l *listener) Accept() (net.Conn, error) {
	var pause time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne interface{ Temporary() bool }
			if errors.As(err, &ne) && ne.Temporary() && l.g.ctx.Err() == nil {
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				l.g.log.Warn("accept failed; retrying", "err", err, "pause", pause)
				select {
				case <-time.After(pause):
				case <-l.g.ctx.Done():
				}
				continue
			}
			if l.g.ctx.Err() != nil {
				return nil, net.ErrClosed
			}
			return nil, err
		}
		pause = 0
		release, err := l.g.Admit(SourceAddr(c.RemoteAddr()))
		if err != nil {
			if errors.Is(err, ErrClosed) {
				c.Close()
				return nil, net.ErrClosed
			}
			l.reject(c)
			continue
		}
		tc := &conn{Conn: c, release: release}
		if tc.untrack, err = l.g.Track(tc); err != nil {
			release()
			return nil, net.ErrClosed
		}
		return tc, nil
	}
}

// Close closes the listener.
func (l *listener) Close() error {
	l.untrack()
	return l.Listener.Close()
}

// conn is an admitted connection: closing it frees its slot. It passes
// CloseWrite, CloseRead and SetLinger on to the connection it wraps.
type conn struct {
	net.Conn
	release func()
	untrack func()
	once    sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.release()
		if c.untrack != nil {
			c.untrack()
		}
	})
	return err
}

// errUnsupported is returned by conn's optional methods when the wrapped
// connection lacks them.
var errUnsupported = errors.New("relay: not supported by this connection")

func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errUnsupported
}

func (c *conn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return errUnsupported
}

func (c *conn) SetLinger(sec int) error {
	if l, ok := c.Conn.(interface{ SetLinger(int) error }); ok {
		return l.SetLinger(sec)
	}
	return errUnsupported
}

// Unwrap returns the wrapped connection.
func (c *conn) Unwrap() net.Conn { return c.Conn }

// SourceAddr is the IP address of a connection's remote address (the
// zero Addr when it has none).
func SourceAddr(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
