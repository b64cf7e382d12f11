package session

import (
	"context"
	"sync"
	"time"
)

// Key names a peer: its WireGuard public key.
type Key [32]byte

// Executor runs the actions of a Table's sessions. Execute is called by
// the Table's one goroutine, in order, never concurrently: the actions of
// one peer keep their order, and no lock of the caller's is held. It must
// not block for long (an admission runs in a goroutine of its own and
// reports back through Table.Post). s is the session after the event.
type Executor interface {
	Execute(peer Key, a Action, s Session)
}

// Forgetter is an Executor that keeps state of its own per peer: Forget
// is called, like Execute, when the Table drops a peer's session (it is
// gone and nothing about it is to be remembered).
type Forgetter interface {
	Forget(peer Key)
}

// Clock is the time source of a Table; tests step it by hand.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed.
	After(d time.Duration) <-chan time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now is time.Now.
func (SystemClock) Now() time.Time { return time.Now() }

// After is time.After.
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

type posted struct {
	peer Key
	ev   Event
	at   time.Time     // when it was posted: the event's time (Event.At)
	done chan struct{} // closed once everything before it ran (Sync)
}

// Table owns the sessions of every peer: one goroutine takes the events
// posted for them and the ticks of their deadlines, runs Next, and hands
// the actions to the Executor. There is no other timer and no callback
// outside it.
type Table struct {
	timers Timers
	clock  Clock
	exec   Executor

	// The inbox: posted events in order. Post never blocks, so that a
	// caller may post while holding a lock that the Executor takes.
	// lastOf is the index in inbox of each peer's last event there.
	inMu   sync.Mutex
	inbox  []posted
	lastOf map[Key]int
	wakeIn chan struct{} // has a value when inbox may be non-empty

	mu       sync.Mutex
	sessions map[Key]Session // written by the loop only; read under mu
	changed  chan struct{}   // closed and replaced after every step
}

// NewTable makes a Table; Run starts it.
func NewTable(t Timers, c Clock, e Executor) *Table {
	return &Table{timers: t, clock: c, exec: e, wakeIn: make(chan struct{}, 1), lastOf: map[Key]int{},
		sessions: map[Key]Session{}, changed: make(chan struct{})}
}

// Post queues ev for peer, stamped with the time of the call. It never
// blocks. An event equal to the peer's last one still waiting is not
// queued again: the second of two equal events in a row changes nothing
// but, for a few kinds, a deadline by the time between them (a Revoked
// bars a little longer, an Answering waits a little longer). So a
// source that repeats itself (discovery wanting every live member without
// a tunnel every 10 s, say) adds nothing while the loop is busy, and what
// waits is bounded by the peers and the changes that happened to them:
// discovery queues at most one event per kind per member for the node,
// and the rest are this node's own admissions, probes and watches.
func (t *Table) Post(peer Key, ev Event) {
	t.enqueue(posted{peer: peer, ev: ev, at: t.clock.Now()})
}

func (t *Table) enqueue(p posted) {
	t.inMu.Lock()
	if p.done == nil {
		if i, ok := t.lastOf[p.peer]; ok && t.inbox[i].ev == p.ev {
			t.inMu.Unlock()
			return // the equal event waiting wakes the loop
		}
		t.lastOf[p.peer] = len(t.inbox)
	}
	t.inbox = append(t.inbox, p)
	t.inMu.Unlock()
	select {
	case t.wakeIn <- struct{}{}:
	default:
	}
}

// takeAll empties the inbox.
func (t *Table) takeAll() []posted {
	t.inMu.Lock()
	defer t.inMu.Unlock()
	out := t.inbox
	t.inbox = nil
	clear(t.lastOf)
	return out
}

// Sync waits until every event posted before it, and every deadline
// passed by then, has run (tests, and callers that read a session right
// after an event).
func (t *Table) Sync(ctx context.Context) {
	done := make(chan struct{})
	t.enqueue(posted{done: done})
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// Get returns peer's session (the zero Session, state Gone, if none).
func (t *Table) Get(peer Key) Session {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sessions[peer]
}

// Changed returns a channel that is closed at the next change of any
// session (take it before Get, so that a change in between closes it).
func (t *Table) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

// Run processes events and deadlines until ctx ends.
func (t *Table) Run(ctx context.Context) {
	var wake <-chan time.Time
	var wakeAt time.Time
	for {
		// One timer, for the earliest deadline.
		next := t.earliest()
		if !next.IsZero() && (wake == nil || !next.Equal(wakeAt)) {
			wakeAt = next
			wake = t.clock.After(max(next.Sub(t.clock.Now()), 0))
		} else if next.IsZero() {
			wake = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-t.wakeIn:
			t.drain()
		case <-wake:
			wake = nil
			t.tick()
		}
	}
}

// drain runs the posted events in order; if a Sync is among them, it
// then runs the deadlines due and releases the Sync.
func (t *Table) drain() {
	var synced bool
	for _, p := range t.takeAll() {
		if p.done != nil {
			defer close(p.done) // once everything below ran
			synced = true
			continue
		}
		t.step(p.peer, p.at, p.ev, t.clock.Now())
	}
	if synced {
		t.tick()
	}
}

// tick runs a Tick on every session whose deadline has passed, after the
// events posted before now: an event that came before a deadline is not
// judged after it (a session that came up just in time stays up).
func (t *Table) tick() {
	now := t.clock.Now()
	for _, p := range t.takeAll() {
		if p.done != nil {
			defer close(p.done) // once the ticks below ran
			continue
		}
		t.step(p.peer, p.at, p.ev, t.clock.Now())
	}
	for _, peer := range t.due(now) {
		t.step(peer, now, Event{Kind: Tick}, now)
	}
}

// step runs ev, which happened at at, on peer's session at now (when
// the loop got to it) and executes the actions.
func (t *Table) step(peer Key, at time.Time, ev Event, now time.Time) {
	ev.At = at
	t.mu.Lock()
	s, known := t.sessions[peer]
	next, acts := s.Next(ev, now, t.timers)
	dropped := false
	if next.State == Gone && (!next.Barred || !known) {
		// Nothing to remember: a revocation of a peer never seen here
		// has no admission under way to keep out.
		delete(t.sessions, peer)
		dropped = known
	} else {
		t.sessions[peer] = next
	}
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
	for _, a := range acts {
		t.exec.Execute(peer, a, next)
	}
	if f, ok := t.exec.(Forgetter); ok && dropped {
		f.Forget(peer)
	}
}

// earliest is the earliest deadline of all sessions (zero if none).
func (t *Table) earliest() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	var e time.Time
	for _, s := range t.sessions {
		if !s.Deadline.IsZero() && (e.IsZero() || s.Deadline.Before(e)) {
			e = s.Deadline
		}
	}
	return e
}

// due lists the peers whose deadline passed at now.
func (t *Table) due(now time.Time) []Key {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Key
	for k, s := range t.sessions {
		if !s.Deadline.IsZero() && !now.Before(s.Deadline) {
			out = append(out, k)
		}
	}
	return out
}
