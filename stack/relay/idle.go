package relay

import (
	"sync"
	"sync/atomic"
	"time"
)

// Idle calls a function once nothing was touched for a while. Touch is a
// single atomic store, cheap enough for every read and write; the timer
// re-arms itself only when it fires.
type Idle struct {
	d      time.Duration
	onIdle func()
	last   atomic.Int64 // UnixNano of the last Touch
	ended  atomic.Bool

	mu    sync.Mutex
	timer *time.Timer
}

// NewIdle calls onIdle (once, in its own goroutine) when d passes
// without a Touch; d <= 0 gives an Idle that never fires.
func NewIdle(d time.Duration, onIdle func()) *Idle {
	i := &Idle{d: d, onIdle: onIdle}
	if d <= 0 {
		return i
	}
	i.Touch()
	i.mu.Lock()
	i.timer = time.AfterFunc(d, i.check)
	i.mu.Unlock()
	return i
}

// Touch records activity.
func (i *Idle) Touch() { i.last.Store(time.Now().UnixNano()) }

func (i *Idle) check() {
	if i.ended.Load() {
		return
	}
	since := time.Duration(time.Now().UnixNano() - i.last.Load())
	if since >= i.d {
		if i.ended.CompareAndSwap(false, true) {
			i.onIdle()
		}
		return
	}
	i.mu.Lock()
	if !i.ended.Load() {
		i.timer.Reset(i.d - since)
	}
	i.mu.Unlock()
}

// Stop ends the watch; onIdle is not called after Stop returns (unless
// it was running already).
func (i *Idle) Stop() {
	i.ended.Store(true)
	i.mu.Lock()
	if i.timer != nil {
		i.timer.Stop()
	}
	i.mu.Unlock()
}
