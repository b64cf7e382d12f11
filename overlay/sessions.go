package overlay

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/aigrid/gridnet/overlay/internal/session"
	"golang.zx2c4.com/wireguard/device"
)

// Sessions: every admitted peer's WireGuard session is one session.Session
// in o.sessions, a session.Table whose one goroutine runs the session
// rules (package session) and hands their actions to sessionExec. The
// peer table (o.peers, under peersMu) says who is admitted, for the
// firewall and the status; the device follows it through the table's
// actions, run in order per peer and outside peersMu:
//
//   - admit posts Admitted (the session decides whether this side starts
//     WireGuard, and whether an existing session stays), and every
//     removal posts Forgotten, both under peersMu, so that the table sees
//     them in the order the peer table changed;
//   - the Bind's watch of the peer's endpoint posts SessionUp at the
//     first handshake response or transport message after a Configure or
//     a kick (no device dump);
//   - a session still not up SessionSetup after its admission is given up:
//     the table removes the peer, and whoever wanted it (the node's gossip,
//     the static peer loop, an Admit caller) admits it again.
//
// Until the session rules also drive the admissions (who admits, when to
// retry, liveness), the overlay keeps the start rule of its admissions
// (startsSession): the responder starts, and of two nodes admitting each
// other at once the lower key. Its Admitted events say so through
// Initiates.

// sessionTimers are the session rules' timings as the overlay uses them.
func sessionTimers() session.Timers { return session.DefaultTimers() }

// sessionExec runs the session table's actions on the device. Its state
// is used by the table's goroutine only.
type sessionExec struct {
	o *Overlay
	// configured is the endpoint each peer in the device was given (its
	// admitted one), and watches their session watches.
	configured map[[32]byte]netip.AddrPort
	watches    map[[32]byte]*sessionWatch
	// lastAdmitted is where each peer with a session was last admitted
	// from (where it is admitted again if no Want named it); tries
	// counts its admissions (which endpoint is next), admitting cancels
	// the one that runs (with errAdmitCancelled).
	lastAdmitted map[[32]byte]netip.AddrPort
	tries        map[[32]byte]int
	admitting    map[[32]byte]context.CancelCauseFunc
	probeSlots   chan struct{}
	// mac1 checks that an initiation is addressed to this node's key
	// (for the session watches).
	mac1 device.CookieChecker
}

func newSessionExec(o *Overlay) *sessionExec {
	x := &sessionExec{
		o: o, configured: map[[32]byte]netip.AddrPort{}, watches: map[[32]byte]*sessionWatch{},
		lastAdmitted: map[[32]byte]netip.AddrPort{}, tries: map[[32]byte]int{},
		admitting: map[[32]byte]context.CancelCauseFunc{}, probeSlots: make(chan struct{}, maxProbes),
	}
	x.mac1.Init(device.NoisePublicKey(o.wgPub))
	return x
}

// Execute runs one action of peer's session (see session.Executor).
func (x *sessionExec) Execute(peer session.Key, a session.Action, s session.Session) {
	key := [32]byte(peer)
	if x.o.log.Enabled(context.Background(), slog.LevelDebug) {
		x.o.log.Debug("session action", "peer", shortKey(key), "action", a.Kind.String(), "start", a.Start, "fresh", a.Fresh, "state", s.State.String(), "starts", s.Starts)
	}
	switch a.Kind {
	case session.Admit:
		x.admitAction(key, s)
	case session.CancelAdmit:
		x.cancelAdmit(key)
	case session.Configure:
		x.configure(key, a)
	case session.NewInitiation:
		x.newInitiation(key)
	case session.ResendInitiation:
		ep, ok := x.configured[key]
		if !ok {
			return
		}
		x.arm(key, ep)
		pkt := x.o.bind.keptInitiation(ep)
		if pkt == nil || x.o.sendCounted(&x.o.stats.kicks, pkt, ep) != nil {
			x.newInitiation(key)
			return
		}
		x.o.log.Debug("session not up in time; initiation sent again", "peer", shortKey(key))
	case session.EnableKeepalive:
		x.setDevice(key, fmt.Sprintf("public_key=%s\nupdate_only=true\npersistent_keepalive_interval=%d\n", hex.EncodeToString(key[:]), PersistentKeepalive))
	case session.Probe:
		x.probe(key)
	case session.Remove:
		x.remove(key, a.Reason, s)
	}
}

