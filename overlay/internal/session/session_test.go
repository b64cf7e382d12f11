package session

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

// testTimers are DefaultTimers with jitter that always takes the upper
// end, so that deadlines are exact.
func testTimers() Timers {
	t := DefaultTimers()
	t.Jitter = func(d time.Duration) time.Duration { return d - 1 }
	return t
}

// fixtures are sessions in every state (both roles where the role
// changes a rule), as they are just after entering it at t0.
func fixtures(tm Timers) map[string]Session {
	return map[string]Session{
		"gone":                 {},
		"wanted-initiates":     {State: Wanted, Since: t0, Deadline: t0.Add(time.Second), Initiates: true},
		"wanted-yields":        {State: Wanted, Since: t0, Deadline: t0.Add(tm.Yield)},
		"admitting":            {State: Admitting, Since: t0, Deadline: t0.Add(tm.AdmitTimeout), Initiates: true},
		"awaiting-starter":     {State: Awaiting, Since: t0, Deadline: t0.Add(tm.Kick), Starts: true, AdmittedAt: t0},
		"awaiting-non-starter": {State: Awaiting, Since: t0, Deadline: t0.Add(tm.Grace + tm.Kick), AdmittedAt: t0, Initiates: true},
		"up":                   {State: Up, Since: t0, AdmittedAt: t0, Starts: true},
		"suspect":              {State: Suspect, Since: t0, Deadline: t0.Add(tm.SuspectWindow), AdmittedAt: t0},
	}
}

