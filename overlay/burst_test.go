package overlay

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// burstSize is how many honest initiators admit one node at once in
// TestHonestBurstAboveLoadMark and BenchmarkHonestBurst: twice the queue's
// load mark, as a node coming up in a mesh of that size may see.
const burstSize = 2 * loadQueueMark

// honestBurst starts burstSize initiators and a responder and has them all
// admit it at once; it returns each admission's time (or error) and the
// responder. setup, when set, prepares the responder before the burst.
func honestBurst(tb testing.TB, f *fixture, limit time.Duration, setup func(*node)) ([]time.Duration, []error, *node) {
	tb.Helper()
	// All nodes here send from 127.0.0.1: the per-source limits would
	// refuse most of them (as the fabric tests do, they are raised), and
	// what is left to see is the load mark.
	b := startNode(tb, f, "node-b", "100.64.0.1", nodeOpts{rate: 1e6, burst: 1e5})
	b.hsMu.Lock()
	b.halfOpenPerSrc = HalfOpenCap
	b.hsMu.Unlock()
	if setup != nil {
		setup(b)
	}
	xs := make([]*node, burstSize)
	for i := range xs {
		xs[i] = startNode(tb, f, fmt.Sprintf("node-%d", i), fmt.Sprintf("100.64.1.%d", i+1), nodeOpts{})
	}
	took := make([]time.Duration, len(xs))
	errs := make([]error, len(xs))
	begin := make(chan struct{})
	var wg sync.WaitGroup
	for i, x := range xs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), limit)
			defer cancel()
			<-begin
			start := time.Now()
			_, errs[i] = x.Admit(ctx, b.ep)
			took[i] = time.Since(start)
		}()
	}
	close(begin)
	wg.Wait()
	return took, errs, b
}

// TestHonestBurstAboveLoadMark: twice the load mark of honest initiators
// admit one node at once while it asks every first message for a cookie
// (as it does above its load mark); each initiator repeats its msg1 with
// the cookie and every one is admitted. Whether a burst passes the mark
// by itself depends on how fast the machine schedules the initiators:
// BenchmarkHonestBurst lets it, and reports the cookie replies and times.
func TestHonestBurstAboveLoadMark(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	took, errs, b := honestBurst(t, f, time.Minute, func(b *node) { b.loadMode.Store(int32(loadAlways)) })
	for i, err := range errs {
		if err != nil {
			t.Fatalf("initiator %d not admitted: %v; responder %+v", i, err, b.Stats())
		}
	}
	st := b.Stats()
	if st.CookiesSent < burstSize {
		t.Fatalf("%d cookie replies to a burst of %d under load (%+v)", st.CookiesSent, burstSize, st)
	}
	if got := len(b.Peers()); got != burstSize {
		t.Fatalf("responder has %d peers, want %d", got, burstSize)
	}
	t.Logf("%d admitted, the slowest in %v; responder: %d cookie replies, %d msg2, %d repeats answered, %d queue full",
		burstSize, slices.Max(took), st.CookiesSent, st.Responded, st.RepeatsAnswered, st.QueueFull)
}

// BenchmarkHonestBurst is the time twice the load mark of honest
// initiators take to be admitted by one node when they all start at
// once: burst-admit-s on average, max-burst-admit-s the slowest, and
// cookie-replies per burst (how far the burst took the node under load).
func BenchmarkHonestBurst(b *testing.B) {
	checkLeaks(b)
	f := newFixture(b, "alpha")
	var total, longest time.Duration
	var cookies uint64
	n := 0
	for b.Loop() {
		took, errs, y := honestBurst(b, f, time.Minute, nil)
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		for _, d := range took {
			total += d
			longest = max(longest, d)
		}
		n += len(took)
		cookies += y.Stats().CookiesSent
	}
	b.ReportMetric(total.Seconds()/float64(n), "burst-admit-s")
	b.ReportMetric(longest.Seconds(), "max-burst-admit-s")
	b.ReportMetric(float64(cookies)/float64(n/burstSize), "cookie-replies")
}
