package overlay

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
	"github.com/aigrid/gridnet/overlay/internal/inflight"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// divertFunc receives one gridnet datagram. pkt is only valid during the
// call (the buffer belongs to wireguard-go and is reused): the callee must
// copy what it keeps and must not block.
type divertFunc func(pkt []byte, from netip.AddrPort)

// divertBind is a conn.Bind that shares one UDP socket between WireGuard and
// gridnet's admission handshake. In every received batch it hands gridnet
// datagrams (first byte handshake.TypeGridnet) to the divert function, drops
// datagrams that are neither gridnet nor WireGuard-shaped, and compacts the
// WireGuard datagrams to the front of the batch in order, so wireguard-go
// sees them untouched and still batched.
//
// WireGuard datagrams from a source address that is not the endpoint of an
// admitted peer (junk, or a peer that moved) pass only within a per-source
// token bucket, before any decryption: a flood from unknown addresses costs
// a map lookup, not a ChaCha20-Poly1305 attempt or a handshake.
type divertBind struct {
	inner  conn.Bind
	divert divertFunc
	junk   *atomic.Uint64 // datagrams dropped as neither WireGuard nor gridnet

	// known holds the source IPs of admitted peers' endpoints (immutable
	// map, swapped whole); strangers is the limiter for every other source.
	known atomic.Pointer[map[netip.Addr]struct{}]
	// peerEndpoints holds the same endpoints with their ports: only
	// datagrams from them count in the receive backlog (a stranger's, or
	// one from another port of a peer's address, is dropped by
	// wireguard-go at once, unless it is a handshake).
	peerEndpoints atomic.Pointer[map[netip.AddrPort]struct{}]
	strangers     *rateLimiter
	limited       atomic.Uint64 // WireGuard datagrams dropped by strangers

	// budgets holds the pre-decryption budgets of throttled peers by
	// endpoint (see SetBudgets); budgetMu serializes its writers.
	budgets   atomic.Pointer[budgetTable]
	budgetMu  sync.Mutex
	throttled atomic.Uint64 // transport datagrams dropped by a budget
	// initiationsSent counts WireGuard handshake initiations sent.
	initiationsSent atomic.Uint64
	epoch           time.Time

	// watches: the endpoints of peers whose session the session machine
	// waits for (see sessionWatch); watchMu serializes its writers.
	watches atomic.Pointer[watchTable]
	watchMu sync.Mutex

	// initiations holds the last WireGuard handshake initiation sent to
	// each endpoint, for a kick to send again (see keptInitiation).
	initMu      sync.Mutex
	initiations map[netip.AddrPort][]byte

	mu   sync.Mutex
	port uint16

	// backlog bounds the packets inside wireguard-go in each direction
	// (nil: unbounded): received counts the transport datagrams handed
	// to it until their packets reach the TUN, sent the packets read
	// from the TUN until they leave encrypted (see backlog.go).
	received, sent *inflight.Limiter
}

var _ conn.Bind = (*divertBind)(nil)

// Limits for WireGuard traffic from sources that are no admitted peer's
// endpoint: enough for WireGuard handshakes and for a peer that moved to
// keep working until its new address is learned (at the next revalidation
// tick, RevalidateInterval), far below what a flood needs.
const (
	strangerRate  = 1000
	strangerBurst = 200
)

func newDivertBind(inner conn.Bind, divert divertFunc, junk *atomic.Uint64) *divertBind {
	b := &divertBind{inner: inner, divert: divert, junk: junk, strangers: newRateLimiter(strangerRate, strangerBurst, nil), epoch: time.Now()}
	b.setKnown(nil)
	b.budgets.Store(&budgetTable{})
	b.watches.Store(&watchTable{})
	return b
}

// setKnown replaces the admitted peers' endpoints (where they were
// admitted from, and where WireGuard sees them now).
func (b *divertBind) setKnown(eps []netip.AddrPort) {
	addrs := make(map[netip.Addr]struct{}, len(eps))
	exact := make(map[netip.AddrPort]struct{}, len(eps))
	for _, ep := range eps {
		ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
		addrs[ep.Addr()] = struct{}{}
		exact[ep] = struct{}{}
	}
	b.known.Store(&addrs)
	b.peerEndpoints.Store(&exact)
}

