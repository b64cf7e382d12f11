package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/handshake"
)

// Reason classifies why a handshake was refused.
type Reason int

// Refusal reasons. The String form is used in logs and metrics.
const (
	ReasonMalformed       Reason = iota // frame or payload layout wrong
	ReasonNoise                         // Noise decryption/authentication failed
	ReasonUnknownCA                     // certificate not from a trusted CA
	ReasonExpired                       // certificate expired
	ReasonNotYetValid                   // certificate not yet valid
	ReasonRevoked                       // certificate revoked
	ReasonOutsideDomain                 // certificate outside its CA's domain
	ReasonKeyUsage                      // certificate has wrong key usage
	ReasonBadCertificate                // any other certificate failure
	ReasonKeyMismatch                   // certificate WireGuard key != Noise static key
	ReasonSignature                     // transcript signature invalid
	ReasonAddressConflict               // overlay address held by another key
	ReasonSelf                          // peer presented this node's own key
	ReasonOutsideNetworks               // overlay address outside its CA's networks
	numReasons
)

var reasonNames = [numReasons]string{
	"malformed", "noise", "unknown_ca", "expired", "not_yet_valid", "revoked",
	"outside_domain", "key_usage", "bad_certificate", "key_mismatch",
	"bad_signature", "address_conflict", "self", "outside_networks",
}

// String returns the reason's metric name.
func (r Reason) String() string {
	if r < 0 || r >= numReasons {
		return fmt.Sprintf("reason(%d)", int(r))
	}
	return reasonNames[r]
}

// Reasons lists every refusal reason, in order.
func Reasons() []Reason {
	out := make([]Reason, numReasons)
	for i := range out {
		out[i] = Reason(i)
	}
	return out
}

// ErrAddressConflict: the peer's certificate claims an overlay address that
// a different, still valid WireGuard key (or this node) already holds.
var ErrAddressConflict = errors.New("overlay: overlay address already held by another key")

// ErrSelf: the peer presented this node's own WireGuard key.
var ErrSelf = errors.New("overlay: peer presented our own key")

// RejectError is a refused handshake. It wraps the cause, so errors.Is works
// with handshake.Err*, cert.Err* and ErrAddressConflict.
type RejectError struct {
	Reason Reason
	Err    error
}

// Error describes the refusal.
func (e *RejectError) Error() string {
	return fmt.Sprintf("admission refused (%s): %v", e.Reason, e.Err)
}

// Unwrap returns the cause.
func (e *RejectError) Unwrap() error { return e.Err }

// classify maps a handshake/admission error to its Reason.
func classify(err error) Reason {
	switch {
	case errors.Is(err, ErrAddressConflict):
		return ReasonAddressConflict
	case errors.Is(err, ErrSelf):
		return ReasonSelf
	case errors.Is(err, handshake.ErrKeyMismatch):
		return ReasonKeyMismatch
	case errors.Is(err, handshake.ErrSignature):
		return ReasonSignature
	case errors.Is(err, handshake.ErrNoise):
		return ReasonNoise
	case errors.Is(err, cert.ErrUnknownCA):
		return ReasonUnknownCA
	case errors.Is(err, cert.ErrExpired):
		return ReasonExpired
	case errors.Is(err, cert.ErrNotYetValid):
		return ReasonNotYetValid
	case errors.Is(err, cert.ErrRevoked):
		return ReasonRevoked
	case errors.Is(err, cert.ErrOutsideNetworks): // wraps ErrOutsideDomain too
		return ReasonOutsideNetworks
	case errors.Is(err, cert.ErrOutsideDomain):
		return ReasonOutsideDomain
	case errors.Is(err, cert.ErrKeyUsage):
		return ReasonKeyUsage
	case errors.Is(err, handshake.ErrCertificate):
		return ReasonBadCertificate
	default:
		return ReasonMalformed
	}
}

// Stats is a snapshot of the handshake counters. A counter of something
// sent or done moves before its effect can be seen: before the packet
// leaves, before the admission starts its session.
type Stats struct {
	// Initiated counts msg1 sent (every attempt, including retries).
	Initiated uint64
	// Resent counts msg1s an attempt sent again while it had no answer
	// (see Msg1Resend); they are not in Initiated.
	Resent uint64
	// RepeatsAnswered counts msg1s this node received again while it held
	// their handshake, answered with the msg2 it had made (or dropped
	// while msg2 was being made) rather than with a new handshake.
	RepeatsAnswered uint64
	// Responded counts msg2 sent.
	Responded uint64
	// Completed counts successful admissions (either role).
	Completed uint64
	// Rejected counts refused handshakes by reason.
	Rejected map[Reason]uint64
	// RateLimited counts handshake datagrams dropped by the per-source limit.
	RateLimited uint64
	// Junk counts datagrams dropped before any crypto: neither WireGuard nor
	// gridnet, malformed gridnet frames, unknown or mismatched indices.
	Junk uint64
	// HalfOpenFull counts msg1 refused because the half-open table was full.
	HalfOpenFull uint64
	// QueueFull counts handshake datagrams dropped because workers were busy.
	QueueFull uint64
	// Timeouts counts initiator attempts that got no valid msg2 in time.
	Timeouts uint64
	// Removed counts peers removed by Revalidate.
	Removed uint64
	// StrangerLimited counts WireGuard datagrams from addresses that are no
	// admitted peer's endpoint, dropped before decryption by their
	// per-source limit.
	StrangerLimited uint64
	// Restarted counts kicks: WireGuard initiations of a pending session
	// sent again because the session had not come up in time (see the
	// session rules, overlay/internal/session).
	Restarted uint64
	// Initiations counts the WireGuard handshake initiations this node
	// sent: the first of each session, kicks, WireGuard's own retries and
	// rekeys.
	Initiations uint64
	// SessionsLost counts sessions that were up by the session rules but
	// not in WireGuard when the periodic check looked (see checkSessions);
	// this side then starts a new one.
	SessionsLost uint64
	// Probes counts probes of peers that failure detection declared
	// suspect or dead (see Suspect).
	Probes uint64
	// Throttled counts WireGuard transport datagrams from admitted peers
	// dropped before decryption because the peer was over its budget (see
	// SetBudgets).
	Throttled uint64
	// RefusalsSent counts refusals this node sent (see refusal.go);
	// RefusalsLimited those it did not send because of the refusal limits.
	RefusalsSent, RefusalsLimited uint64
	// RefusedBy counts refusals this node received, by code.
	RefusedBy map[handshake.RefusalCode]uint64
	// CookiesSent counts cookie replies this node sent under load, each
	// instead of answering a msg1 without a valid cookie (see cookie.go).
	CookiesSent uint64
	// CookiesDropped counts msg1s without a valid cookie dropped under
	// load, unanswered, because the cookie replies already waiting filled
	// their queue.
	CookiesDropped uint64
	// CookiesReceived counts valid cookie replies this node received as
	// initiator.
	CookiesReceived uint64
}

