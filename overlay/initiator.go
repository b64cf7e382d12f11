package overlay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/handshake"
)

const (
	// AttemptTimeout is how long one attempt (one msg1, one ephemeral
	// key) waits for its msg2: as long as a responder that answered it
	// keeps the handshake open (HalfOpenTimeout). A loaded responder
	// answers late, not never, and a new attempt would cost it a second
	// answer (an ephemeral key, two agreements, a signature) while the
	// first is still on its way: under load, attempts that gave up early
	// multiplied the responders' work (measured: 200 nodes in one process
	// on two cores made 2.3 answers per admission that completed). The
	// attempt sends its msg1 again meanwhile (Msg1Resend), so a lost msg1
	// or msg2 costs a resend, not the attempt.
	AttemptTimeout = HalfOpenTimeout
	// BackoffMin is the first retry delay.
	BackoffMin = 100 * time.Millisecond
	// BackoffMax caps the retry delay so a returning peer is found quickly.
	BackoffMax = 30 * time.Second
	// statusPoll bounds how often a device dump is taken for one peer's
	// status (Peer): all reads within one period share it (see
	// recentStats).
	statusPoll = 100 * time.Millisecond
	// Msg1Resend is how often an attempt sends its msg1 again while it has
	// no answer during its first two seconds (jittered to between three
	// quarters and five quarters of it; quickResends times), and half as
	// often after that until the attempt ends, at most maxResends times in
	// all. A responder under a spoofed flood answers only some of the
	// msg1s without a cookie (the cookie replies it cannot send in time
	// are dropped, cookieQueueLen), and the kernel may drop others; each
	// resend is another draw. The responder answers a resend of a msg1 it
	// already holds with the msg2 it made (no new slot, no new Noise work;
	// see respond), so resends cost a responder that is merely slow
	// nothing but the datagrams.
	Msg1Resend = 125 * time.Millisecond
	// quickResends are the resends of an attempt's first two seconds.
	quickResends = int(2 * time.Second / Msg1Resend)
	// maxResends bounds the resends of one attempt: the quick ones, and
	// one every two Msg1Resend for the rest of AttemptTimeout. With the
	// msg1 itself and the repeat a cookie reply triggers, that is at most
	// 10 msg1s in the first second of an attempt, 8 in the second and 4 a
	// second after, within the per-source limit (DefaultHandshakeRate and
	// DefaultHandshakeBurst) of a responder.
	maxResends = quickResends + int((AttemptTimeout-2*time.Second)/(2*Msg1Resend))
)

var (
	// errAttemptTimeout is a retryable attempt failure.
	errAttemptTimeout = errors.New("overlay: no handshake response")
	// errNotConfirmed: admitted, but no WireGuard session formed (retryable).
	errNotConfirmed = errors.New("overlay: no WireGuard session after admission")
)

// backoff yields exponentially growing delays with jitter in [d/2, d].
type backoff struct{ cur time.Duration }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = BackoffMin
	} else {
		b.cur = min(b.cur*2, BackoffMax)
	}
	half := b.cur / 2
	return half + rand.N(half+1)
}

func (b *backoff) reset() { b.cur = 0 }

// atLeast makes the next delay at least about d (d to 2d).
func (b *backoff) atLeast(d time.Duration) { b.cur = max(b.cur, d) }

// resendDelay is the wait before an attempt's resend number n (from 0)
// of msg1: Msg1Resend for the quick ones, twice that after, jittered to
// [3/4, 5/4) of it so that many initiators started at once (a mesh coming
// up) do not resend in step.
func resendDelay(n int) time.Duration {
	d := Msg1Resend
	if n >= quickResends {
		d *= 2
	}
	return d*3/4 + rand.N(d/2)
}

// sleep waits d or until ctx ends; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Admit runs the handshake as initiator with the node at endpoint and, once
// msg2 verified, adds it as a WireGuard peer, sends msg3 and waits for the
// WireGuard session the responder then starts (the session table gives it
// up after session.Timers.SessionSetup, and the attempt fails). Lost or
// unanswered attempts are retried with exponential backoff and jitter until
// ctx ends or the overlay closes. A verification refusal (bad certificate,
// key mismatch, bad signature, address conflict) is returned at once as a
// *RejectError: retrying would not change the answer. A refusal by the
// other side (*RefusedError, recorded in Refusals) is retried, after at
// least refusalBackoff (busyBackoff when it was rate limited): the other
// side may change its mind (a renewed certificate, a rate limit that
// passed).
func (o *Overlay) Admit(ctx context.Context, endpoint netip.AddrPort) (*cert.Identity, error) {
	return o.admitAt(ctx, endpoint, nil)
}

