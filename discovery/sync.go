package discovery

// Syncs: push/pull state (LocalState, MergeRemoteState, mergeState),
// the queued exchanges with members (push/pulls and pulls of missing
// records, and the answers to other members' pulls), the settle syncs
// after a join, and which members can be synced with (Config.Reachable).

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
)

// LocalState encodes the state for a push/pull: own record first, the
// others in random order (so a state trimmed at MaxStateSize carries a
// different subset each time), the newest CRL, and the leave notices of
// members that left but are still in the table. Every record and notice
// goes as its owner signed it.
func (g *delegate) LocalState(join bool) []byte {
	d := (*Discovery)(g)
	now := time.Now()
	d.mu.Lock()
	s := state{from: d.self.Name, crl: d.crl}
	s.entries = make([]entry, 0, len(d.members)+1)
	s.entries = append(s.entries, d.selfEntry)
	for _, m := range d.members {
		if m.hasRec {
			s.entries = append(s.entries, entry{rec: m.rec, gossip: m.recGossip, raw: m.raw})
		}
		// Only notices young enough that every receiver still takes them
		// (maxLeaveAge): an older one would be refused as a replay.
		if m.leaving && m.leaveRaw != nil && now.Sub(m.leaveAt) < maxLeaveAge/2 && len(s.leaves) < maxStateLeaves {
			s.leaves = append(s.leaves, m.leaveRaw)
		}
	}
	d.mu.Unlock()
	rest := s.entries[1:]
	rand.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	return encodeState(s)
}

// MergeRemoteState is memberlist's path for push/pull states. The
// transport merges every state itself, knowing who sent it and whether
// this node asked for it, and passes memberlist the push/pull without
// it; anything arriving here is dropped.
func (g *delegate) MergeRemoteState(buf []byte, join bool) {
	d := (*Discovery)(g)
	if len(buf) > 0 {
		d.stats.filtered.Add(1)
		d.log.Debug("discovery: state outside the transport's checks dropped", "bytes", len(buf))
	}
}

// mergeState keeps the newer records and CRL of a state from sender,
// learned as how. Only an answer to this node's own pull or push/pull
// (solicited) is merged whole; from a state this node did not ask for
// (another member's push) only the sender's own record and the CRL are
// taken, so that no member can fill another's table by pushing at it.
// The sender's own record is news and is re-broadcast; third-party
// records are not (anti-entropy already spreads them). A new CRL
// accepted by OnCRL is re-broadcast.
func (d *Discovery) mergeState(s state, how, sender string, solicited bool) {
	if s.from != sender {
		d.refuse(sender, "state", fmt.Errorf("state from %q sent by %q: %w", s.from, sender, ErrBadStatement))
		return
	}
	for _, e := range s.entries {
		if !solicited && e.rec.Name != sender {
			continue
		}
		if d.acceptEntry(e, how, sender) && e.rec.Name == sender {
			d.queueRecord(e)
		}
	}
	if len(s.crl) > 0 && d.acceptCRL(s.crl) {
		d.queueCRL(s.crl)
	}
	if solicited {
		d.mergeLeaves(s.leaves, sender)
	}
}

// mergeLeaves takes the leave notices of a solicited state: a notice for a
// member this node holds and does not yet know as leaving goes through the
// same checks as a gossiped one (see leaving); notices about members not
// held, or known to leave already, are skipped unchecked. They are not
// re-broadcast: anti-entropy spreads them.
func (d *Discovery) mergeLeaves(leaves [][]byte, sender string) {
	for _, raw := range leaves {
		if len(raw) < 1 || raw[0] != msgLeave {
			d.stats.leavesRefused.Add(1)
			d.refuse(sender, "leave", fmt.Errorf("state leave notice without its type byte: %w", ErrMalformed))
			continue
		}
		n, err := decodeLeave(raw[1:])
		if err != nil {
			d.stats.leavesRefused.Add(1)
			d.refuse(sender, "leave", err)
			continue
		}
		d.mu.Lock()
		m := d.members[n.name]
		known := m == nil || m.leaving || n.name == d.self.Name
		d.mu.Unlock()
		if !known {
			d.leaving(n, raw, sender)
		}
	}
}

// syncRequest is a queued exchange with a member: a push/pull (memberlist
// join: membership and every record, both ways), or, with pull set, a
// request for the records this node lacks (see pullRequest).
type syncRequest struct {
	addr netip.AddrPort
	pull bool
}

// requestSync queues r unless the same request is already queued.
func (d *Discovery) requestSync(r syncRequest) {
	if !r.addr.IsValid() || r.addr == d.addr {
		return
	}
	d.syncs.offer(r, r)
}

// syncWorker performs queued exchanges.
func (d *Discovery) syncWorker() {
	defer d.wg.Done()
	for {
		r, ok := d.syncs.next(d.ctx)
		if !ok {
			return
		}
		if r.pull {
			d.sendPull(r.addr)
		} else if _, err := d.ml.Join([]string{r.addr.String()}); err != nil {
			d.log.Debug("discovery: sync failed", "peer", r.addr, "err", err)
		}
	}
}

