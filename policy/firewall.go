package policy

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Verdict is the firewall's decision for one packet. The values match the
// stack package's Verdict (Accept = 0, Drop = 1).
type Verdict uint8

// Verdicts.
const (
	Accept Verdict = iota
	Drop
)

// String returns "accept" or "drop".
func (v Verdict) String() string {
	if v == Accept {
		return "accept"
	}
	return "drop"
}

// PeerInfo is the identity of a peer (or of this node), filled by the node
// from a verified certificate.
type PeerInfo struct {
	Name          string
	Domain        string
	CAName        string
	CAFingerprint string // hex; case and colons are ignored
	Groups        []string
	Attributes    map[string]string
	Addresses     []netip.Addr // overlay addresses (WireGuard AllowedIPs)
	NotBefore     time.Time    // certificate validity; zero = unknown
	NotAfter      time.Time
}

// clone deep-copies info so the caller may reuse its slices and maps.
func (info PeerInfo) clone() PeerInfo {
	info.Groups = slices.Clone(info.Groups)
	info.Addresses = slices.Clone(info.Addresses)
	info.Attributes = maps.Clone(info.Attributes)
	return info
}

// Options are the firewall's non-rule settings.
type Options struct {
	// Now is the clock. When nil the firewall keeps a coarse clock (one
	// goroutine, updated every coarseTick) because time.Now costs 30-60 ns
	// per call on the VMs we measured, a third of the packet budget.
	Now func() time.Time
	// Logger receives rate-limited events; nil logs nothing.
	Logger *slog.Logger
	// Self is this node. When Self.Addresses is set, inbound packets to
	// any other destination are dropped (ReasonNotLocal). Self.Domain is
	// this node's domain: a rule or allow entry that names a host, groups
	// or attributes without domain, ca_name or ca_sha matches only peers
	// of that domain (empty: only peers whose Domain is empty), so that a
	// federated CA cannot issue a name or group that passes a rule meant
	// for this domain's own.
	Self PeerInfo
	// Builtins are rules for gridnet's own traffic (see BuiltinRule).
	Builtins []BuiltinRule
}

// coarseTick is the resolution of the default clock: finer than any
// timeout or bucket window that matters (the shortest burst is a fifth of a
// second), coarse enough to cost nothing. A 1 ms tick cost 1,000 wakeups a
// second per idle node, which added up with 100 nodes in one process.
const coarseTick = 10 * time.Millisecond

// peer is the per-peer state. mu guards everything below it; it is the
// only lock the packet path takes, and only this peer's packets take it.
type peer struct {
	mu   sync.Mutex
	info PeerInfo
	// label names the peer in events and Stats: its name, with
	// "@domain" for a peer of another domain than this node's.
	label    string
	table    *peerTable
	flows    flowTable
	frags    fragTable
	pkts     bucket
	bytes    bucket
	newFlows bucket
	trust    trustState
	blocked  blockedTable
	lim      [numReasons]limiter
	accepted uint64
	drops    [numReasons]uint64
	// inAccepted and inDropped count inbound packets only (Loads),
	// outAccepted and outDropped outbound ones (Peers).
	inAccepted, inDropped   uint64
	outAccepted, outDropped uint64
	cut                     uint64
	removed                 bool
}

// peerKey identifies a peer: a name is unique only within its domain, and
// a federated CA may issue a name this domain uses too.
type peerKey struct{ domain, name string }

// peerMap is an immutable snapshot of the admitted peers.
type peerMap struct {
	byAddr map[[16]byte]*peer
	byID   map[peerKey]*peer
}

// Firewall judges packets. It is safe for concurrent use; see the package
// doc for what it does per packet.
type Firewall struct {
	rules   atomic.Pointer[ruleset]
	peers   atomic.Pointer[peerMap]
	adminMu sync.Mutex // serializes SetPeer, RemovePeer and Reload
	version uint64     // last ruleset version; guarded by adminMu

	self     map[[16]byte]bool // nil: any destination
	selfInfo PeerInfo
	builtins []BuiltinRule

	nowFn func() time.Time
	epoch time.Time
	clock atomic.Int64
	stop  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once

	totalFlows  atomic.Int64
	activePeers atomic.Int64

	hub hub

	anonMu    sync.Mutex // guards anonLim: drops not tied to a peer
	anonLim   [numReasons]limiter
	anonDrops [numReasons]atomic.Uint64
	// Counters of removed peers, kept so totals never go backwards.
	goneAccepted atomic.Uint64
	goneDrops    [numReasons]atomic.Uint64
	goneCut      atomic.Uint64
}