// errOtherNode: the node that answered at an endpoint is not the one the
// admission was for (see admitAt).
var errOtherNode = errors.New("another node answers at the endpoint")

// admitAt is Admit; with expect set, it admits only the node with that
// WireGuard key: another node answering at the endpoint (an address
// reused, or an insider's record naming another member's endpoint) gets
// no msg3 and keeps its session here untouched, and errOtherNode is
// returned at once.
func (o *Overlay) admitAt(ctx context.Context, endpoint netip.AddrPort, expect *[32]byte) (*cert.Identity, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(o.ctx, cancel)
	defer stop()
	var bo backoff
	var refused *RefusedError // the last refusal, for the final error
	for {
		id, err := o.attempt(ctx, endpoint, expect)
		if err == nil {
			return id, nil
		}
		if errors.Is(err, errOtherNode) {
			return nil, fmt.Errorf("overlay: admit %s: %w", endpoint, err)
		}
		var rej *RejectError
		if errors.As(err, &rej) {
			return nil, fmt.Errorf("overlay: admit %s: %w", endpoint, err)
		}
		var now *RefusedError
		if errors.As(err, &now) {
			refused = now
			if now.Code == handshake.RefusalRateLimited {
				bo.atLeast(busyBackoff)
			} else {
				bo.atLeast(refusalBackoff)
			}
		}
		if ctx.Err() != nil || !sleep(ctx, bo.next()) {
			errs := []error{ctx.Err(), err}
			if refused != nil && now == nil {
				errs = append(errs, refused) // say why, if the last try ran out of time
			}
			return nil, fmt.Errorf("overlay: admit %s: %w", endpoint, errors.Join(errs...))
		}
	}
}

// attempt is one initiator handshake. Retryable failures are returned as
// plain errors, refusals as *RejectError.
func (o *Overlay) attempt(ctx context.Context, endpoint netip.AddrPort, expect *[32]byte) (*cert.Identity, error) {
	ch := make(chan inboundPacket, 1)
	o.hsMu.Lock()
	idx := o.newIndexLocked()
	o.pending[idx] = ch
	o.attempting[endpoint]++
	o.hsMu.Unlock()
	defer func() {
		o.hsMu.Lock()
		delete(o.pending, idx)
		if o.attempting[endpoint]--; o.attempting[endpoint] <= 0 {
			delete(o.attempting, endpoint)
		}
		o.hsMu.Unlock()
	}()

	init, msg1, err := handshake.NewInitiator(o.credentials(), idx)
	if err != nil {
		return nil, fmt.Errorf("overlay: start handshake: %w", err)
	}
	// A cookie this endpoint gave lately goes with msg1 (see cookie.go).
	cookie, carried := o.jar.get(endpoint)
	if carried {
		if msg1, err = init.Msg1WithCookie(cookie); err != nil {
			return nil, fmt.Errorf("overlay: start handshake: %w", err)
		}
	}
	if err := o.sendCounted(&o.stats.initiated, msg1, endpoint); err != nil {
		return nil, err
	}
	sent := time.Now()
	timer := time.NewTimer(AttemptTimeout)
	defer timer.Stop()
	resend := time.NewTimer(resendDelay(0))
	defer resend.Stop()
	resends := 0
	repeated := false // msg1 went again with a cookie
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-resend.C:
			// Still no msg2 nor refusal: the same msg1 again (with the
			// latest cookie, if one came), driven by this clock alone, so
			// that nobody can make the initiator send more of them.
			if resends >= maxResends {
				continue
			}
			if err := o.sendCounted(&o.stats.resent, msg1, endpoint); err != nil {
				return nil, err
			}
			resends++
			resend.Reset(resendDelay(resends))
		case <-timer.C:
			o.stats.timeouts.Add(1)
			if carried && !repeated {
				o.jar.drop(endpoint, cookie) // perhaps not understood: go without
			}
			return nil, errAttemptTimeout
		case in := <-ch:
			if in.from != endpoint {
				o.stats.junk.Add(1)
				continue // not from whom we asked: keep waiting
			}
			if in.pkt[1] == handshake.KindCookie {
				// The responder is under load: repeat msg1 with the
				// cookie, once per attempt.
				c, ok := o.openCookie(init, in)
				if !ok {
					continue
				}
				o.jar.put(endpoint, c)
				if repeated {
					continue
				}
				repeated = true
				again, err := init.Msg1WithCookie(c)
				if err != nil {
					return nil, fmt.Errorf("overlay: repeat msg1: %w", err)
				}
				if err := o.bind.SendTo(again, endpoint); err != nil {
					return nil, err
				}
				msg1 = again      // resends carry the cookie too
				sent = time.Now() // msg2 answers the repeat
				continue
			}
			if in.pkt[1] == handshake.KindRefusal {
				// Only a busy refusal can come now; a forged one is
				// dropped and the wait goes on.
				if code, ok := o.openRefusal(init, in, endpoint); ok {
					return nil, o.refused(endpoint, "", code)
				}
				continue
			}
			return o.complete(ctx, init, in, ch, endpoint, time.Since(sent), expect)
		}
	}
}

