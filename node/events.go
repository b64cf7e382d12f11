package node

import (
	"sync"
	"time"

	"github.com/aigrid/gridnet/policy"
)

// Event buffers: the control API keeps the last eventRing events for
// `gridnet events`, and each follower (`events -f`) gets a bounded queue;
// a follower that does not keep up loses events, never the packet path.
const (
	eventRing      = 256
	eventSubBuffer = 1024
	followerBuffer = 256
)

// EventView is the JSON form of a firewall event.
type EventView struct {
	Time       time.Time `json:"time"`
	Kind       string    `json:"kind"`
	Peer       string    `json:"peer,omitempty"`
	Direction  string    `json:"direction"`
	Proto      uint8     `json:"proto"`
	Src        string    `json:"src"`
	Dst        string    `json:"dst"`
	SrcPort    uint16    `json:"src_port,omitempty"`
	DstPort    uint16    `json:"dst_port,omitempty"`
	Rule       string    `json:"rule,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Trust      float64   `json:"trust,omitempty"`
	Suppressed uint64    `json:"suppressed,omitempty"`
}

func viewEvent(e policy.Event) EventView {
	return EventView{
		Time: e.Time, Kind: e.Kind.String(), Peer: e.Peer, Direction: e.Direction.String(), Proto: e.Proto,
		Src: e.Src.String(), Dst: e.Dst.String(), SrcPort: e.SrcPort, DstPort: e.DstPort,
		Rule: e.Rule, Reason: e.Reason.String(), Trust: e.Trust, Suppressed: e.Suppressed,
	}
}

// eventLog keeps recent firewall events and fans them out to followers.
type eventLog struct {
	sub  *policy.Subscription
	done chan struct{}

	mu        sync.Mutex
	ring      []EventView
	next      int
	followers map[chan EventView]struct{}
}

func newEventLog(fw *policy.Firewall) *eventLog {
	l := &eventLog{sub: fw.Events(eventSubBuffer), done: make(chan struct{}), followers: map[chan EventView]struct{}{}}
	go l.run()
	return l
}

func (l *eventLog) run() {
	defer close(l.done)
	for e := range l.sub.C {
		v := viewEvent(e)
		l.mu.Lock()
		if len(l.ring) < eventRing {
			l.ring = append(l.ring, v)
		} else {
			l.ring[l.next] = v
		}
		l.next = (l.next + 1) % eventRing
		for ch := range l.followers {
			select {
			case ch <- v:
			default:
			}
		}
		l.mu.Unlock()
	}
	l.mu.Lock()
	for ch := range l.followers {
		close(ch)
		delete(l.followers, ch)
	}
	l.mu.Unlock()
}

// recent returns the buffered events, oldest first.
func (l *eventLog) recent() []EventView {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ring) < eventRing {
		return append([]EventView(nil), l.ring...)
	}
	return append(append([]EventView(nil), l.ring[l.next:]...), l.ring[:l.next]...)
}

// follow returns a channel of new events (closed when the node stops) and
// a function that ends the subscription.
func (l *eventLog) follow() (<-chan EventView, func()) {
	ch := make(chan EventView, followerBuffer)
	l.mu.Lock()
	select {
	case <-l.done:
		close(ch)
		l.mu.Unlock()
		return ch, func() {}
	default:
	}
	l.followers[ch] = struct{}{}
	l.mu.Unlock()
	return ch, func() {
		l.mu.Lock()
		if _, ok := l.followers[ch]; ok {
			delete(l.followers, ch)
			close(ch)
		}
		l.mu.Unlock()
	}
}

// close stops the log; followers' channels are closed.
func (l *eventLog) close() {
	l.sub.Close()
	<-l.done
}
