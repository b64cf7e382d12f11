package overlay

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/device"
)

// messageResponse is WireGuard's handshake-response message type.
const messageResponse = 2

// sessionWatch tells the session machine that a peer's pending session
// came up, without reading the device. The Bind notes the sender index of
// every WireGuard handshake initiation and response this node sends to
// the peer's admitted endpoint (the index the peer puts in what it sends
// back on the session they make), and reports the session up at the first
// handshake response or transport message from that endpoint that names
// the index of this node's latest initiation or response: the starter
// gets the response to its initiation, the other side the keepalive the
// starter sends once it has its keys. A message on an older session (the
// peer sending on keys this node dropped or never had) names another
// index and proves nothing: the peer may be alive, but the session is
// not. A suspected peer is judged the same way, on its current session
// (a rekey's handshake goes through here too).
//
// While armed, the first handshake initiation from the endpoint whose
// MAC1 names this node's key is reported too (started): the peer is
// starting the session, and a side that does not start then takes
// nothing over. It is seen as it arrives, before it waits in WireGuard's
// handshake queue: on a loaded node an initiation can wait there for
// seconds, and a take-over decided meanwhile crosses it. MAC1 is what
// WireGuard checks before it queues an initiation; it takes this node's
// public key, which the fabric's members know, to make one.
//
// It is a hint read before decryption. Faking an answer takes a sender
// on the path who sees the indices; it can only end a wait for a session
// early, and WireGuard keeps retrying its handshake on its own. Faking an
// initiation takes this node's key and a datagram from the peer's
// address; it can only hold back this side's take-over, and the session
// rules then give the session up SessionSetup later and admit the peer
// again.
type sessionWatch struct {
	key   [32]byte
	armed atomic.Bool
	// sentInit and sentResp are the sender indices of the last handshake
	// initiation and response sent to the endpoint, with bit 32 set
	// (zero: none).
	sentInit, sentResp atomic.Uint64
	// up is called, from the Bind's receive path, once per arming.
	up func(key [32]byte)
	// startPending is set at arming and cleared by the first initiation
	// seen after it; started is called then, from the Bind's receive
	// path. mac1 checks the initiation's MAC1 against this node's key.
	startPending atomic.Bool
	started      func(key [32]byte)
	mac1         *device.CookieChecker
}

// sent notes an outgoing handshake message to the watched endpoint.
func (w *sessionWatch) sent(pkt []byte) {
	switch {
	case len(pkt) == device.MessageInitiationSize && pkt[0] == device.MessageInitiationType:
		w.sentInit.Store(1<<32 | uint64(binary.LittleEndian.Uint32(pkt[4:8])))
	case len(pkt) == device.MessageResponseSize && pkt[0] == device.MessageResponseType:
		// WireGuard answered the peer's initiation: that replaced the
		// handshake of this node's own initiation, and an answer to that
		// one will be dropped.
		w.sentResp.Store(1<<32 | uint64(binary.LittleEndian.Uint32(pkt[4:8])))
		w.sentInit.Store(0)
	}
}

// seen is called for a handshake message or transport message from the
// watched endpoint. Unarmed, it is one atomic load.
func (w *sessionWatch) seen(pkt []byte) {
	if !w.armed.Load() {
		return
	}
	if pkt[0] == device.MessageInitiationType {
		if len(pkt) == device.MessageInitiationSize && w.startPending.Load() && w.mac1 != nil && w.mac1.CheckMAC1(pkt) &&
			w.startPending.CompareAndSwap(true, false) && w.started != nil {
			w.started(w.key)
		}
		return
	}
	if !w.answers(pkt) {
		return
	}
	if w.armed.CompareAndSwap(true, false) {
		w.up(w.key)
	}
}

// answers reports whether pkt is on the session of this node's latest
// handshake with the peer.
func (w *sessionWatch) answers(pkt []byte) bool {
	var receiver uint32
	switch {
	case pkt[0] == messageResponse && len(pkt) == device.MessageResponseSize:
		receiver = binary.LittleEndian.Uint32(pkt[8:12])
		return w.sentInit.Load() == 1<<32|uint64(receiver)
	case pkt[0] == messageTransport && len(pkt) >= device.MessageTransportHeaderSize:
		receiver = binary.LittleEndian.Uint32(pkt[4:8])
		r := 1<<32 | uint64(receiver)
		return w.sentInit.Load() == r || w.sentResp.Load() == r
	}
	return false
}

// watchTable is an immutable endpoint → watch index, swapped whole.
type watchTable map[netip.AddrPort]*sessionWatch

// watchEndpoint makes w the watch of ep (replacing another one's) and
// arms it.
func (b *divertBind) watchEndpoint(ep netip.AddrPort, w *sessionWatch) {
	ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	w.startPending.Store(true)
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
