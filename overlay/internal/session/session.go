// Package session is the life of one peer's session as a state machine:
// from wanting a peer, through its admission and its WireGuard session,
// to removing it. A Session is a value; Next maps (session, event, now) to
// the next session and the actions its owner must run (admit, configure
// WireGuard, send an initiation, probe, remove). Next has no clock, timer,
// lock or I/O of its own: the owner feeds it events as they come and a
// Tick whenever Session.Deadline has passed, so that every timing rule can
// be tested on a stepped clock (with Timers.Jitter set, Next is
// deterministic).
//
// The rules for every pair of nodes a and b:
//
//   - Who admits is decided by key order when both keys are known: the
//     side with the lower WireGuard key runs the admission; the other side
//     waits Timers.Yield for it, and only then runs it itself (the other
//     side may be down, or may not know this node yet). A side that is
//     answering the other's admission (Answering) starts none of its own.
//     Static peers, whose keys are unknown until their admission, may both
//     admit at once; that costs a second admission, not a second session.
//   - Who starts WireGuard is decided by key order too, once the admission
//     made both keys known: the higher key starts it. In the usual case
//     that is the admission's responder, the side that learns last that
//     both sides hold each other's keys. The other side configures the
//     peer without an endpoint, so no packet of its own can start a
//     crossing WireGuard handshake. Two admissions that crossed therefore
//     still give one starter.
//   - The owner reports Admitted before it sends the admission's last
//     message, so the WireGuard traffic the admission leads to always
//     comes after it.
//   - A starter whose session is not up after Timers.KickDelay(rtt) sends
//     its initiation again, first byte for byte (a copy still queued at a
//     loaded peer is then answered once, not refused as a flood), then as
//     new initiations (a copy the peer consumed is a replay to it). A side
//     that does not start takes the start over once the starter's first
//     kick had time, and Timers.Grace more, unless it has answered the
//     starter's initiation by then (PeerStarted): the starter is at work,
//     its kicks repair a lost message, and an initiation of this side's
//     would only cross the starter's next one (two initiations that cross
//     leave both sides without a session). It then waits for the session
//     until Timers.SessionSetup after that answer. A side that took the
//     start over and then sees the starter's initiation hands the start
//     back and sends nothing more; a starter that sees the peer's
//     initiation (a take-over that crossed its own) makes its next kick a
//     new initiation. A session still not up
//     Timers.SessionSetup after the admission (or, after a late take-over,
//     once both kinds of kick had their time: three kick delays after it)
//     is given up: the peer is removed and wanted again after a backoff.
//   - A new admission of a peer with a session keeps the session if it is
//     newer than the admission (the two sides admitted each other at
//     once), and starts a fresh one otherwise (the peer restarted or lost
//     it).
//   - A session the owner finds missing in WireGuard although it is up
//     (Lost: what said it came was wrong, or WireGuard lost it) is started
//     again from this side, as a take-over, and judged like one.
//   - Liveness is decided from what the tunnel carried: a suspicion
//     (failure detection's verdict, which a starved node or an insider's
//     word can cause) removes the peer only if nothing came from it during
//     Timers.SuspectWindow, in which it is probed twice.
//   - A signed leave, a revocation or a superseded record removes the peer
//     at once, whatever its state; for Timers.AdmitTimeout after a
//     revocation, an admission that was under way does not bring the peer
//     back (a new Want, for a new certificate, does).
//   - Deadlines count from when the rules get to an event (the now of
//     Next), since the actions they take run then; what happened is dated
//     by the event's own time (Event.At). A loaded owner that takes its
//     events late so gives its peers the time it lost, instead of giving
//     up sessions it has only just configured.
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
	// static peer). Event.Initiates says whether this side admits it
	// first (see Initiates; true for a static peer whose key is unknown);
	// Event.Persistent that it is never given up (a static peer).
	Want EventKind = iota + 1
	// Answering: this side answered the peer's first admission message
	// and waits for its last: the peer is admitting this node.
	Answering
	// Admitted: an admission completed. Event.Responder says whether this
	// side answered it (the other side initiated), Event.Initiates is the
	// key order (known now), Event.RTT its round trip.
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
	// Lost: the owner found no WireGuard session in the device for a
	// session that is up (what told it the session came was wrong, or
	// WireGuard lost it): this side starts a new one.
	Lost
	// PeerStarted: this side answered the peer's WireGuard handshake
	// initiation while its session was pending: the peer is starting it.
	PeerStarted
	// Tick: Session.Deadline passed.
	Tick
)