// Forget drops what the executor kept of a peer whose session the table
// dropped (see session.Forgetter).
func (x *sessionExec) Forget(peer session.Key) {
	key := [32]byte(peer)
	x.cancelAdmit(key)
	delete(x.lastAdmitted, key)
	delete(x.tries, key)
	// A node given up (or removed) is wanted again only if Want names it
	// again: a live member's record does (reconcile); a node gone for good
	// leaves nothing behind. Static peers stay wanted.
	o := x.o
	o.wantMu.Lock()
	if w, ok := o.wanted[key]; ok && !w.persistent {
		delete(o.wanted, key)
	} else if ok {
		o.postWant(key, true) // a static peer is never given up
	}
	o.wantMu.Unlock()
}

// configure puts the admitted peer in the device: its host routes, and,
// if this side starts the session, its endpoint and a keepalive (which
// sends the initiation); a.Fresh with a.Start drops what the device had
// of it first.
func (x *sessionExec) configure(key [32]byte, a session.Action) {
	o := x.o
	o.peersMu.Lock()
	e := o.peers[key]
	o.peersMu.Unlock()
	if e == nil {
		return // removed since; its removal follows in the table
	}
	hk := hex.EncodeToString(key[:])
	var b strings.Builder
	if a.Fresh && a.Start {
		// The peer restarted or lost the session: drop what the device
		// holds of it, so that the keepalive below starts a new one. The
		// side that does not start keeps its state: the starter's new
		// initiation replaces it, and dropping it could drop the answer
		// to that initiation after it was sent.
		fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hk)
	}
	fmt.Fprintf(&b, "public_key=%s\nreplace_allowed_ips=true\n", hk)
	if a.Start {
		// A peer whose session the other side starts gets no endpoint:
		// WireGuard learns it from the other side's initiation. Until
		// then this side cannot send an initiation of its own, which any
		// outbound packet would otherwise trigger, and two initiations
		// that cross invalidate each other.
		fmt.Fprintf(&b, "endpoint=%s\npersistent_keepalive_interval=%d\n", e.endpoint, PersistentKeepalive)
	}
	for _, pfx := range e.id.Addresses {
		fmt.Fprintf(&b, "allowed_ip=%s\n", hostRoute(pfx))
	}
	if old, ok := x.configured[key]; ok && old != e.endpoint {
		o.bind.forgetInitiation(old)
		if w := x.watches[key]; w != nil {
			o.bind.unwatchEndpoint(old, w)
		}
	}
	x.configured[key] = e.endpoint
	x.lastAdmitted[key] = e.endpoint
	x.arm(key, e.endpoint)
	if a.Fresh && a.Start {
		x.forgetIndices(key) // the device drops the peer's sessions
	}
	if a.Start && !a.Fresh {
		// A try WireGuard made without an endpoint holds the next
		// initiation back for its 5 s retry: clear it.
		x.clearHandshake(key)
	}
	if !x.setDevice(key, b.String()) {
		return
	}
	if a.Start {
		// Turning the keepalive on sent the initiation if it was off;
		// if not, this sends it (and never a second one).
		x.initiate(key)
	}
}

