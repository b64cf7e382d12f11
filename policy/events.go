package policy

import (
	"context"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Reason says why a packet was dropped.
type Reason uint8

// Drop reasons. Every drop is counted under exactly one.
const (
	ReasonNone          Reason = iota
	ReasonMalformed            // not a well-formed IP/TCP/UDP/ICMP packet
	ReasonUnknownPeer          // source (inbound) or destination (outbound) is no admitted peer's address: spoofing
	ReasonNotLocal             // inbound destination is not one of this node's addresses
	ReasonDefaultDeny          // no rule matched
	ReasonRuleDeny             // an explicit deny rule matched
	ReasonServiceDeny          // a node-wide rule allowed it, the service's allow list did not
	ReasonLowTrust             // an allow rule matched but the peer's trust is below its min_trust
	ReasonQuarantined          // the peer is in quarantine
	ReasonFloodPackets         // packets/s bucket empty
	ReasonFloodBytes           // bytes/s bucket empty
	ReasonFloodNewFlows        // new-flows/s bucket empty
	ReasonFlowCapPeer          // the peer holds max_flows_per_peer flows
	ReasonFlowCapGlobal        // the node is near max_flows and the peer holds more than its fair share
	ReasonFragment             // non-first fragment whose first fragment was not accepted
	ReasonReloadCut            // an established flow the new rules no longer allow
	numReasons
)

var reasonNames = [numReasons]string{"none", "malformed", "unknown-peer", "not-local", "default-deny", "rule-deny",
	"service-deny", "low-trust", "quarantined", "flood-packets", "flood-bytes", "flood-new-flows",
	"flow-cap-peer", "flow-cap-global", "fragment", "reload-cut"}

// String returns the reason's stable name (used as metric label).
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// DropReasons lists every reason a packet may be dropped for (ReasonNone
// excluded), in order.
func DropReasons() []Reason {
	out := make([]Reason, 0, numReasons-1)
	for r := ReasonNone + 1; r < numReasons; r++ {
		out = append(out, r)
	}
	return out
}

// EventKind tells drops from alerts.
type EventKind uint8

// Event kinds.
const (
	EventDrop       EventKind = iota // a packet was dropped
	EventQuarantine                  // alert: a peer's trust fell below the threshold
	EventFlowCut                     // a reload cut an established flow
)

// String returns "drop", "quarantine" or "flow-cut".
func (k EventKind) String() string {
	switch k {
	case EventQuarantine:
		return "quarantine"
	case EventFlowCut:
		return "flow-cut"
	}
	return "drop"
}

// Event is one structured firewall event. Drop events are rate-limited per
// peer and reason; Suppressed counts the events of the same peer and reason
// that were not emitted since the previous one.
type Event struct {
	Time       time.Time
	Kind       EventKind
	Peer       string // name (name@domain for another domain than this node's); "" when the packet could not be tied to a peer
	Direction  Direction
	Proto      uint8
	Src, Dst   netip.Addr
	SrcPort    uint16
	DstPort    uint16
	Rule       string
	Reason     Reason
	Trust      float64 // the peer's score at the time (quarantine alerts)
	Suppressed uint64
}

// Event rate limits (Tailscale's log limits are of the same order).
const (
	eventBurst      = 3                // events per peer and reason per window
	eventWindow     = 10 * time.Second // so a flood yields at most 0.3 events/s per peer and reason
	logBurst        = 10               // slog lines per logWindow for the whole firewall
	logWindow       = 5 * time.Second
	defaultEventBuf = 256 // subscriber channel size when the caller gives 0
)

// limiter is a fixed-window event limiter. It is not safe for concurrent
// use: the owner's lock protects it.
type limiter struct {
	windowStart int64
	count       uint32
	suppressed  uint64
}

// allow reports whether an event may be emitted at now; when it may, it
// returns the number suppressed since the last emitted one.
func (l *limiter) allow(now int64, burst uint32, window int64) (bool, uint64) {
	if now-l.windowStart >= window || now < l.windowStart {
		l.windowStart, l.count = now, 0
	}
	if l.count >= burst {
		l.suppressed++
		return false, 0
	}
	l.count++
	s := l.suppressed
	l.suppressed = 0
	return true, s
}

// Subscription receives events on C until Close. Delivery never blocks the
// packet path: when C is full the event is dropped and counted in Dropped.
type Subscription struct {
	C       <-chan Event
	c       chan Event
	hub     *hub
	dropped atomic.Uint64
	once    sync.Once
	closed  bool // guarded by hub.sendMu
}

// Dropped returns the number of events lost because C was full.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription and closes C. It is safe to call twice.
func (s *Subscription) Close() { s.hub.remove(s) }

// hub fans events out to subscribers and the logger.
type hub struct {
	mu     sync.Mutex // guards subscriber changes and closing; never held while sending
	subs   atomic.Pointer[[]*Subscription]
	closed bool
	logger *slog.Logger
	logMu  sync.Mutex // guards logLim (reached only by events that passed their own limiter)
	logLim limiter
	epoch  time.Time
	sendMu sync.RWMutex // held for reading while sending, for writing while closing channels
}

func (h *hub) subscribe(n int) *Subscription {
	if n <= 0 {
		n = defaultEventBuf
	}
	c := make(chan Event, n)
	s := &Subscription{C: c, c: c, hub: h}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(c)
		s.once.Do(func() {})
		return s
	}
	old := h.subs.Load()
	var next []*Subscription
	if old != nil {
		next = append(next, *old...)
	}
	next = append(next, s)
	h.subs.Store(&next)
	return s
}