// sendCounted sends pkt to to and counts it in c. The count comes first:
// whoever sees what the packet brought about (an answer, a session)
// sees it counted. A send that fails is taken back out of the count.
func (o *Overlay) sendCounted(c *atomic.Uint64, pkt []byte, to netip.AddrPort) error {
	c.Add(1)
	if err := o.bind.SendTo(pkt, to); err != nil {
		c.Add(^uint64(0))
		return err
	}
	return nil
}

type counters struct {
	initiated, responded, completed   atomic.Uint64
	rateLimited, junk, halfOpenFull   atomic.Uint64
	queueFull, timeouts, removedPeers atomic.Uint64
	kicks                             atomic.Uint64
	probes                            atomic.Uint64
	sessionsLost                      atomic.Uint64
	rejected                          [numReasons]atomic.Uint64
	refusalsSent, refusalsLimited     atomic.Uint64
	refusedBy                         [numRefusalCodes]atomic.Uint64
	cookiesSent, cookiesTaken         atomic.Uint64
	cookiesDropped                    atomic.Uint64
	resent, repeats                   atomic.Uint64
}

// Stats returns a snapshot of the handshake counters.
func (o *Overlay) Stats() Stats {
	c := &o.stats
	s := Stats{
		Initiated:       c.initiated.Load(),
		Resent:          c.resent.Load(),
		RepeatsAnswered: c.repeats.Load(),
		Responded:       c.responded.Load(),
		Completed:       c.completed.Load(),
		RateLimited:     c.rateLimited.Load(),
		Junk:            c.junk.Load(),
		HalfOpenFull:    c.halfOpenFull.Load(),
		QueueFull:       c.queueFull.Load(),
		Timeouts:        c.timeouts.Load(),
		Removed:         c.removedPeers.Load(),
		StrangerLimited: o.bind.limited.Load(),
		Throttled:       o.bind.throttled.Load(),
		Initiations:     o.bind.initiationsSent.Load(),
		Restarted:       c.kicks.Load(),
		Probes:          c.probes.Load(),
		SessionsLost:    c.sessionsLost.Load(),
		Rejected:        make(map[Reason]uint64),
		RefusalsSent:    c.refusalsSent.Load(),
		RefusalsLimited: c.refusalsLimited.Load(),
		RefusedBy:       make(map[handshake.RefusalCode]uint64),
		CookiesSent:     c.cookiesSent.Load(),
		CookiesDropped:  c.cookiesDropped.Load(),
		CookiesReceived: c.cookiesTaken.Load(),
	}
	for r := range numReasons {
		if v := c.rejected[r].Load(); v > 0 {
			s.Rejected[r] = v
		}
	}
	for code := range c.refusedBy {
		if v := c.refusedBy[code].Load(); v > 0 {
			s.RefusedBy[handshake.RefusalCode(code)] = v
		}
	}
	return s
}

// reject counts and logs a refusal and returns it as a *RejectError.
func (o *Overlay) reject(err error, from fmt.Stringer, role string) *RejectError {
	r := classify(err)
	o.stats.rejected[r].Add(1)
	if o.logLim.allow("reject-" + r.String()) {
		o.log.Warn("admission refused", "reason", r.String(), "role", role, "from", from.String(), "err", err.Error())
	}
	return &RejectError{Reason: r, Err: err}
}

const (
	// logLinesPerSecond bounds log lines per key (reason) per second so a
	// flood cannot turn into a log flood.
	logLinesPerSecond = 3
)

// logLimiter allows at most logLinesPerSecond lines per key per second.
type logLimiter struct {
	mu  sync.Mutex
	now func() time.Time
	win map[string]*logWindow
}

type logWindow struct {
	start time.Time
	n     int
}

func newLogLimiter(now func() time.Time) *logLimiter {
	if now == nil {
		now = time.Now
	}
	return &logLimiter{now: now, win: make(map[string]*logWindow)}
}

// allow reports whether a line for key may be logged now. Keys come from a
// small fixed set, so the map stays bounded.
func (l *logLimiter) allow(key string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	w, ok := l.win[key]
	if !ok {
		w = &logWindow{start: now}
		l.win[key] = w
	}
	if now.Sub(w.start) >= time.Second {
		w.start, w.n = now, 0
	}
	if w.n >= logLinesPerSecond {
		return false
	}
	w.n++
	return true
}
