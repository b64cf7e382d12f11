// Package inflight bounds the packets inside a pipeline that loses some of
// them without saying so.
//
// wireguard-go gives every packet a 64 KiB buffer, whatever its size, and
// its queues hold thousands of them. Under bulk load nothing bounds how many
// packets wait inside the device but the TCP windows of the flows through
// it, so the heap grows to hundreds of MiB (each 1,420-byte packet pins 64
// KiB), or, under a soft memory limit, the garbage collector runs every few
// milliseconds and empties the buffer pools it needs. A Limiter makes the
// reading end of the pipeline wait while too many packets are inside, so
// the backlog stays in the kernel's socket and device queues, where a
// packet costs its own size and where TCP sees it.
//
// The pipeline drops packets that the Limiter cannot see (no peer for a
// destination, a failed decryption, a keepalive), so a packet that has not
// come out within the horizon is no longer counted: a lost packet holds its
// place for at most the horizon, and a reader never waits longer than that.
// Packets that go missing in numbers (within a window of 50 horizons, four
// times the limit more packets in than out: someone sends what the
// pipeline drops, to keep the bound reached) make the Limiter step aside
// for 500 horizons from the end of that window, during which the pipeline
// runs unbounded, as without it.
package inflight

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// buckets is the number of ticks a horizon is divided into.
	buckets = 8
	// lossWindow and bypass, in horizons: lossFactor times the limit more
	// packets in than out within lossWindow turns the bound off for
	// bypass.
	lossWindow = 50
	lossFactor = 4
	bypass     = 500
)

// mark records how many packets had been let in when a tick began (when
// the first Add of that tick came).
type mark struct {
	tick int64
	in   int64
}

// Limiter counts the packets let into a pipeline (Add) and those that came
// out (Done), and makes the entrance wait (Waiter.Wait) while Limit or more
// are inside. Packets come out in the order they went in, as far as the
// Limiter is concerned: the first out of the packets let in so far are
// the ones out (or forgotten). All methods are safe for concurrent use.
//
// The counts are two running totals, so that Add, Done and a Wait with
// room cost an atomic operation or two and no lock: in, the packets ever
// let in, and out, a cursor below which every packet is out or forgotten.
// Once per tick Add takes the lock to note the total at the tick's start;
// a packet whose tick is a horizon old is forgotten by moving the cursor
// past it.
type Limiter struct {
	limit int64
	tick  int64 // nanoseconds per tick
	now   func() int64

	in   atomic.Int64 // packets let in, ever
	out  atomic.Int64 // packets out or forgotten, the oldest first; never above in
	done atomic.Int64 // packets Done reported, ever (the loss balance's out)
	// markTick is the latest tick with a mark: Add takes the lock only
	// when its tick is later.
	markTick atomic.Int64
	waiting  atomic.Int32 // Waiters past the lock-free look

	mu    sync.Mutex
	last  int64 // the latest tick seen: ticks never go back
	marks [buckets]mark
	// The loss window began at tick lossStart, when in and done were
	// lossIn and lossDone; offUntil is the tick until which the bound is
	// off.
	lossStart, lossIn, lossDone, offUntil int64
	wakes                                 []chan struct{} // one per Waiter

	waits    atomic.Uint64
	expired  atomic.Uint64
	bypasses atomic.Uint64
}

// New returns a Limiter that lets limit packets in at once and forgets a
// packet horizon after it went in. now returns monotonic nanoseconds; nil
// means the system clock.
func New(limit int, horizon time.Duration, now func() int64) *Limiter {
	if now == nil {
		epoch := time.Now()
		now = func() int64 { return int64(time.Since(epoch)) }
	}
	tick := max(int64(horizon)/buckets, 1)
	l := &Limiter{limit: int64(limit), tick: tick, now: now, last: math.MinInt64}
	l.markTick.Store(math.MinInt64)
	for i := range l.marks {
		l.marks[i].tick = math.MinInt64
	}
	return l
}

// tickLocked is the current tick, never before one already seen (two
// goroutines may read the clock in either order).
func (l *Limiter) tickLocked() int64 {
	l.last = max(l.last, l.now()/l.tick)
	return l.last
}

// slot is the ring index of tick t (ticks before the clock's zero
// included).
func slot(t int64) uint64 { return uint64(t) % buckets }

// Add counts n packets let in now.
func (l *Limiter) Add(n int) {
	if n <= 0 {
		return
	}
	if t := l.now() / l.tick; t > l.markTick.Load() {
		l.mu.Lock()
		t = l.tickLocked()
		if t > l.markTick.Load() {
			l.marks[slot(t)] = mark{tick: t, in: l.in.Load()}
			l.markTick.Store(t)
		}
		l.expireLocked(t)
		l.mu.Unlock()
	}
	l.in.Add(int64(n))
}

