package overlay

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/handshake"
	"github.com/aigrid/gridnet/overlay/internal/session"
)

// peerEntry is one admitted peer in the peer table (guarded by peersMu).
type peerEntry struct {
	id         *cert.Identity
	key        [32]byte
	endpoint   netip.AddrPort
	admittedAt time.Time
	// gen numbers the admissions of this overlay: the session table
	// names the admission a session is built on by it (session.Event.Ref).
	gen uint64
}

// addrTable is an immutable overlay-address index, replaced wholesale on
// every change so readers need no lock.
type addrTable struct {
	m map[netip.Addr]*cert.Identity
}

// IdentityByAddr returns the identity of the admitted peer owning overlay
// address a. It is lock-free (one atomic load and a map read) for per-packet
// use by the firewall.
func (o *Overlay) IdentityByAddr(a netip.Addr) (*cert.Identity, bool) {
	id, ok := o.byAddr.Load().m[a.Unmap()]
	return id, ok
}

// hostRoute turns a certificate address into a WireGuard allowed IP.
func hostRoute(p netip.Prefix) netip.Prefix {
	a := p.Addr().Unmap()
	return netip.PrefixFrom(a, a.BitLen())
}

// admit adds or replaces a verified peer in the peer table and hands its
// session to the session table (see sessions.go), which configures the
// device. start says whether this admission starts the WireGuard session
// (see startsSession); rtt is the admission handshake's round trip (0 if
// unknown), which scales the session's deadlines.
func (o *Overlay) admit(p *handshake.Peer, endpoint netip.AddrPort, start bool, rtt time.Duration) error {
	id := p.Identity
	if p.Static == o.wgPub {
		return fmt.Errorf("%w (certificate %q)", ErrSelf, id.Name)
	}
	now := o.now()
	self := o.self.Load()
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	// A CRL applied while this handshake ran (after its certificate was
	// verified) must still keep the peer out: Revalidate ran before us and
	// could not see it.
	if o.verify.IsRevoked(id) {
		return fmt.Errorf("admit %q: %w", id.Name, cert.ErrRevoked)
	}
	table := o.byAddr.Load().m
	var evict []*peerEntry
	for _, pfx := range id.Addresses {
		a := pfx.Addr().Unmap()
		if slices.ContainsFunc(self.Addresses, func(s netip.Prefix) bool { return s.Addr().Unmap() == a }) {
			return fmt.Errorf("%w: %s is this node's address (certificate %q)", ErrAddressConflict, a, id.Name)
		}
		holder, ok := table[a]
		if !ok || holder.WireGuardKey == p.Static {
			continue
		}
		if o.stillValid(holder, now) {
			return fmt.Errorf("%w: %s held by %q (certificate %q)", ErrAddressConflict, a, holder.Name, id.Name)
		}
		if e := o.peers[holder.WireGuardKey]; e != nil {
			evict = append(evict, e)
		}
	}
	for _, e := range evict {
		o.removeLocked(e, "superseded by "+id.Name)
	}
	old, exists := o.peers[p.Static]
	if o.onAdmit != nil {
		o.onAdmit(id)
	}
	o.admissions++
	e := &peerEntry{id: id, key: p.Static, endpoint: endpoint, admittedAt: now, gen: o.admissions}
	o.peers[p.Static] = e
	o.publishLocked()
	// Posted under peersMu: the table sees admissions and removals in the
	// order the peer table changed.
	if exists && old.endpoint != endpoint {
		// Admitted from another endpoint: another process of the peer
		// (it restarted) or a peer that moved. What the device holds of
		// the old one goes, and the session starts afresh.
		o.sessions.Post(session.Key(p.Static), session.Event{Kind: session.Forgotten})
	}
	o.sessions.Post(session.Key(p.Static), session.Event{
		Kind: session.Admitted, Initiates: !start, Responder: start, RTT: rtt, Ref: e.gen,
	})
	if w, ok := o.wantedPeerOf(p.Static); ok && w.persistent {
		o.postWant(p.Static, true) // a session that began as Gone: keep it for ever
	}
	if exists && old.id.Fingerprint == id.Fingerprint && old.endpoint == endpoint && now.Sub(old.admittedAt) < o.timers.Kick {
		// The second handshake of two nodes admitting each other at once
		// (each has the other as a static peer): the same certificate from
		// the same endpoint moments ago. One "peer admitted" per peer.
		o.log.Debug("peer admitted again", "name", id.Name, "endpoint", endpoint.String())
	} else {
		o.log.Info("peer admitted", "name", id.Name, "endpoint", endpoint.String(), "fingerprint", id.Fingerprint, "not_after", id.NotAfter, "peer", shortKey(p.Static), "starts", start)
	}
	return nil
}

// stillValid reports whether an admitted identity is still acceptable now.
func (o *Overlay) stillValid(id *cert.Identity, now time.Time) bool {
	if !now.Before(id.NotAfter) || now.Before(id.NotBefore) || o.verify.IsRevoked(id) {
		return false
	}
	_, err := o.verify.VerifyDER(id.Raw, now)
	return err == nil
}

// removeLocked removes a peer from the peer table and hands its removal
// from the device to the session table. The caller publishes.
func (o *Overlay) removeLocked(e *peerEntry, why string) {
	o.dropLocked(e, why)
	o.sessions.Post(session.Key(e.key), session.Event{Kind: session.Forgotten})
	if w, ok := o.wantedPeerOf(e.key); ok && w.persistent {
		// A static peer is wanted again at once: its admission checks
		// the certificate it has now (renewed, say).
		o.postWant(e.key, true)
	}
}

