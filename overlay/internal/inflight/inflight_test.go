package inflight

import (
	"sync/atomic"
	"testing"
	"time"
)

// steppedClock is a clock the test moves by hand.
type steppedClock struct{ ns atomic.Int64 }

func (c *steppedClock) now() int64           { return c.ns.Load() }
func (c *steppedClock) step(d time.Duration) { c.ns.Add(int64(d)) }
func newLimiter(limit int) (*Limiter, *steppedClock) {
	c := &steppedClock{}
	return New(limit, 8*time.Millisecond, c.now), c
}

func TestFullAtLimitAndRoomAfterDone(t *testing.T) {
	l, _ := newLimiter(10)
	l.Add(9)
	if _, full := l.full(); full {
		t.Fatal("full with 9 of 10 inside")
	}
	l.Add(1)
	if _, full := l.full(); !full {
		t.Fatal("not full with 10 of 10 inside")
	}
	l.Done(1)
	if _, full := l.full(); full {
		t.Fatal("still full after one came out")
	}
	if got := l.Inside(); got != 9 {
		t.Fatalf("inside = %d, want 9", got)
	}
}

func TestDoneBeyondInsideIsIgnored(t *testing.T) {
	l, _ := newLimiter(10)
	l.Add(3)
	l.Done(5) // two packets the pipeline made itself
	if got := l.Inside(); got != 0 {
		t.Fatalf("inside = %d, want 0", got)
	}
	l.Add(10)
	if _, full := l.full(); !full {
		t.Fatal("surplus Done carried over: not full with 10 of 10 inside")
	}
}

func TestDoneTakesTheOldestFirst(t *testing.T) {
	l, c := newLimiter(100)
	l.Add(5) // tick 0
	c.step(4 * time.Millisecond)
	l.Add(5) // tick 4
	l.Done(5)
	// The 5 of tick 0 came out; those of tick 4 expire 8 ticks after 4.
	c.step(5 * time.Millisecond) // tick 9: tick 0 would have expired now
	if got := l.Inside(); got != 5 {
		t.Fatalf("inside = %d, want the 5 of the later tick", got)
	}
	if _, expired, _ := l.Stats(); expired != 0 {
		t.Fatalf("expired = %d, want 0 (the old packets came out)", expired)
	}
	c.step(4 * time.Millisecond) // tick 13: the later tick is a horizon old
	if got := l.Inside(); got != 0 {
		t.Fatalf("inside = %d after the horizon, want 0", got)
	}
	if _, expired, _ := l.Stats(); expired != 5 {
		t.Fatalf("expired = %d, want 5", expired)
	}
}

func TestLostPacketsAreForgottenAfterTheHorizon(t *testing.T) {
	l, c := newLimiter(10)
	l.Add(10) // all lost inside the pipeline: no Done ever comes
	d, full := l.full()
	if !full {
		t.Fatal("not full with 10 of 10 inside")
	}
	if d <= 0 || d > 8*time.Millisecond {
		t.Fatalf("time until room = %v, want within the 8 ms horizon", d)
	}
	c.step(7 * time.Millisecond)
	if _, full := l.full(); !full {
		t.Fatal("forgotten before the horizon")
	}
	c.step(time.Millisecond)
	if _, full := l.full(); full {
		t.Fatal("still full a horizon after the packets went in")
	}
}

func TestTicksBeforeTheClocksZero(t *testing.T) {
	c := &steppedClock{}
	c.ns.Store(int64(-3 * time.Millisecond))
	l := New(4, 8*time.Millisecond, c.now)
	l.Add(4)
	c.step(time.Millisecond)
	l.Done(4)
	if got := l.Inside(); got != 0 {
		t.Fatalf("inside = %d, want 0", got)
	}
}

func TestWaitReturnsWhenPacketsComeOut(t *testing.T) {
	l := New(2, time.Hour, nil) // nothing expires during the test
	l.Add(2)
	w := l.NewWaiter()
	returned := waitInBackground(w)
	select {
	case <-returned:
		t.Fatal("Wait returned while the limit was reached")
	case <-time.After(20 * time.Millisecond):
	}
	l.Done(1)
	awaitReturn(t, returned, "after a packet came out")
	if waits, _, _ := l.Stats(); waits != 1 {
		t.Fatalf("waits = %d, want 1", waits)
	}
}

func TestWaitReturnsWhenLostPacketsExpire(t *testing.T) {
	l := New(2, 5*time.Millisecond, nil)
	l.Add(2) // lost: no Done comes
	w := l.NewWaiter()
	returned := waitInBackground(w)
	awaitReturn(t, returned, "after the horizon")
	if _, expired, _ := l.Stats(); expired != 2 {
		t.Fatalf("expired = %d, want 2", expired)
	}
}

func TestCountingAllocatesNothing(t *testing.T) {
	l := New(1<<20, time.Millisecond, nil)
	w := l.NewWaiter()
	if n := testing.AllocsPerRun(1000, func() {
		w.Wait()
		l.Add(64)
		l.Done(64)
	}); n != 0 {
		t.Fatalf("%v allocations per batch, want 0", n)
	}
}

// TestManyLostPacketsTurnTheBoundOff: when far more packets go in than
// come out within the loss window (someone sends what the pipeline drops),
// the bound steps aside at the end of the window for the bypass time, then
// holds again.
func TestManyLostPacketsTurnTheBoundOff(t *testing.T) {
	l, c := newLimiter(10)
	c.step(time.Millisecond) // the first loss window starts here
	for range 4 {
		l.Add(10) // lost
		c.step(8 * time.Millisecond)
	}
	l.Add(10) // 50 in, none out: 40 is not more than 4 × 10 until this
	if _, full := l.full(); !full {
		t.Fatal("the bound stepped aside before the loss window ended")
	}
	c.step(lossWindow * 8 * time.Millisecond) // the window ends
	l.Add(10)
	if _, full := l.full(); full {
		t.Fatal("the bound holds although 50 packets went missing in the window")
	}
	if _, _, bypasses := l.Stats(); bypasses != 1 {
		t.Fatalf("bypasses = %d, want 1", bypasses)
	}
	c.step(bypass * 8 * time.Millisecond)
	l.Add(10)
	if _, full := l.full(); !full {
		t.Fatal("the bound is still off after the bypass time")
	}
}

