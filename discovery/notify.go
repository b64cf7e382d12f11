package discovery

// Notifications: the queue of OnRecord and OnLeave callbacks to
// the node, run one at a time off memberlist's locks.

import (
	"container/list"
	"context"
	"sync"
)

// notifier runs callbacks one at a time, in order, off memberlist's locks.
// Events are keyed (one kind of event for one member): a newer event
// replaces a queued one with the same key and goes to the back of the
// queue, so the queue holds at most one event per key (two per member)
// however often a member flaps, and the node sees the latest of each in
// the order they last happened.
type notifier struct {
	mu    sync.Mutex
	order *list.List // of keyedEvent, oldest first
	byKey map[string]*list.Element
	wake  chan struct{}
}

// keyedEvent is one queued callback.
type keyedEvent struct {
	key string
	f   func()
}

// newNotifier returns an empty notifier; run delivers its events.
func newNotifier() *notifier {
	return &notifier{order: list.New(), byKey: make(map[string]*list.Element), wake: make(chan struct{}, 1)}
}

// recordEvent and leaveEvent are the keys of a member's OnRecord and
// OnLeave events.
func recordEvent(name string) string { return "r/" + name }
func leaveEvent(name string) string  { return "l/" + name }

// push queues f under key, replacing a queued event with that key.
func (n *notifier) push(key string, f func()) {
	n.mu.Lock()
	if e, ok := n.byKey[key]; ok {
		n.order.Remove(e)
	}
	n.byKey[key] = n.order.PushBack(keyedEvent{key, f})
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// take removes and returns the queued callbacks, oldest first.
func (n *notifier) take() []func() {
	n.mu.Lock()
	defer n.mu.Unlock()
	q := make([]func(), 0, n.order.Len())
	for e := n.order.Front(); e != nil; e = e.Next() {
		q = append(q, e.Value.(keyedEvent).f)
	}
	n.order.Init()
	clear(n.byKey)
	return q
}

// len is the number of queued callbacks.
func (n *notifier) len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.order.Len()
}

// run calls the queued callbacks, oldest first, until ctx is done.
func (n *notifier) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
		}
		for {
			q := n.take()
			if len(q) == 0 {
				break
			}
			for _, f := range q {
				if ctx.Err() != nil {
					return
				}
				f()
			}
		}
	}
}
