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
	"sync"
	"sync/atomic"
	"time"
)

const (
	// buckets is the number of age buckets a horizon is divided into.
	buckets = 8
	// lossWindow and bypass, in horizons: lossFactor times the limit more
	// packets in than out within lossWindow turns the bound off for
	// bypass.
	lossWindow = 50
	lossFactor = 4
	bypass     = 500
)

// bucket counts the packets let in during one tick that are still inside.
type bucket struct {
	tick int64
	n    int64
}

// Limiter counts the packets let into a pipeline (Add) and those that came
// out (Done), and makes the entrance wait (Waiter.Wait) while Limit or more
// are inside. Packets come out in the order they went in, as far as the
// Limiter is concerned: Done takes from the oldest counted packets. All
// methods are safe for concurrent use.
type Limiter struct {
	limit int64
	tick  int64 // nanoseconds per bucket
	now   func() int64

	mu     sync.Mutex
	last   int64 // the latest tick seen: ticks never go back
	ring   [buckets]bucket
	inside int64
	// net is the packets let in less those that came out in the loss
	// window that began at lossStart; offUntil the tick until which the
	// bound is off.
	lossStart, net, offUntil int64
	wakes                    []chan struct{} // one per Waiter

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
	return &Limiter{limit: int64(limit), tick: tick, now: now}
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
	l.mu.Lock()
	t := l.tickLocked()
	l.expireLocked(t)
	b := &l.ring[slot(t)]
	if b.tick != t {
		// expireLocked emptied it: it held a tick at least a horizon old.
		b.tick, b.n = t, 0
	}
	b.n += int64(n)
	l.inside += int64(n)
	l.net += int64(n)
	l.mu.Unlock()
}

// Done counts n packets that came out, oldest first. More than are
// counted inside is not an error: they are packets forgotten because they
// took longer than the horizon (which then do not count as lost), or ones
// the pipeline makes itself.
func (l *Limiter) Done(n int) {
	if n <= 0 {
		return
	}
	left := int64(n)
	l.mu.Lock()
	t := l.tickLocked()
	l.expireLocked(t)
	l.net -= int64(n)
	for i := t - buckets + 1; i <= t && left > 0; i++ {
		b := &l.ring[slot(i)]
		if b.tick != i || b.n == 0 {
			continue
		}
		d := min(left, b.n)
		b.n -= d
		l.inside -= d
		left -= d
	}
	if l.inside < l.limit {
		for _, w := range l.wakes {
			select {
			case w <- struct{}{}:
			default:
			}
		}
	}
	l.mu.Unlock()
}

// expireLocked forgets the packets of buckets a horizon or more older than
// tick t and, at the end of each loss window, turns the bound off if far
// more packets went in during it than came out.
//
// Packets slower than the horizon (a loaded machine) are forgotten too, but
// they come out later, so what is missing is judged by the window's
// balance: packets in less packets out. It exceeds what can be inside
// (the limit, a batch or so beyond it, what straddles the window's ends)
// only by packets that never come out.
func (l *Limiter) expireLocked(t int64) {
	if t-l.lossStart >= lossWindow*buckets {
		if l.net > lossFactor*l.limit && t >= l.offUntil {
			l.offUntil = t + bypass*buckets
			l.bypasses.Add(1)
		}
		l.lossStart, l.net = t, 0
	}
	for i := range l.ring {
		b := &l.ring[i]
		if b.n == 0 || b.tick > t-buckets {
			continue
		}
		l.expired.Add(uint64(b.n))
		l.inside -= b.n
		b.n = 0
	}
}

// full reports whether Limit or more packets are inside now (and the bound
// is on) and, if so, how long until the oldest of them is forgotten.
func (l *Limiter) full() (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tickLocked()
	l.expireLocked(t)
	if l.inside < l.limit || t < l.offUntil {
		return 0, false
	}
	oldest := t
	for _, b := range l.ring {
		if b.n != 0 && b.tick < oldest {
			oldest = b.tick
		}
	}
	return time.Duration((oldest + buckets - t) * l.tick), true
}

// Inside returns the number of packets counted inside now.
func (l *Limiter) Inside() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expireLocked(l.tickLocked())
	return int(l.inside)
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
