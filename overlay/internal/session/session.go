// Package session is the life of one peer's session as a state machine:
// from wanting a peer, through its admission and its WireGuard session,
// to removing it. A Session is a value; Next maps (session, event, now) to
// the next session and the actions its owner must run (send, configure
// WireGuard, remove, probe, join). Next has no clock, timer, lock or I/O
// of its own: the owner feeds it events as they come and a Tick whenever
// Session.Deadline has passed, so that every timing rule can be tested on
// a stepped clock.
//
// The rules that hold for every pair of nodes a and b:
//
//   - Who initiates is decided before anything is sent. When both keys
//     are known, the side with the lower WireGuard key runs the admission
//     (Initiates); the other side waits Timers.Yield for it, and only then
//     runs the admission itself (the other side may be down, or may not
//     know this node yet).
//   - The side that answered the admission (the responder) starts the
//     WireGuard session: it learns last that both sides hold each other's
//     keys. The initiator configures the peer without an endpoint, so no
//     packet of its own can start a second, crossing WireGuard handshake.
//   - A starter whose session is not up after Timers.KickDelay(rtt) sends
//     its initiation again (byte for byte, so that a copy still queued at
//     the peer is answered once); a side that does not start takes the
//     start over after Timers.Grace; a session still not up after
//     Timers.SessionSetup is given up: the peer is removed and wanted
//     again after a backoff.
//   - Liveness is decided here, from what the tunnel carried: a suspicion
//     (failure detection's verdict, which a starved node or an insider's
//     word can cause) removes the peer only if nothing came from it during
//     Timers.SuspectWindow after the suspicion and its probes.
//   - A signed leave, a revocation or a superseded record removes the peer
//     at once, whatever its state.
package session

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// State is where a session is in its life.
type State uint8

// Session states.
const (
	// Gone: nothing is wanted of the peer; it is not in WireGuard. The
	// zero state: a Session{} is a peer never heard of.
	Gone State = iota
	// Wanted: the peer should be connected; at Deadline this side starts
	// the admission (at once when it initiates, after Timers.Yield when
	// the other side should, after a backoff following a failure).
	Wanted
	// Admitting: this side's admission handshake with the peer runs.
	Admitting
	// Awaiting: the peer is admitted and configured in WireGuard; its
	// session is not up yet.
	Awaiting
	// Up: WireGuard completed a session with the peer.
	Up
	// Suspect: failure detection declared the peer suspect or dead; the
	// tunnel is being checked.
	Suspect
)

var stateNames = [...]string{"gone", "wanted", "admitting", "awaiting-session", "up", "suspect"}

func (s State) String() string { return enumName(stateNames[:], uint8(s), "state") }

