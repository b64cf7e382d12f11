package policy

import "net/netip"

// related reports whether the ICMP error p carries the header of a packet
// of one of pr's tracked flows (so "packet too big" and "unreachable" for a
// live connection pass).
func (f *Firewall) related(pr *peer, pkt []byte, p *packet, dir Direction, now int64) bool {
	off := p.l4 + icmpHeaderLen
	if off >= len(pkt) || off >= p.length {
		return false
	}
	var in packet
	if parse(pkt[off:p.length], &in, true) != parseOK {
		return false
	}
	// The embedded packet travelled the other way.
	k := keyFor(&in, 1-dir)
	fl, _ := pr.flows.lookup(&k, now)
	return fl != nil
}

// penalize lowers pr's trust and raises the quarantine alert if it fell
// below the threshold. pr.mu is held.
func (f *Firewall) penalize(pr *peer, amount float64, rs *ruleset, now int64, ev *pending) {
	before := trustBefore(pr, rs, now)
	if pr.trust.penalize(now, amount, &rs.trust) {
		f.quarantineAlert(pr, rs, now, ev)
	}
	f.trustFell(pr, rs, before, now)
}

// trustBefore returns pr's trust ahead of a penalty when trustFell will
// need it, -1 otherwise (no min_trust rule, or no flow to re-check), so
// that the drop path stays cheap.
func trustBefore(pr *peer, rs *ruleset, now int64) float64 {
	if len(rs.trustLevels) == 0 || pr.flows.len() == 0 {
		return -1
	}
	return pr.trust.current(now, &rs.trust)
}

// trustFell re-checks pr's established flows when its trust just fell
// below a min_trust level of the rules: a flow allowed only by a rule whose
// min_trust the peer no longer meets is cut (EventFlowCut, reason
// low-trust), so a peer losing trust loses the access that required it,
// not only new flows. pr.mu is held; the caller accounts the flow count.
func (f *Firewall) trustFell(pr *peer, rs *ruleset, before float64, now int64) {
	if before < 0 {
		return
	}
	if !rs.crossedTrustLevel(before, pr.trust.current(now, &rs.trust)) {
		return
	}
	for i := range pr.flows.slab {
		fl := &pr.flows.slab[i]
		if fl.used && !f.flowAllowed(pr, rs, fl, now) {
			f.cutFlow(pr, int32(i), now, ReasonLowTrust)
		}
	}
}

func (f *Firewall) quarantineAlert(pr *peer, rs *ruleset, now int64, ev *pending) {
	ev.hasAlert = true
	ev.alert = Event{Time: f.timeOf(now), Kind: EventQuarantine, Peer: pr.label, Direction: Inbound,
		Reason: ReasonQuarantined, Trust: pr.trust.current(now, &rs.trust)}
}

// floodDrop drops for a flood reason and applies the flood penalty.
func (f *Firewall) floodDrop(pr *peer, p *packet, r Reason, rs *ruleset, now int64, ev *pending) Verdict {
	before := -1.0
	if pr.trust.floodPenaltyDue(now) {
		before = trustBefore(pr, rs, now)
	}
	if pr.trust.floodPenalty(now, &rs.trust) {
		f.quarantineAlert(pr, rs, now, ev)
	}
	f.trustFell(pr, rs, before, now)
	return f.dropPeer(pr, p, Inbound, r, -1, rs, now, ev)
}

// dropPeer counts a drop for pr and prepares its event when the limiter
// lets it through. pr.mu is held. It does not allocate.
func (f *Firewall) dropPeer(pr *peer, p *packet, dir Direction, r Reason, rule int32, rs *ruleset, now int64, ev *pending) Verdict {
	pr.drops[r]++
	ok, sup := pr.lim[r].allow(now, eventBurst, int64(eventWindow))
	if !ok {
		return Drop
	}
	ev.hasDrop = true
	fillEvent(&ev.drop, p, dir, r, sup)
	ev.drop.Time = f.timeOf(now)
	ev.drop.Peer = pr.label
	if rule >= 0 && int(rule) < len(rs.rules) {
		ev.drop.Rule = rs.rules[rule].label
	}
	return Drop
}

func fillEvent(e *Event, p *packet, dir Direction, r Reason, sup uint64) {
	*e = Event{Kind: EventDrop, Direction: dir, Proto: p.proto, Reason: r, Suppressed: sup,
		SrcPort: p.srcPort, DstPort: p.dstPort}
	if p.src != ([16]byte{}) || p.dst != ([16]byte{}) {
		e.Src = netip.AddrFrom16(p.src)
		e.Dst = netip.AddrFrom16(p.dst)
		if !p.v6 {
			e.Src, e.Dst = e.Src.Unmap(), e.Dst.Unmap()
		}
	}
}

// dropAnon counts a drop not tied to a peer (malformed, spoofed source).
func (f *Firewall) dropAnon(p *packet, dir Direction, r Reason) Verdict {
	f.anonDrops[r].Add(1)
	now := f.nanos()
	f.anonMu.Lock()
	ok, sup := f.anonLim[r].allow(now, eventBurst, int64(eventWindow))
	f.anonMu.Unlock()
	if ok {
		var ev Event
		fillEvent(&ev, p, dir, r, sup)
		ev.Time = f.timeOf(now)
		f.hub.emit(&ev, now)
	}
	return Drop
}
