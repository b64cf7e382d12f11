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
	long := t0.Add(-time.Hour)
	return map[string]Session{
		"gone":                  {},
		"gone-revoked":          {Barred: true},
		"wanted-initiates":      {State: Wanted, Since: t0, Deadline: t0.Add(time.Second), Initiates: true},
		"wanted-yields":         {State: Wanted, Since: t0, Deadline: t0.Add(tm.Yield)},
		"admitting":             {State: Admitting, Since: t0, Deadline: t0.Add(tm.AdmitTimeout), Initiates: true},
		"admitting-after-yield": {State: Admitting, Since: t0, Deadline: t0.Add(tm.AdmitTimeout)},
		"awaiting-starter":      {State: Awaiting, Since: t0, Deadline: t0.Add(tm.Kick), Starts: true, AdmittedAt: t0},
		"awaiting-non-starter":  {State: Awaiting, Since: t0, Deadline: t0.Add(tm.Grace), AdmittedAt: t0, Initiates: true},
		// It answered the starter's initiation (PeerStarted).
		"awaiting-peer-started": {State: Awaiting, Since: t0, Deadline: t0.Add(tm.SessionSetup), AdmittedAt: t0, PeerStartedAt: t0, Initiates: true},
		"up":                    {State: Up, Since: t0, AdmittedAt: t0, UpAt: t0, Starts: true},
		"suspect":               {State: Suspect, Since: t0, Deadline: t0.Add(tm.SuspectWindow / 2), Probes: 1, AdmittedAt: long, UpAt: long},
		"suspect-probed-twice":  {State: Suspect, Since: t0, Deadline: t0.Add(tm.SuspectWindow), Probes: 2, AdmittedAt: long, UpAt: long},
	}
}