// New compiles cfg (nil = DefaultConfig) and returns a firewall with no
// peers. Call Close when done.
func New(cfg *Config, opts Options) (*Firewall, error) {
	f := &Firewall{nowFn: opts.Now, selfInfo: opts.Self.clone(), builtins: slices.Clone(opts.Builtins)}
	rs, err := compile(cfg, f.builtins, 1, f.selfInfo.Domain)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	f.version = 1
	f.rules.Store(rs)
	f.peers.Store(&peerMap{byAddr: map[[16]byte]*peer{}, byID: map[peerKey]*peer{}})
	if len(opts.Self.Addresses) > 0 {
		f.self = map[[16]byte]bool{}
		for _, a := range opts.Self.Addresses {
			f.self[a.As16()] = true
		}
	}
	f.hub.logger = opts.Logger
	if f.nowFn != nil {
		f.epoch = f.nowFn()
	} else {
		f.epoch = time.Now()
		f.stop = make(chan struct{})
		f.wg.Add(1)
		go f.tick()
	}
	f.hub.epoch = f.epoch
	return f, nil
}

// tick keeps the coarse clock; owned by the Firewall, stopped by Close.
func (f *Firewall) tick() {
	defer f.wg.Done()
	t := time.NewTicker(coarseTick)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
			f.clock.Store(int64(time.Since(f.epoch)))
		}
	}
}

// Close stops the clock goroutine and closes every event subscription. The
// firewall keeps judging packets (with a frozen clock when it owned one).
func (f *Firewall) Close() {
	f.once.Do(func() {
		if f.stop != nil {
			close(f.stop)
			f.wg.Wait()
		}
		f.hub.close()
	})
}

// nanos is the firewall clock: nanoseconds since New.
func (f *Firewall) nanos() int64 {
	if f.nowFn != nil {
		return int64(f.nowFn().Sub(f.epoch))
	}
	return f.clock.Load()
}

func (f *Firewall) timeOf(ns int64) time.Time { return f.epoch.Add(time.Duration(ns)) }

// Events subscribes to the firewall's events with a channel of the given
// size (0 = a default). Delivery never blocks: a full channel loses the
// event and counts it in Subscription.Dropped.
func (f *Firewall) Events(buffer int) *Subscription { return f.hub.subscribe(buffer) }

// SetPeer admits a peer or updates it (certificate renewal). A peer is
// identified by its domain and name. Its addresses are mapped to it (an
// address held by another peer moves to this one), its rule table is
// prepared, and on an update its flows are re-checked.
func (f *Firewall) SetPeer(info PeerInfo) {
	info = info.clone()
	f.adminMu.Lock()
	defer f.adminMu.Unlock()
	old := f.peers.Load()
	rs := f.rules.Load()
	now := f.nanos()
	key := peerKey{info.Domain, info.Name}
	pr := old.byID[key]
	if pr == nil {
		pr = &peer{label: info.Name}
		if info.Domain != f.selfInfo.Domain {
			pr.label = info.Name + "@" + info.Domain
		}
		fl := &rs.flood
		pr.pkts.fill(now, fl.PacketsPerSec, fl.PacketsBurst)
		pr.bytes.fill(now, fl.BytesPerSec, fl.BytesBurst)
		pr.newFlows.fill(now, fl.NewFlowsPerSec, fl.NewFlowsBurst)
		pr.trust.score = 1
		pr.trust.at = now
	}
	pr.mu.Lock()
	pr.info = info
	pr.removed = false
	pr.trust.hasValidity = !info.NotAfter.IsZero() && !info.NotBefore.IsZero()
	if pr.trust.hasValidity {
		pr.trust.notBefore = int64(info.NotBefore.Sub(f.epoch))
		pr.trust.notAfter = int64(info.NotAfter.Sub(f.epoch))
	}
	pr.table = rs.buildPeerTable(&pr.info)
	f.recheckLocked(pr, rs, now)
	pr.mu.Unlock()

	next := &peerMap{byAddr: make(map[[16]byte]*peer, len(old.byAddr)+len(info.Addresses)), byID: maps.Clone(old.byID)}
	for a, p := range old.byAddr {
		if p != pr {
			next.byAddr[a] = p
		}
	}
	for _, a := range info.Addresses {
		next.byAddr[a.As16()] = pr
		next.byAddr[a.Unmap().As16()] = pr
	}
	next.byID[key] = pr
	f.peers.Store(next)
}