var eventNames = [...]string{"", "want", "answering", "admitted", "admit-failed", "session-up", "heard", "suspected", "left", "revoked", "forgotten", "lost", "peer-started", "tick"}

func (k EventKind) String() string { return enumName(eventNames[:], uint8(k), "event") }

// Event is something that happened to the session's peer.
type Event struct {
	Kind EventKind
	// Initiates (Want, Admitted): this side's key is the lower one, or
	// (Want for a static peer) it admits without knowing.
	Initiates bool
	// Persistent (Want): never give the peer up.
	Persistent bool
	// Responder (Admitted): this side answered the admission.
	Responder bool
	// RTT (Admitted): the admission's round trip, 0 if unknown.
	RTT time.Duration
	// Ref (Admitted): the owner's reference of the admission (opaque to
	// the session; kept as Session.AdmitRef).
	Ref uint64
	// At is when the event happened (Table.Post stamps it; zero: at the
	// now of Next). The rules date what happened by it (whether a session
	// came up during an admission), and count their deadlines from the
	// now of Next: the actions they take run then, so a table that runs
	// late does not take the time it lost from its peers.
	At time.Time
}

// happened is when ev happened: ev.At, or now if unset or later.
func (ev Event) happened(now time.Time) time.Time {
	if ev.At.IsZero() || ev.At.After(now) {
		return now
	}
	return ev.At
}

// ActionKind says what the owner of a session must do.
type ActionKind uint8

// Actions.
const (
	// Admit: run an admission handshake with the peer as initiator, and
	// report Admitted or AdmitFailed.
	Admit ActionKind = iota + 1
	// CancelAdmit: stop this side's admission if one runs.
	CancelAdmit
	// Configure: put the peer in WireGuard (or update it). Action.Start:
	// with its endpoint and a keepalive, which starts the session if none
	// is pending; otherwise without an endpoint, so that this side cannot
	// start one. Action.Fresh: first drop the session and handshake
	// WireGuard has with the peer (it restarted or lost them).
	Configure
	// NewInitiation: give WireGuard the peer's endpoint and a keepalive if
	// it lacks them, drop its pending handshake, and send a new
	// handshake initiation at once.
	NewInitiation
	// ResendInitiation: send the pending WireGuard initiation again, byte
	// for byte.
	ResendInitiation
	// EnableKeepalive: turn on the peer's persistent keepalive (the
	// non-starter's, once the session is up).
	EnableKeepalive
	// Probe: send the peer a probe through its tunnel; whatever comes
	// back is reported as Heard.
	Probe
	// Remove: take the peer out of WireGuard. Action.Reason says why.
	Remove
)

var actionNames = [...]string{"", "admit", "cancel-admit", "configure", "new-initiation", "resend-initiation", "enable-keepalive", "probe", "remove"}

func (k ActionKind) String() string { return enumName(actionNames[:], uint8(k), "action") }

// Action is one thing the owner of a session must do, in order.
type Action struct {
	Kind ActionKind
	// Start (Configure): this side starts the WireGuard session.
	Start bool
	// Fresh (Configure): drop what WireGuard has with the peer first.
	Fresh bool
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
	// Initiates: this side admits first (from the last Want or Admitted).
	Initiates bool
	// Persistent: the peer is never given up (a static peer).
	Persistent bool
	// Barred: revoked; an admission is ignored until Deadline or a new
	// Want.
	Barred bool
	// Starts: this side starts the WireGuard session.
	Starts bool
	// Failures counts failed admissions and sessions in a row (the
	// backoff grows with it).
	Failures int
	// Kicks counts the initiations sent again for the pending session;
	// Probes the probes of a suspicion.
	Kicks, Probes int
	// RTT is the last admission's round trip.
	RTT time.Duration
	// AdmitRef is Event.Ref of the last admission taken, kept also when
	// the session is given up, so that the owner knows which admission a
	// Remove ends.
	AdmitRef uint64
	// AdmittedAt is when the peer was last admitted; StartedAt when this
	// side started the pending session (the admission for the starter,
	// the take-over for the other side); UpAt when its session last came
	// up.
	AdmittedAt, StartedAt, UpAt time.Time
	// PeerStartedAt is when this side, not the starter, first answered
	// the peer's initiation for the pending session (zero: not yet).
	PeerStartedAt time.Time
}