func (h *hub) remove(s *Subscription) {
	s.once.Do(func() {
		h.mu.Lock()
		if old := h.subs.Load(); old != nil {
			next := make([]*Subscription, 0, len(*old))
			for _, x := range *old {
				if x != s {
					next = append(next, x)
				}
			}
			h.subs.Store(&next)
		}
		h.mu.Unlock()
		h.sendMu.Lock()
		s.closed = true
		close(s.c)
		h.sendMu.Unlock()
	})
}

func (h *hub) close() {
	h.mu.Lock()
	h.closed = true
	var subs []*Subscription
	if old := h.subs.Load(); old != nil {
		subs = *old
	}
	h.mu.Unlock()
	for _, s := range subs {
		h.remove(s)
	}
}

// emit delivers ev to every subscriber without blocking and logs it at the
// logger's rate.
func (h *hub) emit(ev *Event, now int64) {
	if p := h.subs.Load(); p != nil && len(*p) > 0 {
		h.sendMu.RLock()
		for _, s := range *p {
			if s.closed {
				continue
			}
			select {
			case s.c <- *ev:
			default:
				s.dropped.Add(1)
			}
		}
		h.sendMu.RUnlock()
	}
	if h.logger == nil {
		return
	}
	h.logMu.Lock()
	ok, _ := h.logLim.allow(now, logBurst, int64(logWindow))
	h.logMu.Unlock()
	if !ok {
		return
	}
	level := slog.LevelInfo
	if ev.Kind == EventQuarantine {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("kind", ev.Kind.String()),
		slog.String("peer", ev.Peer),
		slog.String("reason", ev.Reason.String()),
		slog.String("dir", ev.Direction.String()),
	}
	if ev.Src.IsValid() {
		attrs = append(attrs, slog.Int("proto", int(ev.Proto)),
			slog.String("src", netip.AddrPortFrom(ev.Src, ev.SrcPort).String()),
			slog.String("dst", netip.AddrPortFrom(ev.Dst, ev.DstPort).String()))
	}
	if ev.Rule != "" {
		attrs = append(attrs, slog.String("rule", ev.Rule))
	}
	if ev.Kind == EventQuarantine {
		attrs = append(attrs, slog.Float64("trust", ev.Trust))
	}
	if ev.Suppressed > 0 {
		attrs = append(attrs, slog.Uint64("suppressed", ev.Suppressed))
	}
	h.logger.LogAttrs(context.Background(), level, "firewall", attrs...)
}
