package session

import (
	"context"
	"sync"
	"testing"
	"time"
)

// steppedClock is a Clock that moves only when the test advances it.
type steppedClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []stepWaiter
}

type stepWaiter struct {
	at time.Time
	ch chan time.Time
}

func (c *steppedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *steppedClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	at := c.now.Add(d)
	if !at.After(c.now) {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, stepWaiter{at, ch})
	return ch
}

// advance moves the clock by d and fires the timers that came due.
func (c *steppedClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
	c.mu.Unlock()
}

type recorded struct {
	peer Key
	a    Action
}

type recorder struct {
	mu   sync.Mutex
	acts []recorded
}

func (r *recorder) Execute(peer Key, a Action, _ Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.acts = append(r.acts, recorded{peer, a})
}

func (r *recorder) take() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.acts
	r.acts = nil
	return out
}

// newTestTable makes a Table on a stepped clock at t0 that records its
// actions; its context ends with the test.
func newTestTable(t *testing.T) (context.Context, *Table, *steppedClock, *recorder, Timers) {
	clock, rec, tm := &steppedClock{now: t0}, &recorder{}, testTimers()
	return t.Context(), NewTable(tm, clock, rec), clock, rec, tm
}

// run runs tab's loop until the test ends, and waits for it to return.
func run(ctx context.Context, t *testing.T, tab *Table) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { tab.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestTableRunsDeadlinesOnItsClock: a Table turns posted events and the
// deadlines they set into actions, in order, on its clock alone: a yield
// ends in an admission only when the clock passes it, a take-over only
// when the grace has passed, and a peer that leaves is removed and
// forgotten.
func TestTableRunsDeadlinesOnItsClock(t *testing.T) {
	ctx, tab, clock, rec, tm := newTestTable(t)
	run(ctx, t, tab)

	a, b := Key{1}, Key{2}
	tab.Post(a, Event{Kind: Want})                  // a yields
	tab.Post(b, Event{Kind: Want, Initiates: true}) // b admits at once
	// settle waits until the loop ran everything posted and due.
	settle := func() {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		defer scancel()
		tab.Sync(sctx)
		if sctx.Err() != nil {
			t.Fatal("the table's loop did not take a Sync in 30 s")
		}
	}
	settle()
	if got := rec.take(); len(got) != 1 || got[0].peer != b || got[0].a.Kind != Admit {
		t.Fatalf("at once: %+v, want b's admission only", got)
	}
	clock.advance(tm.Yield - time.Millisecond)
	settle()
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("before the yield ended: %+v", got)
	}
	clock.advance(time.Millisecond)
	settle()
	if got := rec.take(); len(got) != 1 || got[0].peer != a || got[0].a.Kind != Admit {
		t.Fatalf("at the end of the yield: %+v, want a's admission", got)
	}

	// b's admission completes; b is not the starter (lower key): after
	// the grace it takes the start over.
	tab.Post(b, Event{Kind: Admitted, Initiates: true})
	settle()
	if got := rec.take(); len(got) != 1 || got[0].a.Kind != Configure || got[0].a.Start {
		t.Fatalf("admitted: %+v, want a configure without start", got)
	}
	deadline := tab.Get(b).Deadline
	clock.advance(deadline.Sub(clock.Now()) - time.Millisecond)
	settle()
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("before the grace ended: %+v", got)
	}
	clock.advance(time.Millisecond)
	settle()
	if got := rec.take(); len(got) != 1 || got[0].a.Kind != NewInitiation {
		t.Fatalf("at the grace's end: %+v, want a new initiation", got)
	}
	tab.Post(b, Event{Kind: SessionUp})
	settle()
	if s := tab.Get(b); s.State != Up {
		t.Fatalf("after session-up: %v", s.State)
	}
	rec.take()
	tab.Post(b, Event{Kind: Left})
	settle()
	if got := rec.take(); len(got) != 1 || got[0].a.Kind != Remove {
		t.Fatalf("left: %+v, want a removal", got)
	}
	tab.mu.Lock()
	_, kept := tab.sessions[b]
	tab.mu.Unlock()
	if kept {
		t.Fatal("a peer that left is still in the table")
	}
}