// enumName is names[v], or kind(v) for a value without a name.
func enumName(names []string, v uint8, kind string) string {
	if int(v) < len(names) && names[v] != "" {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", kind, v)
}

// EventKind says what happened to a session.
type EventKind uint8

// Events.
const (
	// Want: the peer should be connected (a record learned by gossip, a
	// static peer). Event.Initiates says whether this side runs the
	// admission (see Initiates).
	Want EventKind = iota + 1
	// Admitted: an admission completed. Event.Responder says whether this
	// side answered it (the other side initiated); Event.RTT is its round
	// trip.
	Admitted
	// AdmitFailed: this side's admission failed (no answer, refused).
	AdmitFailed
	// SessionUp: WireGuard completed a session with the peer (a
	// handshake, or transport data on a new session).
	SessionUp
	// Heard: WireGuard authenticated traffic from the peer.
	Heard
	// Suspected: failure detection declared the peer suspect or dead.
	Suspected
	// Left: the peer signed its leave.
	Left
	// Revoked: the peer's certificate was revoked or expired.
	Revoked
	// Forgotten: the peer's record was superseded or dropped.
	Forgotten
	// Tick: Session.Deadline passed.
	Tick
)

var eventNames = [...]string{"", "want", "admitted", "admit-failed", "session-up", "heard", "suspected", "left", "revoked", "forgotten", "tick"}

func (k EventKind) String() string { return enumName(eventNames[:], uint8(k), "event") }

// Event is something that happened to the session's peer.
type Event struct {
	Kind EventKind
	// Initiates (Want): this side runs the admission.
	Initiates bool
	// Responder (Admitted): this side answered the admission.
	Responder bool
	// RTT (Admitted): the admission's round trip, 0 if unknown.
	RTT time.Duration
}

// ActionKind says what the owner of a session must do.
type ActionKind uint8

// Actions.
const (
	// Admit: run an admission handshake with the peer as initiator, and
	// report Admitted or AdmitFailed.
	Admit ActionKind = iota + 1
	// CancelAdmit: stop this side's admission if one runs (the other
	// side's completed first, or it ran out of time).
	CancelAdmit
	// Configure: put the peer in WireGuard. Action.Start: with its
	// endpoint and a keepalive, which starts the session at once;
	// otherwise without an endpoint, so that this side cannot start one.
	Configure
	// StartSession: give WireGuard the peer's endpoint and a keepalive
	// and send a new handshake initiation (a side that was not to start
	// takes the start over).
	StartSession
	// ResendInitiation: send the pending WireGuard initiation again, byte
	// for byte.
	ResendInitiation
	// EnableKeepalive: turn on the peer's persistent keepalive (the
	// initiator's, once the session is up).
	EnableKeepalive
	// Probe: send the peer a probe through its tunnel; whatever comes
	// back is reported as Heard.
	Probe
	// Remove: take the peer out of WireGuard. Action.Reason says why.
	Remove
)

var actionNames = [...]string{"", "admit", "cancel-admit", "configure", "start-session", "resend-initiation", "enable-keepalive", "probe", "remove"}

func (k ActionKind) String() string { return enumName(actionNames[:], uint8(k), "action") }

// Action is one thing the owner of a session must do, in order.
type Action struct {
	Kind ActionKind
	// Start (Configure): this side starts the WireGuard session.
	Start bool
	// Reason (Remove): why the peer goes, for logs and status.
	Reason string
}

// Session is the state of one peer's session. The zero value is a peer in
// state Gone.
type Session struct {
	State State
	// Since is when State was entered.
	Since time.Time
	// Deadline is when a Tick is due; zero if none.
	Deadline time.Time
	// Initiates: this side runs the admission (from the last Want).
	Initiates bool
	// Starts: this side starts the WireGuard session.
	Starts bool
	// Failures counts failed admissions and sessions in a row (the
	// backoff grows with it).
	Failures int
	// Kicks counts the initiations resent for the pending session.
	Kicks int
	// RTT is the last admission's round trip.
	RTT time.Duration
	// AdmittedAt is when the peer was last admitted.
	AdmittedAt time.Time
}

// Initiates reports whether the side with WireGuard key self runs the
// admission with the side with key peer: the lower key does. Both sides
// compute the same answer, so two nodes that learn each other at the
// same moment do not cross.
func Initiates(self, peer [32]byte) bool {
	for i := range self {
		if self[i] != peer[i] {
			return self[i] < peer[i]
		}
	}
	return false
}

// Next returns the session after ev at now, and the actions to run in
// order. Events that do not apply in the session's state change nothing.
func (s Session) Next(ev Event, now time.Time, t Timers) (Session, []Action) {
	switch ev.Kind {
	case Left:
		return s.gone(now, "left the fabric")
	case Revoked:
		return s.gone(now, "certificate revoked or expired")
	case Forgotten:
		return s.gone(now, "record superseded")
	case Want:
		return s.want(ev, now, t)
	case Admitted:
		return s.admitted(ev, now, t)
	case AdmitFailed:
		if s.State != Admitting {
			return s, nil
		}
		return s.retry(now, t), nil
	case SessionUp:
		switch s.State {
		case Awaiting, Suspect:
			return s.up(now)
		}
		return s, nil
	case Heard:
		if s.State == Suspect {
			return s.up(now)
		}
		return s, nil
	case Suspected:
		if s.State != Up {
			// Wanted or admitting: no tunnel to check. Awaiting: the
			// session had no time to come; SessionSetup judges it.
			return s, nil
		}
		s = s.enter(Suspect, now)
		s.Deadline = now.Add(t.SuspectWindow)
		return s, []Action{{Kind: Probe}}
	case Tick:
		if s.Deadline.IsZero() || now.Before(s.Deadline) {
			return s, nil
		}
		return s.tick(now, t)
	}
	return s, nil
}

// enter moves the session to state at now, with no deadline.
func (s Session) enter(state State, now time.Time) Session {
	s.State, s.Since, s.Deadline = state, now, time.Time{}
	return s
}

func (s Session) gone(now time.Time, why string) (Session, []Action) {
	var acts []Action
	switch s.State {
	case Gone:
		return s, nil
	case Admitting:
		acts = append(acts, Action{Kind: CancelAdmit})
	case Awaiting, Up, Suspect:
		acts = append(acts, Action{Kind: Remove, Reason: why})
	}
	return Session{State: Gone, Since: now}, acts
}

func (s Session) want(ev Event, now time.Time, t Timers) (Session, []Action) {
	if s.State != Gone {
		s.Initiates = ev.Initiates
		return s, nil // already wanted, admitting or admitted
	}
	s = Session{Initiates: ev.Initiates}.enter(Wanted, now)
	s.Deadline = now
	if !s.Initiates {
		s.Deadline = now.Add(t.Yield)
	}
	return s, nil
}

func (s Session) admitted(ev Event, now time.Time, t Timers) (Session, []Action) {
	var acts []Action
	if s.State == Admitting && ev.Responder {
		// The other side's admission completed while ours ran.
		acts = append(acts, Action{Kind: CancelAdmit})
	}
	if (s.State == Up || s.State == Suspect) && !ev.Responder {
		// This side admitted a peer it had a session with: nothing new.
		return s, nil
	}
	if s.State == Awaiting && !ev.Responder {
		return s, nil // a second, crossed admission: the first one's session comes
	}
	// A new admission: a first one, the other side's after this side's
	// failed, or the other side's while a session is up or pending (it
	// restarted, or removed this node and lost the session): the
	// responder starts a new session.
	s = s.enter(Awaiting, now)
	s.AdmittedAt, s.RTT, s.Kicks = now, ev.RTT, 0
	s.Starts = ev.Responder
	acts = append(acts, Action{Kind: Configure, Start: s.Starts})
	if s.Starts {
		s.Deadline = now.Add(t.KickDelay(s.RTT))
	} else {
		s.Deadline = now.Add(t.Grace + t.KickDelay(s.RTT))
	}
	return s, acts
}

func (s Session) up(now time.Time) (Session, []Action) {
	var acts []Action
	if s.State == Awaiting && !s.Starts {
		acts = append(acts, Action{Kind: EnableKeepalive})
	}
	s = s.enter(Up, now)
	s.Failures, s.Kicks = 0, 0
	return s, acts
}

// retry gives up the current try: the peer is wanted again after a
// backoff that grows with the failures in a row, or, after MaxFailures
// of them, no longer (only a new Want brings it back).
func (s Session) retry(now time.Time, t Timers) Session {
	s.Failures++
	if t.MaxFailures > 0 && s.Failures >= t.MaxFailures {
		return s.enter(Gone, now)
	}
	s = s.enter(Wanted, now)
	s.Deadline = now.Add(t.Backoff(s.Failures))
	return s
}

func (s Session) tick(now time.Time, t Timers) (Session, []Action) {
	switch s.State {
	case Wanted:
		// An initiator's turn, the end of a yield (the other side did not
		// admit this node in time) or of a backoff.
		s = s.enter(Admitting, now)
		s.Deadline = now.Add(t.AdmitTimeout)
		return s, []Action{{Kind: Admit}}
	case Admitting:
		return s.retry(now, t), []Action{{Kind: CancelAdmit}}
	case Awaiting:
		if !now.Before(s.AdmittedAt.Add(t.SessionSetup)) {
			return s.retry(now, t), []Action{{Kind: Remove, Reason: "no WireGuard session after admission"}}
		}
		next := now.Add(t.KickDelay(s.RTT))
		if end := s.AdmittedAt.Add(t.SessionSetup); next.After(end) {
			next = end
		}
		s.Deadline = next
		if !s.Starts {
			s.Starts = true
			return s, []Action{{Kind: StartSession}}
		}
		s.Kicks++
		return s, []Action{{Kind: ResendInitiation}}
	case Suspect:
		return s.retry(now, t), []Action{{Kind: Remove, Reason: "declared dead; nothing heard through its tunnel"}}
	}
	s.Deadline = time.Time{}
	return s, nil
}

// Timers are the deadlines of the session rules (see the package doc).
type Timers struct {
	// Yield is how long a side that does not initiate waits for the other
	// side's admission before it runs its own.
	Yield time.Duration
	// AdmitTimeout bounds one admission (with its own retries).
	AdmitTimeout time.Duration
	// Kick is how long a session the starter started may take before the
	// initiation is sent again; KickMax caps it after slow admissions
	// (KickRTTs admission round trips).
	Kick, KickMax time.Duration
	KickRTTs      int
	// Grace is how long a side that does not start the session waits for
	// it (beyond the starter's kick) before it starts it itself.
	Grace time.Duration
	// SessionSetup is how long after an admission the session may take
	// before the peer is removed and wanted again: longer than
	// WireGuard's 5 s retry, so that its own retry gets a chance.
	SessionSetup time.Duration
	// SuspectWindow is how long a suspected peer has to be heard from
	// through its tunnel before it is removed.
	SuspectWindow time.Duration
	// BackoffMin and BackoffMax bound the wait before a failed peer is
	// tried again; it doubles with each failure in a row, with jitter.
	BackoffMin, BackoffMax time.Duration
	// MaxFailures is how many failures in a row end the wanting (0: no
	// end): about 20 minutes of tries at BackoffMax by default.
	MaxFailures int
	// Jitter, if set, returns a random duration in [0, d) (tests make it
	// deterministic); nil uses math/rand/v2.
	Jitter func(d time.Duration) time.Duration
}

// DefaultTimers are the timings gridnet uses.
func DefaultTimers() Timers {
	return Timers{
		Yield:         1500 * time.Millisecond,
		AdmitTimeout:  8 * time.Second,
		Kick:          1500 * time.Millisecond,
		KickMax:       3500 * time.Millisecond,
		KickRTTs:      3,
		Grace:         3 * time.Second,
		SessionSetup:  6 * time.Second,
		SuspectWindow: 2 * time.Second,
		BackoffMin:    500 * time.Millisecond,
		BackoffMax:    30 * time.Second,
		MaxFailures:   45,
	}
}

// KickDelay is how long a session started after an admission with round
// trip rtt may take before its initiation is sent again: KickRTTs round
// trips (a loaded peer answers late, and a second initiation would
// replace the first), at least Kick, at most KickMax.
func (t Timers) KickDelay(rtt time.Duration) time.Duration {
	return min(max(time.Duration(t.KickRTTs)*rtt, t.Kick), t.KickMax)
}

// Backoff is the wait before the next try after failures failed tries in
// a row: BackoffMin doubled per failure up to BackoffMax, then jittered
// to between half and all of it, so that peers that failed together do
// not retry in step.
func (t Timers) Backoff(failures int) time.Duration {
	d := t.BackoffMin
	for i := 1; i < failures && d < t.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, t.BackoffMax)
	half := d / 2
	return half + t.jitter(half+1)
}

func (t Timers) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	if t.Jitter != nil {
		return t.Jitter(d)
	}
	return rand.N(d)
}