// dropLocked takes e out of the peer table (the device follows through
// the session table). The caller publishes.
func (o *Overlay) dropLocked(e *peerEntry, why string) {
	delete(o.peers, e.key)
	o.stats.removedPeers.Add(1)
	if o.onRemove != nil {
		o.onRemove(e.id)
	}
	o.log.Info("peer removed", "name", e.id.Name, "reason", why)
}

// publishLocked rebuilds the address index and pokes the revalidation timer.
func (o *Overlay) publishLocked() {
	m := make(map[netip.Addr]*cert.Identity, len(o.peers))
	for _, e := range o.peers {
		for _, pfx := range e.id.Addresses {
			m[pfx.Addr().Unmap()] = e.id
		}
	}
	o.byAddr.Store(&addrTable{m: m})
	o.publishEndpointsLocked(nil)
	select {
	case o.changed <- struct{}{}:
	default:
	}
}

// publishEndpointsLocked tells the bind which source endpoints belong to
// admitted peers: where they were admitted from, and where WireGuard
// currently sees them (roaming), when the caller has fresh device stats.
func (o *Overlay) publishEndpointsLocked(st map[[32]byte]*wgPeerStats) {
	eps := make([]netip.AddrPort, 0, 2*len(o.peers))
	for key, e := range o.peers {
		eps = append(eps, e.endpoint)
		if s := st[key]; s != nil && s.endpoint.IsValid() {
			eps = append(eps, s.endpoint)
		}
	}
	o.bind.setKnown(eps)
}

// refreshEndpoints learns roamed peers' addresses from the device.
func (o *Overlay) refreshEndpoints() {
	st, err := o.wgStats()
	if err != nil {
		return
	}
	o.peersMu.Lock()
	o.publishEndpointsLocked(st)
	o.peersMu.Unlock()
	o.checkSessions(st, time.Now(), checkedSessionUp)
}

// checkSessions is the safety net under the session watch, which is a
// hint: a peer whose session has been up by the session rules for longer
// than minUp but that has no live WireGuard session in the device (no
// handshake, or none within WireGuard's 180 s key lifetime, although
// keepalives keep a working session's keys fresh) is reported Lost, and
// this side starts a new session (a mistaken report costs one handshake).
func (o *Overlay) checkSessions(st map[[32]byte]*wgPeerStats, now time.Time, minUp time.Duration) {
	for key, ps := range st {
		if !ps.lastHandshake.IsZero() && now.Sub(ps.lastHandshake) < sessionFresh {
			continue
		}
		s := o.sessions.Get(session.Key(key))
		if s.State == session.Up && now.Sub(s.UpAt) > minUp {
			o.stats.sessionsLost.Add(1)
			o.log.Info("session up by the rules but not in WireGuard; starting a new one", "peer", shortKey(key))
			o.sessions.Post(session.Key(key), session.Event{Kind: session.Lost})
		}
	}
}

// checkedSessionUp is how long a session must have been up by the rules
// before the revalidation tick's check may find it lost: longer than
// WireGuard takes to process the handshake the watch saw, on a loaded
// node too (a check that comes too early costs a needless handshake, and
// on an overloaded fabric many of them).
const checkedSessionUp = 6 * time.Second

// hasPeer reports whether key is currently admitted.
func (o *Overlay) hasPeer(key [32]byte) bool {
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	_, ok := o.peers[key]
	return ok
}

// deviceCaughtUp waits until the session table has run what was posted
// so far: a caller that removed peers returns once the device no longer
// has them.
func (o *Overlay) deviceCaughtUp() {
	o.sessions.Sync(o.ctx)
}

// RemovePeer removes the admitted peer with WireGuard key key (its
// sessions too), e.g. when failure detection declared it dead. It reports
// whether there was one. A static peer is admitted again by its loop.
func (o *Overlay) RemovePeer(key [32]byte, why string) bool {
	return o.RemovePeerAdmittedBefore(key, time.Time{}, why)
}

// RemovePeerAdmittedBefore removes the peer with WireGuard key key only if
// it was admitted before t (on the overlay's clock, Config.Now; a zero t
// removes it whenever it was admitted), and reports whether it did. A
// caller that decided on a removal at t (failure detection declared the
// peer dead, say) leaves alone an admission made since, which proved the
// peer alive. The device no longer has the peer when it returns.
func (o *Overlay) RemovePeerAdmittedBefore(key [32]byte, t time.Time, why string) bool {
	o.peersMu.Lock()
	e := o.peers[key]
	if e == nil || (!t.IsZero() && !e.admittedAt.Before(t)) {
		o.peersMu.Unlock()
		return false
	}
	o.removeLocked(e, why)
	o.publishLocked()
	o.peersMu.Unlock()
	o.deviceCaughtUp()
	return true
}

// Admitted returns the identities of the admitted peers, sorted by name,
// without the device's session state (Peers reads that, at a cost that
// grows with the number of peers).
func (o *Overlay) Admitted() []*cert.Identity {
	o.peersMu.Lock()
	out := make([]*cert.Identity, 0, len(o.peers))
	for _, e := range o.peers {
		out = append(out, e.id)
	}
	o.peersMu.Unlock()
	slices.SortFunc(out, func(a, b *cert.Identity) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// HasPeer reports whether a peer with WireGuard key key is admitted.
func (o *Overlay) HasPeer(key [32]byte) bool { return o.hasPeer(key) }
