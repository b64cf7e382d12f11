package policy

import (
	"fmt"
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
	// Peer is the peer's identity. An empty Peer.Domain means this node's
	// domain (Options.Self.Domain).
	Peer PeerInfo
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
	// Domain is the peer's domain as the rule in Rule matched it: with
	// Scope ScopeLocal this node's domain, with ScopeNamed the peer's
	// domain (the rule names it, or its CA); "" with ScopeAny.
	Domain string
	// Scope says which domains the rule in Rule matches (ScopeAny when
	// Rule is empty).
	Scope DomainScope
	// LocalDomain is this node's domain (Options.Self.Domain).
	LocalDomain string
	// Hint explains a denial that a host, groups or attr rule would have
	// allowed had the peer been of this node's domain; "" otherwise.
	Hint string
}

// DomainScope says which peer domains a rule matches.
type DomainScope uint8

// Domain scopes.
const (
	// ScopeAny: the rule names no host, groups or attributes (host: any,
	// cidr), or no rule decided; it matches peers of every domain.
	ScopeAny DomainScope = iota
	// ScopeLocal: the rule names a host, groups or attributes and no
	// domain, ca_name or ca_sha; it matches only this node's domain.
	ScopeLocal
	// ScopeNamed: the rule names the domain, ca_name or ca_sha it matches.
	ScopeNamed
)

// String returns "any domain", "this node's domain" or "named by the
// rule".
func (s DomainScope) String() string {
	switch s {
	case ScopeLocal:
		return "this node's domain"
	case ScopeNamed:
		return "named by the rule"
	}
	return "any domain"
}

// Check answers q against the current rules without touching any state
// (no flows, counters, trust or quarantine).
func (f *Firewall) Check(q Query) Decision {
	rs := f.rules.Load()
	info := q.Peer
	if info.Domain == "" {
		info.Domain = rs.localDomain
	}
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
	id := rs.ident(&info)
	res := rs.buildIdentTable(id).eval(q.Direction, uint8(q.Proto), q.Port, false, a16, trust)
	d := Decision{Allowed: res.allow, Reason: rs.describe(res, trust), LocalDomain: rs.localDomain}
	decider := res.rule
	if res.reason == ReasonLowTrust {
		decider = res.trustRule
	}
	if decider >= 0 {
		d.Rule = rs.rules[decider].label
		m := &rs.rules[decider].match
		switch {
		case m.local:
			d.Domain, d.Scope = rs.localDomain, ScopeLocal
		case m.domain != "" || m.caName != "" || m.caSHA != "":
			d.Domain, d.Scope = info.Domain, ScopeNamed
		}
	}
	if !res.allow && !id.local {
		// Would a rule scoped to this node's domain have allowed it?
		id.local = true
		as := rs.buildIdentTable(id).eval(q.Direction, uint8(q.Proto), q.Port, false, a16, trust)
		switch {
		case as.allow && res.reason == ReasonServiceDeny && as.rule == res.rule:
			sv := &rs.services[res.service]
			d.Hint = fmt.Sprintf("the allow list of service %s (line %d) would admit it, but its entries that name a host, groups or attributes "+
				"without domain, ca_name or ca_sha match only this node's domain %s; the peer's domain is %s (add domain: %s to the entry to admit it)",
				sv.name, sv.line, quoteDomain(rs.localDomain), quoteDomain(info.Domain), info.Domain)
		case as.allow && as.rule >= 0:
			d.Hint = fmt.Sprintf("rule %s would allow it, but it names a host, groups or attributes without domain, ca_name or ca_sha, "+
				"so it matches only this node's domain %s; the peer's domain is %s (add domain: %s to the rule to admit it)",
				rs.rules[as.rule].label, quoteDomain(rs.localDomain), quoteDomain(info.Domain), info.Domain)
		}
	}
	return d
}

// quoteDomain names a domain in a message, or says it is unknown.
func quoteDomain(d string) string {
	if d == "" {
		return "(unknown)"
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
			if d.Hint != "" {
				r.Problem += "; " + d.Hint
			}
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
	PeerDrops   map[string]map[string]uint64 // peer name (name@domain for another domain) → reason → count (current peers)
	FlowsCut    uint64                       // flows cut by reloads
	Flows       int                          // tracked flows now
	ActivePeers int                          // peers holding at least one flow
	Peers       int                          // admitted peers
	Quarantined int                          // peers in quarantine now
}

// Stats returns the counters. It takes each peer's lock briefly.
func (f *Firewall) Stats() Stats {
	s := Stats{Drops: map[string]uint64{}, PeerDrops: map[string]map[string]uint64{}}
	// RemovePeer moves a peer's counts into the gone totals after it took
	// the peer out of the table; under adminMu this sees either both
	// before or both after, never a dip.
	f.adminMu.Lock()
	defer f.adminMu.Unlock()
	var drops [numReasons]uint64
	s.Accepted = f.goneAccepted.Load()
	s.FlowsCut = f.goneCut.Load()
	for r := range drops {
		drops[r] = f.goneDrops[r].Load() + f.anonDrops[r].Load()
	}
	now := f.nanos()
	pm := f.peers.Load()
	s.Peers = len(pm.byID)
	for _, pr := range pm.byID {
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
		s.PeerDrops[pr.label] = pd
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
	Domain           string
	Trust            float64
	Quarantined      bool
	QuarantinedUntil time.Time // zero when never quarantined
	Quarantines      uint64
	Penalties        uint64 // trust penalties applied (blocked flows, flood windows)
	Flows            int
	Accepted         uint64
	Dropped          uint64
	Drops            map[string]uint64
	// InAccepted, InDropped, OutAccepted and OutDropped split the
	// peer's packets by direction and verdict (Accepted and Dropped
	// are their sums).
	InAccepted, InDropped, OutAccepted, OutDropped uint64
}

// PeerLoad is one peer's inbound packet counts since it was admitted (a
// peer removed and admitted again starts from zero).
type PeerLoad struct {
	Name     string
	Domain   string
	Accepted uint64 // inbound packets accepted
	Dropped  uint64 // inbound packets dropped, any reason
}

// Loads appends every admitted peer's inbound counts to dst and returns
// it. It takes each peer's lock briefly and allocates only to grow dst, so
// a flood-control loop can call it a few times a second.
func (f *Firewall) Loads(dst []PeerLoad) []PeerLoad {
	for key, pr := range f.peers.Load().byID {
		pr.mu.Lock()
		dst = append(dst, PeerLoad{Name: key.name, Domain: key.domain, Accepted: pr.inAccepted, Dropped: pr.inDropped})
		pr.mu.Unlock()
	}
	return dst
}

// Peers returns the state of every admitted peer, sorted by name and
// domain.
func (f *Firewall) Peers() []PeerState {
	rs := f.rules.Load()
	now := f.nanos()
	pm := f.peers.Load()
	out := make([]PeerState, 0, len(pm.byID))
	for key, pr := range pm.byID {
		pr.mu.Lock()
		ps := PeerState{Name: key.name, Domain: key.domain, Trust: pr.trust.current(now, &rs.trust), Quarantined: pr.trust.inQuarantine(now),
			Quarantines: pr.trust.quarantines, Penalties: pr.trust.penaltiesHit, Flows: pr.flows.len(), Accepted: pr.accepted, Drops: map[string]uint64{},
			InAccepted: pr.inAccepted, InDropped: pr.inDropped, OutAccepted: pr.outAccepted, OutDropped: pr.outDropped}
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
	slices.SortFunc(out, func(a, b PeerState) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Domain, b.Domain)
	})
	return out
}