// isWireGuard reports whether b looks like a WireGuard message: a
// little-endian uint32 type in 1..4. Everything else WireGuard would drop.
func isWireGuard(b []byte) bool {
	return len(b) >= 4 && b[0] >= 1 && b[0] <= 4 && b[1] == 0 && b[2] == 0 && b[3] == 0
}

// Open opens the inner bind and wraps each of its receive functions.
func (b *divertBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.inner.Open(port)
	if err != nil {
		return nil, 0, err
	}
	b.mu.Lock()
	b.port = actual
	b.mu.Unlock()
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = b.wrap(fn)
	}
	return wrapped, actual, nil
}

// wrap returns a ReceiveFunc that filters fn's batches. wireguard-go reads
// packet i from its own backing array i, so WireGuard datagrams are moved by
// copying bytes (only when a diverted one precedes them), never by swapping
// slices.
func (b *divertBind) wrap(fn conn.ReceiveFunc) conn.ReceiveFunc {
	var room *inflight.Waiter
	if b.received != nil {
		room = b.received.NewWaiter()
	}
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			if room != nil {
				// While wireguard-go holds a full backlog, datagrams
				// wait in the socket's buffer instead.
				room.Wait()
			}
			n, err := fn(packets, sizes, eps)
			if err != nil {
				return 0, err
			}
			j := b.filter(packets, sizes, eps, n)
			if j > 0 {
				return j, nil
			}
		}
	}
}

// filter diverts and compacts one batch of n datagrams; it returns how many
// WireGuard datagrams remain at the front.
func (b *divertBind) filter(packets [][]byte, sizes []int, eps []conn.Endpoint, n int) int {
	j := 0
	var junk, limited, throttled uint64
	// Transport datagrams with a packet inside from an admitted peer's
	// endpoint (one lookup per run of datagrams from one endpoint).
	data := 0
	var lastCounted netip.AddrPort
	counted := false
	known, peerEps := *b.known.Load(), *b.peerEndpoints.Load()
	budgets := *b.budgets.Load()
	watches := *b.watches.Load()
	var now int64
	if len(budgets) > 0 {
		now = b.nanos()
	}
	// One watch lookup per run of datagrams from one endpoint.
	var lastEp netip.AddrPort
	var lastWatch *sessionWatch
	for i := 0; i < n; i++ {
		size := sizes[i]
		if size <= 0 {
			continue
		}
		pkt := packets[i][:size]
		switch {
		case isWireGuard(pkt):
			src := endpointAddr(eps[i])
			if _, ok := known[src.Addr().Unmap()]; !ok {
				if !b.strangers.allow(src.Addr()) {
					limited++
					continue
				}
			} else if pkt[0] != device.MessageCookieReplyType && (len(budgets) > 0 || len(watches) > 0) {
				ep := netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
				if len(budgets) > 0 && pkt[0] == messageTransport {
					if bg := budgets[ep]; bg != nil && !bg.allow(now) {
						throttled++
						continue
					}
				}
				if len(watches) > 0 {
					if ep != lastEp {
						lastEp, lastWatch = ep, watches[ep]
					}
					if lastWatch != nil {
						lastWatch.seen(pkt)
					}
				}
			}
			if pkt[0] == messageTransport && size > device.MessageKeepaliveSize {
				ep := netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
				if ep != lastCounted {
					_, counted = peerEps[ep]
					lastCounted = ep
				}
				if counted {
					data++
				}
			}
			if j != i {
				copy(packets[j][:size], pkt)
				sizes[j] = size
				eps[j] = eps[i]
			}
			j++
		case pkt[0] == handshake.TypeGridnet:
			b.divert(pkt, endpointAddr(eps[i]))
		default:
			junk++
		}
	}
	for k := j; k < n; k++ {
		sizes[k] = 0
		eps[k] = nil
	}
	if b.received != nil {
		b.received.Add(data)
	}
	if junk > 0 {
		b.junk.Add(junk)
	}
	if limited > 0 {
		b.limited.Add(limited)
	}
	if throttled > 0 {
		b.throttled.Add(throttled)
	}
	return j
}