// Initiates reports whether the side with WireGuard key self admits the
// side with key peer first: the lower key does. Both sides compute the
// same answer.
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
		return s.gone(now, "left the fabric", false, t)
	case Revoked:
		return s.gone(now, "certificate revoked or expired", true, t)
	case Forgotten:
		return s.gone(now, "record superseded", false, t)
	case Want:
		return s.want(ev, now, t), nil
	case Answering:
		return s.answering(now, t)
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
			return s.up(ev, now)
		}
		return s, nil
	case Heard:
		switch s.State {
		case Awaiting, Suspect:
			// Transport data from the peer: the session works.
			return s.up(ev, now)
		}
		return s, nil
	case PeerStarted:
		return s.peerStarted(now, t), nil
	case Lost:
		if s.State != Up {
			return s, nil
		}
		// Started again from this side, as a take-over: kicked, and given
		// up one kick after SessionSetup if it does not come.
		s = s.enter(Awaiting, now)
		s.Starts, s.AdmittedAt, s.StartedAt, s.Kicks = true, now, now, 0
		s.PeerStartedAt = time.Time{}
		kick := t.KickDelay(s.RTT)
		s.Deadline = now.Add(kick + t.jitter(kick/3))
		return s, []Action{{Kind: NewInitiation}}
	case Suspected:
		if s.State != Up {
			// Wanted or admitting: no tunnel to check. Awaiting: the
			// session had no time to come; SessionSetup judges it.
			return s, nil
		}
		s = s.enter(Suspect, now)
		s.Probes = 1
		s.Deadline = now.Add(t.SuspectWindow / 2)
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

func (s Session) gone(now time.Time, why string, bar bool, t Timers) (Session, []Action) {
	var acts []Action
	switch s.State {
	case Admitting:
		acts = append(acts, Action{Kind: CancelAdmit})
	case Awaiting, Up, Suspect:
		acts = append(acts, Action{Kind: Remove, Reason: why})
	}
	g := Session{State: Gone, Since: now}
	switch {
	case bar:
		// An admission under way may still complete: keep it out until
		// it would have timed out.
		g.Barred, g.Deadline = true, now.Add(t.AdmitTimeout)
	case s.State == Gone && s.Barred:
		g.Barred, g.Deadline = true, s.Deadline
	}
	return g, acts
}

func (s Session) want(ev Event, now time.Time, t Timers) Session {
	first := now
	if !ev.Initiates {
		first = now.Add(t.Yield)
	}
	switch s.State {
	case Gone:
		s = Session{Initiates: ev.Initiates, Persistent: ev.Persistent}.enter(Wanted, now)
		s.Deadline = first
		return s
	case Wanted:
		// A new record during a backoff: the peer may be back; try soon.
		if s.Failures > 0 && first.Before(s.Deadline) {
			s.Deadline = first
		}
	}
	s.Initiates, s.Persistent = ev.Initiates, s.Persistent || ev.Persistent
	return s
}

// answering: the peer is admitting this node; this side waits for the
// end of it instead of admitting too.
func (s Session) answering(now time.Time, t Timers) (Session, []Action) {
	wait := now.Add(t.AnswerWait)
	switch {
	case s.State == Wanted:
		if s.Deadline.Before(wait) {
			s.Deadline = wait
		}
		return s, nil
	case s.State == Admitting && !s.Initiates:
		s = s.enter(Wanted, now)
		s.Deadline = wait
		return s, []Action{{Kind: CancelAdmit}}
	}
	return s, nil
}