// RemovePeer forgets the peer of that domain and name: its addresses stop
// matching, its flows and state are dropped. Its counters stay in the
// totals of Stats.
func (f *Firewall) RemovePeer(domain, name string) {
	f.adminMu.Lock()
	defer f.adminMu.Unlock()
	old := f.peers.Load()
	key := peerKey{domain, name}
	pr := old.byID[key]
	if pr == nil {
		return
	}
	next := &peerMap{byAddr: make(map[[16]byte]*peer, len(old.byAddr)), byID: maps.Clone(old.byID)}
	for a, p := range old.byAddr {
		if p != pr {
			next.byAddr[a] = p
		}
	}
	delete(next.byID, key)
	f.peers.Store(next)

	pr.mu.Lock()
	pr.removed = true
	if n := pr.flows.clear(); n > 0 {
		f.totalFlows.Add(int64(-n))
		f.activePeers.Add(-1)
	}
	f.goneAccepted.Add(pr.accepted)
	for r := range pr.drops {
		f.goneDrops[r].Add(pr.drops[r])
	}
	f.goneCut.Add(pr.cut)
	pr.accepted, pr.drops, pr.cut = 0, [numReasons]uint64{}, 0
	pr.mu.Unlock()
}

// Reload compiles cfg and swaps it in atomically. A bad config is refused
// with its error (naming the line) and the old rules stay. Established flows
// are re-checked against the new rules: those still allowed survive, the
// others are cut (EventFlowCut).
func (f *Firewall) Reload(cfg *Config) error {
	f.adminMu.Lock()
	defer f.adminMu.Unlock()
	rs, err := compile(cfg, f.builtins, f.version+1, f.selfInfo.Domain)
	if err != nil {
		return fmt.Errorf("policy reload: %w", err)
	}
	f.version++
	f.rules.Store(rs)
	now := f.nanos()
	for _, pr := range f.peers.Load().byID {
		pr.mu.Lock()
		pr.table = rs.buildPeerTable(&pr.info)
		f.recheckLocked(pr, rs, now)
		pr.mu.Unlock()
	}
	return nil
}

// recheckLocked re-evaluates every flow of pr that an older ruleset allowed
// and cuts those the current one refuses. pr.mu is held.
func (f *Firewall) recheckLocked(pr *peer, rs *ruleset, now int64) {
	before := pr.flows.len()
	for i := range pr.flows.slab {
		fl := &pr.flows.slab[i]
		if !fl.used || fl.version == rs.version {
			continue
		}
		if !f.flowAllowed(pr, rs, fl, now) {
			f.cutFlow(pr, int32(i), now, ReasonReloadCut)
		}
	}
	f.accountFlows(before, pr.flows.len())
}

// flowAllowed re-evaluates fl in its origin direction and updates its
// version when it is still allowed. pr.mu is held.
func (f *Firewall) flowAllowed(pr *peer, rs *ruleset, fl *flow, now int64) bool {
	pt := pr.tableFor(rs)
	port := fl.key.localPort
	if fl.origin == Outbound {
		port = fl.key.remotePort
	}
	trust := pr.trust.current(now, &rs.trust)
	res := pt.eval(fl.origin, fl.key.proto, port, false, fl.key.remote, trust)
	if !res.allow {
		return false
	}
	fl.version = rs.version
	fl.rule = res.rule
	return true
}

