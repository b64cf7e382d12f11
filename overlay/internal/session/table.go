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
// reports back through Table.Post).
type Executor interface {
	Execute(peer Key, a Action, s Session)
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
	at   time.Time     // when it was posted: the event's time
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
	inbox  chan posted

	mu       sync.Mutex
	sessions map[Key]Session // written by the loop only; read under mu
}

// NewTable makes a Table; Run starts it.
func NewTable(t Timers, c Clock, e Executor) *Table {
	return &Table{timers: t, clock: c, exec: e, inbox: make(chan posted, 1024), sessions: map[Key]Session{}}
}

// Post queues ev for peer; it blocks only while the inbox is full.
func (t *Table) Post(ctx context.Context, peer Key, ev Event) {
	select {
	case t.inbox <- posted{peer: peer, ev: ev, at: t.clock.Now()}:
	case <-ctx.Done():
	}
}

// Sync waits until every event posted before it, and every deadline
// passed by then, has run (tests, and callers that read a session right
// after an event).
func (t *Table) Sync(ctx context.Context) {
	done := make(chan struct{})
	select {
	case t.inbox <- posted{done: done}:
	case <-ctx.Done():
		return
	}
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
		case p := <-t.inbox:
			t.take(p)
		case <-wake:
			wake = nil
			t.tick()
		}
	}
}

// take runs a posted event, or for a Sync marker the deadlines due.
func (t *Table) take(p posted) {
	if p.done != nil {
		t.tick()
		close(p.done)
		return
	}
	t.step(p.peer, p.ev, p.at)
}

// tick runs a Tick on every session whose deadline has passed, after the
// events posted before now: an event that came before a deadline is not
// judged after it (a session that came up just in time stays up).
func (t *Table) tick() {
	now := t.clock.Now()
	for {
		select {
		case p := <-t.inbox:
			if p.done != nil {
				defer close(p.done) // once the ticks below ran
				continue
			}
			t.step(p.peer, p.ev, p.at)
			continue
		default:
		}
		break
	}
	for _, peer := range t.due(now) {
		t.step(peer, Event{Kind: Tick}, now)
	}
}

// step runs ev, which happened at now, on peer's session and executes
// the actions.
func (t *Table) step(peer Key, ev Event, now time.Time) {
	t.mu.Lock()
	s, known := t.sessions[peer]
	next, acts := s.Next(ev, now, t.timers)
	if next.State == Gone && (!next.Barred || !known) {
		// Nothing to remember: a revocation of a peer never seen here
		// has no admission under way to keep out.
		delete(t.sessions, peer)
	} else {
		t.sessions[peer] = next
	}
	t.mu.Unlock()
	for _, a := range acts {
		t.exec.Execute(peer, a, next)
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
