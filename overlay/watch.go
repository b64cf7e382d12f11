package overlay

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// transportWatch records when a WireGuard transport message last arrived
// from one endpoint. Confirming a new session, and the session checks after
// an admission (starter grace and kick), read it instead of dumping the
// whole device (IpcGet): the side that starts a session sends a keepalive
// as soon as the handshake completes, and the fabric's own traffic
// follows, so a transport message from the peer after the admission means
// the session is up. It is a hint read before decryption (a forged one can
// only end a confirmation early or skip one session restart; WireGuard
// keeps retrying its handshake on its own and the session watchdog reads
// the device), so the slower device read stays as the fallback.
type transportWatch struct {
	last atomic.Int64 // bind clock, 0: none yet
	refs int          // guarded by divertBind.watchMu

	// armed: someone waits on arrived (see next); the Bind closes it at
	// the next transport message. arrived is guarded by mu.
	armed   atomic.Bool
	mu      sync.Mutex
	arrived chan struct{}
}

// next returns a channel that is closed when the next transport message
// from the watched endpoint arrives. Take it before checking seenSince, so
// that a message in between still closes it.
func (w *transportWatch) next() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.armed.Load() {
		w.arrived = make(chan struct{})
		w.armed.Store(true)
	}
	return w.arrived
}

// seen records a transport message at bind clock now and wakes the
// waiters. Without waiters it is one atomic store and one load.
func (w *transportWatch) seen(now int64) {
	w.last.Store(max(now, 1))
	if !w.armed.Load() {
		return
	}
	w.mu.Lock()
	if w.armed.Load() {
		close(w.arrived)
		w.armed.Store(false)
	}
	w.mu.Unlock()
}

// watchTable is an immutable endpoint → watch index, swapped whole.
type watchTable map[netip.AddrPort]*transportWatch

// watch starts recording transport messages from ep; unwatch must follow.
func (b *divertBind) watch(ep netip.AddrPort) *transportWatch {
	ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	old := *b.watches.Load()
	if w := old[ep]; w != nil {
		w.refs++
		return w
	}
	w := &transportWatch{refs: 1}
	next := make(watchTable, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[ep] = w
	b.watches.Store(&next)
	return w
}

// unwatch ends one watch of ep.
func (b *divertBind) unwatch(ep netip.AddrPort) {
	ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	old := *b.watches.Load()
	w := old[ep]
	if w == nil {
		return
	}
	if w.refs--; w.refs > 0 {
		return
	}
	next := make(watchTable, len(old))
	for k, v := range old {
		if k != ep {
			next[k] = v
		}
	}
	b.watches.Store(&next)
}

// seenSince reports whether a transport message arrived at or after t.
func (b *divertBind) seenSince(w *transportWatch, t time.Time) bool {
	last := w.last.Load()
	return last != 0 && last >= int64(t.Sub(b.epoch))
}