// TestFewLostPacketsKeepTheBound: a few packets lost per window (no peer
// for a destination, now and then) leave the bound on.
func TestFewLostPacketsKeepTheBound(t *testing.T) {
	l, c := newLimiter(10)
	for range 5 {
		l.Add(39)
		c.step(lossWindow * 8 * time.Millisecond)
	}
	l.Add(10)
	if _, full := l.full(); !full {
		t.Fatal("39 lost packets per window turned the bound off")
	}
}

// TestClockGoingBackKeepsCounts: a reader that read the clock before
// another may add after it; counts stay whole and expire as usual.
func TestClockGoingBackKeepsCounts(t *testing.T) {
	l, c := newLimiter(100)
	c.step(5 * time.Millisecond)
	l.Add(3)
	c.ns.Add(int64(-3 * time.Millisecond)) // a stale reading
	l.Add(4)
	if got := l.Inside(); got != 7 {
		t.Fatalf("inside = %d, want 7", got)
	}
	l.Done(7)
	if got := l.Inside(); got != 0 {
		t.Fatalf("inside = %d after all came out, want 0", got)
	}
	l.Add(2)
	c.step(20 * time.Millisecond)
	if got := l.Inside(); got != 0 {
		t.Fatalf("inside = %d a horizon later, want 0", got)
	}
}

// TestWaitIsBounded: whatever the counts say (here a clock that stands
// still, so nothing expires), Wait returns about a horizon after it began.
func TestWaitIsBounded(t *testing.T) {
	l, _ := newLimiter(1)
	l.Add(1)
	w := l.NewWaiter()
	returned := waitInBackground(w)
	awaitReturn(t, returned, "with a clock that stands still")
}

// TestEveryWaiterWakes: packets coming out wake every waiting reader.
func TestEveryWaiterWakes(t *testing.T) {
	l := New(1, time.Hour, nil)
	l.Add(1)
	var returned atomic.Int32
	done := make(chan struct{}, 2)
	for range 2 {
		w := l.NewWaiter()
		go func() {
			w.Wait()
			returned.Add(1)
			done <- struct{}{}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if n := returned.Load(); n != 0 {
		t.Fatalf("%d waiters returned while the limit was reached", n)
	}
	l.Done(1)
	for range 2 {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of 2 waiters woke", returned.Load())
		}
	}
}

// TestSlowPacketsAreNotLost: packets forgotten after the horizon that come
// out later (a loaded machine) do not count as missing, however many.
func TestSlowPacketsAreNotLost(t *testing.T) {
	l, c := newLimiter(10)
	for range 20 {
		l.Add(8)
		c.step(9 * time.Millisecond) // forgotten
		l.Done(8)                    // and out after all
	}
	c.step(lossWindow * 8 * time.Millisecond) // the window ends
	l.Add(10)
	if _, full := l.full(); !full {
		t.Fatal("slow packets turned the bound off")
	}
	if _, _, bypasses := l.Stats(); bypasses != 0 {
		t.Fatalf("bypasses = %d, want 0", bypasses)
	}
}

// waitInBackground runs w.Wait in a goroutine; the channel closes when it
// returns.
func waitInBackground(w *Waiter) <-chan struct{} {
	returned := make(chan struct{})
	go func() {
		w.Wait()
		close(returned)
	}()
	return returned
}

// awaitReturn fails the test unless returned closes within a bound only a
// Wait that never returns misses.
func awaitReturn(t *testing.T, returned <-chan struct{}, when string) {
	t.Helper()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatalf("Wait did not return %s", when)
	}
}

// BenchmarkRoundTrip is what one packet costs the bound on its way through
// a pipeline that is far from full (the latency case): the entrance's
// wait, its Add and the exit's Done, on the system clock.
func BenchmarkRoundTrip(b *testing.B) {
	l := New(128, 2*time.Millisecond, nil)
	w := l.NewWaiter()
	b.ReportAllocs()
	for range b.N {
		w.Wait()
		l.Add(1)
		l.Done(1)
	}
}

// TestNoWakeIsMissed passes packets one at a time between an entrance and
// an exit on two goroutines, with a limit of one and a horizon of an
// hour: the entrance waits at almost every packet, and only a wake-up
// from Done can let it go on. A wake-up lost between the entrance's look
// and its sleep would hold it for the hour.
func TestNoWakeIsMissed(t *testing.T) {
	const packets = 20000
	l := New(1, time.Hour, nil)
	w := l.NewWaiter()
	pipe := make(chan struct{}, 1)
	finished := make(chan struct{})
	go func() { // the exit
		for range packets {
			<-pipe
			l.Done(1)
		}
		close(finished)
	}()
	go func() { // the entrance
		for range packets {
			w.Wait()
			l.Add(1)
			pipe <- struct{}{}
		}
	}()
	select {
	case <-finished:
	case <-time.After(2 * time.Minute):
		t.Fatalf("stalled with %d inside: a wake-up was missed", l.Inside())
	}
	if got := l.Inside(); got != 0 {
		t.Fatalf("inside = %d after every packet came out, want 0", got)
	}
	if waits, _, _ := l.Stats(); waits == 0 {
		t.Fatal("the entrance never waited: the test did not test waking")
	}
}
