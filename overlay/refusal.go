package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/handshake"
)

// Refusals: a node that refuses a handshake tells the other side why
// (handshake.RefusalCode), and a node that is refused records and logs it.
//
// When a refusal is sent:
//   - by a responder, after msg3 passed Noise and was refused (certificate,
//     key binding, signature) or the verified initiator was refused by the
//     peer table (address conflict, revoked meanwhile): sealed;
//   - by an initiator, after msg2 passed Noise and was refused: sealed;
//   - by a responder that drops a msg1 under its per-source limits or with
//     full tables: busy (rate limited), never for anything else.
//
// Nothing is sent for a message that fails Noise: the refusal could not be
// authenticated, and its sender may be anyone. Every refusal is smaller
// than the message it answers, and at most DefaultRefusalRate per second
// go to one source (IPv4 address or IPv6 /64), at most refusalGlobalRate
// per second in all.
const (
	// DefaultRefusalRate is how many refusals per second (and burst) one
	// source address may receive.
	DefaultRefusalRate = 5
	// refusalGlobalRate bounds refusals per second to all sources
	// together: busy refusals are sent from the receive path.
	refusalGlobalRate = 200
	// refusalLogWindow: a refusal by the same peer for the same reason is
	// logged at most once per window.
	refusalLogWindow = time.Minute
	// maxRefusals bounds the refusals remembered (one per endpoint); the
	// oldest goes first.
	maxRefusals = 256
	// refusalBackoff is the least an initiator waits before it tries a
	// peer again that refused it; busyBackoff after a rate-limited
	// refusal (the limit refills a first message every 50 ms by default).
	refusalBackoff = time.Second
	busyBackoff    = 250 * time.Millisecond
	// numRefusalCodes is the number of refusal codes this version knows.
	numRefusalCodes = int(handshake.RefusalRateLimited) + 1
)

// RefusedError is an admission the other side refused and said why (it
// sent a refusal). Admit keeps trying after it, backing off: the cause
// may be fixed on either side (a renewed certificate, a CRL, a clock).
type RefusedError struct {
	// Endpoint is the refuser's underlay address.
	Endpoint netip.AddrPort
	// Name is the refuser's certificate name, if it was verified.
	Name string
	// Code is the refuser's reason.
	Code handshake.RefusalCode
}

// Error describes the refusal.
func (e *RefusedError) Error() string {
	who := e.Endpoint.String()
	if e.Name != "" {
		who = fmt.Sprintf("%q at %s", e.Name, e.Endpoint)
	}
	return fmt.Sprintf("overlay: refused by %s (%s): %s", who, e.Code, e.Code.Description())
}

// Refusal is the last refusal this node received from one endpoint.
type Refusal struct {
	// Endpoint is the refuser's underlay address.
	Endpoint netip.AddrPort
	// Name is the refuser's certificate name; empty when this node did not
	// verify it (the refuser refused msg2, or the refusal was busy).
	Name string
	// Code is the last reason given.
	Code handshake.RefusalCode
	// At is when the last refusal came.
	At time.Time
	// Count counts refusals from this endpoint since it was last admitted.
	Count uint64
}

type refusalRecord struct {
	Refusal
	loggedCode handshake.RefusalCode
	loggedAt   time.Time
}

// refusalGate limits the refusals this node sends.
type refusalGate struct {
	perSource, global *rateLimiter
}

func newRefusalGate(rate float64, now func() time.Time) *refusalGate {
	if rate <= 0 {
		rate = DefaultRefusalRate
	}
	return &refusalGate{
		perSource: newRateLimiter(rate, max(int(rate), 1), now),
		global:    newRateLimiter(refusalGlobalRate, refusalGlobalRate, now),
	}
}

// allow reports whether one more refusal may go to src.
func (g *refusalGate) allow(src netip.Addr) bool {
	return g.perSource.allow(src) && g.global.allow(netip.Addr{})
}

// refusalFor is the code to send for a refusal of this node's making (err
// as reject classifies it); ok is false when no refusal may be sent: the
// message did not pass Noise, or the failure is this node's own.
func refusalFor(err error) (code handshake.RefusalCode, ok bool) {
	switch {
	case errors.Is(err, handshake.ErrNoise), errors.Is(err, handshake.ErrState):
		return 0, false
	case errors.Is(err, handshake.ErrUnproven), errors.Is(err, handshake.ErrKeyMismatch), errors.Is(err, handshake.ErrSignature):
		return handshake.RefusalWrongKey, true
	case errors.Is(err, ErrAddressConflict):
		return handshake.RefusalAddressConflict, true
	case errors.Is(err, cert.ErrUnknownCA):
		return handshake.RefusalUnknownCA, true
	case errors.Is(err, cert.ErrRevoked):
		return handshake.RefusalRevoked, true
	case errors.Is(err, cert.ErrExpired):
		return handshake.RefusalExpired, true
	case errors.Is(err, cert.ErrNotYetValid):
		return handshake.RefusalNotYetValid, true
	case errors.Is(err, handshake.ErrCertificate), errors.Is(err, handshake.ErrMalformed), errors.Is(err, ErrSelf):
		return handshake.RefusalOther, true
	}
	return 0, false // a failure of this node's own (configuring the device)
}

