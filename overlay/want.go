package overlay

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/internal/session"
)

// wantedPeer is a node this overlay should hold a session with: one a
// verified gossip record named (Want), or a static peer once its key is
// known (persistent: never given up).
type wantedPeer struct {
	id         *cert.Identity
	endpoints  []netip.AddrPort
	persistent bool
}

// Want asks for a session with the node whose certificate id the caller
// verified (a gossip record), reachable at endpoints. The session rules
// decide who admits (the lower WireGuard key at once, the other after a
// moment), retry with backoff, and give the node up after many failures
// in a row until Want names it again. Want of a node that has a session
// changes nothing but its endpoints for later admissions.
func (o *Overlay) Want(id *cert.Identity, endpoints []netip.AddrPort) {
	o.want(id, endpoints, false)
}

func (o *Overlay) want(id *cert.Identity, endpoints []netip.AddrPort, persistent bool) {
	key := id.WireGuardKey
	if key == o.wgPub || len(endpoints) == 0 {
		return
	}
	o.wantMu.Lock()
	old, had := o.wanted[key]
	persistent = persistent || (had && old.persistent)
	o.wanted[key] = wantedPeer{id: id, endpoints: slices.Clone(endpoints), persistent: persistent}
	o.postWant(key, persistent)
	o.wantMu.Unlock()
}

// Suspect tells the overlay that failure detection declared the peer with
// WireGuard key key suspect or dead. The peer keeps its tunnel if
// anything comes through it while it is probed (see Config.Probe);
// otherwise it is removed and admitted again later (a verdict may come
// from a starved node or an insider's word).
func (o *Overlay) Suspect(key [32]byte) {
	o.sessions.Post(session.Key(key), session.Event{Kind: session.Suspected})
}

// PeerLeft removes the peer with WireGuard key key, which signed its
// leave, at once, and wants it no more (until Want names it again) unless
// it is a static peer: that one is admitted again once it is back (a
// restart). The device no longer has it when PeerLeft returns.
func (o *Overlay) PeerLeft(key [32]byte) {
	o.wantMu.Lock()
	w, wanted := o.wanted[key]
	if !w.persistent {
		delete(o.wanted, key)
	}
	o.wantMu.Unlock()
	o.peersMu.Lock()
	if e := o.peers[key]; e != nil {
		o.dropLocked(e, "left the fabric")
		o.publishLocked()
	}
	o.sessions.Post(session.Key(key), session.Event{Kind: session.Left})
	if wanted && w.persistent {
		o.postWant(key, true)
	}
	o.peersMu.Unlock()
	o.deviceCaughtUp()
}

// postWant posts Want for key (the caller checked it is wanted).
func (o *Overlay) postWant(key [32]byte, persistent bool) {
	o.sessions.Post(session.Key(key), session.Event{
		Kind: session.Want, Initiates: session.Initiates(o.wgPub, key), Persistent: persistent,
	})
}

