package overlay

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"golang.zx2c4.com/wireguard/device"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/handshake"
)

const (
	// RevalidateInterval is how often admitted certificates are re-checked
	// (expiry, revocation) even if nobody calls Revalidate.
	RevalidateInterval = 10 * time.Second
	// sessionFresh is how long after its last WireGuard handshake a peer
	// counts as connected (WireGuard's RejectAfterTime).
	sessionFresh = 180 * time.Second
	// starterGrace is how long a node that does not start the session
	// with a newly admitted peer waits for the other side to start it
	// before it starts the session itself (see armStarterGrace).
	starterGrace = 3 * time.Second
	// starterKick is how long a session this node starts may take before
	// it is started again at once (see armStarterKick), instead of after
	// WireGuard's own 5 s retry.
	starterKick = 1500 * time.Millisecond
	// starterKickMax caps the kick when the admission's round trip was
	// slow (see kickDelay): a kick later than this would come after
	// WireGuard's own 5 s retry anyway.
	starterKickMax = 3500 * time.Millisecond
	// kickRTTs is how many admission round trips a session may take before
	// it is kicked.
	kickRTTs = 3
)

// kickDelay is how long a session started after an admission whose
// handshake took rtt (msg2 out to msg3 in, or msg1 out to msg2 in) may take
// before it is started again. On a loaded node a WireGuard initiation
// waits in the other side's queue about as long as the admission's
// messages did; a kick before its answer came would replace it with a
// second initiation, and the answer to the first would be dropped. When
// both arrive at once the second is even refused as a flood, and the
// session waits for WireGuard's 5 s retry.
func (t sessionTimers) kickDelay(rtt time.Duration) time.Duration {
	return min(max(kickRTTs*rtt, t.kick), t.kickMax)
}

// sessionTimers are the deadlines of session setup: starterGrace,
// starterKick, starterKickMax, watchdogInterval and watchdogAfter unless a
// test switches one off, to check another mechanism on its own.
type sessionTimers struct {
	grace, kick, kickMax            time.Duration
	watchdogInterval, watchdogAfter time.Duration
}

func defaultSessionTimers() sessionTimers {
	return sessionTimers{
		grace: starterGrace, kick: starterKick, kickMax: starterKickMax,
		watchdogInterval: watchdogInterval, watchdogAfter: watchdogAfter,
	}
}

// PeerState is a coarse peer state for status displays.
type PeerState string

// Peer states.
const (
	// PeerAdmitted: certificate verified and peer configured, no WireGuard
	// session yet.
	PeerAdmitted PeerState = "admitted"
	// PeerConnected: a WireGuard handshake completed within the last 180 s.
	PeerConnected PeerState = "connected"
	// PeerIdle: the last WireGuard handshake is older than 180 s.
	PeerIdle PeerState = "idle"
)

// PeerStatus describes one admitted peer.
type PeerStatus struct {
	// Name is the peer's certificate name.
	Name string
	// Addresses are the certificate's overlay addresses (address + overlay
	// prefix length); WireGuard routes each as a host route.
	Addresses []netip.Prefix
	// WireGuardKey is the peer's WireGuard public key.
	WireGuardKey [32]byte
	// Endpoint is WireGuard's current endpoint for the peer (follows roaming).
	Endpoint netip.AddrPort
	// LastHandshake is the last WireGuard handshake; zero if none yet.
	LastHandshake time.Time
	// RxBytes and TxBytes are WireGuard's byte counters for the peer.
	RxBytes, TxBytes uint64
	// AdmittedAt is when the certificate was last verified and installed.
	AdmittedAt time.Time
	// NotAfter is the certificate's expiry.
	NotAfter time.Time
	// State summarises the session.
	State PeerState
	// Identity is the verified certificate identity.
	Identity *cert.Identity
}