func (s Session) admitted(ev Event, now time.Time, t Timers) (Session, []Action) {
	if s.State == Gone && s.Barred {
		return s, nil // a revoked peer's admission that was under way
	}
	var acts []Action
	if s.State == Admitting && ev.Responder {
		// The other side's admission completed while ours ran.
		acts = append(acts, Action{Kind: CancelAdmit})
	}
	s.AdmitRef = ev.Ref
	began := ev.happened(now).Add(-ev.RTT - t.Slack)
	fresh := false
	switch s.State {
	case Awaiting:
		if now.Sub(s.AdmittedAt) < t.Kick {
			// The second admission of two nodes admitting each other at
			// once: the first one's session is on its way. If the second
			// makes this side the starter (an owner that decides the
			// start by another rule than key order), it starts now.
			if !s.Starts && !ev.Initiates {
				s.Starts, s.StartedAt = true, now
				kick := t.KickDelay(s.RTT)
				s.Deadline = now.Add(kick + t.jitter(kick/3))
				acts = append(acts, Action{Kind: Configure, Start: true})
			}
			return s, acts
		}
		fresh = true // the other side admitted anew: it lost the pending session
	case Up, Suspect:
		if !s.UpAt.Before(began) {
			// The session came during this admission: a second admission
			// of the same two nodes. Keep it (the admission also proves a
			// suspect alive).
			if s.State == Suspect {
				s = s.enter(Up, now)
				s.Probes = 0
			}
			return s, acts
		}
		fresh = true // the peer restarted or removed this node
	}
	s = s.enter(Awaiting, now)
	s.Initiates = ev.Initiates
	s.Starts = !ev.Initiates
	s.AdmittedAt, s.StartedAt, s.RTT, s.Kicks = now, now, ev.RTT, 0
	s.PeerStartedAt = time.Time{}
	acts = append(acts, Action{Kind: Configure, Start: s.Starts, Fresh: fresh})
	kick := t.KickDelay(s.RTT)
	if s.Starts {
		s.Deadline = now.Add(kick + t.jitter(kick/3))
	} else {
		// After the starter's first kick (its initiation may wait in
		// this side's queue that long), and Grace more.
		s.Deadline = now.Add(t.Grace + kick - t.Kick + t.jitter(t.Grace/2))
	}
	return s, acts
}

// peerStarted: the peer's WireGuard initiation arrived while the session
// was pending.
func (s Session) peerStarted(now time.Time, t Timers) Session {
	if s.State != Awaiting {
		return s
	}
	switch {
	case !s.Starts:
		// The starter is at work: no take-over; its session may take
		// until SessionSetup after this.
		if s.PeerStartedAt.IsZero() {
			s.PeerStartedAt = now
			s.Deadline = s.giveUp(t)
		}
	case s.StartedAt.After(s.AdmittedAt):
		// This side took the start over, and the starter's initiation
		// came after all: the start goes back to the starter, and this
		// side sends nothing more. Either the starter dropped this
		// side's initiation (it came before the starter had the peer)
		// and the session comes from the starter's, or the two crossed
		// there, and the starter's next kick starts a fresh one: kicks
		// from both sides would cross again.
		s.Starts, s.PeerStartedAt = false, now
		s.Deadline = s.giveUp(t)
	default:
		// The starter, and the peer's initiation came while this side's
		// was pending: the peer took the start over, and WireGuard here
		// answered its initiation and dropped the handshake of this
		// side's. The peer hands the start back when this side's
		// initiation reaches it, so the next kick sends a new
		// initiation: a copy of the old one is a replay to the peer.
		s.Kicks = max(s.Kicks, 1)
	}
	return s
}

func (s Session) up(ev Event, now time.Time) (Session, []Action) {
	var acts []Action
	if s.State == Awaiting && !s.Starts {
		acts = append(acts, Action{Kind: EnableKeepalive})
	}
	if s.State == Awaiting {
		s.UpAt = ev.happened(now)
	}
	s = s.enter(Up, now)
	s.Failures, s.Kicks, s.Probes = 0, 0, 0
	return s, acts
}

