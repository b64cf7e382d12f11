package discovery

import (
	"context"
	"sync"
)

// keyedQueue is a bounded work queue that holds at most one item per key:
// an item whose key is already queued, or that finds the queue full, is
// dropped (whoever offered it asks again later).
type keyedQueue[K comparable, V any] struct {
	mu     sync.Mutex
	queued map[K]bool
	ch     chan keyedItem[K, V]
}

type keyedItem[K comparable, V any] struct {
	key K
	val V
}

func newKeyedQueue[K comparable, V any](capacity int) *keyedQueue[K, V] {
	return &keyedQueue[K, V]{queued: make(map[K]bool), ch: make(chan keyedItem[K, V], capacity)}
}

// offer queues v under key unless key is queued or the queue is full.
func (q *keyedQueue[K, V]) offer(key K, v V) {
	q.mu.Lock()
	if q.queued[key] {
		q.mu.Unlock()
		return
	}
	q.queued[key] = true
	q.mu.Unlock()
	select {
	case q.ch <- keyedItem[K, V]{key, v}:
	default:
		q.mu.Lock()
		delete(q.queued, key)
		q.mu.Unlock()
	}
}

// next waits for an item; its key may be queued again from then on. ok
// is false once ctx is done.
func (q *keyedQueue[K, V]) next(ctx context.Context) (v V, ok bool) {
	select {
	case <-ctx.Done():
		return v, false
	case it := <-q.ch:
		q.mu.Lock()
		delete(q.queued, it.key)
		q.mu.Unlock()
		return it.val, true
	}
}