// Done counts n packets that came out, oldest first. More than are
// counted inside is not an error: they are packets forgotten because they
// took longer than the horizon (which then do not count as lost), or ones
// the pipeline makes itself.
func (l *Limiter) Done(n int) {
	if n <= 0 {
		return
	}
	l.done.Add(int64(n))
	for {
		o, in := l.out.Load(), l.in.Load()
		next := min(o+int64(n), in)
		if next <= o || l.out.CompareAndSwap(o, next) {
			break
		}
	}
	if l.waiting.Load() > 0 {
		l.mu.Lock()
		if l.in.Load()-l.out.Load() < l.limit {
			for _, w := range l.wakes {
				select {
				case w <- struct{}{}:
				default:
				}
			}
		}
		l.mu.Unlock()
	}
}

// expireLocked forgets the packets let in a horizon or more before tick t
// and, at the end of each loss window, turns the bound off if far more
// packets went in during it than came out.
//
// Packets slower than the horizon (a loaded machine) are forgotten too, but
// they come out later, so what is missing is judged by the window's
// balance: packets in less packets out. It exceeds what can be inside
// (the limit, a batch or so beyond it, what straddles the window's ends)
// only by packets that never come out.
func (l *Limiter) expireLocked(t int64) {
	in := l.in.Load()
	if t-l.lossStart >= lossWindow*buckets {
		done := l.done.Load()
		if (in-l.lossIn)-(done-l.lossDone) > lossFactor*l.limit && t >= l.offUntil {
			l.offUntil = t + bypass*buckets
			l.bypasses.Add(1)
		}
		l.lossStart, l.lossIn, l.lossDone = t, in, done
	}
	// Every packet let in before the earliest tick of the horizon is
	// forgotten: the cursor moves up to the total at that tick's start,
	// or to all of them if no packet went in since.
	keep := in
	for _, m := range l.marks {
		if m.tick > t-buckets && m.in < keep {
			keep = m.in
		}
	}
	for {
		o := l.out.Load()
		if o >= keep {
			return
		}
		if l.out.CompareAndSwap(o, keep) {
			l.expired.Add(uint64(keep - o))
			return
		}
	}
}

// full reports whether Limit or more packets are inside now (and the bound
// is on) and, if so, how long until the oldest of them is forgotten.
func (l *Limiter) full() (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tickLocked()
	l.expireLocked(t)
	out := l.out.Load()
	if l.in.Load()-out < l.limit || t < l.offUntil {
		return 0, false
	}
	// The oldest packet inside went in during the latest marked tick
	// that began with at most out packets in.
	oldest := t
	best := int64(math.MinInt64)
	for _, m := range l.marks {
		if m.tick > t-buckets && m.in <= out && m.tick > best {
			best = m.tick
		}
	}
	if best != math.MinInt64 {
		oldest = best
	}
	return time.Duration((oldest + buckets - t) * l.tick), true
}

// Inside returns the number of packets counted inside now.
func (l *Limiter) Inside() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expireLocked(l.tickLocked())
	return int(l.in.Load() - l.out.Load())
}

// Stats returns how often an entrance waited, how many packets were
// forgotten unseen (lost inside the pipeline, or slower than the horizon)
// and how often so many went missing that the bound stepped aside.
func (l *Limiter) Stats() (waits, expired, bypasses uint64) {
	return l.waits.Load(), l.expired.Load(), l.bypasses.Load()
}

// Waiter is one entrance's way to wait for room. It keeps its own timer
// and wake-up channel, so waiting allocates nothing; a Waiter is for one
// goroutine at a time.
type Waiter struct {
	l     *Limiter
	wake  chan struct{}
	timer *time.Timer
}

// NewWaiter returns a Waiter on l. Every Waiter is woken when packets come
// out, so make one per reading goroutine, not one per wait.
func (l *Limiter) NewWaiter() *Waiter {
	t := time.NewTimer(time.Hour)
	t.Stop()
	w := &Waiter{l: l, wake: make(chan struct{}, 1), timer: t}
	l.mu.Lock()
	l.wakes = append(l.wakes, w.wake)
	l.mu.Unlock()
	return w
}

// Wait returns once fewer than Limit packets are inside, or at the latest
// a horizon and a tick after it was called: by then every packet counted
// when it was called is out or forgotten.
func (w *Waiter) Wait() {
	if w.l.in.Load()-w.l.out.Load() < w.l.limit {
		return // the common case, without the lock or the clock
	}
	// Done wakes waiters only while one is past this point; it sees the
	// count, or full below sees Done's packets.
	w.l.waiting.Add(1)
	defer w.l.waiting.Add(-1)
	d, full := w.l.full()
	if !full {
		return
	}
	w.l.waits.Add(1)
	deadline := time.Now().Add(time.Duration((buckets + 1) * w.l.tick))
	for full {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		w.timer.Reset(max(min(d, left), time.Microsecond))
		select {
		case <-w.wake:
			w.timer.Stop()
		case <-w.timer.C:
		}
		d, full = w.l.full()
	}
}
