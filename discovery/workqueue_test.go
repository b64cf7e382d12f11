package discovery

import (
	"context"
	"testing"
)

// TestKeyedQueue: one item per key waits at a time, a full queue drops,
// and a key taken by next can be queued again.
func TestKeyedQueue(t *testing.T) {
	q := newKeyedQueue[string, int](2)
	q.offer("a", 1)
	q.offer("a", 2) // "a" already waits: dropped
	q.offer("b", 3)
	q.offer("c", 4) // full: dropped
	ctx, cancel := context.WithCancel(context.Background())
	for _, want := range []int{1, 3} {
		if v, ok := q.next(ctx); !ok || v != want {
			t.Fatalf("next = %d, %v; want %d", v, ok, want)
		}
	}
	q.offer("c", 5) // dropped while full, so not queued: accepted now
	q.offer("a", 6) // taken by next: may wait again
	for _, want := range []int{5, 6} {
		if v, ok := q.next(ctx); !ok || v != want {
			t.Fatalf("next = %d, %v; want %d", v, ok, want)
		}
	}
	cancel()
	if _, ok := q.next(ctx); ok {
		t.Fatal("next returned an item after its context ended")
	}
}