// acts renders actions as "kind kind(start,fresh) kind(reason)" for tables.
func acts(as []Action) string {
	var out []string
	for _, a := range as {
		s := a.Kind.String()
		var opts []string
		if a.Start {
			opts = append(opts, "start")
		}
		if a.Fresh {
			opts = append(opts, "fresh")
		}
		if a.Reason != "" {
			opts = append(opts, a.Reason)
		}
		if len(opts) > 0 {
			s += "(" + strings.Join(opts, ",") + ")"
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

// TestTransitions is every state × event, each event 10 ms after the
// state was entered (before any deadline; an admission by the other side,
// this node having the higher key), and Tick at the deadline.
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
	removed := func() map[EventKind]want {
		return map[EventKind]want{
			Left: {gone, "remove(left the fabric)"}, Revoked: {gone, "remove(certificate revoked or expired)"},
			Forgotten: {gone, "remove(record superseded)"},
		}
	}
	merge := func(a, b map[EventKind]want) map[EventKind]want {
		for k, v := range b {
			a[k] = v
		}
		return a
	}
	outOfAdmission := map[EventKind]want{Left: {gone, ""}, Revoked: {gone, ""}, Forgotten: {gone, ""}}
	table := map[string]map[EventKind]want{
		"gone": merge(map[EventKind]want{
			Want: {wanted, ""}, Answering: {gone, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {gone, ""},
			SessionUp: {gone, ""}, Heard: {gone, ""}, Suspected: {gone, ""}, Tick: {gone, ""},
		}, outOfAdmission),
		"gone-revoked": merge(map[EventKind]want{
			Want: {wanted, ""}, Answering: {gone, ""}, Admitted: {gone, ""}, AdmitFailed: {gone, ""},
			SessionUp: {gone, ""}, Heard: {gone, ""}, Suspected: {gone, ""}, Tick: {gone, ""},
		}, outOfAdmission),
		"wanted-initiates": merge(map[EventKind]want{
			Want: {wanted, ""}, Answering: {wanted, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {wanted, ""},
			SessionUp: {wanted, ""}, Heard: {wanted, ""}, Suspected: {wanted, ""}, Tick: {admitting, "admit"},
		}, outOfAdmission),
		"wanted-yields": merge(map[EventKind]want{
			Want: {wanted, ""}, Answering: {wanted, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {wanted, ""},
			SessionUp: {wanted, ""}, Heard: {wanted, ""}, Suspected: {wanted, ""}, Tick: {admitting, "admit"},
		}, outOfAdmission),
		"admitting": {
			Want: {admitting, ""}, Answering: {admitting, ""}, Admitted: {awaiting, "cancel-admit configure(start)"}, AdmitFailed: {wanted, ""},
			SessionUp: {admitting, ""}, Heard: {admitting, ""}, Suspected: {admitting, ""}, Left: {gone, "cancel-admit"},
			Revoked: {gone, "cancel-admit"}, Forgotten: {gone, "cancel-admit"}, Tick: {wanted, "cancel-admit"},
		},
		"admitting-after-yield": {
			Want: {admitting, ""}, Answering: {wanted, "cancel-admit"}, Admitted: {awaiting, "cancel-admit configure(start)"}, AdmitFailed: {wanted, ""},
			SessionUp: {admitting, ""}, Heard: {admitting, ""}, Suspected: {admitting, ""}, Left: {gone, "cancel-admit"},
			Revoked: {gone, "cancel-admit"}, Forgotten: {gone, "cancel-admit"}, Tick: {wanted, "cancel-admit"},
		},
		"awaiting-starter": merge(map[EventKind]want{
			Want: {awaiting, ""}, Answering: {awaiting, ""}, Admitted: {awaiting, ""}, AdmitFailed: {awaiting, ""},
			SessionUp: {up, ""}, Heard: {up, ""}, Suspected: {awaiting, ""}, Tick: {awaiting, "resend-initiation"},
		}, removed()),
		"awaiting-non-starter": merge(map[EventKind]want{
			// A second admission that makes this side the starter: it
			// starts now (the first one's session is not up yet).
			Want: {awaiting, ""}, Answering: {awaiting, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {awaiting, ""},
			SessionUp: {up, "enable-keepalive"}, Heard: {up, "enable-keepalive"}, Suspected: {awaiting, ""}, Tick: {awaiting, "new-initiation"},
			PeerStarted: {awaiting, ""}, // and no take-over (TestPeerStartedStopsTakeOver)
		}, removed()),
		"awaiting-peer-started": merge(map[EventKind]want{
			Want: {awaiting, ""}, Answering: {awaiting, ""}, Admitted: {awaiting, "configure(start)"}, AdmitFailed: {awaiting, ""},
			SessionUp: {up, "enable-keepalive"}, Heard: {up, "enable-keepalive"}, Suspected: {awaiting, ""}, PeerStarted: {awaiting, ""},
			Tick: {wanted, "remove(no WireGuard session after admission)"},
		}, removed()),
		"up": merge(map[EventKind]want{
			Want: {up, ""}, Answering: {up, ""}, Admitted: {up, ""}, AdmitFailed: {up, ""},
			SessionUp: {up, ""}, Heard: {up, ""}, Suspected: {suspect, "probe"}, Tick: {up, ""},
		}, removed()),
		"suspect": merge(map[EventKind]want{
			Want: {suspect, ""}, Answering: {suspect, ""}, Admitted: {awaiting, "configure(start,fresh)"}, AdmitFailed: {suspect, ""},
			SessionUp: {up, ""}, Heard: {up, ""}, Suspected: {suspect, ""}, Tick: {suspect, "probe"},
		}, removed()),
		"suspect-probed-twice": merge(map[EventKind]want{
			Want: {suspect, ""}, Answering: {suspect, ""}, Admitted: {awaiting, "configure(start,fresh)"}, AdmitFailed: {suspect, ""},
			SessionUp: {up, ""}, Heard: {up, ""}, Suspected: {suspect, ""}, Tick: {wanted, "remove(declared dead; nothing heard through its tunnel)"},
		}, removed()),
	}
	fx := fixtures(tm)
	for name, row := range table {
		if name == "up" {
			// The device has no session after all: this side starts one.
			row[Lost] = want{awaiting, "new-initiation"}
		} else {
			row[Lost] = want{fx[name].State.String(), ""} // only an up session can be lost
		}
	}
	for name, row := range table {
		if _, ok := row[PeerStarted]; !ok {
			// Only a side waiting for the other's start takes it in.
			row[PeerStarted] = want{fx[name].State.String(), ""}
		}
	}
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
			ev := Event{Kind: kind, Responder: true, RTT: time.Millisecond}
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
			if got.State == Wanted || got.State == Admitting || got.State == Awaiting || got.State == Suspect {
				if got.Deadline.IsZero() {
					t.Errorf("%s + %v: %v without a deadline", name, kind, got.State)
				}
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

// TestStarterKicksThenGivesUp: the starter sends its initiation again
// after KickDelay(rtt), first byte for byte and then as new initiations,
// until SessionSetup after the admission; then it removes the peer and
// wants it again after the backoff. The non-starter takes the start over
// (a new initiation) no later than one kick before SessionSetup, and then
// kicks twice (a resend, a new initiation) before it gives up.
func TestStarterKicksThenGivesUp(t *testing.T) {
	tm := testTimers()
	for _, c := range []struct {
		name      string
		initiates bool // this side has the lower key: it does not start
		rtt       time.Duration
	}{
		{"starter", false, 0},
		{"starter after a slow admission", false, time.Second},
		{"non-starter", true, 0},
		{"non-starter after a slow admission", true, time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			from := Session{State: Wanted, Deadline: t0.Add(tm.Yield)}
			if c.initiates {
				from = Session{State: Admitting, Initiates: true, Deadline: t0.Add(tm.AdmitTimeout)}
			}
			s, as := from.Next(Event{Kind: Admitted, Responder: !c.initiates, Initiates: c.initiates, RTT: c.rtt}, t0, tm)
			wantConf := map[bool]string{false: "configure(start)", true: "configure"}[c.initiates]
			if s.Starts == c.initiates || acts(as) != wantConf {
				t.Fatalf("admitted: starts=%v [%s], want [%s]", s.Starts, acts(as), wantConf)
			}
			kick := tm.KickDelay(c.rtt)
			takeOver := s.Deadline
			if c.initiates && takeOver.Before(t0.Add(kick+tm.Grace/2)) {
				t.Fatalf("take-over at %v, before the starter's first kick (%v) had time", takeOver.Sub(t0), kick)
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
			first := map[bool]string{false: "resend-initiation", true: "new-initiation"}[c.initiates]
			if !strings.HasSuffix(log[0], ":"+first) {
				t.Errorf("first tick %s, want %s", log[0], first)
			}
			for _, l := range log[1 : len(log)-1] {
				if !strings.HasSuffix(l, ":new-initiation") && !(c.initiates && strings.HasSuffix(l, ":resend-initiation")) {
					t.Errorf("later kick %s, want a new initiation; ticks %v", l, log)
				}
			}
			// Given up at SessionSetup, or three kicks' time after a late
			// take-over, which so gets a resend and a new initiation.
			end := tm.SessionSetup
			if c.initiates {
				end = max(end, takeOver.Sub(t0)+3*kick)
				var resends, news int
				for _, l := range log[1 : len(log)-1] {
					switch {
					case strings.HasSuffix(l, ":resend-initiation"):
						resends++
					case strings.HasSuffix(l, ":new-initiation"):
						news++
					}
				}
				if resends < 1 || news < 1 {
					t.Errorf("after the take-over: %d resends and %d new initiations, want at least one of each; ticks %v", resends, news, log)
				}
			}
			last := log[len(log)-1]
			if last != fmt.Sprintf("%v:remove(no WireGuard session after admission)", end) {
				t.Errorf("gave up with %s, want a removal at %v; ticks %v", last, end, log)
			}
			if s.State != Wanted || s.Failures != 1 || !s.Deadline.Equal(t0.Add(end+tm.Backoff(1))) {
				t.Errorf("after giving up: %v failures=%d next try %v", s.State, s.Failures, s.Deadline.Sub(t0))
			}
		})
	}
}

// TestPeerStartedStopsTakeOver: a side that does not start the session
// and has answered the starter's initiation takes nothing over: its
// initiation would cross the starter's next one. It waits for the session
// until SessionSetup after the answer (a starter that processed the
// admission late started late), sends nothing meanwhile, and then gives
// the session up. Only the first answer counts; a side that starts, or a
// new admission, is not held by an earlier answer.
func TestPeerStartedStopsTakeOver(t *testing.T) {
	tm := testTimers()
	from := Session{State: Admitting, Initiates: true, Deadline: t0.Add(tm.AdmitTimeout)}
	s, _ := from.Next(Event{Kind: Admitted, Initiates: true}, t0, tm)
	takeOver := s.Deadline
	answered := takeOver.Add(-time.Second)
	s, as := s.Next(Event{Kind: PeerStarted}, answered, tm)
	end := answered.Add(tm.SessionSetup)
	if len(as) != 0 || !s.PeerStartedAt.Equal(answered) || !s.Deadline.Equal(end) {
		t.Fatalf("after the answer: %+v [%s], want a deadline at %v", s, acts(as), end.Sub(t0))
	}
	// A later answer (a kick of the starter's) moves nothing.
	if again, as := s.Next(Event{Kind: PeerStarted}, answered.Add(time.Second), tm); again != s || len(as) != 0 {
		t.Fatalf("a second answer changed %+v into %+v [%s]", s, again, acts(as))
	}
	// Nothing at the take-over's time...
	if again, as := s.Next(Event{Kind: Tick}, takeOver, tm); again != s || len(as) != 0 {
		t.Fatalf("at the take-over's time: %+v [%s]", again, acts(as))
	}
	// ...and the session given up at its deadline.
	gaveUp, as := s.Next(Event{Kind: Tick}, end, tm)
	if gaveUp.State != Wanted || acts(as) != "remove(no WireGuard session after admission)" {
		t.Fatalf("at %v: %v [%s], want the session given up", end.Sub(t0), gaveUp.State, acts(as))
	}
	// A new admission starts the wait afresh: the take-over is back.
	readmitted, _ := s.Next(Event{Kind: Admitted, Initiates: true}, t0.Add(time.Minute), tm)
	if !readmitted.PeerStartedAt.IsZero() || readmitted.Deadline.After(t0.Add(time.Minute).Add(tm.Grace+tm.KickMax)) {
		t.Fatalf("readmitted: %+v, want the wait for the take-over again", readmitted)
	}
}

// TestCrossedTakeOverOneSideAgain: a take-over that crosses the starter's
// initiation (each side sent one before it saw the other's) leaves both
// without a session; then only the starter sends again. The side that
// took over hands the start back when the starter's initiation arrives
// and sends nothing more; the starter, seeing the take-over's initiation
// while its own is pending, makes its next kick a new initiation (a copy
// of the old one would be a replay to the peer) at its usual time.
func TestCrossedTakeOverOneSideAgain(t *testing.T) {
	tm := testTimers()
	// The side that does not start, at its take-over.
	ns, _ := Session{State: Admitting, Initiates: true, Deadline: t0.Add(tm.AdmitTimeout)}.Next(Event{Kind: Admitted, Initiates: true}, t0, tm)
	tookOver := ns.Deadline
	ns, as := ns.Next(Event{Kind: Tick}, tookOver, tm)
	if !ns.Starts || acts(as) != "new-initiation" {
		t.Fatalf("take-over: starts=%v [%s]", ns.Starts, acts(as))
	}
	arrived := tookOver.Add(50 * time.Millisecond)
	ns, as = ns.Next(Event{Kind: PeerStarted}, arrived, tm)
	if ns.Starts || len(as) != 0 || !ns.Deadline.Equal(arrived.Add(tm.SessionSetup)) {
		t.Fatalf("the starter's initiation after the take-over: %+v [%s], want the start handed back, given up %v after it", ns, acts(as), tm.SessionSetup)
	}
	for now := arrived; now.Before(ns.Deadline); now = now.Add(100 * time.Millisecond) {
		if _, as := ns.Next(Event{Kind: Tick}, now, tm); len(as) != 0 {
			t.Fatalf("sent [%s] at %v after handing the start back", acts(as), now.Sub(arrived))
		}
	}

	// The starter, whose initiation the take-over crossed.
	st, _ := Session{State: Wanted, Deadline: t0.Add(tm.Yield)}.Next(Event{Kind: Admitted, Responder: true}, t0, tm)
	kick := st.Deadline
	st, as = st.Next(Event{Kind: PeerStarted}, t0.Add(time.Second), tm)
	if len(as) != 0 || !st.Deadline.Equal(kick) || !st.Starts {
		t.Fatalf("the take-over's initiation at the starter: %+v [%s], want the kick kept at %v", st, acts(as), kick.Sub(t0))
	}
	if _, as = st.Next(Event{Kind: Tick}, kick, tm); acts(as) != "new-initiation" {
		t.Fatalf("the starter's kick after a crossing: [%s], want a new initiation", acts(as))
	}
	// Without the crossing, the first kick is the copy.
	plain, _ := Session{State: Wanted, Deadline: t0.Add(tm.Yield)}.Next(Event{Kind: Admitted, Responder: true}, t0, tm)
	if _, as = plain.Next(Event{Kind: Tick}, kick, tm); acts(as) != "resend-initiation" {
		t.Fatalf("the starter's first kick: [%s], want the copy", acts(as))
	}
}

// TestSessionUpEndsTheWait: a session that comes (a handshake, or
// transport data from the peer) stops the kicks and resets the failures;
// the non-starter then turns its keepalive on.
func TestSessionUpEndsTheWait(t *testing.T) {
	tm := testTimers()
	for _, kind := range []EventKind{SessionUp, Heard} {
		s := Session{State: Awaiting, Since: t0, AdmittedAt: t0, Deadline: t0.Add(tm.Grace), Failures: 3, Kicks: 2}
		got, as := s.Next(Event{Kind: kind}, t0.Add(time.Second), tm)
		if got.State != Up || !got.Deadline.IsZero() || got.Failures != 0 || got.Kicks != 0 || acts(as) != "enable-keepalive" ||
			!got.UpAt.Equal(t0.Add(time.Second)) {
			t.Fatalf("%v: %+v [%s]", kind, got, acts(as))
		}
		if again, as := got.Next(Event{Kind: Tick}, t0.Add(time.Hour), tm); again != got || len(as) != 0 {
			t.Fatalf("a session that is up has no deadline: %+v [%s]", again, acts(as))
		}
	}
}

// TestDefaultSuspectWindowLeavesRoom: with the default timers, a silent
// suspect is removed within the fabric's goal of two seconds after
// failure detection's verdict, with a quarter second left for the session
// loop's own delay on a loaded node (measured: up to a tenth of a second
// at 100 nodes on two cores); and its halfway probe still has half a
// second and more to be answered across a slow link.
func TestDefaultSuspectWindowLeavesRoom(t *testing.T) {
	tm := DefaultTimers()
	tm.Jitter = func(time.Duration) time.Duration { return 0 }
	up := Session{State: Up, Since: t0, AdmittedAt: t0, UpAt: t0}
	s, _ := up.Next(Event{Kind: Suspected}, t0, tm)
	halfway := s.Deadline // the second probe
	s, _ = s.Next(Event{Kind: Tick}, halfway, tm)
	s, as := s.Next(Event{Kind: Tick}, s.Deadline, tm)
	if s.State != Wanted || !strings.HasPrefix(acts(as), "remove(") {
		t.Fatalf("silent suspect not removed at its window's end: %v [%s]", s.State, acts(as))
	}
	if removedAt := s.Since; removedAt.Sub(t0) > 2*time.Second-250*time.Millisecond {
		t.Errorf("removed %v after the verdict: no room within 2 s for a loaded session loop", removedAt.Sub(t0))
	}
	if probeWait := s.Since.Sub(halfway); probeWait < 500*time.Millisecond {
		t.Errorf("the halfway probe has %v to be answered, want at least 500ms", probeWait)
	}
}

// TestSuspicionNeedsSilence: a suspected peer is probed at once and again
// halfway through the window; heard from within it, it stays; silent
// through it, it is removed and wanted again.
func TestSuspicionNeedsSilence(t *testing.T) {
	tm := testTimers()
	up := Session{State: Up, Since: t0, AdmittedAt: t0, UpAt: t0}
	at := t0.Add(time.Minute)
	s, as := up.Next(Event{Kind: Suspected}, at, tm)
	if s.State != Suspect || acts(as) != "probe" || !s.Deadline.Equal(at.Add(tm.SuspectWindow/2)) {
		t.Fatalf("suspected: %+v [%s]", s, acts(as))
	}
	s, as = s.Next(Event{Kind: Tick}, s.Deadline, tm)
	if s.State != Suspect || acts(as) != "probe" || !s.Deadline.Equal(at.Add(tm.SuspectWindow)) {
		t.Fatalf("halfway: %+v [%s]", s, acts(as))
	}
	if got, as := s.Next(Event{Kind: Heard}, s.Deadline.Add(-time.Millisecond), tm); got.State != Up || len(as) != 0 || !got.UpAt.Equal(t0) {
		t.Fatalf("heard just before the deadline: %+v [%s]", got, acts(as))
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
// BackoffMax, with jitter between half and all of it; after MaxFailures a
// peer is no longer wanted, unless it is persistent (a static peer); a
// new Want during a backoff brings the next try forward.
func TestBackoffGrowsAndEnds(t *testing.T) {
	tm := DefaultTimers()
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
	}
	tm = testTimers()
	for _, persistent := range []bool{false, true} {
		s, _ := Session{}.Next(Event{Kind: Want, Initiates: true, Persistent: persistent}, t0, tm)
		now := t0
		tries := 0
		for i := 0; i < 2*tm.MaxFailures; i++ {
			tries++
			s, _ = s.Next(Event{Kind: Tick}, now, tm)
			if s.State != Admitting {
				t.Fatalf("persistent=%v try %d: %v, want admitting", persistent, i, s.State)
			}
			s, _ = s.Next(Event{Kind: AdmitFailed}, now, tm)
			if s.State == Gone {
				break
			}
			now = s.Deadline
		}
		switch {
		case !persistent && (s.State != Gone || tries != tm.MaxFailures):
			t.Fatalf("not persistent: %v after %d tries, want gone after %d", s.State, tries, tm.MaxFailures)
		case persistent && s.State != Wanted:
			t.Fatalf("persistent: %v after %d failures, want still wanted", s.State, s.Failures)
		}
		if persistent {
			at := s.Since.Add(time.Millisecond) // early in the backoff
			if got, _ := s.Next(Event{Kind: Want, Initiates: true}, at, tm); !got.Deadline.Equal(at) {
				t.Fatalf("a new want during a backoff: next try %v after it, want at once", got.Deadline.Sub(at))
			}
		}
	}
}

// TestCrossedAdmissionsOneStarter: when both sides admit at once (static
// peers, keys unknown before), each side completes one admission as
// initiator and one as responder, in either order; the higher key starts
// WireGuard and the lower does not, whatever the order.
func TestCrossedAdmissionsOneStarter(t *testing.T) {
	tm := testTimers()
	for _, ownFirst := range []bool{true, false} {
		for _, lower := range []bool{true, false} {
			s := Session{State: Admitting, Since: t0, Deadline: t0.Add(tm.AdmitTimeout), Initiates: true, Persistent: true}
			own := Event{Kind: Admitted, Initiates: lower, RTT: 5 * time.Millisecond}
			theirs := Event{Kind: Admitted, Responder: true, Initiates: lower, RTT: 5 * time.Millisecond}
			first, second := own, theirs
			if !ownFirst {
				first, second = theirs, own
			}
			s, _ = s.Next(first, t0.Add(20*time.Millisecond), tm)
			after, as := s.Next(second, t0.Add(30*time.Millisecond), tm)
			if after != s || len(as) != 0 {
				t.Errorf("own first=%v lower=%v: the second admission changed %+v into %+v [%s]", ownFirst, lower, s, after, acts(as))
			}
			if s.State != Awaiting || s.Starts == lower {
				t.Errorf("own first=%v lower=%v: %v starts=%v, want the higher key to start", ownFirst, lower, s.State, s.Starts)
			}
		}
	}
}

// TestAnsweringHoldsOwnAdmission: a side answering the other's admission
// starts none of its own meanwhile (it would cross), and stops one it ran
// after its yield; a lower key that initiates keeps its own.
func TestAnsweringHoldsOwnAdmission(t *testing.T) {
	tm := testTimers()
	s := Session{State: Wanted, Since: t0, Deadline: t0.Add(10 * time.Millisecond)}
	s, _ = s.Next(Event{Kind: Answering}, t0, tm)
	if want := t0.Add(tm.AnswerWait); !s.Deadline.Equal(want) {
		t.Fatalf("answering moved the next try to %v, want %v", s.Deadline.Sub(t0), want.Sub(t0))
	}
	yielded := Session{State: Admitting, Since: t0, Deadline: t0.Add(tm.AdmitTimeout)}
	if got, as := yielded.Next(Event{Kind: Answering}, t0, tm); got.State != Wanted || acts(as) != "cancel-admit" {
		t.Fatalf("answering while admitting after a yield: %v [%s]", got.State, acts(as))
	}
	first := Session{State: Admitting, Since: t0, Deadline: t0.Add(tm.AdmitTimeout), Initiates: true}
	if got, as := first.Next(Event{Kind: Answering}, t0, tm); got != first || len(as) != 0 {
		t.Fatalf("answering while admitting first: %+v [%s]", got, acts(as))
	}
}

// TestReadmission: a new admission of a peer with a session keeps the
// session if it came during the admission (both sides admitted each other
// at once) and starts a fresh one if it is older (the peer restarted or
// removed this node): the starter with a new initiation, the other side
// by dropping the old keys.
func TestReadmission(t *testing.T) {
	tm := testTimers()
	now := t0.Add(time.Minute)
	for _, c := range []struct {
		name      string
		upAt      time.Time
		initiates bool
		state     State
		acts      string
	}{
		{"session during the admission", now.Add(-100 * time.Millisecond), false, Up, ""},
		{"older session, starter", now.Add(-30 * time.Second), false, Awaiting, "configure(start,fresh)"},
		{"older session, non-starter", now.Add(-30 * time.Second), true, Awaiting, "configure(fresh)"},
	} {
		s := Session{State: Up, Since: c.upAt, UpAt: c.upAt, AdmittedAt: c.upAt.Add(-time.Second)}
		got, as := s.Next(Event{Kind: Admitted, Responder: true, Initiates: c.initiates, RTT: 200 * time.Millisecond}, now, tm)
		if got.State != c.state || acts(as) != c.acts {
			t.Errorf("%s: %v [%s], want %v [%s]", c.name, got.State, acts(as), c.state, c.acts)
		}
	}
	// A pending session re-admitted moments later keeps waiting for the
	// first one; later, it starts afresh.
	s := Session{State: Awaiting, Since: t0, AdmittedAt: t0, Starts: true, Deadline: t0.Add(tm.Kick)}
	if got, as := s.Next(Event{Kind: Admitted, Responder: true}, t0.Add(tm.Kick/2), tm); got != s || len(as) != 0 {
		t.Errorf("moments later: %+v [%s]", got, acts(as))
	}
	if got, as := s.Next(Event{Kind: Admitted, Responder: true}, t0.Add(tm.Kick), tm); acts(as) != "configure(start,fresh)" || !got.AdmittedAt.Equal(t0.Add(tm.Kick)) {
		t.Errorf("a kick later: %+v [%s]", got, acts(as))
	}
}

// TestRevokedStaysOut: after a revocation, an admission that was under
// way does not bring the peer back; a new Want (a new certificate) does.
func TestRevokedStaysOut(t *testing.T) {
	tm := testTimers()
	s := Session{State: Up, Since: t0, UpAt: t0}
	s, as := s.Next(Event{Kind: Revoked}, t0, tm)
	if s.State != Gone || !s.Barred || !strings.HasPrefix(acts(as), "remove(") {
		t.Fatalf("revoked: %+v [%s]", s, acts(as))
	}
	if got, as := s.Next(Event{Kind: Admitted, Responder: true}, t0.Add(time.Second), tm); got.State != Gone || len(as) != 0 {
		t.Fatalf("admitted after the revocation: %v [%s]", got.State, acts(as))
	}
	// The bar lasts as long as an admission under way could.
	if got, _ := s.Next(Event{Kind: Tick}, t0.Add(tm.AdmitTimeout), tm); got.State != Gone || got.Barred || !got.Deadline.IsZero() {
		t.Fatalf("after AdmitTimeout: %+v, want gone without a bar", got)
	}
	s, _ = s.Next(Event{Kind: Want, Initiates: true}, t0.Add(time.Minute), tm)
	if got, _ := s.Next(Event{Kind: Admitted, Responder: true}, t0.Add(time.Minute+time.Second), tm); got.State != Awaiting {
		t.Fatalf("admitted after a new want: %v", got.State)
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
				case Remove, ResendInitiation, NewInitiation, EnableKeepalive, Probe:
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

// TestEventTimeDatesTheSession: the rules date what happened by the
// event's own time (Event.At), not by when they got to it. A session that
// came up before a new admission of the peer began, but was reported to
// the rules only after it, predates that admission: the peer restarted,
// and the session is started fresh.
func TestEventTimeDatesTheSession(t *testing.T) {
	tm := testTimers()
	s, _ := Session{}.Next(Event{Kind: Admitted, Responder: true, RTT: 10 * time.Millisecond}, t0, tm)
	late := t0.Add(30 * time.Second) // the rules get to the next two events only now
	s, _ = s.Next(Event{Kind: SessionUp, At: t0.Add(time.Second)}, late, tm)
	if s.State != Up || !s.UpAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("%v up at %v, want up at the event's time %v", s.State, s.UpAt, t0.Add(time.Second))
	}
	s, acts := s.Next(Event{Kind: Admitted, Responder: true, RTT: 10 * time.Millisecond, At: t0.Add(10 * time.Second)}, late, tm)
	if len(acts) != 1 || acts[0].Kind != Configure || !acts[0].Fresh {
		t.Fatalf("actions %+v after an admission that began after the session came, want a fresh Configure", acts)
	}
	if s.State != Awaiting || !s.AdmittedAt.Equal(late) {
		t.Fatalf("%v admitted at %v, want awaiting, admitted at %v", s.State, s.AdmittedAt, late)
	}
}