// cutFlow removes slot i, cut for reason (a reload, or trust below a
// rule's min_trust), and emits a rate-limited event.
func (f *Firewall) cutFlow(pr *peer, i int32, now int64, reason Reason) {
	k := pr.flows.slab[i].key
	origin := pr.flows.slab[i].origin
	pr.flows.delete(i)
	pr.cut++
	ok, sup := pr.lim[reason].allow(now, eventBurst, int64(eventWindow))
	if !ok {
		return
	}
	ev := Event{Time: f.timeOf(now), Kind: EventFlowCut, Peer: pr.label, Direction: origin, Proto: k.proto,
		Src: netip.AddrFrom16(k.remote).Unmap(), Dst: netip.AddrFrom16(k.local).Unmap(), SrcPort: k.remotePort,
		DstPort: k.localPort, Reason: reason, Suppressed: sup}
	f.hub.emit(&ev, now)
}

// tableFor returns pr's rule table for rs, building it after a reload.
func (pr *peer) tableFor(rs *ruleset) *peerTable {
	if pr.table == nil || pr.table.rs != rs {
		pr.table = rs.buildPeerTable(&pr.info)
	}
	return pr.table
}

// accountFlows moves the global flow counters by a peer's change.
func (f *Firewall) accountFlows(before, after int) {
	if before == after {
		return
	}
	f.totalFlows.Add(int64(after - before))
	if before == 0 {
		f.activePeers.Add(1)
	} else if after == 0 {
		f.activePeers.Add(-1)
	}
}

// Inbound judges a packet from a peer towards this node. pkt starts at the
// IP header and is neither kept nor modified. Safe for concurrent use; it
// does not allocate.
func (f *Firewall) Inbound(pkt []byte) Verdict { return f.filter(pkt, Inbound) }

// Outbound judges a packet from this node towards a peer.
func (f *Firewall) Outbound(pkt []byte) Verdict { return f.filter(pkt, Outbound) }

// pending holds the events one packet produces, emitted after the peer's
// lock is released.
type pending struct {
	drop, alert       Event
	hasDrop, hasAlert bool
}

func (f *Firewall) filter(pkt []byte, dir Direction) Verdict {
	var p packet
	perr := parse(pkt, &p, false)
	addr := p.src
	if dir == Outbound {
		addr = p.dst
	}
	pr := f.peers.Load().byAddr[addr]
	if perr != parseOK && pr == nil {
		return f.dropAnon(&p, dir, ReasonMalformed)
	}
	if pr == nil {
		return f.dropAnon(&p, dir, ReasonUnknownPeer)
	}
	rs := f.rules.Load()
	now := f.nanos()
	var ev pending
	pr.mu.Lock()
	before := pr.flows.len()
	var v Verdict
	switch {
	case pr.removed:
		v = f.dropPeer(pr, &p, dir, ReasonUnknownPeer, -1, rs, now, &ev)
	case perr != parseOK:
		v = f.dropPeer(pr, &p, dir, ReasonMalformed, -1, rs, now, &ev)
	case dir == Inbound && f.self != nil && !f.self[p.dst]:
		v = f.dropPeer(pr, &p, dir, ReasonNotLocal, -1, rs, now, &ev)
	default:
		v = f.judge(pr, rs, pkt, &p, dir, now, &ev)
	}
	switch {
	case dir == Inbound && v == Accept:
		pr.inAccepted++
	case dir == Inbound:
		pr.inDropped++
	case v == Accept:
		pr.outAccepted++
	default:
		pr.outDropped++
	}
	f.accountFlows(before, pr.flows.len())
	pr.mu.Unlock()
	if ev.hasDrop {
		f.hub.emit(&ev.drop, now)
	}
	if ev.hasAlert {
		f.hub.emit(&ev.alert, now)
	}
	return v
}