// sendRefusal sends the refusal seal makes for err to to, within the
// refusal limits.
func (o *Overlay) sendRefusal(err error, to netip.AddrPort, seal func(handshake.RefusalCode) ([]byte, error)) {
	code, ok := refusalFor(err)
	if !ok {
		return
	}
	if !o.refusalGate.allow(to.Addr()) {
		o.stats.refusalsLimited.Add(1)
		return
	}
	pkt, serr := seal(code)
	if serr != nil {
		return
	}
	if serr := o.sendCounted(&o.stats.refusalsSent, pkt, to); serr != nil {
		o.logSend(serr)
	}
}

// refuseBusy answers a msg1 frame this node drops unprocessed with a busy
// refusal, within the refusal limits. It runs on the receive path.
func (o *Overlay) refuseBusy(pkt []byte, from netip.AddrPort) {
	if m, err := handshake.ParseMessage(pkt); err == nil {
		o.refuseBusyMsg(m, from)
	}
}

// refuseBusyMsg is refuseBusy for a parsed msg1.
func (o *Overlay) refuseBusyMsg(m handshake.Message, from netip.AddrPort) {
	if m.Kind != handshake.KindInit {
		return
	}
	if !o.refusalGate.allow(from.Addr()) {
		o.stats.refusalsLimited.Add(1)
		return
	}
	ref, err := handshake.BusyRefusal(m)
	if err != nil {
		return
	}
	if err := o.sendCounted(&o.stats.refusalsSent, ref, from); err != nil {
		o.logSend(err)
	}
}

// refused records a refusal this node received from from (name if
// verified), logs it at most once per reason per refusalLogWindow, and
// returns it as an error.
func (o *Overlay) refused(from netip.AddrPort, name string, code handshake.RefusalCode) *RefusedError {
	if int(code) < numRefusalCodes {
		o.stats.refusedBy[code].Add(1)
	}
	now := o.now()
	o.refusedMu.Lock()
	r := o.refusedFrom[from]
	if r == nil {
		if len(o.refusedFrom) >= maxRefusals {
			var oldest netip.AddrPort
			var at time.Time
			for ep, x := range o.refusedFrom {
				if at.IsZero() || x.At.Before(at) {
					oldest, at = ep, x.At
				}
			}
			delete(o.refusedFrom, oldest)
		}
		r = &refusalRecord{Refusal: Refusal{Endpoint: from}}
		o.refusedFrom[from] = r
	}
	r.Code, r.At = code, now
	r.Count++
	if name != "" {
		r.Name = name
	}
	name = r.Name
	logIt := r.loggedAt.IsZero() || r.loggedCode != code || now.Sub(r.loggedAt) >= refusalLogWindow
	if logIt {
		r.loggedCode, r.loggedAt = code, now
	}
	o.refusedMu.Unlock()
	if logIt {
		o.log.Warn("admission refused by peer", "peer", name, "endpoint", from.String(), "reason", code.String(), "explanation", code.Description())
	}
	return &RefusedError{Endpoint: from, Name: name, Code: code}
}

// forgetRefusal drops the refusal recorded for endpoint (it was admitted).
func (o *Overlay) forgetRefusal(endpoint netip.AddrPort) {
	o.refusedMu.Lock()
	delete(o.refusedFrom, endpoint)
	o.refusedMu.Unlock()
}

// Refusals returns the last refusal received from each endpoint that has
// refused this node since it was last admitted there, newest first.
func (o *Overlay) Refusals() []Refusal {
	o.refusedMu.Lock()
	out := make([]Refusal, 0, len(o.refusedFrom))
	for _, r := range o.refusedFrom {
		out = append(out, r.Refusal)
	}
	o.refusedMu.Unlock()
	slices.SortFunc(out, func(a, b Refusal) int { return b.At.Compare(a.At) })
	return out
}

// openRefusal reads a refusal for the initiator init; ok is false (and
// the packet counted as junk) if it is not a refusal of this handshake
// from endpoint.
func (o *Overlay) openRefusal(init *handshake.Initiator, in inboundPacket, endpoint netip.AddrPort) (handshake.RefusalCode, bool) {
	if in.from != endpoint || len(in.pkt) < 2 || in.pkt[1] != handshake.KindRefusal {
		o.stats.junk.Add(1)
		return 0, false
	}
	m, err := handshake.ParseMessage(in.pkt)
	if err != nil {
		o.stats.junk.Add(1)
		return 0, false
	}
	code, err := init.OpenRefusal(m)
	if err != nil {
		o.stats.junk.Add(1)
		return 0, false
	}
	return code, true
}

// refusedAsResponder handles a refusal of a handshake this node answered
// (the initiator refused msg2): once the refusal is authenticated, the
// half-open entry goes and the refusal is recorded. A forged refusal
// leaves the handshake as it was.
func (o *Overlay) refusedAsResponder(m handshake.Message, from netip.AddrPort) {
	o.hsMu.Lock()
	h, ok := o.halfOpen[m.Receiver]
	var code handshake.RefusalCode
	if ok && h.resp != nil && h.from == from {
		var err error
		if code, err = h.resp.OpenRefusal(m); err == nil {
			o.deleteHalfOpenLocked(m.Receiver)
		} else {
			ok = false
		}
	} else {
		ok = false
	}
	o.hsMu.Unlock()
	if !ok {
		o.stats.junk.Add(1)
		return
	}
	o.refused(from, "", code)
}
