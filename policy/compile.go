package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// Direction is the direction of a packet or a rule list.
type Direction uint8

// Directions.
const (
	Inbound  Direction = iota // from a peer towards this node
	Outbound                  // from this node towards a peer
)

// String returns "inbound" or "outbound".
func (d Direction) String() string {
	if d == Outbound {
		return "outbound"
	}
	return "inbound"
}

// Protocol classes of the index: a rule with proto any is put in all four.
const (
	classTCP = iota
	classUDP
	classICMP
	classOther
	numClasses
)

func classOf(proto uint8) int {
	switch proto {
	case protoTCP:
		return classTCP
	case protoUDP:
		return classUDP
	case protoICMP, protoICMPv6:
		return classICMP
	}
	return classOther
}

// BuiltinRule is a rule the node adds for gridnet's own overlay traffic
// (e.g. gossip). It allows every admitted peer, in both directions, on one
// proto/port; it is evaluated before the user's rules, so a user's deny
// cannot remove it by accident, and it is still subject to flood control.
type BuiltinRule struct {
	Name  string
	Proto Proto
	Port  uint16
}

// crule is a compiled rule.
type crule struct {
	dir      Direction
	idx      int // index in its direction's list (-1 for builtins)
	order    int32
	action   Action
	proto    Proto
	port     PortSpec
	service  int // -1 when the rule names no service
	priority int
	match    cmatch
	label    string
}

// cmatch is a compiled identity match.
type cmatch struct {
	// local: the match names a host, groups or attributes and none of
	// domain, ca_name and ca_sha, so it holds only for peers of this
	// node's domain (names and groups are only meaningful within the
	// domain whose CA issued them).
	local    bool
	host     string // "" or "any" = any host
	groups   bitset // required groups, all
	cidr     netip.Prefix
	caName   string
	caSHA    string
	domain   string
	attr     map[string]string
	minTrust float64
}

// cservice is a compiled service.
type cservice struct {
	name  string
	line  int
	proto Proto
	port  PortSpec
	allow []cmatch
}

// ruleset is an immutable compiled configuration, swapped atomically.
type ruleset struct {
	version       uint64
	cfg           *Config
	rules         []crule // builtins first, then inbound, then outbound
	services      []cservice
	groupBit      map[string]int
	localDomain   string // this node's domain (Options.Self.Domain)
	outboundAllow bool   // no outbound section: outbound default allow
	trust         TrustConfig
	flood         FloodConfig
	// trustLevels are the distinct min_trust values of the allow rules and
	// service allow lists, ascending: a peer whose trust falls below one
	// has its established flows re-checked.
	trustLevels []float64
}

// addTrustLevel records a min_trust value (0: none).
func (rs *ruleset) addTrustLevel(t float64) {
	if t > 0 && !slices.Contains(rs.trustLevels, t) {
		rs.trustLevels = append(rs.trustLevels, t)
	}
}

// crossedTrustLevel reports whether trust went from before to below one of
// the ruleset's min_trust levels that before satisfied.
func (rs *ruleset) crossedTrustLevel(before, after float64) bool {
	for _, l := range rs.trustLevels {
		if before >= l && after < l {
			return true
		}
	}
	return false
}

// bitset is a small set of group indexes.
type bitset []uint64

func (b bitset) has(i int) bool { return i/64 < len(b) && b[i/64]&(1<<(i%64)) != 0 }

func (b *bitset) set(i int) {
	for len(*b) <= i/64 {
		*b = append(*b, 0)
	}
	(*b)[i/64] |= 1 << (i % 64)
}

// covers reports whether every bit of want is in b.
func (b bitset) covers(want bitset) bool {
	for i, w := range want {
		if w == 0 {
			continue
		}
		if i >= len(b) || b[i]&w != w {
			return false
		}
	}
	return true
}