// newInitiation gives WireGuard the admitted endpoint and a keepalive,
// drops its pending handshake and sends a new initiation at once
// (WireGuard itself would wait out its 5 s retry). Exactly one goes out:
// giving the keepalive may send one by itself, and WireGuard then skips
// the second, which matters because a peer refuses a second initiation
// within 20 ms as a flood.
func (x *sessionExec) newInitiation(key [32]byte) {
	ep, ok := x.configured[key]
	if !ok || !x.clearHandshake(key) {
		return
	}
	x.arm(key, ep)
	// Counted before it goes out (turning the keepalive on may send it),
	// as sendCounted does.
	x.o.stats.kicks.Add(1)
	if !x.setDevice(key, fmt.Sprintf("public_key=%s\nupdate_only=true\nendpoint=%s\npersistent_keepalive_interval=%d\n",
		hex.EncodeToString(key[:]), ep, PersistentKeepalive)) {
		x.o.stats.kicks.Add(^uint64(0))
		return
	}
	x.initiate(key)
	x.o.log.Debug("session not up in time; started again", "peer", shortKey(key))
}

// remove takes the peer out of the device. A session given up by the
// table (s.AdmitRef names the admission it was built on) also takes the
// peer's entry out of the peer table, unless a newer admission replaced
// it; and a peer nobody wants (one that admitted this node, not named by
// Want) is not admitted again from here: it is forgotten.
func (x *sessionExec) remove(key [32]byte, why string, s session.Session) {
	o := x.o
	if s.AdmitRef != 0 {
		o.dropAdmission(key, s.AdmitRef, why, s.State != session.Gone)
	}
	x.setDevice(key, fmt.Sprintf("public_key=%s\nremove=true\n", hex.EncodeToString(key[:])))
	if ep, ok := x.configured[key]; ok {
		o.bind.forgetInitiation(ep)
		if w := x.watches[key]; w != nil {
			o.bind.unwatchEndpoint(ep, w)
		}
	}
	delete(x.configured, key)
	delete(x.watches, key)
}

// dropAdmission takes the peer admitted by admission ref out of the peer
// table, unless a newer admission replaced it, and reports whether it
// did. forget: if nobody wants the peer (it admitted this node, no Want
// named it), its session is forgotten too rather than retried from here;
// posted under peersMu, so that it comes before any newer admission.
func (o *Overlay) dropAdmission(key [32]byte, ref uint64, why string, forget bool) bool {
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	e := o.peers[key]
	if e == nil || e.gen != ref {
		return false
	}
	o.dropLocked(e, why)
	o.publishLocked()
	if _, wanted := o.wantedPeerOf(key); forget && !wanted {
		o.sessions.Post(session.Key(key), session.Event{Kind: session.Forgotten})
	}
	return true
}

// arm makes the Bind report the peer's session up at the next handshake
// response or transport message from ep on it (see sessionWatch).
func (x *sessionExec) arm(key [32]byte, ep netip.AddrPort) {
	w := x.watches[key]
	if w == nil {
		w = &sessionWatch{key: key, up: x.o.sessionUp, started: x.o.peerStarted, mac1: &x.mac1}
		x.watches[key] = w
	}
	x.o.bind.watchEndpoint(ep, w)
}

// setDevice applies a UAPI configuration and reports whether it worked.
func (x *sessionExec) setDevice(key [32]byte, cfg string) bool {
	if err := x.o.dev.IpcSet(cfg); err != nil {
		if x.o.ctx.Err() == nil {
			x.o.log.Warn("configure WireGuard peer", "peer", shortKey(key), "err", err.Error())
		}
		return false
	}
	return true
}

// clearHandshake drops the peer's pending WireGuard handshake, its
// session keys, and the hold WireGuard puts on a new initiation after one
// was tried (also when it failed for want of an endpoint). It reports
// whether the device has the peer.
func (x *sessionExec) clearHandshake(key [32]byte) bool {
	p := x.o.dev.LookupPeer(device.NoisePublicKey(key))
	if p != nil {
		// The session of the last handshake goes with it (WireGuard drops
		// what arrives on its index): nothing on it proves a session now.
		x.forgetIndices(key)
		p.ExpireCurrentKeypairs()
	}
	return p != nil
}