// endpointAddr extracts the remote address of a received endpoint.
func endpointAddr(ep conn.Endpoint) netip.AddrPort {
	switch e := ep.(type) {
	case *conn.StdNetEndpoint:
		return e.AddrPort
	case nil:
		return netip.AddrPort{}
	default:
		ap, _ := netip.ParseAddrPort(e.DstToString())
		return ap
	}
}

// Close closes the inner bind.
func (b *divertBind) Close() error { return b.inner.Close() }

// SetMark forwards to the inner bind.
func (b *divertBind) SetMark(mark uint32) error { return b.inner.SetMark(mark) }

// Send forwards WireGuard traffic to the inner bind, keeping a copy of
// each handshake initiation (the only 148-byte message of type 1) and
// telling the session watch of the endpoint the sender index of each
// initiation and response (the only 92-byte message of type 2); data
// messages are only looked at for their first byte.
func (b *divertBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	data := 0 // transport messages with a packet read from the TUN inside
	for _, buf := range bufs {
		if len(buf) == 0 {
			continue
		}
		if buf[0] == messageTransport {
			if len(buf) > device.MessageKeepaliveSize {
				data++
			}
			continue
		}
		initiation := len(buf) == device.MessageInitiationSize && buf[0] == device.MessageInitiationType
		response := len(buf) == device.MessageResponseSize && buf[0] == device.MessageResponseType
		if !initiation && !response {
			continue
		}
		to := endpointAddr(ep)
		if initiation {
			b.initiationsSent.Add(1)
			b.recordInitiation(to, buf)
		}
		if watches := *b.watches.Load(); len(watches) > 0 {
			if w := watches[netip.AddrPortFrom(to.Addr().Unmap(), to.Port())]; w != nil {
				w.sent(buf)
			}
		}
	}
	if b.sent != nil {
		b.sent.Done(data)
	}
	return b.inner.Send(bufs, ep)
}

// maxInitiations bounds the initiation copies kept (one per endpoint);
// past it they are dropped and kept again from empty.
const maxInitiations = 4096

func (b *divertBind) recordInitiation(to netip.AddrPort, pkt []byte) {
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	b.initMu.Lock()
	defer b.initMu.Unlock()
	if b.initiations == nil || len(b.initiations) >= maxInitiations {
		b.initiations = make(map[netip.AddrPort][]byte)
	}
	b.initiations[to] = bytes.Clone(pkt)
}

// forgetInitiation drops the initiation kept for to (its peer is gone).
func (b *divertBind) forgetInitiation(to netip.AddrPort) {
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	b.initMu.Lock()
	delete(b.initiations, to)
	b.initMu.Unlock()
}

// keptInitiation returns the last handshake initiation sent to to, or
// nil if none is kept. Sent again byte for byte (a kick), to the peer
// it is a duplicate datagram: if the first copy is still waiting in the
// peer's handshake queue, WireGuard answers the first and drops the second
// as a replay, and the answer matches the handshake this side holds; if
// the first was lost, the copy is answered. A new initiation instead would
// replace this side's handshake, so the answer to the first is dropped,
// and the peer refuses the new one as a flood when it consumes both
// within 20 ms, as a backed-up queue does.
func (b *divertBind) keptInitiation(to netip.AddrPort) []byte {
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	b.initMu.Lock()
	defer b.initMu.Unlock()
	return b.initiations[to]
}

// ParseEndpoint forwards to the inner bind.
func (b *divertBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	return b.inner.ParseEndpoint(s)
}

// BatchSize forwards to the inner bind.
func (b *divertBind) BatchSize() int { return b.inner.BatchSize() }

// Port returns the port the bind was last opened on.
func (b *divertBind) Port() uint16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.port
}

// SendTo sends one gridnet datagram through the shared socket.
func (b *divertBind) SendTo(pkt []byte, to netip.AddrPort) error {
	ep, err := b.inner.ParseEndpoint(to.String())
	if err != nil {
		return fmt.Errorf("overlay: endpoint %s: %w", to, err)
	}
	if err := b.inner.Send([][]byte{pkt}, ep); err != nil {
		return fmt.Errorf("overlay: send to %s: %w", to, err)
	}
	return nil
}
