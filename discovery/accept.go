package discovery

// Accepting statements of other members into the table: records
// (acceptEntry), CRLs (acceptCRL) and leave notices (leaving), whether
// they came by gossip or in a state.

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"time"
)

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
func (d *Discovery) leaving(n leaveNotice, raw []byte, sender string) bool {
	d.mu.Lock()
	m := d.members[n.name]
	if m != nil && m.leaving {
		d.mu.Unlock()
		return false // known already (a relayed copy)
	}
	if n.name == d.self.Name && d.left {
		d.mu.Unlock()
		return false // this node's own notice, relayed back while it leaves
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
	m.leaveRaw, m.leaveAt = bytes.Clone(raw), time.Unix(0, n.at)
	if m.state == StateDead {
		m.state, m.stateChange = StateLeft, time.Now()
		if d.cfg.OnLeave != nil {
			name := n.name
			d.events.push(leaveEvent(name), func() { d.cfg.OnLeave(name, false) })
		}
	}
	return true
}
