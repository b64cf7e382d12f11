package discovery

import (
	"bytes"
	"container/list"
	"context"
	"crypto/ed25519"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Broadcast limits.
const (
	// maxGossipMsg is the largest user message put in the gossip queue:
	// the packet size minus a margin for memberlist's compound and message
	// headers (and the CRC of protocol 5). Larger records and CRLs are
	// announced instead and pulled by push/pull.
	maxGossipMsg = udpBufferSize - 64
	// maxBroadcastQueue bounds the gossip queue; the oldest (most sent)
	// broadcasts are pruned first. Anti-entropy repairs what is pruned.
	maxBroadcastQueue = 1024
)

// delegate implements memberlist.Delegate.
type delegate Discovery

// NodeMeta returns the metadata digest: the own record's version.
func (g *delegate) NodeMeta(limit int) []byte {
	d := (*Discovery)(g)
	d.mu.Lock()
	defer d.mu.Unlock()
	return encodeMeta(d.self.Version)
}

// NotifyMsg is memberlist's path for user messages. The transport hands
// every user message to handleUser itself, with the member that sent it,
// and never passes one to memberlist; anything arriving here is dropped.
func (g *delegate) NotifyMsg(b []byte) {
	d := (*Discovery)(g)
	d.stats.filtered.Add(1)
	d.log.Debug("discovery: user message outside the transport's checks dropped", "bytes", len(b))
}

// GetBroadcasts hands memberlist queued records and CRLs.
func (g *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return g.queue.GetBroadcasts(overhead, limit)
}

// LocalState encodes the state for a push/pull: own record first, the
// others in random order (so a state trimmed at MaxStateSize carries a
// different subset each time), and the newest CRL. Every record goes as
// its owner signed it.
func (g *delegate) LocalState(join bool) []byte {
	d := (*Discovery)(g)
	d.mu.Lock()
	s := state{from: d.self.Name, crl: d.crl}
	s.entries = make([]entry, 0, len(d.members)+1)
	s.entries = append(s.entries, d.selfEntry)
	for _, m := range d.members {
		if m.hasRec {
			s.entries = append(s.entries, entry{rec: m.rec, gossip: m.recGossip, raw: m.raw})
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
}

// acceptEntry keeps e if its record is newer than the one held for its
// name and is genuine, and reports whether it did. Genuine: the record's
// certificate verifies (trusted CA, CRL, clock) and names the record's
// owner, the owner's identity key signed it, its gossip address is the
// owner's, and its version is not ahead of this node's clock by more
// than MaxClockSkew (so no version pins a record or wraps). Nothing about
// a record is stored before that: a name without a genuine record never
// enters the table. A record for this node's own name signed by this
// node's key that is not ours and not older (our record from before a
// restart with a clock that ran ahead) makes us bump our version past it
// (like memberlist's refutation), so the fabric converges on our record.
func (d *Discovery) acceptEntry(e entry, how, sender string) bool {
	now := time.Now()
	d.mu.Lock()
	if e.rec.Name == d.self.Name {
		refute := !bytes.Equal(e.raw, d.selfEntry.raw) && e.rec.Version >= d.self.Version
		d.mu.Unlock()
		if !refute {
			return false
		}
		own := Identity{Name: d.self.Name, Key: d.cfg.IdentityKey.Public().(ed25519.PublicKey), Addrs: []netip.Addr{d.addr.Addr()}}
		if err := e.verify(own, now); err != nil {
			d.refuse(sender, "record", fmt.Errorf("record for this node: %w", err))
			return false
		}
		d.mu.Lock()
		if e.rec.Version >= d.self.Version {
			d.self.Version = max(e.rec.Version+1, uint64(now.UnixNano()))
			d.resignLocked()
		}
		d.mu.Unlock()
		d.log.Debug("discovery: refuting an older run's record for our name", "version", e.rec.Version)
		d.spreadSelf()
		return false
	}
	m := d.members[e.rec.Name]
	if m != nil && m.hasRec && e.rec.Version <= m.rec.Version {
		d.mu.Unlock()
		return false
	}
	d.mu.Unlock()
	id, err := d.cfg.VerifyCertificate(e.rec.Certificate)
	if err == nil {
		err = e.verify(id, now)
	}
	if err != nil {
		d.refuse(sender, "record", err)
		return false
	}
	d.mu.Lock()
	m = d.members[e.rec.Name]
	if m != nil && m.hasRec && e.rec.Version <= m.rec.Version {
		d.mu.Unlock()
		return false
	}
	if m == nil {
		if len(d.members) >= MaxMembers {
			d.mu.Unlock()
			d.refuse(sender, "record", fmt.Errorf("record for %q: member table full (%d): %w", e.rec.Name, MaxMembers, ErrTooLarge))
			return false
		}
		m = &member{stateChange: now}
		d.members[e.rec.Name] = m
	}
	if e.gossip.IsValid() {
		m.gossip = e.gossip
	}
	m.rec, m.raw, m.recGossip, m.addrs = e.rec.Clone(), e.raw, e.gossip, id.Addrs
	m.hasRec, m.learned, m.updated = true, how, now
	m.leaveNotified = false
	rec := e.rec.Clone()
	if d.cfg.OnRecord != nil {
		d.events.push(recordEvent(rec.Name), func() { d.cfg.OnRecord(rec) })
	}
	d.mu.Unlock()
	return true
}

// acceptCRL offers der to OnCRL unless it is the CRL held or one refused
// before, and keeps it if OnCRL accepts it.
func (d *Discovery) acceptCRL(der []byte) bool {
	if len(der) == 0 || len(der) > MaxCRLSize || d.cfg.OnCRL == nil {
		return false
	}
	sum := crlDigest(der)
	d.crlMu.Lock()
	defer d.crlMu.Unlock()
	d.mu.Lock()
	known := bytes.Equal(der, d.crl)
	for _, r := range d.rejected {
		known = known || bytes.Equal(r, sum)
	}
	d.mu.Unlock()
	if known {
		return false
	}
	ok := d.cfg.OnCRL(bytes.Clone(der))
	d.mu.Lock()
	defer d.mu.Unlock()
	if !ok {
		if len(d.rejected) == maxRejectedCRLs {
			d.rejected = d.rejected[1:]
		}
		d.rejected = append(d.rejected, sum)
		return false
	}
	d.crl = bytes.Clone(der)
	return true
}

// leaving handles a leave notice and reports whether it was news. The
// notice counts only if it is signed by the leaver: the identity key of
// the certificate in the leaver's own record, which must verify now and
// name the leaver. Anything else (unsigned, signed by another member,
// about a member whose record is not held, stale) changes nothing. A
// member still alive is marked, so that memberlist's coming NotifyLeave
// is a leave; one already reported dead is corrected to left (OnLeave
// again, dead=false). Notices for an older record than held are stale.
func (d *Discovery) leaving(n leaveNotice, sender string) bool {
	d.mu.Lock()
	m := d.members[n.name]
	if m != nil && m.leaving {
		d.mu.Unlock()
		return false // known already (a relayed copy)
	}
	if n.name == d.self.Name || m == nil || !m.hasRec || m.rec.Version > n.version {
		d.mu.Unlock()
		d.stats.leavesRefused.Add(1)
		d.refuse(sender, "leave", fmt.Errorf("leave notice for %q (version %d): not a member whose record is held, or stale: %w", n.name, n.version, ErrBadStatement))
		return false
	}
	certDER := m.rec.Certificate
	d.mu.Unlock()
	id, err := d.cfg.VerifyCertificate(certDER)
	if err == nil {
		err = n.verify(id, time.Now())
	}
	if err != nil {
		d.stats.leavesRefused.Add(1)
		d.refuse(sender, "leave", err)
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// The table may have changed while the lock was released.
	if m2 := d.members[n.name]; m2 != m || m.leaving || !m.hasRec || !bytes.Equal(m.rec.Certificate, certDER) {
		return false
	}
	m.leaving = true
	if m.state == StateDead {
		m.state, m.stateChange = StateLeft, time.Now()
		if d.cfg.OnLeave != nil {
			name := n.name
			d.events.push(leaveEvent(name), func() { d.cfg.OnLeave(name, false) })
		}
	}
	return true
}

// wants reports whether an announcement names something newer than held.
func (d *Discovery) wants(a announce) bool {
	if a.holderAddr == d.addr {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch a.kind {
	case kindRecord:
		if a.name == d.self.Name {
			return false
		}
		m := d.members[a.name]
		return m == nil || !m.hasRec || m.rec.Version < a.version
	case kindCRL:
		if d.cfg.OnCRL == nil || (d.crl != nil && bytes.Equal(crlDigest(d.crl), a.digest)) {
			return false
		}
		for _, r := range d.rejected {
			if bytes.Equal(r, a.digest) {
				return false
			}
		}
		return true
	}
	return false
}

// broadcast is one queued gossip message; a newer one with the same key
// replaces it.
type broadcast struct {
	key string
	msg []byte
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*broadcast)
	return ok && ob.key == b.key
}
func (b *broadcast) Name() string    { return b.key }
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}

func (d *Discovery) enqueue(key string, msg []byte) {
	d.queue.QueueBroadcast(&broadcast{key: key, msg: msg})
	d.queue.Prune(maxBroadcastQueue)
}

// queueRecord gossips a record, or announces it if it does not fit in a
// packet.
func (d *Discovery) queueRecord(e entry) {
	if e.raw == nil {
		return
	}
	msg := append([]byte{msgRecord}, e.raw...)
	if len(msg) > maxGossipMsg {
		msg = encodeAnnounce(announce{kind: kindRecord, name: e.rec.Name, version: e.rec.Version,
			holder: d.cfg.Self.Name, holderAddr: d.addr})
	}
	d.enqueue("r/"+e.rec.Name, msg)
}

// queueCRL gossips a CRL, or announces it if it does not fit in a packet.
func (d *Discovery) queueCRL(der []byte) {
	msg := append([]byte{msgCRL}, der...)
	if len(msg) > maxGossipMsg {
		msg = encodeAnnounce(announce{kind: kindCRL, digest: crlDigest(der),
			holder: d.cfg.Self.Name, holderAddr: d.addr})
	}
	d.enqueue("crl", msg)
}

// eventDelegate implements memberlist.EventDelegate. memberlist calls it
// with its node lock held: it only updates the table and queues callbacks.
type eventDelegate Discovery

func nodeAddr(n *memberlist.Node) netip.AddrPort {
	a, _ := netip.AddrFromSlice(n.Addr)
	return netip.AddrPortFrom(a.Unmap(), n.Port)
}

// NotifyJoin records a member as alive.
func (g *eventDelegate) NotifyJoin(n *memberlist.Node) { (*Discovery)(g).alive(n) }

// NotifyUpdate records new metadata or address.
func (g *eventDelegate) NotifyUpdate(n *memberlist.Node) { (*Discovery)(g).alive(n) }

// NotifyLeave records a member as dead or left and calls OnLeave.
func (g *eventDelegate) NotifyLeave(n *memberlist.Node) {
	d := (*Discovery)(g)
	if n.Name == d.cfg.Self.Name {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.members[n.Name]
	if m == nil {
		if len(d.members) >= MaxMembers {
			return
		}
		m = &member{}
		d.members[n.Name] = m
	}
	dead := !m.leaving
	if m.state == StateAlive {
		d.numAlive.Add(-1)
	}
	m.state, m.stateChange, m.inML = StateLeft, time.Now(), true
	if dead {
		m.state = StateDead
	}
	m.leaveNotified = true
	if d.cfg.OnLeave != nil {
		name := n.Name
		d.events.push(leaveEvent(name), func() { d.cfg.OnLeave(name, dead) })
	}
}

func (d *Discovery) alive(n *memberlist.Node) {
	if n.Name == d.cfg.Self.Name {
		return
	}
	v, _ := decodeMeta(n.Meta)
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.members[n.Name]
	if m == nil {
		if len(d.members) >= MaxMembers {
			return
		}
		m = &member{}
		d.members[n.Name] = m
	}
	now := time.Now()
	if m.state != StateAlive {
		d.numAlive.Add(1)
		m.state, m.stateChange, m.leaving = StateAlive, now, false
	}
	m.inML = true
	if a := nodeAddr(n); a.IsValid() {
		m.gossip = a
	}
	if v > m.metaVersion || m.metaSeen.IsZero() {
		m.metaVersion, m.metaSeen = max(v, m.metaVersion), now
	}
	// A member reported gone is back: hand its record to the node again,
	// unless a newer one is on its way (then OnRecord fires for that).
	if m.leaveNotified && m.hasRec && m.metaVersion <= m.rec.Version {
		m.leaveNotified = false
		rec := m.rec.Clone()
		if d.cfg.OnRecord != nil {
			d.events.push(recordEvent(rec.Name), func() { d.cfg.OnRecord(rec) })
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
	defer d.wg.Done()
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

// notifier runs callbacks one at a time, in order, off memberlist's locks.
// Events are keyed (one kind of event for one member): a newer event
// replaces a queued one with the same key and goes to the back of the
// queue, so the queue holds at most one event per key (two per member)
// however often a member flaps, and the node sees the latest of each in
// the order they last happened.
type notifier struct {
	mu    sync.Mutex
	order *list.List // of keyedEvent, oldest first
	byKey map[string]*list.Element
	wake  chan struct{}
}

// keyedEvent is one queued callback.
type keyedEvent struct {
	key string
	f   func()
}

func newNotifier() *notifier {
	return &notifier{order: list.New(), byKey: make(map[string]*list.Element), wake: make(chan struct{}, 1)}
}

// recordEvent and leaveEvent are the keys of a member's OnRecord and
// OnLeave events.
func recordEvent(name string) string { return "r/" + name }
func leaveEvent(name string) string  { return "l/" + name }

// push queues f under key, replacing a queued event with that key.
func (n *notifier) push(key string, f func()) {
	n.mu.Lock()
	if e, ok := n.byKey[key]; ok {
		n.order.Remove(e)
	}
	n.byKey[key] = n.order.PushBack(keyedEvent{key, f})
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// take removes and returns the queued callbacks, oldest first.
func (n *notifier) take() []func() {
	n.mu.Lock()
	defer n.mu.Unlock()
	q := make([]func(), 0, n.order.Len())
	for e := n.order.Front(); e != nil; e = e.Next() {
		q = append(q, e.Value.(keyedEvent).f)
	}
	n.order.Init()
	clear(n.byKey)
	return q
}

// len is the number of queued callbacks.
func (n *notifier) len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.order.Len()
}

func (n *notifier) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
		}
		for {
			q := n.take()
			if len(q) == 0 {
				break
			}
			for _, f := range q {
				if ctx.Err() != nil {
					return
				}
				f()
			}
		}
	}
}