// compile validates cfg and builds the ruleset with the given version for
// a node of localDomain.
func compile(cfg *Config, builtins []BuiltinRule, version uint64, localDomain string) (*ruleset, error) {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rs := &ruleset{cfg: cfg, groupBit: map[string]int{}, localDomain: localDomain, outboundAllow: !cfg.OutboundSet, trust: cfg.Trust, flood: cfg.Flood}
	svcIdx := map[string]int{}
	for _, s := range cfg.Services {
		cs := cservice{name: s.Name, line: s.Line, proto: s.Proto, port: s.Port}
		for _, m := range s.Allow {
			cs.allow = append(cs.allow, rs.compileMatch(&m))
		}
		svcIdx[s.Name] = len(rs.services)
		rs.services = append(rs.services, cs)
	}
	for i, b := range builtins {
		for _, d := range []Direction{Inbound, Outbound} {
			rs.rules = append(rs.rules, crule{dir: d, idx: -1 - i, action: Allow, proto: b.Proto,
				port: PortSpec{From: b.Port, To: b.Port, Any: b.Port == 0}, service: -1,
				match: cmatch{host: "any"}, label: "builtin " + b.Name})
		}
	}
	for _, d := range []struct {
		dir   Direction
		rules []Rule
	}{{Inbound, cfg.Inbound}, {Outbound, cfg.Outbound}} {
		for i := range d.rules {
			r := &d.rules[i]
			cr := crule{dir: d.dir, idx: i, action: r.Action, proto: r.Proto, port: r.Port, service: -1,
				priority: r.Priority, match: rs.compileMatch(&r.Match), label: ruleLabel(d.dir, i, r)}
			if r.Service != "" {
				si := svcIdx[r.Service]
				cr.service = si
				cr.proto, cr.port = rs.services[si].proto, rs.services[si].port
			}
			rs.rules = append(rs.rules, cr)
		}
	}
	// Evaluation order: builtins, then by priority (higher first), deny
	// before allow, then file order.
	ord := make([]int, len(rs.rules))
	for i := range ord {
		ord[i] = i
	}
	sort.SliceStable(ord, func(a, b int) bool {
		ra, rb := &rs.rules[ord[a]], &rs.rules[ord[b]]
		if (ra.idx < 0) != (rb.idx < 0) {
			return ra.idx < 0
		}
		if ra.priority != rb.priority {
			return ra.priority > rb.priority
		}
		return ra.action == Deny && rb.action == Allow
	})
	for o, i := range ord {
		rs.rules[i].order = int32(o)
	}
	for _, r := range rs.rules {
		rs.addTrustLevel(r.match.minTrust)
	}
	for _, sv := range rs.services {
		for _, m := range sv.allow {
			rs.addTrustLevel(m.minTrust)
		}
	}
	slices.Sort(rs.trustLevels)
	rs.version = version
	return rs, nil
}

func ruleLabel(d Direction, i int, r *Rule) string {
	s := fmt.Sprintf("%s[%d]", d, i)
	if r.Line > 0 {
		s += fmt.Sprintf(" line %d", r.Line)
	}
	if r.Name != "" {
		s += " (" + r.Name + ")"
	}
	return s
}

func (rs *ruleset) compileMatch(m *Match) cmatch {
	cm := cmatch{host: m.Host, cidr: m.CIDR, caName: m.CAName, caSHA: normFingerprint(m.CASHA), domain: m.Domain, attr: m.Attr, minTrust: m.MinTrust}
	cm.local = m.namesLocal()
	for _, g := range m.Groups {
		bit, ok := rs.groupBit[g]
		if !ok {
			bit = len(rs.groupBit)
			rs.groupBit[g] = bit
		}
		cm.groups.set(bit)
	}
	return cm
}

// namesLocal reports whether m's names only make sense in this node's
// domain: it names a host (not "any"), groups or attributes, and no
// domain, ca_name or ca_sha that would say whose.
func (m *Match) namesLocal() bool {
	named := (m.Host != "" && m.Host != "any") || len(m.Groups) > 0 || len(m.Attr) > 0
	return named && m.Domain == "" && m.CAName == "" && m.CASHA == ""
}

// peerIdent is a peer's identity prepared for one ruleset: its groups as a
// bitset over the ruleset's group names, and whether it is of this node's
// domain.
type peerIdent struct {
	info   *PeerInfo
	groups bitset
	caSHA  string
	local  bool
}

func (rs *ruleset) ident(info *PeerInfo) peerIdent {
	id := peerIdent{info: info, caSHA: normFingerprint(info.CAFingerprint), local: info.Domain == rs.localDomain}
	for _, g := range info.Groups {
		if bit, ok := rs.groupBit[g]; ok {
			id.groups.set(bit)
		}
	}
	return id
}

// matchIdent reports whether the static identity part of m matches (cidr
// and trust are checked per packet). A cidr that holds none of the peer's
// addresses fails here already.
func (m *cmatch) matchIdent(id *peerIdent) bool {
	if m.local && !id.local {
		return false
	}
	if m.host != "" && m.host != "any" && m.host != id.info.Name {
		return false
	}
	if !id.groups.covers(m.groups) {
		return false
	}
	if m.caName != "" && m.caName != id.info.CAName {
		return false
	}
	if m.caSHA != "" && m.caSHA != id.caSHA {
		return false
	}
	if m.domain != "" && m.domain != id.info.Domain {
		return false
	}
	for k, v := range m.attr {
		if pv, ok := id.info.Attributes[k]; !ok || pv != v {
			return false
		}
	}
	if m.cidr.IsValid() && len(id.info.Addresses) > 0 {
		in := false
		for _, a := range id.info.Addresses {
			in = in || m.cidr.Contains(a)
		}
		if !in {
			return false
		}
	}
	return true
}

