package policy

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query is an offline question for Check: would a new flow of this peer
// pass, and by which rule?
type Query struct {
	Direction Direction
	Peer      PeerInfo
	// Addr is the peer's overlay address for cidr rules; zero means the
	// first of Peer.Addresses (none: cidr rules do not match).
	Addr  netip.Addr
	Proto Proto // ProtoAny asks about a protocol other than tcp, udp or icmp
	Port  uint16
	// Trust is the peer's score; 0 means 1 (full trust), a negative value
	// means a score of 0.
	Trust float64
}

// Decision is Check's answer.
type Decision struct {
	Allowed bool
	Rule    string // label of the deciding rule, e.g. "inbound[3] line 42"
	Reason  string // e.g. "denied by rule ...", "no rule matched (default deny)"
}

// Check answers q against the current rules without touching any state
// (no flows, counters, trust or quarantine).
func (f *Firewall) Check(q Query) Decision {
	rs := f.rules.Load()
	info := q.Peer
	addr := q.Addr
	if !addr.IsValid() && len(info.Addresses) > 0 {
		addr = info.Addresses[0]
	}
	if addr.IsValid() && len(info.Addresses) == 0 {
		info.Addresses = []netip.Addr{addr}
	}
	trust := q.Trust
	switch {
	case trust == 0:
		trust = 1
	case trust < 0:
		trust = 0
	}
	var a16 [16]byte
	if addr.IsValid() {
		a16 = addr.As16()
	}
	pt := rs.buildPeerTable(&info)
	res := pt.eval(q.Direction, uint8(q.Proto), q.Port, false, a16, trust)
	d := Decision{Allowed: res.allow, Reason: rs.describe(res, trust)}
	switch {
	case res.reason == ReasonLowTrust:
		d.Rule = rs.rules[res.trustRule].label
	case res.rule >= 0:
		d.Rule = rs.rules[res.rule].label
	}
	return d
}

// TestResult is the outcome of one `tests:` expectation.
type TestResult struct {
	Test     Test
	Decision Decision
	Pass     bool
	Problem  string // why it failed, "" when it passed
}

// RunTests checks the config's `tests:` expectations against f (normally a
// firewall built from c) and returns one result per test.
func (c *Config) RunTests(f *Firewall) []TestResult {
	out := make([]TestResult, 0, len(c.Tests))
	for _, t := range c.Tests {
		d := f.Check(Query{Direction: t.Direction, Peer: t.Peer, Addr: t.Addr, Proto: t.Proto, Port: t.Port, Trust: trustArg(t.Trust)})
		r := TestResult{Test: t, Decision: d, Pass: d.Allowed == t.Expect}
		if !r.Pass {
			want := "deny"
			if t.Expect {
				want = "allow"
			}
			r.Problem = "line " + strconv.Itoa(t.Line) + ": expected " + want + ", " + d.Reason
		} else if t.Rule != "" && !strings.HasPrefix(d.Rule, t.Rule) {
			r.Pass = false
			r.Problem = "line " + strconv.Itoa(t.Line) + ": expected rule " + t.Rule + ", decided by " + d.Rule + " (" + d.Reason + ")"
		}
		out = append(out, r)
	}
	return out
}

func trustArg(t float64) float64 {
	if t == 0 {
		return -1
	}
	return t
}

// Stats is a snapshot of the firewall's counters.
type Stats struct {
	Accepted    uint64
	Dropped     uint64
	Drops       map[string]uint64            // by reason name, all peers and unattributed
	PeerDrops   map[string]map[string]uint64 // peer name → reason → count (current peers)
	FlowsCut    uint64                       // flows cut by reloads
	Flows       int                          // tracked flows now
	ActivePeers int                          // peers holding at least one flow
	Peers       int                          // admitted peers
	Quarantined int                          // peers in quarantine now
}

// Stats returns the counters. It takes each peer's lock briefly.
func (f *Firewall) Stats() Stats {
	s := Stats{Drops: map[string]uint64{}, PeerDrops: map[string]map[string]uint64{}}
	var drops [numReasons]uint64
	s.Accepted = f.goneAccepted.Load()
	s.FlowsCut = f.goneCut.Load()
	for r := range drops {
		drops[r] = f.goneDrops[r].Load() + f.anonDrops[r].Load()
	}
	now := f.nanos()
	pm := f.peers.Load()
	s.Peers = len(pm.byName)
	for name, pr := range pm.byName {
		pr.mu.Lock()
		s.Accepted += pr.accepted
		s.FlowsCut += pr.cut
		pd := map[string]uint64{}
		for r, n := range pr.drops {
			drops[r] += n
			if n > 0 {
				pd[Reason(r).String()] = n
			}
		}
		if pr.trust.inQuarantine(now) {
			s.Quarantined++
		}
		pr.mu.Unlock()
		s.PeerDrops[name] = pd
	}
	for r, n := range drops {
		s.Dropped += n
		if n > 0 {
			s.Drops[Reason(r).String()] = n
		}
	}
	s.Flows = int(f.totalFlows.Load())
	s.ActivePeers = int(f.activePeers.Load())
	return s
}

// PeerState is one peer's live state.
type PeerState struct {
	Name             string
	Trust            float64
	Quarantined      bool
	QuarantinedUntil time.Time // zero when never quarantined
	Quarantines      uint64
	Penalties        uint64 // trust penalties applied (blocked flows, flood windows)
	Flows            int
	Accepted         uint64
	Dropped          uint64
	Drops            map[string]uint64
}

// PeerLoad is one peer's inbound packet counts since it was admitted (a
// peer removed and admitted again starts from zero).
type PeerLoad struct {
	Name     string
	Accepted uint64 // inbound packets accepted
	Dropped  uint64 // inbound packets dropped, any reason
}

// Loads appends every admitted peer's inbound counts to dst and returns
// it. It takes each peer's lock briefly and allocates only to grow dst, so
// a flood-control loop can call it a few times a second.
func (f *Firewall) Loads(dst []PeerLoad) []PeerLoad {
	for name, pr := range f.peers.Load().byName {
		pr.mu.Lock()
		dst = append(dst, PeerLoad{Name: name, Accepted: pr.inAccepted, Dropped: pr.inDropped})
		pr.mu.Unlock()
	}
	return dst
}

// Peers returns the state of every admitted peer, sorted by name.
func (f *Firewall) Peers() []PeerState {
	rs := f.rules.Load()
	now := f.nanos()
	pm := f.peers.Load()
	out := make([]PeerState, 0, len(pm.byName))
	for name, pr := range pm.byName {
		pr.mu.Lock()
		ps := PeerState{Name: name, Trust: pr.trust.current(now, &rs.trust), Quarantined: pr.trust.inQuarantine(now),
			Quarantines: pr.trust.quarantines, Penalties: pr.trust.penaltiesHit, Flows: pr.flows.len(), Accepted: pr.accepted, Drops: map[string]uint64{}}
		if pr.trust.quarantined != 0 {
			ps.QuarantinedUntil = f.timeOf(pr.trust.quarantined)
		}
		for r, n := range pr.drops {
			ps.Dropped += n
			if n > 0 {
				ps.Drops[Reason(r).String()] = n
			}
		}
		pr.mu.Unlock()
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b PeerState) int { return strings.Compare(a.Name, b.Name) })
	return out
}