type peerEntry struct {
	id         *cert.Identity
	key        [32]byte
	endpoint   netip.AddrPort
	admittedAt time.Time
	kickedAt   time.Time // last watchdog restart; guarded by peersMu
	// starts: this node gave WireGuard the endpoint and starts the
	// session (see admit's start).
	starts bool
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

// admit adds or replaces a verified peer in the device and the table.
//
// Exactly one side starts the WireGuard session, by turning on persistent
// keepalive (wireguard-go then sends a handshake initiation at once):
// simultaneous initiations from both sides cross, and each side then waits
// for WireGuard's 5 s retry. start says whether this admission starts it
// (the responder's, see startsSession). Otherwise a new peer gets no
// keepalive and an existing peer's keepalive is left as it is; the
// initiator enables keepalive once the session is up (see confirm).
//
// rtt is the admission handshake's round trip (0 if unknown); it scales the
// session checks that follow (see kickDelay).
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
	var b strings.Builder
	old, exists := o.peers[p.Static]
	restart := start && exists && (old.endpoint != endpoint || now.Sub(old.admittedAt) >= confirmWait)
	if restart {
		// The peer may have restarted with the same keys while we still
		// hold its old session: drop the peer and add it afresh, so the
		// keepalive below goes from 0 to on and a new session starts.
		// Not when it was admitted moments ago from the same endpoint:
		// that is a second handshake of the same two nodes (each
		// admitting the other), and dropping the peer would kill the
		// WireGuard handshake the first admission started. (A restart
		// on the same port within that time is caught by the session
		// check, armStarterKick.)
		fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hex.EncodeToString(p.Static[:]))
	}
	fmt.Fprintf(&b, "public_key=%s\nreplace_allowed_ips=true\n", hex.EncodeToString(p.Static[:]))
	if start {
		fmt.Fprintf(&b, "endpoint=%s\n", endpoint)
	}
	// A peer whose session the other side starts gets no endpoint from
	// us: WireGuard learns it from the other side's initiation (and keeps
	// the one it has). Until then this side cannot send an initiation of
	// its own, which any outbound packet (gossip, say) would otherwise
	// trigger; two initiations that cross invalidate each other and both
	// sides wait for WireGuard's 5 s retry.
	if start {
		fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", PersistentKeepalive)
	} else if !exists {
		b.WriteString("persistent_keepalive_interval=0\n")
	}
	for _, pfx := range id.Addresses {
		fmt.Fprintf(&b, "allowed_ip=%s\n", hostRoute(pfx))
	}
	if o.onAdmit != nil {
		o.onAdmit(id)
	}
	var fresh, repeat bool
	if start && exists && !restart {
		fresh, repeat = o.sessionAction(p.Static, old, now.Add(-rtt))
	}
	if fresh {
		// Clear WireGuard's pending handshake and its hold on a new
		// initiation (a try that failed without an endpoint holds the
		// next one back for its 5 s retry), so that one goes out at once.
		o.clearHandshake(p.Static)
	}
	if err := o.dev.IpcSet(b.String()); err != nil {
		if old := o.peers[p.Static]; old != nil && o.onAdmit != nil {
			o.onAdmit(old.id) // keep what the device still has
		} else if o.onRemove != nil {
			o.onRemove(id)
		}
		return fmt.Errorf("overlay: configure peer %q: %w", id.Name, err)
	}
	e := &peerEntry{id: id, key: p.Static, endpoint: endpoint, admittedAt: now, starts: start || (exists && old.starts)}
	o.peers[p.Static] = e
	o.publishLocked()
	if repeat && !o.bind.resendInitiation(endpoint) {
		fresh = true
		o.clearHandshake(p.Static)
	}
	if fresh {
		// The keepalive sent the initiation if it was off before; if it
		// was on already, this sends it (and sends no second one).
		if err := o.initiate(p.Static); err != nil {
			o.log.Debug("start session", "name", id.Name, "err", err.Error())
		}
	}
	if start {
		o.armStarterKick(e, rtt)
	} else {
		o.armStarterGrace(e, rtt)
	}
	if exists && old.id.Fingerprint == id.Fingerprint && old.endpoint == endpoint && now.Sub(old.admittedAt) < confirmWait {
		// The second handshake of two nodes admitting each other at once
		// (each has the other as a static peer): the same certificate from
		// the same endpoint moments ago. One "peer admitted" per peer.
		o.log.Debug("peer admitted again", "name", id.Name, "endpoint", endpoint.String())
	} else {
		o.log.Info("peer admitted", "name", id.Name, "endpoint", endpoint.String(), "fingerprint", id.Fingerprint, "not_after", id.NotAfter)
	}
	return nil
}

