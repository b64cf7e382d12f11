package overlay

import (
	"net/netip"
	"sync/atomic"
)

// messageResponse is WireGuard's handshake-response message type.
const messageResponse = 2

// sessionWatch tells the session machine that a peer's pending session
// came up, without reading the device: the Bind looks at every WireGuard
// datagram from the peer's admitted endpoint, and the first handshake
// response or transport message after the watch was armed means the
// session is up (the starter gets the response to its initiation, the
// other side the keepalive the starter sends once it has its keys). It
// is a hint read before decryption; a forged one can only end a wait for
// a session early, and the session is then judged by its traffic like
// any other (WireGuard keeps retrying its handshake on its own).
type sessionWatch struct {
	key   [32]byte
	armed atomic.Bool
	// up is called, from the Bind's receive path, once per arming.
	up func(key [32]byte)
}

// seen is called for a handshake response or transport message from the
// watched endpoint. Unarmed, it is one atomic load.
func (w *sessionWatch) seen() {
	if w.armed.Load() && w.armed.CompareAndSwap(true, false) {
		w.up(w.key)
	}
}

// watchTable is an immutable endpoint → watch index, swapped whole.
type watchTable map[netip.AddrPort]*sessionWatch

// watchEndpoint makes w the watch of ep (replacing another one's) and
// arms it.
func (b *divertBind) watchEndpoint(ep netip.AddrPort, w *sessionWatch) {
	ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	w.armed.Store(true)
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	old := *b.watches.Load()
	if old[ep] == w {
		return
	}
	next := make(watchTable, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[ep] = w
	b.watches.Store(&next)
}

// unwatchEndpoint ends the watch of ep if it is w.
func (b *divertBind) unwatchEndpoint(ep netip.AddrPort, w *sessionWatch) {
	ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	old := *b.watches.Load()
	if old[ep] != w {
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