// staleNames lists the live members whose newest record (as their
// metadata advertises it) this node does not hold.
func (d *Discovery) staleNames() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var names []string
	for name, m := range d.members {
		if m.state == StateAlive && m.inML && (!m.hasRec || m.metaVersion > m.rec.Version) {
			names = append(names, name)
		}
	}
	return names
}

// sendPull asks the member at addr for the records this node lacks.
func (d *Discovery) sendPull(addr netip.AddrPort) {
	names := d.staleNames()
	if len(names) == 0 {
		return
	}
	peer, ok := d.cfg.PeerName(addr.Addr())
	if !ok {
		return
	}
	p := pullRequest{from: d.cfg.Self.Name, addr: d.addr, names: names}
	now := time.Now()
	d.mu.Lock()
	// Only the answer to a pull this node sent is merged (see takePull);
	// pulls are sent by the sync workers, a few at a time, and expire.
	for name, pp := range d.pulls {
		if now.Sub(pp.last) >= pullAnswerWait {
			delete(d.pulls, name)
		}
	}
	pp := d.pulls[peer]
	d.pulls[peer] = pendingPulls{last: now, n: min(pp.n+1, maxPendingPulls)}
	d.mu.Unlock()
	if err := d.ml.SendReliable(addrNode(addr), encodePull(p)); err != nil {
		d.log.Debug("discovery: pull failed", "peer", addr, "err", err)
	}
}

// addrNode is a memberlist node to send to at addr: streams are routed by
// address alone.
func addrNode(addr netip.AddrPort) *memberlist.Node {
	return &memberlist.Node{Name: addr.String(), Addr: net.IP(addr.Addr().AsSlice()), Port: addr.Port()}
}

// queueAnswer queues the answer to a pull request; one answer per
// requester waits at a time and a full queue drops the request (the
// requester's repair loop asks again).
func (d *Discovery) queueAnswer(p pullRequest) {
	d.mu.Lock()
	ok := d.reachableLocked(p.addr) && p.addr != d.addr
	d.mu.Unlock()
	if ok {
		d.replies.offer(p.addr, p)
	}
}

// answerPulls sends each queued pull request its answer (see answer).
func (d *Discovery) answerPulls() {
	defer d.wg.Done()
	for {
		p, ok := d.replies.next(d.ctx)
		if !ok {
			return
		}
		s := d.answer(p)
		if len(s.entries) == 0 {
			continue
		}
		msg := append([]byte{msgState}, encodeState(s)...)
		if err := d.ml.SendReliable(addrNode(p.addr), msg); err != nil {
			d.log.Debug("discovery: pull answer failed", "peer", p.addr, "err", err)
		}
	}
}

// answer is the state that answers p: the records it names that this node
// holds (its own included, each once) and the newest CRL; nothing else.
func (d *Discovery) answer(p pullRequest) state {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := state{from: d.self.Name, crl: d.crl}
	sent := make(map[string]bool, len(p.names))
	for _, name := range p.names {
		if sent[name] {
			continue
		}
		sent[name] = true
		if name == d.self.Name {
			s.entries = append(s.entries, d.selfEntry)
		} else if m := d.members[name]; m != nil && m.hasRec {
			s.entries = append(s.entries, entry{rec: m.rec, gossip: m.recGossip, raw: m.raw})
		}
	}
	return s
}

// settle is the straggler fix. When many members join one seed at once,
// each learns from the seed only those that joined before it, and learns
// the later ones only from gossip whose retransmit budget can run out: a
// member may then stay unaware of others until the next periodic push/pull
// (30 s or more at LAN timings). After a join, settle runs push/pulls with
// random live members at growing delays, so every member exchanges full
// state with members that joined after it. They stay push/pulls, not
// pulls: a pull brings records but not memberlist's membership, and a
// member memberlist does not know is out of failure detection's sight (as
// pulls, a crashed last joiner stayed admitted at a node whose memberlist
// had not heard of it).
func (d *Discovery) settle() {
	start := time.Now()
	for _, delay := range d.tun.settleDelays {
		t := time.NewTimer(time.Until(start.Add(delay)))
		select {
		case <-d.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		for _, a := range d.randomAlive(d.tun.settleFanout) {
			d.requestSync(syncRequest{addr: a})
		}
	}
}

// randomAlive returns up to k random live, reachable members' gossip
// addresses.
func (d *Discovery) randomAlive(k int) []netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	all := d.reachableAliveLocked()
	return all[:min(k, len(all))]
}

// reachableLocked reports whether a gossip address can be synced with now
// (see Config.Reachable).
func (d *Discovery) reachableLocked(a netip.AddrPort) bool {
	return d.cfg.Reachable == nil || d.cfg.Reachable(a.Addr())
}

// reachableAliveLocked returns the live members' reachable gossip
// addresses in random order.
func (d *Discovery) reachableAliveLocked() []netip.AddrPort {
	var all []netip.AddrPort
	for _, m := range d.members {
		if m.state == StateAlive && m.gossip.IsValid() && d.reachableLocked(m.gossip) {
			all = append(all, m.gossip)
		}
	}
	rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	return all
}