// TestTableEventBeforeDeadlineGoesFirst: a session that came up just
// before its give-up deadline, posted before the deadline fired, stays up
// even if the loop sees the deadline first; a revocation of a peer never
// seen leaves nothing behind.
func TestTableEventBeforeDeadlineGoesFirst(t *testing.T) {
	ctx, tab, clock, rec, tm := newTestTable(t)
	// The loop is not running yet: everything below waits in the inbox
	// and the clock passes the deadline before the loop starts.
	p := Key{7}
	tab.Post(p, Event{Kind: Admitted, Responder: true})
	clock.advance(tm.SessionSetup - time.Millisecond)
	tab.Post(p, Event{Kind: SessionUp})
	clock.advance(time.Hour)
	tab.Post(Key{9}, Event{Kind: Revoked})
	run(ctx, t, tab)
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	tab.Sync(sctx)
	if s := tab.Get(p); s.State != Up {
		t.Fatalf("%v, want up: the session came before the deadline", s.State)
	}
	for _, r := range rec.take() {
		if r.a.Kind == Remove {
			t.Fatalf("removed %x: %+v", r.peer[:1], r.a)
		}
	}
	tab.mu.Lock()
	n := len(tab.sessions)
	tab.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d sessions kept, want 1 (a revocation of an unknown peer keeps none)", n)
	}
}

// TestTableCoalescesRepeats: while the loop is busy, an event equal to a
// peer's last waiting event is not queued again (a source repeating
// itself adds nothing), per peer and only in a row; events that differ
// all wait, in order; once the loop took the inbox, an equal event is
// queued again.
func TestTableCoalescesRepeats(t *testing.T) {
	ctx, tab, _, rec, _ := newTestTable(t)
	a, b := Key{1}, Key{2}
	waiting := func() int {
		tab.inMu.Lock()
		defer tab.inMu.Unlock()
		return len(tab.inbox)
	}
	for range 1000 {
		tab.Post(a, Event{Kind: Want, Initiates: true})
		tab.Post(b, Event{Kind: Want}) // another peer between a's does not split them
	}
	if n := waiting(); n != 2 {
		t.Fatalf("%d events wait after 1,000 equal Wants for each of two peers, want 2", n)
	}
	tab.Post(a, Event{Kind: Want, Initiates: true, Persistent: true}) // differs
	tab.Post(a, Event{Kind: Left})
	tab.Post(a, Event{Kind: Want, Initiates: true}) // equal to an earlier one, not to the last
	if n := waiting(); n != 5 {
		t.Fatalf("%d events wait, want 5: events that differ from the last all wait", n)
	}
	run(ctx, t, tab)
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	tab.Sync(sctx)
	// In order: a wanted (persistent at last), gone with its leave,
	// wanted again: not persistent, the want after the leave is the
	// plain one, and its turn to admit came.
	if s := tab.Get(a); s.State != Admitting || s.Persistent {
		t.Fatalf("a: %v persistent=%v, want admitting again after leave and want, not persistent", s.State, s.Persistent)
	}
	rec.take()
	tab.Post(b, Event{Kind: Want})
	if n := waiting(); n > 1 {
		t.Fatalf("%d events wait, want at most b's new Want", n)
	}
	tab.Sync(sctx)
	tab.inMu.Lock()
	left := len(tab.lastOf)
	tab.inMu.Unlock()
	if left != 0 {
		t.Fatalf("%d peers' last events still noted with the inbox empty", left)
	}
}

// TestLateLoopKeepsSessionSetup: an admission that waited in the inbox
// while the loop was busy gets its whole SessionSetup from when the loop
// configures the peer, not from when it completed: a loop that runs late
// does not give up, at once, the sessions it has only just set up.
func TestLateLoopKeepsSessionSetup(t *testing.T) {
	ctx, tab, clock, rec, tm := newTestTable(t)
	peer := Key{7}
	tab.Post(peer, Event{Kind: Admitted, Responder: true, RTT: 10 * time.Millisecond})
	clock.advance(tm.SessionSetup + tm.Slack) // the loop was busy this long
	configuredAt := clock.Now()
	run(ctx, t, tab)
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	tab.Sync(sctx)
	got := rec.take()
	if len(got) != 1 || got[0].a.Kind != Configure {
		t.Fatalf("actions %+v, want the peer configured, and nothing else", got)
	}
	if s := tab.Get(peer); s.State != Awaiting || !s.AdmittedAt.Equal(configuredAt) {
		t.Fatalf("%v admitted at %v, want awaiting its session, admitted at %v (when the loop got to it)", s.State, s.AdmittedAt, configuredAt)
	}
	// Up to just before SessionSetup after that, the peer is kicked but
	// kept.
	for step := tm.SessionSetup / 8; clock.Now().Add(step).Before(configuredAt.Add(tm.SessionSetup)); {
		clock.advance(step)
		tab.Sync(sctx)
		for _, r := range rec.take() {
			if r.a.Kind == Remove {
				t.Fatalf("removed %v after the loop configured it: %q", clock.Now().Sub(configuredAt), r.a.Reason)
			}
		}
	}
	if s := tab.Get(peer); s.State != Awaiting {
		t.Fatalf("%v before SessionSetup ran out, want awaiting", s.State)
	}
}
