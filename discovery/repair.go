package discovery

// Repair: the periodic loop that pulls missing records, joins
// members memberlist has not reported, reconnects to dead members, retries
// the seeds and forgets members gone for long.

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"
)

// maintain runs the repair loop every repairInterval:
//   - record repair: a live member whose metadata advertises a newer record
//     than held (for longer than recordGrace, so gossip had its chance) is
//     pulled from; a record whose owner memberlist never reported is
//     joined through the record's gossip address;
//   - reconnect: one random dead member (not left) per reconnectInterval,
//     for reconnectTimeout, so partitions heal without an operator;
//   - seeds: when no member is alive, the Join seeds are retried with
//     backoff;
//   - members gone for longer than reconnectTimeout are forgotten.
func (d *Discovery) maintain() {
	defer d.wg.Done()
	tick := time.NewTicker(d.tun.repairInterval)
	defer tick.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-tick.C:
		}
		for _, a := range d.repairTargets(time.Now()) {
			d.requestSync(a)
		}
	}
}

// repairTargets is one tick of maintain: the exchanges to request now
// (at most maxSyncsPerTick pulls and joins, plus a reconnect and a seed
// retry). It also forgets members gone for too long and queues OnLeave
// checks for members memberlist never reported.
func (d *Discovery) repairTargets(now time.Time) []syncRequest {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.left {
		return nil
	}
	// The incarnations let through (guard.go) are kept for members only.
	for name := range d.incs {
		if _, ok := d.members[name]; !ok && name != d.self.Name {
			delete(d.incs, name)
		}
	}
	var stale, unknown, dead []netip.AddrPort
	alive := 0
	for name, m := range d.members {
		switch {
		case m.state == StateAlive:
			alive++
			if (!m.hasRec || m.metaVersion > m.rec.Version) && now.Sub(m.metaSeen) >= d.tun.recordGrace {
				stale = append(stale, m.gossip)
			}
		case !m.inML && now.Sub(m.updated) > d.tun.reconnectTimeout:
			delete(d.members, name)
		case !m.inML:
			if m.hasRec && now.Sub(m.updated) >= d.tun.recordGrace {
				unknown = append(unknown, m.gossip)
			}
			// The node may have a tunnel to it from its record, and no
			// death verdict will ever come for a member memberlist does
			// not know (the join above fails if it died): let the node
			// check it.
			if m.hasRec && now.Sub(m.updated) >= d.tun.unseenAfter && now.Sub(m.unseenCheck) >= d.tun.unseenAfter && d.cfg.OnLeave != nil {
				m.unseenCheck, m.leaveNotified = now, true
				name := name
				d.events.push(leaveEvent(name), func() { d.cfg.OnLeave(name, true) })
			}
		case now.Sub(m.stateChange) > d.tun.reconnectTimeout:
			delete(d.members, name)
		case m.state == StateDead:
			dead = append(dead, m.gossip)
		}
	}
	out := make([]syncRequest, 0, d.tun.maxSyncsPerTick+2)
	add := func(r syncRequest) {
		if len(out) < d.tun.maxSyncsPerTick && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	// A member whose record is missing is asked for it (and for every
	// other record missing: one pull names them all). A record whose owner
	// memberlist never reported is joined through: memberlist then learns
	// the owner too. A member without a tunnel yet is not reachable, so a
	// reachable member is asked instead: it has gossip's copy, or will.
	var relays []netip.AddrPort
	reach := func(a netip.AddrPort) (netip.AddrPort, bool) {
		if d.reachableLocked(a) {
			return a, true
		}
		if relays == nil {
			relays = d.reachableAliveLocked()
		}
		if len(relays) == 0 {
			return a, false
		}
		a, relays = relays[0], relays[1:]
		return a, true
	}
	// A member memberlist has not reported is out of failure detection's
	// sight until joined: one such join a tick goes first, so that it does
	// not wait behind a long run of missing records; pulls, then further
	// joins, fill the rest.
	rand.Shuffle(len(stale), func(i, j int) { stale[i], stale[j] = stale[j], stale[i] })
	rand.Shuffle(len(unknown), func(i, j int) { unknown[i], unknown[j] = unknown[j], unknown[i] })
	candidates := make([]syncRequest, 0, len(stale)+len(unknown))
	if len(unknown) > 0 {
		candidates = append(candidates, syncRequest{addr: unknown[0]})
		unknown = unknown[1:]
	}
	for _, a := range stale {
		candidates = append(candidates, syncRequest{addr: a, pull: true})
	}
	for _, a := range unknown {
		candidates = append(candidates, syncRequest{addr: a})
	}
	for _, r := range candidates {
		if len(out) == d.tun.maxSyncsPerTick {
			break
		}
		if a, ok := reach(r.addr); ok {
			r.addr = a
			add(r)
		}
	}
	dead = slices.DeleteFunc(dead, func(a netip.AddrPort) bool { return !d.reachableLocked(a) })
	if len(dead) > 0 && now.Sub(d.lastRecon) >= d.tun.reconnectInterval {
		d.lastRecon = now
		out = append(out, syncRequest{addr: dead[rand.N(len(dead))]})
	}
	if alive == 0 && len(d.seeds) > 0 && !now.Before(d.seedNext) {
		out = append(out, syncRequest{addr: d.seeds[rand.N(len(d.seeds))]})
		d.seedNext = now.Add(jitter(d.seedWait))
		d.seedWait = min(2*d.seedWait, d.tun.joinBackoffMax)
	} else if alive > 0 {
		d.seedWait = d.tun.joinBackoffMin
	}
	return out
}