// forgetIndices makes the peer's session watch forget the indices of the
// handshakes this node sent so far: their sessions are gone from the
// device, and only the next handshake's count.
func (x *sessionExec) forgetIndices(key [32]byte) {
	if w := x.watches[key]; w != nil {
		w.sentInit.Store(0)
		w.sentResp.Store(0)
	}
}

// initiate sends a WireGuard handshake initiation to the peer unless one
// went out within WireGuard's retry time.
func (x *sessionExec) initiate(key [32]byte) {
	p := x.o.dev.LookupPeer(device.NoisePublicKey(key))
	if p == nil {
		return
	}
	if err := p.SendHandshakeInitiation(false); err != nil {
		x.o.log.Debug("start session", "peer", shortKey(key), "err", err.Error())
	}
}

// sessionUp is the Bind's report that a watched peer's session came up.
func (o *Overlay) sessionUp(key [32]byte) {
	if o.log.Enabled(context.Background(), slog.LevelDebug) {
		o.log.Debug("session watch: up", "peer", shortKey(key))
	}
	o.sessions.Post(session.Key(key), session.Event{Kind: session.SessionUp})
}

// peerStarted is the Bind's report that a watched peer's initiation
// arrived: the peer is starting the pending session.
func (o *Overlay) peerStarted(key [32]byte) {
	if o.log.Enabled(context.Background(), slog.LevelDebug) {
		o.log.Debug("session watch: peer started", "peer", shortKey(key))
	}
	o.sessions.Post(session.Key(key), session.Event{Kind: session.PeerStarted})
}

// awaitSession waits until the session of the peer admitted as entry is
// up. It fails if the session is given up or the peer removed, if ctx
// ends, or if refusals brings a refusal of this admission (refusal returns
// it as an error, nil for anything else): the entry then goes at once.
func (o *Overlay) awaitSession(ctx context.Context, entry *peerEntry, refusals <-chan inboundPacket, refusal func(inboundPacket) error) error {
	key, name := session.Key(entry.key), entry.id.Name
	for {
		changed := o.sessions.Changed()
		switch o.sessions.Get(key).State {
		case session.Up, session.Suspect:
			return nil
		case session.Awaiting:
		default:
			return fmt.Errorf("%w with %q", errNotConfirmed, name)
		}
		select {
		case <-changed:
		case in := <-refusals:
			if err := refusal(in); err != nil {
				o.peersMu.Lock()
				if o.peers[entry.key] == entry {
					o.removeLocked(entry, "refused by the peer")
					o.publishLocked()
				}
				o.peersMu.Unlock()
				o.deviceCaughtUp() // gone from the device when Admit returns
				return err
			}
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), errAdmitCancelled) {
				// The session rules stopped this admission (the peer's own
				// admission of this node completed meanwhile, say), or it
				// ran out of the time they gave it, after it had installed
				// the peer: the admission is done, and
				// the session is the rules' to judge from here, as after
				// any admission. Removing the entry here would undo the
				// admission the rules have just taken. (Stopped because
				// the peer went, its session is gone: not confirmed.)
				switch o.sessions.Get(key).State {
				case session.Awaiting, session.Up, session.Suspect:
					return nil
				}
				return fmt.Errorf("%w with %q", errNotConfirmed, name)
			}
			// The caller gave up: this admission's entry goes (not a newer
			// one), as a refused one does, before Admit returns.
			o.peersMu.Lock()
			removed := o.peers[entry.key] == entry && o.sessions.Get(key).State == session.Awaiting
			if removed {
				o.removeLocked(entry, "no WireGuard session before the admission was given up")
				o.publishLocked()
			}
			o.peersMu.Unlock()
			if removed {
				o.deviceCaughtUp()
			}
			return fmt.Errorf("%w with %q: %w", errNotConfirmed, name, ctx.Err())
		}
	}
}

// shortKey is a WireGuard key's first bytes in hex, for logs.
func shortKey(k [32]byte) string { return hex.EncodeToString(k[:6]) }

var _ session.Executor = (*sessionExec)(nil)