// judge decides a parsed packet of pr. pr.mu is held.
func (f *Firewall) judge(pr *peer, rs *ruleset, pkt []byte, p *packet, dir Direction, now int64, ev *pending) Verdict {
	fc := &rs.flood
	if dir == Inbound {
		if pr.trust.inQuarantine(now) {
			return f.dropPeer(pr, p, dir, ReasonQuarantined, -1, rs, now, ev)
		}
		if !pr.pkts.take(now, fc.PacketsPerSec, fc.PacketsBurst, 1) {
			return f.floodDrop(pr, p, ReasonFloodPackets, rs, now, ev)
		}
		if !pr.bytes.take(now, fc.BytesPerSec, fc.BytesBurst, float64(p.length)) {
			return f.floodDrop(pr, p, ReasonFloodBytes, rs, now, ev)
		}
	}
	peerAddr := p.src
	if dir == Outbound {
		peerAddr = p.dst
	}
	if p.frag == fragLater {
		if pr.frags.has(p, now) {
			pr.accepted++
			return Accept
		}
		res := pr.tableFor(rs).eval(dir, p.proto, 0, true, peerAddr, 1)
		if res.allow {
			pr.accepted++
			return Accept
		}
		return f.dropPeer(pr, p, dir, ReasonFragment, res.rule, rs, now, ev)
	}
	if p.icmpError && f.related(pr, pkt, p, dir, now) {
		pr.accepted++
		return Accept
	}
	key := keyFor(p, dir)
	if fl, _ := pr.flows.lookup(&key, now); fl != nil {
		if fl.version == rs.version || f.flowAllowed(pr, rs, fl, now) {
			fl.touch(p, dir, now)
			if p.frag == fragFirst {
				pr.frags.add(p, now)
			}
			pr.accepted++
			return Accept
		}
		// The rules changed and refuse the flow: cut it and judge the
		// packet as a new flow.
		f.cutFlow(pr, pr.flows.index[key], now, ReasonReloadCut)
	}
	trust := 1.0
	if pr.trust.score < 1 || pr.trust.hasValidity {
		trust = pr.trust.current(now, &rs.trust)
	}
	res := pr.tableFor(rs).eval(dir, p.proto, p.dstPort, false, peerAddr, trust)
	if !res.allow {
		if dir == Inbound && pr.chargeBlocked(p, &rs.trust, now) {
			f.penalize(pr, rs.trust.BlockedPenalty, rs, now, ev)
		}
		r := res.rule
		if res.reason == ReasonLowTrust {
			r = res.trustRule
		}
		return f.dropPeer(pr, p, dir, res.reason, r, rs, now, ev)
	}
	if isICMP(p.proto) && !p.icmpEcho {
		// Other ICMP (errors not tied to a flow, neighbour discovery...)
		// is judged per packet and creates no flow.
		pr.accepted++
		return Accept
	}
	if dir == Inbound && !pr.newFlows.take(now, fc.NewFlowsPerSec, fc.NewFlowsBurst, 1) {
		return f.floodDrop(pr, p, ReasonFloodNewFlows, rs, now, ev)
	}
	if r := f.admitFlow(pr, fc, now); r != ReasonNone {
		return f.dropPeer(pr, p, dir, r, -1, rs, now, ev)
	}
	fl := pr.flows.insert(flow{key: key, version: rs.version, rule: res.rule, origin: dir})
	fl.touch(p, dir, now)
	if p.frag == fragFirst {
		pr.frags.add(p, now)
	}
	pr.accepted++
	return Accept
}

// chargeBlocked reports whether a blocked inbound new flow p costs pr
// trust: not an ICMP echo unless the config says so, and each (proto,
// port) once per window. pr.mu is held.
func (pr *peer) chargeBlocked(p *packet, cfg *TrustConfig, now int64) bool {
	if p.icmpEcho && !cfg.ICMPPenalty {
		return false
	}
	return pr.blocked.charge(blockedKey(p), now, cfg.BlockedWindow)
}

// admitFlow checks the flow caps for one more flow of pr, sweeping expired
// flows when due. pr.mu is held.
func (f *Firewall) admitFlow(pr *peer, fc *FloodConfig, now int64) Reason {
	t := &pr.flows
	if now >= t.nextSweep {
		t.sweep(now)
		t.nextSweep = now + int64(sweepInterval)
	}
	n := t.len()
	if n >= fc.MaxFlowsPerPeer {
		if now-t.lastCap < int64(capSweepInterval) && t.lastCap != 0 {
			return ReasonFlowCapPeer
		}
		t.lastCap = now
		t.sweep(now)
		if n = t.len(); n >= fc.MaxFlowsPerPeer {
			return ReasonFlowCapPeer
		}
	}
	total := int(f.totalFlows.Load())
	if total >= fc.MaxFlows {
		return ReasonFlowCapGlobal
	}
	if total >= fc.MaxFlows/nearFullDen*nearFullNum {
		active := max(int(f.activePeers.Load()), 1)
		if n > 0 && n >= fc.MaxFlows/active {
			return ReasonFlowCapGlobal
		}
	}
	return ReasonNone
}
