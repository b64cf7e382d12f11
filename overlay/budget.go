package overlay

import (
	"maps"
	"net/netip"
	"sync"
	"time"
)

// messageTransport is WireGuard's transport-data message type: the only
// message a budget limits (handshakes and cookie replies keep their own
// limits inside wireguard-go).
const messageTransport = 4

// budgetBurst is how much a budget may run ahead of its rate, in time:
// 100 ms of packets, at least minBudgetBurst.
const (
	budgetBurst    = 100 * time.Millisecond
	minBudgetBurst = 64
)

// budget is one throttled peer's token bucket, in packets, on the
// monotonic clock. It is shared by the receive goroutines.
type budget struct {
	mu     sync.Mutex
	rate   float64 // packets per second
	burst  float64
	tokens float64
	last   int64 // nanoseconds since the bind's epoch
}

func (b *budget) setRate(rate float64) {
	b.mu.Lock()
	b.rate = rate
	b.burst = max(rate*budgetBurst.Seconds(), minBudgetBurst)
	b.tokens = min(b.tokens, b.burst)
	b.mu.Unlock()
}

// allow takes one packet's token at now.
func (b *budget) allow(now int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if el := now - b.last; el > 0 {
		b.tokens = min(b.tokens+float64(el)*b.rate/1e9, b.burst)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// budgetTable is an immutable endpoint → budget index, swapped whole.
type budgetTable map[netip.AddrPort]*budget

// setBudgets replaces the throttled endpoints. Buckets of endpoints that
// stay throttled are kept (only their rate changes), so a new table does
// not hand a flooder a fresh burst.
func (b *divertBind) setBudgets(rates map[netip.AddrPort]float64) {
	b.budgetMu.Lock()
	defer b.budgetMu.Unlock()
	old := *b.budgets.Load()
	next := make(budgetTable, len(rates))
	now := b.nanos()
	for ep, rate := range rates {
		ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
		bg := old[ep]
		if bg == nil {
			bg = &budget{last: now}
			bg.setRate(rate)
			bg.tokens = bg.burst
		} else {
			bg.setRate(rate)
		}
		next[ep] = bg
	}
	if maps.Equal(old, next) {
		return
	}
	b.budgets.Store(&next)
}

// nanos is the bind's monotonic clock.
func (b *divertBind) nanos() int64 { return int64(time.Since(b.epoch)) }

// SetBudgets limits, before decryption, the WireGuard transport packets
// taken from each named peer's endpoint to the given packets per second;
// it replaces the previous budgets, and peers not named are not limited.
// Packets over a budget are dropped without a decryption attempt and
// counted in Stats.Throttled. Node flood control (pushback) sets budgets
// for peers whose traffic the firewall mostly drops: decrypting a flood
// only to drop it costs the node the CPU its other peers need.
//
// Budgets follow the peer's admitted underlay endpoint: a peer that moves
// to another source address or port escapes its budget until it is
// admitted from there (the firewall's own limits still apply).
func (o *Overlay) SetBudgets(rates map[string]float64) {
	eps := make(map[netip.AddrPort]float64, len(rates))
	if len(rates) > 0 {
		o.peersMu.Lock()
		for _, e := range o.peers {
			if r, ok := rates[e.id.Name]; ok && e.endpoint.IsValid() {
				eps[e.endpoint] = r
			}
		}
		o.peersMu.Unlock()
	}
	o.bind.setBudgets(eps)
}