// matchPacket checks the per-packet parts: the peer's address against cidr.
func (m *cmatch) matchAddr(addr [16]byte) bool {
	if !m.cidr.IsValid() {
		return true
	}
	a := netip.AddrFrom16(addr).Unmap()
	return m.cidr.Contains(a)
}

// protoTable indexes the rules of one protocol class by port: anyPort
// rules, fragment rules and port segments, each list sorted by order.
type protoTable struct {
	anyPort []int32
	frag    []int32
	starts  []uint16  // sorted segment starts; segment i is [starts[i], starts[i+1])
	segs    [][]int32 // candidates per segment
}

// peerTable is the part of a ruleset that matches one peer's identity,
// indexed by direction, protocol class and port.
type peerTable struct {
	rs       *ruleset
	dirs     [2][numClasses]protoTable
	svcAllow [][]int32 // per service: indexes of allow entries whose identity matches
}

func (rs *ruleset) buildPeerTable(info *PeerInfo) *peerTable {
	return rs.buildIdentTable(rs.ident(info))
}

// buildIdentTable builds the peer table of an identity.
func (rs *ruleset) buildIdentTable(id peerIdent) *peerTable {
	pt := &peerTable{rs: rs, svcAllow: make([][]int32, len(rs.services))}
	for si := range rs.services {
		for ai := range rs.services[si].allow {
			if rs.services[si].allow[ai].matchIdent(&id) {
				pt.svcAllow[si] = append(pt.svcAllow[si], int32(ai))
			}
		}
	}
	type rng struct {
		from, to uint16
		r        int32
	}
	var ranges [2][numClasses][]rng
	for i := range rs.rules {
		r := &rs.rules[i]
		if !r.match.matchIdent(&id) {
			continue
		}
		for c := 0; c < numClasses; c++ {
			if r.proto != ProtoAny && classOf(uint8(r.proto)) != c {
				continue
			}
			t := &pt.dirs[r.dir][c]
			switch {
			case r.port.Any:
				t.anyPort = append(t.anyPort, int32(i))
			case r.port.Fragment:
				t.frag = append(t.frag, int32(i))
			case c == classICMP || c == classOther:
				// Port-less protocols match only port any, unless the
				// rule names icmp itself (a service declared with a port).
				if r.proto == ProtoICMP {
					t.anyPort = append(t.anyPort, int32(i))
				}
			default:
				ranges[r.dir][c] = append(ranges[r.dir][c], rng{r.port.From, r.port.To, int32(i)})
			}
		}
	}
	byOrder := func(a, b int32) int { return int(rs.rules[a].order) - int(rs.rules[b].order) }
	for d := 0; d < 2; d++ {
		for c := 0; c < numClasses; c++ {
			t := &pt.dirs[d][c]
			slices.SortFunc(t.anyPort, byOrder)
			slices.SortFunc(t.frag, byOrder)
			rl := ranges[d][c]
			if len(rl) == 0 {
				continue
			}
			// Segment boundaries: every range start and every end+1.
			var bounds []uint16
			for _, x := range rl {
				bounds = append(bounds, x.from)
				if x.to < 65535 {
					bounds = append(bounds, x.to+1)
				}
			}
			slices.Sort(bounds)
			bounds = slices.Compact(bounds)
			t.starts = bounds
			t.segs = make([][]int32, len(bounds))
			for _, x := range rl {
				lo, _ := slices.BinarySearch(bounds, x.from)
				for s := lo; s < len(bounds) && bounds[s] <= x.to; s++ {
					t.segs[s] = append(t.segs[s], x.r)
				}
			}
			for s := range t.segs {
				slices.SortFunc(t.segs[s], byOrder)
			}
		}
	}
	return pt
}

// segment returns the candidate list for port.
func (t *protoTable) segment(port uint16) []int32 {
	n := len(t.starts)
	if n == 0 || port < t.starts[0] {
		return nil
	}
	// Largest i with starts[i] <= port.
	lo, hi := 0, n
	for hi-lo > 1 {
		mid := int(uint(lo+hi) >> 1)
		if t.starts[mid] <= port {
			lo = mid
		} else {
			hi = mid
		}
	}
	return t.segs[lo]
}