// KeysNamed returns the WireGuard keys of the admitted or wanted peers
// whose certificate is called name (a renewal with new keys can give a
// name two for a while).
func (o *Overlay) KeysNamed(name string) [][32]byte {
	var out [][32]byte
	o.peersMu.Lock()
	for k, e := range o.peers {
		if e.id.Name == name {
			out = append(out, k)
		}
	}
	o.peersMu.Unlock()
	o.wantMu.Lock()
	for k, w := range o.wanted {
		if w.id.Name == name && !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	o.wantMu.Unlock()
	return out
}

// wantedPeerOf returns what Want said of key.
func (o *Overlay) wantedPeerOf(key [32]byte) (wantedPeer, bool) {
	o.wantMu.Lock()
	defer o.wantMu.Unlock()
	w, ok := o.wanted[key]
	return w, ok
}

// unwant forgets the want of key.
func (o *Overlay) unwant(key [32]byte) {
	o.wantMu.Lock()
	delete(o.wanted, key)
	o.wantMu.Unlock()
}

// admitAction runs the session rules' Admit for key: an admission of the
// peer as initiator, at the next of its endpoints (a peer with several
// tries them in turn, one per try). The admission reports Admitted
// itself (admit); a failure of the handshake is reported as AdmitFailed.
// A session that does not come after it is the session rules' to judge.
// A peer that is not initiating waits while a handshake from one of the
// peer's endpoints is being answered here: the peer is admitting this
// node, and a handshake of its own would cross it.
func (x *sessionExec) admitAction(key [32]byte, s session.Session) {
	o := x.o
	eps := x.endpointsOf(key)
	if len(eps) == 0 {
		o.sessions.Post(session.Key(key), session.Event{Kind: session.AdmitFailed})
		return
	}
	if !s.Initiates {
		for _, ep := range eps {
			if o.Responding(ep) {
				o.sessions.Post(session.Key(key), session.Event{Kind: session.Answering})
				return
			}
		}
	}
	ep := eps[x.tries[key]%len(eps)]
	x.tries[key]++
	if cancel := x.admitting[key]; cancel != nil {
		cancel(errAdmitCancelled)
	}
	ctx, cancelRuled, cancel := ruledAdmission(o.ctx, o.timers.AdmitTimeout+o.timers.SessionSetup)
	x.admitting[key] = cancelRuled
	o.wg.Add(1) // the table's goroutine is counted too: never from zero
	go func() {
		defer o.wg.Done()
		defer cancelRuled(nil)
		defer cancel()
		// Only the wanted node is admitted. A static peer (persistent)
		// is wanted by its endpoint: a node set up again there with new
		// keys is admitted and takes the want over.
		var expect *[32]byte
		if w, ok := o.wantedPeerOf(key); !ok || !w.persistent {
			expect = &key
		}
		id, err := o.admitAt(ctx, ep, expect)
		if err == nil && id.WireGuardKey != key {
			o.unwant(key)
			o.want(id, []netip.AddrPort{ep}, true)
			o.sessions.Post(session.Key(key), session.Event{Kind: session.Forgotten})
			return
		}
		// A cancelled try is the session rules' doing, and a session that
		// did not come after the admission is theirs to judge: only a
		// failed handshake is reported.
		if err != nil && ctx.Err() == nil && !errors.Is(err, errNotConfirmed) {
			o.log.Info("admission failed", "name", x.nameOf(key), "endpoint", ep.String(), "err", err.Error())
			o.sessions.Post(session.Key(key), session.Event{Kind: session.AdmitFailed})
		}
	}()
}

// errAdmitCancelled is the cause of an admission the session rules
// stopped (CancelAdmit, or a new try of theirs), or that ran out of the
// time they gave it: if it got as far as installing the peer, the peer
// stays (see awaitSession).
var errAdmitCancelled = errors.New("overlay: admission stopped by the session rules")

// ruledAdmission is the context of an admission the session rules run:
// cancelRuled stops it (with errAdmitCancelled), and so does bound, the
// most it may take. Once the admission has installed the peer, the
// session is the rules' to judge (Timers.SessionSetup after they took
// the admission), so running out of bound does not remove it: on a
// loaded node an admission that completed late would otherwise take the
// peer away before the rules' own deadline. cancel releases the context.
func ruledAdmission(parent context.Context, bound time.Duration) (ctx context.Context, cancelRuled context.CancelCauseFunc, cancel context.CancelFunc) {
	ruled, cancelRuled := context.WithCancelCause(parent)
	ctx, cancel = context.WithTimeoutCause(ruled, bound, errAdmitCancelled)
	return ctx, cancelRuled, cancel
}

// cancelAdmit stops key's admission if one runs.
func (x *sessionExec) cancelAdmit(key [32]byte) {
	if cancel := x.admitting[key]; cancel != nil {
		cancel(errAdmitCancelled)
		delete(x.admitting, key)
	}
}

// endpointsOf is where key can be admitted: the endpoints Want gave, or
// the endpoint it was last admitted from.
func (x *sessionExec) endpointsOf(key [32]byte) []netip.AddrPort {
	if w, ok := x.o.wantedPeerOf(key); ok {
		return w.endpoints
	}
	if ep, ok := x.lastAdmitted[key]; ok {
		return []netip.AddrPort{ep}
	}
	return nil
}

// nameOf is key's certificate name, for logs.
func (x *sessionExec) nameOf(key [32]byte) string {
	if w, ok := x.o.wantedPeerOf(key); ok {
		return w.id.Name
	}
	x.o.peersMu.Lock()
	defer x.o.peersMu.Unlock()
	if e := x.o.peers[key]; e != nil {
		return e.id.Name
	}
	return shortKey(key)
}

// maxProbes bounds the probes of suspected peers running at once; more
// wait for a slot (each ends within the probe's own timeout).
const maxProbes = 8

// probe checks a suspected peer through its tunnel (Config.Probe, in a
// goroutine of its own): an answer is reported as Heard. The session
// watch is armed too, so anything else that comes through the tunnel
// from the peer's endpoint counts as well.
func (x *sessionExec) probe(key [32]byte) {
	o := x.o
	if ep, ok := x.configured[key]; ok {
		x.arm(key, ep)
	}
	if o.probe == nil {
		return
	}
	o.peersMu.Lock()
	e := o.peers[key]
	o.peersMu.Unlock()
	if e == nil {
		return
	}
	o.stats.probes.Add(1)
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		select {
		case x.probeSlots <- struct{}{}:
		case <-o.ctx.Done():
			return
		}
		ok := o.probe(e.id)
		<-x.probeSlots
		if ok {
			o.sessions.Post(session.Key(key), session.Event{Kind: session.Heard})
		}
	}()
}