// complete verifies msg2 (which took rtt to come), admits the responder and
// sends msg3; a refusal of msg3 comes on ch.
func (o *Overlay) complete(ctx context.Context, init *handshake.Initiator, in inboundPacket, ch <-chan inboundPacket, endpoint netip.AddrPort, rtt time.Duration, expect *[32]byte) (*cert.Identity, error) {
	m, err := handshake.ParseMessage(in.pkt)
	if err != nil {
		o.stats.junk.Add(1)
		return nil, err
	}
	msg3, peer, err := init.ConsumeResponse(m, o.verifyPeer)
	if err != nil {
		rej := o.reject(err, endpoint, "initiator")
		if errors.Is(err, handshake.ErrNoise) || errors.Is(err, handshake.ErrMalformed) {
			return nil, err // possibly forged or corrupted in transit: retry
		}
		o.sendRefusal(err, endpoint, init.Refusal)
		return nil, rej
	}
	if expect != nil && peer.Static != *expect {
		return nil, fmt.Errorf("%w (%q)", errOtherNode, peer.Identity.Name)
	}
	if err := o.admit(peer, endpoint, false, rtt); err != nil {
		rej := o.reject(err, endpoint, "initiator") // counted before the refusal leaves
		o.sendRefusal(err, endpoint, init.Refusal)
		return nil, rej
	}
	o.peersMu.Lock()
	entry := o.peers[peer.Static]
	o.peersMu.Unlock()
	if entry == nil { // removed again at once (revoked, say)
		return nil, fmt.Errorf("%w with %q", errNotConfirmed, peer.Identity.Name)
	}
	// The peer must be in the device before msg3 goes: the responder
	// starts the WireGuard session as soon as it has it.
	o.sessions.Sync(ctx)
	if err := o.bind.SendTo(msg3, endpoint); err != nil {
		return nil, err // the session would not come: retry the handshake
	}
	refusal := func(in inboundPacket) error {
		if code, ok := o.openRefusal(init, in, endpoint); ok {
			return o.refused(endpoint, peer.Identity.Name, code)
		}
		return nil
	}
	// Counted before the session can be seen up (as the responder counts
	// before its admission starts it), and taken back if it does not come.
	o.stats.completed.Add(1)
	if err := o.awaitSession(ctx, entry, ch, refusal); err != nil {
		o.stats.completed.Add(^uint64(0))
		return nil, err
	}
	o.forgetRefusal(endpoint)
	return peer.Identity, nil
}

// AddStaticPeer keeps the node at endpoint admitted in the background: it
// admits it with backoff until it answers, and from then on the session
// rules keep it (never given up; admitted again whenever it is removed,
// by expiry, revocation or failure detection, at the endpoint given
// here); it stops when the overlay closes.
func (o *Overlay) AddStaticPeer(endpoint netip.AddrPort) {
	o.lifeMu.Lock()
	defer o.lifeMu.Unlock()
	if o.closing {
		return
	}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		o.staticPeer(endpoint)
	}()
}

func (o *Overlay) staticPeer(endpoint netip.AddrPort) {
	var bo backoff
	for o.ctx.Err() == nil {
		id, err := o.Admit(o.ctx, endpoint)
		if err != nil {
			if !sleep(o.ctx, bo.next()) {
				return
			}
			continue
		}
		// Its key is known now: the session rules keep it from here,
		// and never give it up.
		o.want(id, []netip.AddrPort{endpoint}, true)
		return
	}
}
