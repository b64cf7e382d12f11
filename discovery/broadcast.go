package discovery

// Broadcasts: the gossip queue memberlist takes packets from
// (records and CRLs, or announcements of those too large for a packet)
// and the check whether an announcement names something this node lacks.

import (
	"bytes"

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

// Invalidates reports whether b replaces o: a broadcast with the same key.
func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*broadcast)
	return ok && ob.key == b.key
}

// Name, Message and Finished complete memberlist.NamedBroadcast.
func (b *broadcast) Name() string    { return b.key }
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}

// enqueue queues msg for gossip under key and prunes the queue to
// maxBroadcastQueue.
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