// acts renders actions as "kind kind(start) kind(reason)" for tables.
func acts(as []Action) string {
	var out []string
	for _, a := range as {
		s := a.Kind.String()
		switch {
		case a.Kind == Configure && a.Start:
			s += "(start)"
		case a.Kind == Remove:
			s += "(" + a.Reason + ")"
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

// TestTransitions is every state × event, each event 10 ms after the
// state was entered (before any deadline), and Tick at the deadline.
func TestTransitions(t *testing.T) {
	tm := testTimers()
	const (
		gone      = "gone"
		wanted    = "wanted"
		admitting = "admitting"
		awaiting  = "awaiting-session"
		up        = "up"
		suspect   = "suspect"
	)
	type want struct{ state, acts string }
	table := map[string]map[EventKind]want{
		"gone": {
			Want: {wanted, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {gone, ""},
			SessionUp: {gone, ""}, Heard: {gone, ""}, Suspected: {gone, ""}, Left: {gone, ""},
			Revoked: {gone, ""}, Forgotten: {gone, ""}, Tick: {gone, ""},
		},
		"wanted-initiates": {
			Want: {wanted, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {wanted, ""},
			SessionUp: {wanted, ""}, Heard: {wanted, ""}, Suspected: {wanted, ""}, Left: {gone, ""},
			Revoked: {gone, ""}, Forgotten: {gone, ""}, Tick: {admitting, "admit"},
		},
		"wanted-yields": {
			Want: {wanted, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {wanted, ""},
			SessionUp: {wanted, ""}, Heard: {wanted, ""}, Suspected: {wanted, ""}, Left: {gone, ""},
			Revoked: {gone, ""}, Forgotten: {gone, ""}, Tick: {admitting, "admit"},
		},
		"admitting": {
			Want: {admitting, ""}, Admitted: {awaiting, "cancel-admit configure(start)"}, AdmitFailed: {wanted, ""},
			SessionUp: {admitting, ""}, Heard: {admitting, ""}, Suspected: {admitting, ""}, Left: {gone, "cancel-admit"},
			Revoked: {gone, "cancel-admit"}, Forgotten: {gone, "cancel-admit"}, Tick: {wanted, "cancel-admit"},
		},
		"awaiting-starter": {
			Want: {awaiting, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {awaiting, ""},
			SessionUp: {up, ""}, Heard: {awaiting, ""}, Suspected: {awaiting, ""},
			Left: {gone, "remove(left the fabric)"}, Revoked: {gone, "remove(certificate revoked or expired)"},
			Forgotten: {gone, "remove(record superseded)"}, Tick: {awaiting, "resend-initiation"},
		},
		"awaiting-non-starter": {
			Want: {awaiting, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {awaiting, ""},
			SessionUp: {up, "enable-keepalive"}, Heard: {awaiting, ""}, Suspected: {awaiting, ""},
			Left: {gone, "remove(left the fabric)"}, Revoked: {gone, "remove(certificate revoked or expired)"},
			Forgotten: {gone, "remove(record superseded)"}, Tick: {awaiting, "start-session"},
		},
		"up": {
			Want: {up, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {up, ""},
			SessionUp: {up, ""}, Heard: {up, ""}, Suspected: {suspect, "probe"},
			Left: {gone, "remove(left the fabric)"}, Revoked: {gone, "remove(certificate revoked or expired)"},
			Forgotten: {gone, "remove(record superseded)"}, Tick: {up, ""},
		},
		"suspect": {
			Want: {suspect, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {suspect, ""},
			SessionUp: {up, ""}, Heard: {up, ""}, Suspected: {suspect, ""},
			Left: {gone, "remove(left the fabric)"}, Revoked: {gone, "remove(certificate revoked or expired)"},
			Forgotten: {gone, "remove(record superseded)"}, Tick: {wanted, "remove(declared dead; nothing heard through its tunnel)"},
		},
	}
	fx := fixtures(tm)
	if len(table) != len(fx) {
		t.Fatalf("table covers %d fixtures, there are %d", len(table), len(fx))
	}
	for name, row := range table {
		for kind := Want; kind <= Tick; kind++ {
			w, ok := row[kind]
			if !ok {
				t.Errorf("%s: no expectation for %v", name, kind)
				continue
			}
			s := fx[name]
			now := t0.Add(10 * time.Millisecond)
			ev := Event{Kind: kind, Responder: true, Initiates: true, RTT: time.Millisecond}
			if kind == Tick {
				if s.Deadline.IsZero() {
					now = t0.Add(time.Hour)
				} else {
					now = s.Deadline
				}
			}
			got, as := s.Next(ev, now, tm)
			if got.State.String() != w.state || acts(as) != w.acts {
				t.Errorf("%s + %v: got %v [%s], want %s [%s]", name, kind, got.State, acts(as), w.state, w.acts)
			}
			if !got.Deadline.IsZero() && got.Deadline.Before(now) {
				t.Errorf("%s + %v: deadline %v before now %v", name, kind, got.Deadline, now)
			}
			if got.State != s.State && got.Since != now {
				t.Errorf("%s + %v: entered %v at %v, not at the event (%v)", name, kind, got.State, got.Since, now)
			}
		}
	}
}

// TestTickBeforeDeadlineChangesNothing: a Tick that comes early (a timer
// that fired for an older deadline) is ignored in every state.
func TestTickBeforeDeadlineChangesNothing(t *testing.T) {
	tm := testTimers()
	for name, s := range fixtures(tm) {
		if s.Deadline.IsZero() {
			continue
		}
		got, as := s.Next(Event{Kind: Tick}, s.Deadline.Add(-time.Nanosecond), tm)
		if got != s || len(as) != 0 {
			t.Errorf("%s: early tick changed %+v into %+v [%s]", name, s, got, acts(as))
		}
	}
}

// TestInitiatesIsOneSided: for any two different keys exactly one side
// initiates; a key never initiates with itself.
func TestInitiatesIsOneSided(t *testing.T) {
	keys := [][32]byte{{}, {1}, {0, 1}, {255}, {1, 2, 3}}
	for i := 0; i < 32; i++ {
		var k [32]byte
		k[i] = byte(i*7 + 1)
		keys = append(keys, k)
	}
	for _, a := range keys {
		if Initiates(a, a) {
			t.Errorf("%x initiates with itself", a[:4])
		}
		for _, b := range keys {
			if a != b && Initiates(a, b) == Initiates(b, a) {
				t.Errorf("%x and %x: both or neither initiate", a[:4], b[:4])
			}
		}
	}
}

// TestYieldThenAdmit: a side that does not initiate waits Yield for the
// other side's admission; if it comes, this side never sends; if not, it
// runs the admission itself.
func TestYieldThenAdmit(t *testing.T) {
	tm := testTimers()
	s, _ := Session{}.Next(Event{Kind: Want}, t0, tm)
	if s.State != Wanted || !s.Deadline.Equal(t0.Add(tm.Yield)) {
		t.Fatalf("want without initiating: %v until %v, want wanted until %v", s.State, s.Deadline, t0.Add(tm.Yield))
	}
	// The other side admits us in time: we start the session, never admit.
	got, as := s.Next(Event{Kind: Admitted, Responder: true}, t0.Add(tm.Yield/2), tm)
	if got.State != Awaiting || acts(as) != "configure(start)" || !got.Starts {
		t.Fatalf("admitted by the other side: %v [%s] starts=%v", got.State, acts(as), got.Starts)
	}
	// It does not: we admit it ourselves at the deadline.
	got, as = s.Next(Event{Kind: Tick}, t0.Add(tm.Yield), tm)
	if got.State != Admitting || acts(as) != "admit" {
		t.Fatalf("after the yield: %v [%s]", got.State, acts(as))
	}
	// An initiator admits at once.
	s, _ = Session{}.Next(Event{Kind: Want, Initiates: true}, t0, tm)
	if got, as = s.Next(Event{Kind: Tick}, t0, tm); got.State != Admitting || acts(as) != "admit" {
		t.Fatalf("initiator: %v [%s]", got.State, acts(as))
	}
}

// TestStarterKicksThenGivesUp: the starter resends its initiation every
// KickDelay(rtt) until SessionSetup after the admission, then removes the
// peer and wants it again after the backoff; the non-starter takes the
// start over after Grace and follows the same rules.
func TestStarterKicksThenGivesUp(t *testing.T) {
	tm := testTimers()
	for _, c := range []struct {
		name      string
		responder bool
		rtt       time.Duration
		first     string // the first tick's action
	}{
		{"starter", true, 0, "resend-initiation"},
		{"starter after a slow admission", true, time.Second, "resend-initiation"},
		{"non-starter", false, 0, "start-session"},
	} {
		t.Run(c.name, func(t *testing.T) {
			from := Session{State: Admitting, Initiates: true} // this side's admission completes
			if c.responder {
				from = Session{State: Wanted, Deadline: t0.Add(tm.Yield)} // the other side's does, during the yield
			}
			s, as := from.Next(Event{Kind: Admitted, Responder: c.responder, RTT: c.rtt}, t0, tm)
			if s.Starts != c.responder || acts(as) != map[bool]string{true: "configure(start)", false: "configure"}[c.responder] {
				t.Fatalf("admitted: starts=%v [%s]", s.Starts, acts(as))
			}
			wantFirst := t0.Add(tm.KickDelay(c.rtt))
			if !c.responder {
				wantFirst = t0.Add(tm.Grace + tm.KickDelay(c.rtt))
			}
			if !s.Deadline.Equal(wantFirst) {
				t.Fatalf("first deadline %v after admission, want %v", s.Deadline.Sub(t0), wantFirst.Sub(t0))
			}
			var log []string
			for step := 0; s.State == Awaiting; step++ {
				if step > 20 {
					t.Fatal("no end to the kicks")
				}
				now := s.Deadline
				s, as = s.Next(Event{Kind: Tick}, now, tm)
				log = append(log, fmt.Sprintf("%v:%s", now.Sub(t0), acts(as)))
			}
			if log[0] != fmt.Sprintf("%v:%s", wantFirst.Sub(t0), c.first) {
				t.Errorf("first tick %s, want %s at %v", log[0], c.first, wantFirst.Sub(t0))
			}
			last := log[len(log)-1]
			if last != fmt.Sprintf("%v:remove(no WireGuard session after admission)", tm.SessionSetup) {
				t.Errorf("gave up with %s, want a removal at SessionSetup (%v); ticks %v", last, tm.SessionSetup, log)
			}
			if s.State != Wanted || s.Failures != 1 || !s.Deadline.Equal(t0.Add(tm.SessionSetup+tm.Backoff(1))) {
				t.Errorf("after giving up: %v failures=%d next try %v", s.State, s.Failures, s.Deadline.Sub(t0))
			}
		})
	}
}

// TestSessionUpEndsTheWait: a session that comes stops the kicks and
// resets the failures; the initiator then turns its keepalive on.
func TestSessionUpEndsTheWait(t *testing.T) {
	tm := testTimers()
	s := Session{State: Awaiting, Since: t0, AdmittedAt: t0, Deadline: t0.Add(tm.Grace), Failures: 3, Kicks: 2}
	got, as := s.Next(Event{Kind: SessionUp}, t0.Add(time.Second), tm)
	if got.State != Up || !got.Deadline.IsZero() || got.Failures != 0 || got.Kicks != 0 || acts(as) != "enable-keepalive" {
		t.Fatalf("session up: %+v [%s]", got, acts(as))
	}
	if again, as := got.Next(Event{Kind: Tick}, t0.Add(time.Hour), tm); again != got || len(as) != 0 {
		t.Fatalf("a session that is up has no deadline: %+v [%s]", again, acts(as))
	}
}

// TestSuspicionNeedsSilence: a suspected peer heard from within the
// window stays; one that stays silent through it is removed and wanted
// again.
func TestSuspicionNeedsSilence(t *testing.T) {
	tm := testTimers()
	up := Session{State: Up, Since: t0, AdmittedAt: t0}
	s, as := up.Next(Event{Kind: Suspected}, t0.Add(time.Minute), tm)
	if s.State != Suspect || acts(as) != "probe" || !s.Deadline.Equal(t0.Add(time.Minute+tm.SuspectWindow)) {
		t.Fatalf("suspected: %+v [%s]", s, acts(as))
	}
	if got, as := s.Next(Event{Kind: Heard}, s.Deadline.Add(-time.Millisecond), tm); got.State != Up || len(as) != 0 {
		t.Fatalf("heard just before the deadline: %v [%s]", got.State, acts(as))
	}
	got, as := s.Next(Event{Kind: Tick}, s.Deadline, tm)
	if got.State != Wanted || !strings.HasPrefix(acts(as), "remove(") {
		t.Fatalf("silent through the window: %v [%s]", got.State, acts(as))
	}
	// A second suspicion while suspect does not move the deadline: an
	// insider repeating verdicts cannot keep a check open for ever, nor
	// cut it short.
	if again, _ := s.Next(Event{Kind: Suspected}, s.Deadline.Add(-time.Millisecond), tm); !again.Deadline.Equal(s.Deadline) {
		t.Fatalf("second suspicion moved the deadline from %v to %v", s.Deadline, again.Deadline)
	}
}

// TestBackoffGrowsAndEnds: failures in a row double the wait up to
// BackoffMax, with jitter between half and all of it, and after
// MaxFailures the peer is no longer wanted.
func TestBackoffGrowsAndEnds(t *testing.T) {
	tm := DefaultTimers()
	prevMax := time.Duration(0)
	for f := 1; f <= 10; f++ {
		want := min(tm.BackoffMin<<(f-1), tm.BackoffMax)
		lo, hi := tm, tm
		lo.Jitter = func(time.Duration) time.Duration { return 0 }
		hi.Jitter = func(d time.Duration) time.Duration { return d - 1 }
		if got := lo.Backoff(f); got != want/2 {
			t.Errorf("failure %d: shortest backoff %v, want %v", f, got, want/2)
		}
		if got := hi.Backoff(f); got != want {
			t.Errorf("failure %d: longest backoff %v, want %v", f, got, want)
		}
		for range 50 {
			if got := tm.Backoff(f); got < want/2 || got > want {
				t.Fatalf("failure %d: backoff %v outside [%v, %v]", f, got, want/2, want)
			}
		}
		if want < prevMax {
			t.Errorf("failure %d: backoff shrank", f)
		}
		prevMax = want
	}
	tm = testTimers()
	s := Session{State: Wanted, Initiates: true, Deadline: t0}
	now := t0
	for i := 0; ; i++ {
		if i > tm.MaxFailures+1 {
			t.Fatalf("still %v after %d failures", s.State, s.Failures)
		}
		s, _ = s.Next(Event{Kind: Tick}, now, tm)
		if s.State != Admitting {
			t.Fatalf("try %d: %v, want admitting", i, s.State)
		}
		s, _ = s.Next(Event{Kind: AdmitFailed}, now, tm)
		if s.State == Gone {
			break
		}
		now = s.Deadline
	}
	if s.Failures != tm.MaxFailures {
		t.Fatalf("gone after %d failures, want %d", s.Failures, tm.MaxFailures)
	}
	if got, _ := s.Next(Event{Kind: Want, Initiates: true}, now, tm); got.State != Wanted || got.Failures != 0 {
		t.Fatalf("a new want after giving up: %v with %d failures", got.State, got.Failures)
	}
}

// TestCrossedAdmissions: when both sides admit at once (a static peer
// each way, keys unknown before), the responder's admission wins: this
// side cancels its own and starts the session; the initiator's late
// completion of a crossed admission does not restart anything.
func TestCrossedAdmissions(t *testing.T) {
	tm := testTimers()
	s := Session{State: Admitting, Since: t0, Deadline: t0.Add(tm.AdmitTimeout), Initiates: true}
	s, as := s.Next(Event{Kind: Admitted, Responder: true, RTT: 5 * time.Millisecond}, t0.Add(20*time.Millisecond), tm)
	if s.State != Awaiting || !s.Starts || acts(as) != "cancel-admit configure(start)" {
		t.Fatalf("the other side's admission first: %v starts=%v [%s]", s.State, s.Starts, acts(as))
	}
	got, as := s.Next(Event{Kind: Admitted, RTT: 5 * time.Millisecond}, t0.Add(30*time.Millisecond), tm)
	if got != s || len(as) != 0 {
		t.Fatalf("this side's crossed admission completing late changed %+v into %+v [%s]", s, got, acts(as))
	}
}

// TestNoActionOutsideItsState: the actions that touch WireGuard come only
// from states where the peer is configured (no Remove of a peer never
// added, no resend without a session pending).
func TestNoActionOutsideItsState(t *testing.T) {
	tm := testTimers()
	configured := []State{Awaiting, Up, Suspect}
	for name, s := range fixtures(tm) {
		for kind := Want; kind <= Tick; kind++ {
			now := t0.Add(time.Hour)
			_, as := s.Next(Event{Kind: kind, Responder: true}, now, tm)
			for _, a := range as {
				switch a.Kind {
				case Remove, ResendInitiation, StartSession, EnableKeepalive, Probe:
					if !slices.Contains(configured, s.State) {
						t.Errorf("%s + %v: %v while the peer is not configured", name, kind, a.Kind)
					}
				}
			}
		}
	}
}

// TestNames: every state, event and action has its own name, and a value
// without one (from a newer peer of the code, say) prints as kind(n).
func TestNames(t *testing.T) {
	seen := map[string]bool{}
	for s := Gone; s <= Suspect; s++ {
		seen[s.String()] = true
	}
	for k := Want; k <= Tick; k++ {
		seen[k.String()] = true
	}
	for k := Admit; k <= Remove; k++ {
		seen[k.String()] = true
	}
	if want := int(Suspect-Gone+1) + int(Tick-Want+1) + int(Remove-Admit+1); len(seen) != want {
		t.Errorf("%d distinct names for %d values", len(seen), want)
	}
	for got, want := range map[string]string{State(99).String(): "state(99)", EventKind(0).String(): "event(0)", ActionKind(42).String(): "action(42)"} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}