// sessionAction decides, for an admission this node starts of a peer it
// had admitted before (old, not restarted), what to do with the WireGuard
// session instead of keeping what the device has. A keepalive that is
// already on sends nothing new, so without an action the peer would wait
// for a kick or WireGuard's own retry:
//
//   - fresh, start a new session at once: this node was not the starter
//     and no session came since that admission (it takes the start
//     over); or the device's session is older than this admission
//     (began), and the other side may no longer have it: it removed this
//     node (a death verdict, say) and admitted it afresh, or restarted on
//     the same endpoint. If the peer still has the session, the new one
//     only replaces it.
//   - repeat, send the pending initiation again (divertBind.
//     resendInitiation): this node started the session and none came
//     since. The peer may have dropped the initiation while it did not
//     have this node (between a removal and this admission); if it still
//     waits in its queue, the copy is dropped as a replay, where a new
//     initiation would be refused as a flood.
//
// A session that came during this admission is kept: that is a second
// admission of the same two nodes, moments after the first.
func (o *Overlay) sessionAction(key [32]byte, old *peerEntry, began time.Time) (fresh, repeat bool) {
	hs := o.lastHandshake(key)
	noneSince := hs.IsZero() || hs.Before(old.admittedAt.Add(-sessionSlack))
	switch {
	case noneSince && !old.starts:
		return true, false
	case noneSince:
		return false, true
	}
	return hs.Before(began.Add(-sessionSlack)), false
}

// lastHandshake is the device's last completed handshake with the peer
// key (a read shared for confirmPoll); zero if none or unknown.
func (o *Overlay) lastHandshake(key [32]byte) time.Time {
	st, err := o.recentStats(confirmPoll)
	if err != nil || st[key] == nil {
		return time.Time{}
	}
	return st[key].lastHandshake
}

// initiate sends a WireGuard handshake initiation to the peer key unless
// one went out within WireGuard's retry time (as clearHandshake resets
// that, an initiation the configuration sent just before counts).
func (o *Overlay) initiate(key [32]byte) error {
	p := o.dev.LookupPeer(device.NoisePublicKey(key))
	if p == nil {
		return errors.New("peer not in the device")
	}
	return p.SendHandshakeInitiation(false)
}

// armStarterGrace gives the other side starterGrace to start the session
// with a peer this node admitted without an endpoint (it does not start
// sessions with it), longer by as much as a slow admission (rtt) delays the
// other side's kick. If no session came, the other side's admission of
// this node failed or was superseded: this node then gives WireGuard the
// endpoint and a keepalive, and starts the session itself.
func (o *Overlay) armStarterGrace(e *peerEntry, rtt time.Duration) {
	grace := o.timers.grace + o.timers.kickDelay(rtt) - o.timers.kick
	// Jitter: when both sides wait, they should not start at the same moment.
	o.afterWithoutSession(e, grace+rand.N(o.timers.grace/2), func() { o.startAfterGrace(e) })
}

// startAfterGrace gives WireGuard e's endpoint and a keepalive, so that it
// starts the session the other side did not. It clears the pending
// handshake first, as when admit takes a session over: a try WireGuard
// made without the endpoint would hold the initiation back for 5 s.
func (o *Overlay) startAfterGrace(e *peerEntry) {
	o.clearHandshake(e.key)
	err := o.dev.IpcSet(fmt.Sprintf("public_key=%s\nupdate_only=true\nendpoint=%s\npersistent_keepalive_interval=%d\n",
		hex.EncodeToString(e.key[:]), e.endpoint, PersistentKeepalive))
	if err != nil {
		o.log.Warn("start session after grace", "name", e.id.Name, "err", err.Error())
		return
	}
	o.log.Debug("no session started by the other side; starting it", "name", e.id.Name)
}