// evalResult is the outcome of a rule evaluation.
type evalResult struct {
	rule      int32 // deciding rule, -1 if none
	allow     bool
	trustRule int32 // first allow rule skipped only for low trust, -1 if none
	reason    Reason
	service   int // service whose allow list refused, -1 if none
}

// eval finds the first rule in evaluation order that matches. addr is the
// peer's address in the packet, trust the peer's current score.
func (pt *peerTable) eval(dir Direction, proto uint8, port uint16, frag bool, addr [16]byte, trust float64) evalResult {
	t := &pt.dirs[dir][classOf(proto)]
	a := t.anyPort
	var b []int32
	if frag {
		b = t.frag
	} else if proto == protoTCP || proto == protoUDP {
		b = t.segment(port)
	}
	res := evalResult{rule: -1, trustRule: -1, service: -1}
	rules := pt.rs.rules
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		var r int32
		if j >= len(b) || (i < len(a) && rules[a[i]].order < rules[b[j]].order) {
			r = a[i]
			i++
		} else {
			r = b[j]
			j++
		}
		cr := &rules[r]
		if !cr.match.matchAddr(addr) {
			continue
		}
		if cr.match.minTrust > 0 && trust < cr.match.minTrust {
			if res.trustRule < 0 {
				res.trustRule = r
			}
			continue
		}
		res.rule = r
		res.allow = cr.action == Allow
		if !res.allow {
			res.reason = ReasonRuleDeny
		}
		break
	}
	if res.rule < 0 {
		if dir == Outbound && pt.rs.outboundAllow {
			res.allow = true
			return res
		}
		res.reason = ReasonDefaultDeny
		if res.trustRule >= 0 {
			res.reason = ReasonLowTrust
		}
		return res
	}
	if res.allow && dir == Inbound && !frag && len(pt.rs.services) > 0 && rules[res.rule].idx >= 0 {
		if s := pt.serviceRefuses(proto, port, addr, trust); s >= 0 {
			res.allow = false
			res.service = s
			res.reason = ReasonServiceDeny
		}
	}
	return res
}

// serviceRefuses returns the index of a service covering proto/port whose
// allow list does not admit the peer, or -1.
func (pt *peerTable) serviceRefuses(proto uint8, port uint16, addr [16]byte, trust float64) int {
	for si := range pt.rs.services {
		s := &pt.rs.services[si]
		if len(s.allow) == 0 || !s.covers(proto, port) {
			continue
		}
		ok := false
		for _, ai := range pt.svcAllow[si] {
			m := &s.allow[ai]
			if m.matchAddr(addr) && (m.minTrust == 0 || trust >= m.minTrust) {
				ok = true
				break
			}
		}
		if !ok {
			return si
		}
	}
	return -1
}

func (s *cservice) covers(proto uint8, port uint16) bool {
	if s.proto != ProtoAny && classOf(uint8(s.proto)) != classOf(proto) {
		return false
	}
	if s.port.Any || classOf(proto) == classICMP {
		return true
	}
	if proto != protoTCP && proto != protoUDP {
		return false
	}
	return port >= s.port.From && port <= s.port.To
}

// describe explains r for Decision.Reason.
func (rs *ruleset) describe(res evalResult, trust float64) string {
	switch res.reason {
	case ReasonRuleDeny:
		return "denied by rule " + rs.rules[res.rule].label
	case ReasonServiceDeny:
		s := &rs.services[res.service]
		return fmt.Sprintf("allowed by rule %s but refused by the allow list of service %s (line %d)", rs.rules[res.rule].label, s.name, s.line)
	case ReasonLowTrust:
		r := &rs.rules[res.trustRule]
		return fmt.Sprintf("trust %.2f below %.2f required by rule %s", trust, r.match.minTrust, r.label)
	case ReasonDefaultDeny:
		return "no rule matched (default deny)"
	}
	if res.rule < 0 {
		return "no outbound rules (default allow)"
	}
	return "allowed by rule " + rs.rules[res.rule].label
}

// String for a Match, used in docs and debugging.
func (m Match) String() string {
	var parts []string
	if m.Host != "" {
		parts = append(parts, "host="+m.Host)
	}
	if len(m.Groups) > 0 {
		parts = append(parts, "groups="+strings.Join(m.Groups, ","))
	}
	if m.CIDR.IsValid() {
		parts = append(parts, "cidr="+m.CIDR.String())
	}
	if m.Domain != "" {
		parts = append(parts, "domain="+m.Domain)
	}
	for _, k := range sortedKeys(m.Attr) {
		parts = append(parts, "attr."+k+"="+m.Attr[k])
	}
	return strings.Join(parts, " ")
}
