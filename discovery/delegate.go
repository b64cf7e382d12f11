package discovery

// The memberlist adapters: delegate (memberlist.Delegate) and
// eventDelegate (memberlist.EventDelegate). They translate memberlist's
// calls into the member table and the package's own paths; the push/pull
// state hooks (LocalState, MergeRemoteState) are in sync.go.

import (
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
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

// eventDelegate implements memberlist.EventDelegate. memberlist calls it
// with its node lock held: it only updates the table and queues callbacks.
type eventDelegate Discovery

// nodeAddr is a memberlist node's gossip address (IPv4 unmapped).
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

// alive records n as a live member of memberlist (a join or an update):
// its gossip address and advertised record version, and hands its record
// to the node again if it had been reported gone.
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
		m.state, m.stateChange, m.leaving, m.leaveRaw = StateAlive, now, false, nil
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