// armStarterKick starts again, after kickDelay(rtt), a session this node
// started with a newly admitted peer if none has come up: its initiation
// or the response was lost, or it still waits in a loaded peer's queue;
// WireGuard would wait 5 s to retry. The kick (kickSession) sends the same
// initiation again.
func (o *Overlay) armStarterKick(e *peerEntry, rtt time.Duration) {
	d := o.timers.kickDelay(rtt)
	o.afterWithoutSession(e, d+rand.N(d/3), func() { o.kickSession(e) })
}

// kickSession sends the initiation of e's pending session again, byte for
// byte (see divertBind.resendInitiation): it is answered whether the
// first copy was lost or still waits in the peer's queue. Only when there
// is none to repeat does it start a new session (restartSession).
func (o *Overlay) kickSession(e *peerEntry) {
	if o.bind.resendInitiation(e.endpoint) {
		o.stats.kicks.Add(1)
		o.log.Debug("session not up in time; initiation sent again", "name", e.id.Name)
		return
	}
	o.restartSession(e, false)
}

// afterWithoutSession runs fn after d if e is then still the admitted
// entry of its peer, the overlay is running, and no WireGuard session came
// in the meantime. The bind watches e's endpoint meanwhile and answers
// first, without a device dump: a transport message from the peer means
// the session came. Only without one is the device read.
func (o *Overlay) afterWithoutSession(e *peerEntry, d time.Duration, fn func()) {
	since := time.Now()
	w := o.bind.watch(e.endpoint)
	time.AfterFunc(d, func() {
		defer o.bind.unwatch(e.endpoint)
		if o.ctx.Err() != nil {
			return
		}
		o.peersMu.Lock()
		current := o.peers[e.key] == e
		o.peersMu.Unlock()
		if !current || o.bind.seenSince(w, since) || o.sessionSeen(e.key, since.Add(-sessionSlack)) {
			return
		}
		fn()
	})
}

// clearHandshake drops the pending WireGuard handshake of the peer with
// key and the hold WireGuard puts on a new initiation after one was tried
// (also when it failed for want of an endpoint). A session's keys go too:
// sending waits for the next handshake. It reports whether the device has
// the peer.
func (o *Overlay) clearHandshake(key [32]byte) bool {
	p := o.dev.LookupPeer(device.NoisePublicKey(key))
	if p != nil {
		p.ExpireCurrentKeypairs()
	}
	return p != nil
}

// restartSession clears e's pending WireGuard handshake and keys and sends
// a new handshake initiation at once (WireGuard itself would wait out its
// 5 s retry). setEndpoint first gives WireGuard the admitted endpoint (it
// has none when the other side was to start the session). Exactly one
// initiation goes out: giving the endpoint may send one by itself (for
// packets waiting for a session), and WireGuard then skips the second,
// which matters because a peer refuses a second initiation within 20 ms
// as a flood and the session would wait for the retry after all.
func (o *Overlay) restartSession(e *peerEntry, setEndpoint bool) {
	if !o.clearHandshake(e.key) {
		return
	}
	if setEndpoint {
		err := o.dev.IpcSet(fmt.Sprintf("public_key=%s\nupdate_only=true\nendpoint=%s\n", hex.EncodeToString(e.key[:]), e.endpoint))
		if err != nil {
			o.log.Warn("restart session: set endpoint", "name", e.id.Name, "err", err.Error())
			return
		}
	}
	if err := o.initiate(e.key); err != nil {
		o.log.Debug("restart session", "name", e.id.Name, "err", err.Error())
		return
	}
	o.stats.kicks.Add(1)
	o.log.Debug("session not up in time; started again", "name", e.id.Name)
}

// Session watchdog: every watchdogInterval, a peer admitted more than
// watchdogAfter ago that still has no WireGuard session on this side gets
// its session restarted from here (given the admitted endpoint first if
// WireGuard has none). This heals what the admission paths leave behind: a
// handshake whose last message was lost after the other side had its keys
// (one side with a session, the other without), or both sides waiting for
// the other.
const (
	watchdogInterval = 2 * time.Second
	watchdogAfter    = 4 * time.Second
)

func (o *Overlay) watchdogLoop() {
	defer o.wg.Done()
	t := time.NewTicker(o.timers.watchdogInterval)
	defer t.Stop()
	for {
		select {
		case <-o.ctx.Done():
			return
		case <-t.C:
			o.watchdog(time.Now())
		}
	}
}