// retry gives up the current try: the peer is wanted again after a
// backoff that grows with the failures in a row, or, after MaxFailures
// of them, no longer (only a new Want brings it back) unless it is
// persistent.
func (s Session) retry(now time.Time, t Timers) Session {
	s.Failures++
	if !s.Persistent && t.MaxFailures > 0 && s.Failures >= t.MaxFailures {
		return Session{State: Gone, Since: now, AdmitRef: s.AdmitRef}
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
		if !now.Before(s.giveUp(t)) {
			return s.retry(now, t), []Action{{Kind: Remove, Reason: "no WireGuard session after admission"}}
		}
		var act ActionKind
		if !s.Starts {
			s.Starts, s.StartedAt = true, now // the other side did not start it: take over
			act = NewInitiation
		} else if s.Kicks++; s.Kicks == 1 {
			act = ResendInitiation
		} else {
			act = NewInitiation
		}
		kick := t.KickDelay(s.RTT)
		s.Deadline = now.Add(kick + t.jitter(kick/3))
		if end := s.giveUp(t); s.Deadline.After(end) {
			s.Deadline = end
		}
		return s, []Action{{Kind: act}}
	case Gone:
		return Session{State: Gone, Since: s.Since}, nil // the bar on a revoked peer ends
	case Suspect:
		if s.Probes < 2 {
			s.Probes++
			s.Deadline = s.Since.Add(t.SuspectWindow)
			return s, []Action{{Kind: Probe}}
		}
		return s.retry(now, t), []Action{{Kind: Remove, Reason: "declared dead; nothing heard through its tunnel"}}
	}
	s.Deadline = time.Time{}
	return s, nil
}

// giveUp is when a pending session is given up: SessionSetup after the
// admission, or, when this side started it later (a take-over late in a
// slow admission, or after a lost session), three kicks' time after that,
// or, when this side does not start it and answered the starter's
// initiation, SessionSetup after that answer, whichever is later.
// A late starter so gets both kinds of kick before it gives up: the resend
// byte for byte (a copy still queued at the peer), then a new initiation
// (when the first crossed the other side's take-over: both sides may take
// over at once, and two initiations that cross need a third).
func (s Session) giveUp(t Timers) time.Time {
	end := s.AdmittedAt.Add(t.SessionSetup)
	kicks := time.Duration(1)
	if s.StartedAt.After(s.AdmittedAt) {
		kicks = 3 // a take-over
	}
	if e := s.StartedAt.Add(kicks * t.KickDelay(s.RTT)); s.Starts && e.After(end) {
		end = e
	}
	if e := s.PeerStartedAt.Add(t.SessionSetup); !s.Starts && !s.PeerStartedAt.IsZero() && e.After(end) {
		end = e
	}
	return end
}

// Timers are the deadlines of the session rules (see the package doc).
type Timers struct {
	// Yield is how long a side that does not admit first waits for the
	// other side's admission before it runs its own.
	Yield time.Duration
	// AnswerWait is how long a side that is answering the other side's
	// admission waits for its end before admitting itself.
	AnswerWait time.Duration
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
	// before the peer is removed and wanted again.
	SessionSetup time.Duration
	// SuspectWindow is how long a suspected peer has to be heard from
	// through its tunnel before it is removed. It is probed at the start
	// and halfway. The default leaves room, within two seconds of the
	// verdict, for the session loop's own delay on a loaded node.
	SuspectWindow time.Duration
	// Slack allows for the granularity of the clocks that time sessions
	// and admissions.
	Slack time.Duration
	// BackoffMin and BackoffMax bound the wait before a failed peer is
	// tried again; it doubles with each failure in a row, with jitter.
	BackoffMin, BackoffMax time.Duration
	// MaxFailures is how many failures in a row end the wanting of a peer
	// that is not persistent (0: no end): about 20 minutes of tries at
	// BackoffMax by default.
	MaxFailures int
	// Jitter, if set, returns a random duration in [0, d) (tests make it
	// deterministic); nil uses math/rand/v2.
	Jitter func(d time.Duration) time.Duration
}

// DefaultTimers are the timings gridnet uses.
func DefaultTimers() Timers {
	return Timers{
		Yield:         1500 * time.Millisecond,
		AnswerWait:    300 * time.Millisecond,
		AdmitTimeout:  8 * time.Second,
		Kick:          1500 * time.Millisecond,
		KickMax:       3500 * time.Millisecond,
		KickRTTs:      3,
		Grace:         3 * time.Second,
		SessionSetup:  6 * time.Second,
		SuspectWindow: 1750 * time.Millisecond,
		Slack:         time.Second,
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
