package stack

import (
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// Verdict is a hook's decision for one packet.
type Verdict uint8

const (
	// Accept lets the packet continue on its way.
	Accept Verdict = iota
	// Drop discards the packet. It is counted, never reported as an error.
	Drop
)

// String returns "accept" or "drop".
func (v Verdict) String() string {
	switch v {
	case Accept:
		return "accept"
	case Drop:
		return "drop"
	default:
		return "verdict(" + strconv.Itoa(int(v)) + ")"
	}
}

// Filter judges the packets of one direction.
//
// Filter is called for every packet, in batches, from several goroutines at
// once (wireguard-go writes decrypted packets from per-peer goroutines), so it
// must be safe for concurrent use, must not block and should not allocate.
// pkt is the IP packet starting at its IP header; the hook layer only passes
// packets for which PacketAddrs reports ok. pkt must not be retained or
// modified. Any verdict other than Accept drops the packet.
//
// pkt is always one packet as it crosses the device, at most the MTU: in
// userspace mode with offload, the Outbound filter judges each packet cut
// from a large TCP segment (after the split) and the Inbound filter each
// packet before segments are merged, so verdicts are exactly those without
// offload.
type Filter interface {
	Filter(pkt []byte) Verdict
}

// FilterFunc adapts an ordinary function to the Filter interface.
type FilterFunc func(pkt []byte) Verdict

// Filter calls f(pkt).
func (f FilterFunc) Filter(pkt []byte) Verdict { return f(pkt) }

// Hooks is the pair of filters applied by the hook layer. A nil Filter
// accepts everything. Hooks are replaced atomically with Stack.SetHooks, so a
// new firewall takes over between two batches without a restart.
type Hooks struct {
	// Inbound judges packets decrypted from a peer, heading into the stack.
	Inbound Filter
	// Outbound judges packets leaving the stack, heading to WireGuard.
	Outbound Filter
}

// DirectionCounters is a snapshot of the packet counters of one direction.
// Invalid packets (not a well-formed IP packet) are dropped before the hook
// runs and are counted both in Invalid and in DroppedPackets/DroppedBytes.
type DirectionCounters struct {
	AcceptedPackets uint64
	AcceptedBytes   uint64
	DroppedPackets  uint64
	DroppedBytes    uint64
	Invalid         uint64
}

// Counters is a snapshot of the hook layer's counters.
type Counters struct {
	// Inbound counts packets from WireGuard towards the stack.
	Inbound DirectionCounters
	// Outbound counts packets from the stack towards WireGuard.
	Outbound DirectionCounters
}

// dirCounters holds the live atomic counters of one direction. They are
// added to once per batch (see batchTally), not once per packet, which keeps
// cache-line contention between concurrent writers low without padding.
type dirCounters struct {
	acceptedPkts, acceptedBytes atomic.Uint64
	droppedPkts, droppedBytes   atomic.Uint64
	invalid                     atomic.Uint64
}

// batchTally accumulates one batch's counts on the stack so that the shared
// atomics are touched once per batch instead of once per packet.
type batchTally struct {
	acceptedPkts, acceptedBytes uint64
	droppedPkts, droppedBytes   uint64
	invalid                     uint64
}

func (t *batchTally) accept(n int) { t.acceptedPkts++; t.acceptedBytes += uint64(n) }
func (t *batchTally) drop(n int)   { t.droppedPkts++; t.droppedBytes += uint64(n) }

func (c *dirCounters) add(t *batchTally) {
	if t.acceptedPkts != 0 {
		c.acceptedPkts.Add(t.acceptedPkts)
		c.acceptedBytes.Add(t.acceptedBytes)
	}
	if t.droppedPkts != 0 {
		c.droppedPkts.Add(t.droppedPkts)
		c.droppedBytes.Add(t.droppedBytes)
	}
	if t.invalid != 0 {
		c.invalid.Add(t.invalid)
	}
}

func (c *dirCounters) snapshot() DirectionCounters {
	return DirectionCounters{
		AcceptedPackets: c.acceptedPkts.Load(),
		AcceptedBytes:   c.acceptedBytes.Load(),
		DroppedPackets:  c.droppedPkts.Load(),
		DroppedBytes:    c.droppedBytes.Load(),
		Invalid:         c.invalid.Load(),
	}
}

// hookedDevice wraps a tun.Device and runs the Hooks on every packet.
//
// Write (WireGuard → stack): dropped packets are removed from the caller's
// bufs slice by swapping slice headers (a permutation: the caller keeps the
// same set of buffers, only their order changes), then the inner device gets
// the accepted prefix. Dropped packets count as written.
//
// Read (stack → WireGuard): the inner device fills the caller's buffers; the
// accepted packets are moved to the front by copying their bytes, NOT by
// swapping slices, because wireguard-go ties bufs[i] to its own per-index
// element (device/send.go: elem := elems[i]; elem.packet = bufs[i][...]), so
// a reordered bufs would make an element point into another element's
// buffer. When every packet of a batch is dropped, Read reads again instead of
// returning (0, nil), so callers never see an empty successful read caused by
// the filter.
type hookedDevice struct {
	inner tun.Device
	hooks atomic.Pointer[Hooks]
	in    dirCounters
	out   dirCounters

	closeOnce sync.Once
	closeErr  error
}

var _ tun.Device = (*hookedDevice)(nil)

func newHookedDevice(inner tun.Device) *hookedDevice {
	d := &hookedDevice{inner: inner}
	d.hooks.Store(&Hooks{})
	return d
}

func (d *hookedDevice) setHooks(h Hooks) { d.hooks.Store(&h) }

func (d *hookedDevice) counters() Counters {
	return Counters{Inbound: d.in.snapshot(), Outbound: d.out.snapshot()}
}

// File returns the inner device's file, if any.
func (d *hookedDevice) File() *os.File { return d.inner.File() }

// MTU returns the inner device's MTU.
func (d *hookedDevice) MTU() (int, error) { return d.inner.MTU() }

// Name returns the inner device's name.
func (d *hookedDevice) Name() (string, error) { return d.inner.Name() }

// Events returns the inner device's event channel.
func (d *hookedDevice) Events() <-chan tun.Event { return d.inner.Events() }

// BatchSize returns the inner device's batch size; filtering never grows a
// batch.
func (d *hookedDevice) BatchSize() int { return d.inner.BatchSize() }

// Close closes the inner device once.
func (d *hookedDevice) Close() error {
	d.closeOnce.Do(func() {
		d.closeErr = d.inner.Close()
	})
	return d.closeErr
}

// Write filters bufs with the Inbound hook and writes the accepted packets to
// the inner device. On success it returns len(bufs): dropped packets are
// consumed, not failures. The order of the caller's bufs slice is unspecified
// after the call. Errors from the inner device are returned unchanged (no
// wrapping: this is the per-packet hot path and callers such as wireguard-go
// compare them with errors.Is against sentinels like os.ErrClosed).
func (d *hookedDevice) Write(bufs [][]byte, offset int) (int, error) {
	f := d.hooks.Load().Inbound
	var t batchTally
	kept := 0
	for i := range bufs {
		var pkt []byte
		if offset >= 0 && offset <= len(bufs[i]) {
			pkt = bufs[i][offset:]
		}
		if !wellFormed(pkt) {
			t.invalid++
			t.drop(len(pkt))
			continue
		}
		if f != nil && f.Filter(pkt) != Accept {
			t.drop(len(pkt))
			continue
		}
		t.accept(len(pkt))
		if kept != i {
			bufs[kept], bufs[i] = bufs[i], bufs[kept]
		}
		kept++
	}
	d.in.add(&t)
	if kept == 0 {
		return len(bufs), nil
	}
	n, err := d.inner.Write(bufs[:kept], offset)
	if err != nil {
		return n + len(bufs) - kept, err
	}
	return len(bufs), nil
}

// Read reads a batch from the inner device, filters it with the Outbound
// hook and returns the number of accepted packets, compacted to the front of
// bufs/sizes. If the inner device returns packets together with an error, the
// accepted packets and the error are returned together.
func (d *hookedDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		n, err := d.inner.Read(bufs, sizes, offset)
		if n <= 0 {
			return 0, err
		}
		kept := d.filterRead(bufs, sizes, offset, n)
		if kept > 0 || err != nil {
			return kept, err
		}
		// Everything was dropped: read the next batch rather than report an
		// empty successful read.
	}
}

// filterRead applies the Outbound hook to the first n packets and compacts
// the accepted ones to the front by copying bytes. It returns the number kept.
func (d *hookedDevice) filterRead(bufs [][]byte, sizes []int, offset, n int) int {
	f := d.hooks.Load().Outbound
	var t batchTally
	kept := 0
	for i := 0; i < n && i < len(bufs) && i < len(sizes); i++ {
		size := sizes[i]
		var pkt []byte
		if size > 0 && offset >= 0 && offset+size <= len(bufs[i]) {
			pkt = bufs[i][offset : offset+size]
		}
		if !wellFormed(pkt) {
			t.invalid++
			t.drop(max(size, 0))
			continue
		}
		if f != nil && f.Filter(pkt) != Accept {
			t.drop(size)
			continue
		}
		if kept != i {
			if offset+size > len(bufs[kept]) {
				// The caller handed buffers of unequal size and this one
				// is too small to hold the packet: count it as invalid.
				t.invalid++
				t.drop(size)
				continue
			}
			copy(bufs[kept][offset:], pkt)
			sizes[kept] = size
		}
		t.accept(size)
		kept++
	}
	d.out.add(&t)
	return kept
}