// watchdog restarts the sessions that should be up by now.
func (o *Overlay) watchdog(now time.Time) {
	o.peersMu.Lock()
	var due []*peerEntry
	for _, e := range o.peers {
		if after := o.timers.watchdogAfter; now.Sub(e.admittedAt) >= after && now.Sub(e.kickedAt) >= after {
			due = append(due, e)
		}
	}
	o.peersMu.Unlock()
	if len(due) == 0 {
		return
	}
	st, err := o.recentStats(confirmPoll)
	if err != nil {
		return
	}
	for _, e := range due {
		s := st[e.key]
		if s == nil || !s.lastHandshake.IsZero() || (!s.endpoint.IsValid() && !e.endpoint.IsValid()) {
			continue
		}
		o.peersMu.Lock()
		current := o.peers[e.key] == e
		if current {
			e.kickedAt = now
		}
		o.peersMu.Unlock()
		if !current {
			continue
		}
		// Without an endpoint (the other side was to start the session
		// and has not in all this time; it may hold keys this side lost)
		// this side gives WireGuard the admitted one and starts it.
		o.restartSession(e, !s.endpoint.IsValid())
	}
}

// confirm waits up to confirmWait for a WireGuard session with a peer this
// node just admitted as initiator, then enables its persistent keepalive.
// Without a session (msg3 lost, or the responder refused us) the entry this
// admission made is removed again (not a newer one) and a retryable error
// returned. w watches the peer's
// endpoint (see transportWatch): the Bind wakes confirm at each transport
// message from it; the device is read only every confirmDumpPoll. A
// refusal of msg3 may come on refusals: refusal returns it as an error
// (nil for anything else), and the entry goes at once.
func (o *Overlay) confirm(ctx context.Context, entry *peerEntry, since, watchSince time.Time, w *transportWatch,
	refusals <-chan inboundPacket, refusal func(inboundPacket) error) error {
	key, name := entry.key, entry.id.Name
	deadline := time.Now().Add(confirmWait)
	nextDump := time.Now().Add(confirmDumpPoll)
	timer := time.NewTimer(confirmDumpPoll)
	defer timer.Stop()
	for {
		arrived := w.next()
		if o.bind.seenSince(w, watchSince) {
			break
		}
		now := time.Now()
		if !now.Before(nextDump) {
			if o.sessionSeen(key, since) {
				break
			}
			nextDump = now.Add(confirmDumpPoll)
		}
		timedOut := now.After(deadline)
		var refused error
		if !timedOut {
			timer.Reset(min(nextDump.Sub(now), deadline.Sub(now)))
			select {
			case <-arrived:
			case <-timer.C:
			case in := <-refusals:
				refused = refusal(in)
			case <-ctx.Done():
				timedOut = true
			}
		}
		if timedOut || refused != nil {
			// Only this admission's entry goes: a newer admission of the
			// same peer (the other side admitting us meanwhile) has its
			// own session to bring up.
			why := "no WireGuard session after admission"
			if refused != nil {
				why = "refused by the peer"
			}
			o.peersMu.Lock()
			if o.peers[key] == entry {
				o.removeLocked(entry, why)
				o.publishLocked()
			}
			o.peersMu.Unlock()
			if refused != nil {
				return refused
			}
			return fmt.Errorf("%w with %q", errNotConfirmed, name)
		}
	}
	err := o.dev.IpcSet(fmt.Sprintf("public_key=%s\nupdate_only=true\npersistent_keepalive_interval=%d\n",
		hex.EncodeToString(key[:]), PersistentKeepalive))
	if err != nil {
		return fmt.Errorf("overlay: enable keepalive for %q: %w", name, err)
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

// removeLocked removes a peer from the device (which also drops its
// sessions) and the table. The caller publishes.
func (o *Overlay) removeLocked(e *peerEntry, why string) {
	if err := o.dev.IpcSet(fmt.Sprintf("public_key=%s\nremove=true\n", hex.EncodeToString(e.key[:]))); err != nil {
		o.log.Error("remove peer failed", "name", e.id.Name, "err", err.Error())
	}
	delete(o.peers, e.key)
	o.bind.forgetInitiation(e.endpoint)
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

// publishEndpointsLocked tells the bind which source addresses belong to
// admitted peers: where they were admitted from, and where WireGuard
// currently sees them (roaming), when the caller has fresh device stats.
func (o *Overlay) publishEndpointsLocked(st map[[32]byte]*wgPeerStats) {
	addrs := make([]netip.Addr, 0, 2*len(o.peers))
	for key, e := range o.peers {
		addrs = append(addrs, e.endpoint.Addr())
		if s := st[key]; s != nil && s.endpoint.IsValid() {
			addrs = append(addrs, s.endpoint.Addr())
		}
	}
	o.bind.setKnown(addrs)
}

// refreshEndpoints learns roamed peers' addresses from the device.
func (o *Overlay) refreshEndpoints() {
	st, err := o.wgStats()
	if err != nil {
		return
	}
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	o.publishEndpointsLocked(st)
}

// hasPeer reports whether key is currently admitted.
func (o *Overlay) hasPeer(key [32]byte) bool {
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	_, ok := o.peers[key]
	return ok
}

// Revalidate removes at once every peer whose certificate has expired at now
// or is revoked (or otherwise no longer verifies) and returns their names.
// Call it whenever the Verifier's CRL changes; it also runs on a timer.
func (o *Overlay) Revalidate(now time.Time) []string {
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	var removed []string
	for _, e := range o.peers {
		if o.stillValid(e.id, now) {
			continue
		}
		why := "certificate no longer valid"
		if !now.Before(e.id.NotAfter) {
			why = "certificate expired"
		} else if o.verify.IsRevoked(e.id) {
			why = "certificate revoked"
		}
		o.removeLocked(e, why)
		removed = append(removed, e.id.Name)
	}
	if len(removed) > 0 {
		o.publishLocked()
	}
	slices.Sort(removed)
	return removed
}

// earliestExpiry returns the earliest NotAfter among admitted peers.
func (o *Overlay) earliestExpiry() (time.Time, bool) {
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	var t time.Time
	for _, e := range o.peers {
		if t.IsZero() || e.id.NotAfter.Before(t) {
			t = e.id.NotAfter
		}
	}
	return t, !t.IsZero()
}

// revalidateLoop runs Revalidate every RevalidateInterval and exactly at the
// earliest certificate expiry (measured on the injected clock).
func (o *Overlay) revalidateLoop() {
	defer o.wg.Done()
	tick := time.NewTicker(RevalidateInterval)
	defer tick.Stop()
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	arm := func() {
		d := time.Hour
		if t, ok := o.earliestExpiry(); ok {
			d = max(t.Sub(o.now()), 0)
		}
		expiry.Reset(min(d, time.Hour))
	}
	arm()
	for {
		select {
		case <-o.ctx.Done():
			return
		case <-tick.C:
			o.Revalidate(o.now())
			o.refreshEndpoints()
		case <-expiry.C:
			o.Revalidate(o.now())
		case <-o.changed:
		}
		arm()
	}
}

// wgPeerStats is what IpcGet reports per peer.
type wgPeerStats struct {
	endpoint      netip.AddrPort
	lastHandshake time.Time
	rx, tx        uint64
}

// wgStats parses the device's UAPI dump. The result is shared with
// recentStats callers: treat it as read-only.
func (o *Overlay) wgStats() (map[[32]byte]*wgPeerStats, error) {
	dump, err := o.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("overlay: IpcGet: %w", err)
	}
	st := parseIpcGet(dump)
	o.statsMu.Lock()
	o.statsCache, o.statsAt = st, time.Now()
	o.statsMu.Unlock()
	return st, nil
}

// recentStats returns device stats at most maxAge old. A dump costs time
// in proportion to the number of peers and holds the device's
// configuration lock, so many waiters (admissions being confirmed) share
// one dump instead of taking one each.
func (o *Overlay) recentStats(maxAge time.Duration) (map[[32]byte]*wgPeerStats, error) {
	o.statsFetch.Lock()
	defer o.statsFetch.Unlock()
	o.statsMu.Lock()
	st, at := o.statsCache, o.statsAt
	o.statsMu.Unlock()
	if st != nil && time.Since(at) < maxAge {
		return st, nil
	}
	return o.wgStats()
}

// parseIpcGet extracts per-peer endpoint, handshake time and byte counters.
func parseIpcGet(dump string) map[[32]byte]*wgPeerStats {
	out := make(map[[32]byte]*wgPeerStats)
	var cur *wgPeerStats
	var sec, nsec int64
	flush := func() {
		if cur != nil && (sec != 0 || nsec != 0) {
			cur.lastHandshake = time.Unix(sec, nsec)
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(dump))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			var key [32]byte
			if b, err := hex.DecodeString(v); err == nil && len(b) == 32 {
				copy(key[:], b)
				cur = &wgPeerStats{}
				out[key] = cur
			} else {
				cur = nil
			}
		case "endpoint":
			if cur != nil {
				cur.endpoint, _ = netip.ParseAddrPort(v)
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			if cur != nil {
				cur.rx, _ = strconv.ParseUint(v, 10, 64)
			}
		case "tx_bytes":
			if cur != nil {
				cur.tx, _ = strconv.ParseUint(v, 10, 64)
			}
		}
	}
	flush()
	return out
}

// Peers returns the admitted peers with their WireGuard session state,
// sorted by name.
func (o *Overlay) Peers() []PeerStatus {
	wg, err := o.wgStats()
	if err != nil {
		wg = nil
	}
	o.peersMu.Lock()
	out := make([]PeerStatus, 0, len(o.peers))
	for _, e := range o.peers {
		out = append(out, statusOf(e, wg[e.key]))
	}
	o.peersMu.Unlock()
	slices.SortFunc(out, func(a, b PeerStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Peer returns the status of the admitted peer with WireGuard key key,
// from a device read shared for confirmPoll (cheaper than Peers for one
// peer); ok is false if no such peer is admitted.
func (o *Overlay) Peer(key [32]byte) (ps PeerStatus, ok bool) {
	wg, err := o.recentStats(confirmPoll)
	if err != nil {
		wg = nil
	}
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	e := o.peers[key]
	if e == nil {
		return PeerStatus{}, false
	}
	return statusOf(e, wg[key]), true
}

// statusOf is e's status with the device's counters s (nil if unknown).
func statusOf(e *peerEntry, s *wgPeerStats) PeerStatus {
	ps := PeerStatus{
		Name:         e.id.Name,
		Addresses:    slices.Clone(e.id.Addresses),
		WireGuardKey: e.key,
		Endpoint:     e.endpoint,
		AdmittedAt:   e.admittedAt,
		NotAfter:     e.id.NotAfter,
		State:        PeerAdmitted,
		Identity:     e.id,
	}
	if s != nil {
		if s.endpoint.IsValid() {
			ps.Endpoint = s.endpoint
		}
		ps.LastHandshake, ps.RxBytes, ps.TxBytes = s.lastHandshake, s.rx, s.tx
		if !s.lastHandshake.IsZero() {
			ps.State = PeerIdle
			if time.Since(s.lastHandshake) < sessionFresh {
				ps.State = PeerConnected
			}
		}
	}
	return ps
}

// RemovePeer removes the admitted peer with WireGuard key key (its
// sessions too), e.g. when failure detection declared it dead. It reports
// whether there was one. A static peer is admitted again by its loop.
func (o *Overlay) RemovePeer(key [32]byte, why string) bool {
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	e := o.peers[key]
	if e == nil {
		return false
	}
	o.removeLocked(e, why)
	o.publishLocked()
	return true
}

// RemovePeerAdmittedBefore removes the peer with WireGuard key key only if
// it was admitted before t (on the overlay's clock, Config.Now), and
// reports whether it did. A caller that decided on a removal at t (failure
// detection declared the peer dead, say) leaves alone an admission made
// since, which proved the peer alive.
func (o *Overlay) RemovePeerAdmittedBefore(key [32]byte, t time.Time, why string) bool {
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	e := o.peers[key]
	if e == nil || !e.admittedAt.Before(t) {
		return false
	}
	o.removeLocked(e, why)
	o.publishLocked()
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
