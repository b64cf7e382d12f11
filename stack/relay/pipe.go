package relay

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// bufSize is the copy buffer of each direction of a Pipe: as large as
// one read of a busy TCP socket, so bulk transfers move in few calls.
const bufSize = 64 << 10

// newBuf makes one copy buffer.
func newBuf() any { b := make([]byte, bufSize); return &b }

// Result says how a Pipe ended.
type Result struct {
	// AToB and BToA count the bytes copied each way.
	AToB, BToA int64
	// Reset: one side was reset (or failed), and the other was reset
	// in turn.
	Reset bool
	// Idle: nothing moved either way for the idle timeout, and both
	// sides were closed.
	Idle bool
}

// Pipe copies a to b and b to a until both directions are done, then
// closes both; it behaves as the network between two TCP endpoints does:
//
//   - half-close: when one side ends its stream (EOF), the other side's
//     writing half is closed (CloseWrite: a FIN), and the other direction
//     goes on until it ends too;
//   - reset: when reading one side fails (it was reset), the other side is
//     reset (SetLinger(0) and Close: a RST); when writing one side fails,
//     the side whose data can no longer be delivered is reset;
//   - backpressure: each direction is one read and one blocking write at a
//     time, so a slow reader slows the writer at the far end and nothing
//     is buffered beyond one 64 KiB buffer per direction;
//   - idle: with idle > 0, when no byte moved either way for idle, both
//     sides are closed (a FIN each).
//
// Connections without CloseWrite or SetLinger (not TCP) are closed
// instead.
func Pipe(a, b net.Conn, idle time.Duration) Result {
	return pipeWith(a, b, idle, nil)
}

// Pipe is the package's Pipe with the Group's IdleTimeout, and copy
// buffers the Group's connections share.
func (g *Group) Pipe(a, b net.Conn) Result {
	return pipeWith(a, b, g.limits.IdleTimeout, &g.bufs)
}

// pipeWith is Pipe; bufs (nil: none) keeps copy buffers for reuse.
func pipeWith(a, b net.Conn, idle time.Duration, bufs *sync.Pool) Result {
	p := &pipe{a: a, b: b, bufs: bufs}
	p.idleWatch = NewIdle(idle, func() {
		p.idle.Store(true)
		p.closeBoth()
	})
	done := make(chan int64, 1)
	go func() { done <- p.copy(b, a) }()
	btoa := p.copy(a, b)
	atob := <-done
	p.idleWatch.Stop()
	p.closeBoth()
	return Result{AToB: atob, BToA: btoa, Reset: p.reset.Load(), Idle: p.idle.Load()}
}

type pipe struct {
	a, b      net.Conn
	idleWatch *Idle
	bufs      *sync.Pool
	reset     atomic.Bool
	idle      atomic.Bool
	once      sync.Once
}

func (p *pipe) touch() { p.idleWatch.Touch() }

// copy moves src to dst until src ends or something fails, and returns
// the bytes moved.
func (p *pipe) copy(dst, src net.Conn) int64 {
	var bp *[]byte
	if p.bufs != nil {
		bp = p.bufs.Get().(*[]byte)
		defer p.bufs.Put(bp)
	} else {
		bp = newBuf().(*[]byte)
	}
	buf := *bp
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			p.touch()
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				// dst cannot take more: what src still sends would be
				// lost, so src's peer is told at once, as a direct
				// connection would have told it.
				if !p.idle.Load() {
					p.abort(src, dst)
				}
				return n
			}
			p.touch()
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF):
			if cw, ok := dst.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
				p.closeBoth()
			}
			return n
		case isReset(rerr):
			p.abort(dst, src)
			return n
		default:
			// Closed here (idle, shutdown) or failed otherwise.
			p.closeBoth()
			return n
		}
	}
}

// abort resets victim and closes both sides.
func (p *pipe) abort(victim, other net.Conn) {
	p.once.Do(func() {
		p.reset.Store(true)
		Abort(victim)
		other.Close()
	})
}

func (p *pipe) closeBoth() {
	p.once.Do(func() {
		p.a.Close()
		p.b.Close()
	})
}

// isReset reports whether err says the connection was reset or aborted.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE)
}

// Abort closes c with a RST when it is a TCP connection (SetLinger(0)),
// so that its peer reads "connection reset" rather than an orderly end.
func Abort(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	c.Close()
}
