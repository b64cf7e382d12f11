package policy

import "time"

// Conntrack timeouts (Nebula uses 12 min TCP, 3 min UDP, 10 min others).
const (
	tcpTimeout        = 12 * time.Minute // established TCP, idle
	tcpNewTimeout     = 1 * time.Minute  // TCP flow without a reply yet (SYN scan residue goes fast)
	tcpClosingTimeout = 10 * time.Second // after RST or FIN in both directions: late segments still pass
	udpTimeout        = 3 * time.Minute
	icmpTimeout       = 30 * time.Second // echo id
	otherTimeout      = 10 * time.Minute
	fragTimeout       = 30 * time.Second // fragment reassembly time (Linux ipfrag_time)
	// sweepInterval is how often a peer's flow table is swept of expired
	// entries, at the next new flow (no timer goroutine).
	sweepInterval = 10 * time.Second
	// capSweepInterval bounds the O(flows) sweep when a peer is at its cap,
	// so a flood of new flows cannot make every packet sweep.
	capSweepInterval = time.Second
	// nearFullNum/nearFullDen: the global table counts as near full at 7/8,
	// where fair share starts to apply.
	nearFullNum, nearFullDen = 7, 8
	// fragSlots is the per-peer fragment table size: few flows fragment on
	// an overlay with a sane MTU.
	fragSlots = 16
)

// Flow state bits.
const (
	stReplied = 1 << iota // a packet was seen against the origin direction
	stFinIn
	stFinOut
	stClosed // RST or both FINs
)

// flowKey is a flow from this node's point of view: local is this node's
// address and port, remote the peer's. A packet and its reply map to the
// same key whichever way it travels.
type flowKey struct {
	local, remote         [16]byte
	localPort, remotePort uint16
	proto                 uint8
}

// flow is one tracked connection.
type flow struct {
	key     flowKey
	expires int64
	version uint64 // ruleset version that last allowed the flow
	rule    int32
	origin  Direction
	state   uint8
	used    bool
}

// flowTable is one peer's flows: a map from key to slot in a slab, so the
// established path does at most one map lookup and writes no map entry.
// hint remembers the slot last found or inserted: a bulk transfer's packets
// and their acknowledgements all belong to one flow, and comparing its key
// costs less than hashing it. Guarded by the peer's lock.
type flowTable struct {
	index     map[flowKey]int32
	slab      []flow
	free      []int32
	hint      int32
	nextSweep int64
	lastCap   int64
}

func keyFor(p *packet, dir Direction) flowKey {
	k := flowKey{proto: p.proto}
	if dir == Inbound {
		k.local, k.remote, k.localPort, k.remotePort = p.dst, p.src, p.dstPort, p.srcPort
	} else {
		k.local, k.remote, k.localPort, k.remotePort = p.src, p.dst, p.srcPort, p.dstPort
	}
	if isICMP(p.proto) {
		// Echo request and reply share the identifier.
		k.remotePort = 0
	}
	return k
}

// lookup returns the live flow for k at now, or nil. An expired entry is
// removed and reported as absent.
func (t *flowTable) lookup(k *flowKey, now int64) (*flow, bool) {
	i := t.hint
	if int(i) >= len(t.slab) || !t.slab[i].used || t.slab[i].key != *k {
		var ok bool
		if i, ok = t.index[*k]; !ok {
			return nil, false
		}
		t.hint = i
	}
	f := &t.slab[i]
	if f.expires <= now {
		t.delete(i)
		return nil, true
	}
	return f, false
}

func (t *flowTable) delete(i int32) {
	delete(t.index, t.slab[i].key)
	t.slab[i] = flow{}
	t.free = append(t.free, i)
}

func (t *flowTable) len() int { return len(t.index) }

// insert adds a flow; the caller has checked the caps.
func (t *flowTable) insert(f flow) *flow {
	if t.index == nil {
		t.index = make(map[flowKey]int32)
	}
	var i int32
	if n := len(t.free); n > 0 {
		i = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		t.slab = append(t.slab, flow{})
		i = int32(len(t.slab) - 1)
	}
	f.used = true
	t.slab[i] = f
	t.index[f.key] = i
	t.hint = i
	return &t.slab[i]
}

// sweep removes expired flows and returns how many it removed.
func (t *flowTable) sweep(now int64) int {
	n := 0
	for i := range t.slab {
		if t.slab[i].used && t.slab[i].expires <= now {
			t.delete(int32(i))
			n++
		}
	}
	return n
}

// clear removes every flow and returns how many there were.
func (t *flowTable) clear() int {
	n := len(t.index)
	t.index, t.slab, t.free = nil, nil, nil
	return n
}

// touch updates a flow's state for a packet travelling in dir and sets its
// expiry.
func (f *flow) touch(p *packet, dir Direction, now int64) {
	if dir != f.origin {
		f.state |= stReplied
	}
	var d time.Duration
	switch {
	case p.proto == protoTCP:
		if p.frag != fragLater {
			if p.tcpFlags&tcpRST != 0 {
				f.state |= stClosed
			}
			if p.tcpFlags&tcpFIN != 0 {
				if dir == Inbound {
					f.state |= stFinIn
				} else {
					f.state |= stFinOut
				}
				if f.state&(stFinIn|stFinOut) == stFinIn|stFinOut {
					f.state |= stClosed
				}
			}
		}
		switch {
		case f.state&stClosed != 0:
			d = tcpClosingTimeout
		case f.state&stReplied != 0:
			d = tcpTimeout
		default:
			d = tcpNewTimeout
		}
	case p.proto == protoUDP:
		d = udpTimeout
	case isICMP(p.proto):
		d = icmpTimeout
	default:
		d = otherTimeout
	}
	f.expires = now + int64(d)
}

// fragEntry remembers an accepted first fragment.
type fragEntry struct {
	src, dst [16]byte
	id       uint32
	proto    uint8
	expires  int64
}

// fragTable is a small per-peer table of accepted first fragments; the
// oldest entry is replaced when it is full. Guarded by the peer's lock.
type fragTable struct {
	e [fragSlots]fragEntry
}

func (t *fragTable) add(p *packet, now int64) {
	slot := 0
	for i := range t.e {
		e := &t.e[i]
		if e.expires > now && e.id == p.fragID && e.proto == p.proto && e.src == p.src && e.dst == p.dst {
			e.expires = now + int64(fragTimeout)
			return
		}
		if e.expires < t.e[slot].expires {
			slot = i
		}
	}
	t.e[slot] = fragEntry{src: p.src, dst: p.dst, id: p.fragID, proto: p.proto, expires: now + int64(fragTimeout)}
}

func (t *fragTable) has(p *packet, now int64) bool {
	for i := range t.e {
		e := &t.e[i]
		if e.expires > now && e.id == p.fragID && e.proto == p.proto && e.src == p.src && e.dst == p.dst {
			return true
		}
	}
	return false
}
