package stack

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type acceptAll struct{}

func (acceptAll) Filter([]byte) Verdict { return Accept }

type dropAll struct{}

func (dropAll) Filter([]byte) Verdict { return Drop }

// dropOdd drops packets with an odd tag.
type dropOdd struct{}

func (dropOdd) Filter(p []byte) Verdict {
	if tagOf(p)%2 == 1 {
		return Drop
	}
	return Accept
}

// dropBelow drops packets whose tag is below the threshold.
type dropBelow byte

func (d dropBelow) Filter(p []byte) Verdict {
	if tagOf(p) < byte(d) {
		return Drop
	}
	return Accept
}

func batchOf(tags []byte, size int) [][]byte {
	bufs := make([][]byte, len(tags))
	for i, tag := range tags {
		bufs[i] = withOffset(mkPacket(addrA, addrB, tag, size), testOffset, 0)
	}
	return bufs
}

var hookCases = []struct {
	name   string
	filter Filter
	want   []byte // accepted tags, in order
}{
	{"nil hook", nil, []byte{0, 1, 2, 3, 4, 5, 6, 7}},
	{"accept all", acceptAll{}, []byte{0, 1, 2, 3, 4, 5, 6, 7}},
	{"drop all", dropAll{}, []byte{}},
	{"drop every other", dropOdd{}, []byte{0, 2, 4, 6}},
	{"drop first half", dropBelow(4), []byte{4, 5, 6, 7}},
	{"func filter", FilterFunc(func(p []byte) Verdict {
		if tagOf(p) == 3 {
			return Drop
		}
		return Accept
	}), []byte{0, 1, 2, 4, 5, 6, 7}},
}

const testPktSize = 100

func TestHookWrite(t *testing.T) {
	tags := []byte{0, 1, 2, 3, 4, 5, 6, 7}
	for _, tc := range hookCases {
		t.Run(tc.name, func(t *testing.T) {
			inner := newFakeDev(8)
			inner.record = true
			d := newHookedDevice(inner)
			d.setHooks(Hooks{Inbound: tc.filter, Outbound: dropAll{}})
			bufs := batchOf(tags, testPktSize)
			n, err := d.Write(bufs, testOffset)
			if err != nil || n != len(bufs) {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(bufs))
			}
			if got := inner.writtenTags(); !bytes.Equal(got, tc.want) {
				t.Fatalf("inner saw tags %v, want %v", got, tc.want)
			}
			c := d.counters()
			dropped := uint64(len(tags) - len(tc.want))
			want := DirectionCounters{
				AcceptedPackets: uint64(len(tc.want)), AcceptedBytes: uint64(len(tc.want) * testPktSize),
				DroppedPackets: dropped, DroppedBytes: dropped * testPktSize,
			}
			if c.Inbound != want || c.Outbound != (DirectionCounters{}) {
				t.Fatalf("counters = %+v, want inbound %+v and no outbound", c, want)
			}
		})
	}
}

func TestHookRead(t *testing.T) {
	tags := []byte{0, 1, 2, 3, 4, 5, 6, 7}
	for _, tc := range hookCases {
		t.Run(tc.name, func(t *testing.T) {
			inner := newFakeDev(8)
			inner.batches = [][][]byte{batchOf(tags, testPktSize), batchOf([]byte{100, 101}, testPktSize)}
			for i := range inner.batches {
				for j, b := range inner.batches[i] {
					inner.batches[i][j] = b[testOffset:]
				}
			}
			d := newHookedDevice(inner)
			d.setHooks(Hooks{Outbound: tc.filter, Inbound: dropAll{}})
			bufs := make([][]byte, 8)
			ptrs := make([]*byte, 8)
			for i := range bufs {
				bufs[i] = make([]byte, testOffset+MaxMTU)
				ptrs[i] = &bufs[i][0]
			}
			sizes := make([]int, 8)
			n, err := d.Read(bufs, sizes, testOffset)
			want, wantBatches := tc.want, 1
			if len(want) == 0 {
				// The whole first batch was dropped: Read must go on to
				// the second one, drop it too, and end at ErrClosed
				// rather than return (0, nil).
				if n != 0 || !errors.Is(err, os.ErrClosed) {
					t.Fatalf("Read = %d, %v; want 0, ErrClosed", n, err)
				}
				wantBatches = 2
			} else if err != nil {
				t.Fatalf("Read: %v", err)
			}
			got := make([]byte, n)
			for i := 0; i < n; i++ {
				if sizes[i] != testPktSize {
					t.Fatalf("sizes[%d] = %d, want %d", i, sizes[i], testPktSize)
				}
				got[i] = tagOf(bufs[i][testOffset:])
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Read tags %v, want %v", got, want)
			}
			for i := range bufs {
				if &bufs[i][0] != ptrs[i] {
					t.Fatalf("bufs[%d] was replaced: Read must copy, not swap buffers", i)
				}
			}
			c := d.counters().Outbound
			acc := uint64(len(want))
			drop := uint64(8 - len(want))
			if wantBatches == 2 {
				drop = 10
			}
			if c.AcceptedPackets != acc || c.DroppedPackets != drop || c.AcceptedBytes != acc*testPktSize {
				t.Fatalf("outbound counters %+v, want %d accepted, %d dropped", c, acc, drop)
			}
		})
	}
}

// TestHookReadAllDroppedReadsAgain checks that a fully dropped batch never
// surfaces as (0, nil): Read continues with the next batch.
func TestHookReadAllDroppedReadsAgain(t *testing.T) {
	inner := newFakeDev(4)
	inner.batches = [][][]byte{
		{mkPacket(addrA, addrB, 1, 60), mkPacket(addrA, addrB, 2, 60)},
		{mkPacket(addrA, addrB, 3, 60)},
		{mkPacket(addrA, addrB, 200, 60), mkPacket(addrA, addrB, 5, 60), mkPacket(addrA, addrB, 201, 60)},
	}
	d := newHookedDevice(inner)
	d.setHooks(Hooks{Outbound: dropBelow(100)})
	bufs := [][]byte{make([]byte, 200), make([]byte, 200), make([]byte, 200), make([]byte, 200)}
	sizes := make([]int, 4)
	n, err := d.Read(bufs, sizes, 0)
	if err != nil || n != 2 || tagOf(bufs[0]) != 200 || tagOf(bufs[1]) != 201 || sizes[1] != 60 {
		t.Fatalf("Read = %d, %v, tags %d %d; want 2 packets 200, 201", n, err, tagOf(bufs[0]), tagOf(bufs[1]))
	}
	if n, err := d.Read(bufs, sizes, 0); n != 0 || !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after end = %d, %v; want 0, ErrClosed", n, err)
	}
	if c := d.counters().Outbound; c.DroppedPackets != 4 || c.AcceptedPackets != 2 {
		t.Fatalf("counters %+v", c)
	}
}

func TestHookInvalidPackets(t *testing.T) {
	inner := newFakeDev(4)
	inner.record = true
	d := newHookedDevice(inner)
	good := withOffset(mkPacket(addrA, addrB, 9, 40), testOffset, 0)
	bufs := [][]byte{
		withOffset([]byte{0x60, 1, 2}, testOffset, 0), // truncated IPv6
		good,
		make([]byte, testOffset), // empty packet
		withOffset(bytes.Repeat([]byte{0xff}, 40), testOffset, 0), // version 15
		make([]byte, 3), // shorter than the offset
	}
	n, err := d.Write(bufs, testOffset)
	if err != nil || n != len(bufs) {
		t.Fatalf("Write = %d, %v; bad packets must be dropped, not errors", n, err)
	}
	if got := inner.writtenTags(); !bytes.Equal(got, []byte{9}) {
		t.Fatalf("inner saw %v, want only the good packet", got)
	}
	if c := d.counters().Inbound; c.Invalid != 4 || c.DroppedPackets != 4 || c.AcceptedPackets != 1 {
		t.Fatalf("counters %+v, want 4 invalid+dropped, 1 accepted", c)
	}
}

func TestHookWriteError(t *testing.T) {
	inner := newFakeDev(4)
	inner.writeErr = os.ErrClosed
	d := newHookedDevice(inner)
	_, err := d.Write(batchOf([]byte{1, 2}, 50), testOffset)
	if !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Write error = %v, want os.ErrClosed passed through", err)
	}
	// All dropped: the inner device is not called, so no error.
	d.setHooks(Hooks{Inbound: dropAll{}})
	if n, err := d.Write(batchOf([]byte{1, 2}, 50), testOffset); n != 2 || err != nil {
		t.Fatalf("Write all dropped = %d, %v; want 2, nil", n, err)
	}
}

func TestHookConcurrentWrite(t *testing.T) {
	const writers, batches, batchLen = 8, 300, 16
	inner := newFakeDev(batchLen)
	d := newHookedDevice(inner)
	d.setHooks(Hooks{Inbound: dropOdd{}})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tags := make([]byte, batchLen)
			for i := range tags {
				tags[i] = byte(i)
			}
			for range batches {
				bufs := batchOf(tags, 64)
				if n, err := d.Write(bufs, testOffset); n != batchLen || err != nil {
					t.Errorf("Write = %d, %v", n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	total := uint64(writers * batches * batchLen)
	c := d.counters().Inbound
	if c.AcceptedPackets != total/2 || c.DroppedPackets != total/2 || uint64(inner.nWritten.Load()) != total/2 {
		t.Fatalf("counters %+v, inner wrote %d; want %d each", c, inner.nWritten.Load(), total/2)
	}
}

func TestHookSwapDuringTraffic(t *testing.T) {
	inner := newFakeDev(8)
	d := newHookedDevice(inner)
	var stop atomic.Bool
	var sent atomic.Uint64
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				bufs := batchOf([]byte{1, 2, 3, 4}, 40)
				d.Write(bufs, testOffset)
				sent.Add(4)
			}
		}()
	}
	// Swap until both hooks were seen at work (200 swaps at least), for at
	// most 10s: on a loaded machine the writers may not run at all during
	// a fixed number of swaps.
	var sawDrop, sawAccept bool
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 200 || !(sawDrop && sawAccept); i++ {
		if i%2 == 0 {
			d.setHooks(Hooks{Inbound: dropAll{}})
		} else {
			d.setHooks(Hooks{Inbound: acceptAll{}})
		}
		c := d.counters().Inbound
		sawDrop, sawAccept = c.DroppedPackets > 0, c.AcceptedPackets > 0
		if time.Now().After(deadline) {
			break
		}
		if i%64 == 63 {
			runtime.Gosched()
		}
	}
	d.setHooks(Hooks{Inbound: dropAll{}})
	stop.Store(true)
	wg.Wait()
	c := d.counters().Inbound
	if c.AcceptedPackets+c.DroppedPackets != sent.Load() || uint64(inner.nWritten.Load()) != c.AcceptedPackets {
		t.Fatalf("counters %+v, sent %d, inner %d", c, sent.Load(), inner.nWritten.Load())
	}
	if !sawDrop || !sawAccept {
		t.Fatalf("hook swaps had no effect: %+v", c)
	}
	before := inner.nWritten.Load()
	d.Write(batchOf([]byte{1, 2}, 40), testOffset)
	if inner.nWritten.Load() != before {
		t.Fatal("packet passed after the drop-all hook was installed")
	}
}

func TestHookZeroAlloc(t *testing.T) {
	inner := newFakeDev(64)
	d := newHookedDevice(inner)
	tags := make([]byte, 64)
	for i := range tags {
		tags[i] = byte(i)
	}
	wbufs := batchOf(tags, 1280)
	inner.loop = true
	inner.batches = [][][]byte{make([][]byte, 64)}
	for i := range tags {
		inner.batches[0][i] = mkPacket(addrA, addrB, byte(i), 1280)
	}
	rbufs := make([][]byte, 64)
	for i := range rbufs {
		rbufs[i] = make([]byte, testOffset+MaxMTU)
	}
	sizes := make([]int, 64)
	for _, h := range []Hooks{{}, {Inbound: dropOdd{}, Outbound: dropOdd{}}, {Inbound: dropAll{}, Outbound: dropOdd{}}} {
		d.setHooks(h)
		if a := testing.AllocsPerRun(200, func() { d.Write(wbufs, testOffset) }); a != 0 {
			t.Errorf("Write with %+v: %v allocs per batch, want 0", h, a)
		}
		if a := testing.AllocsPerRun(200, func() { d.Read(rbufs, sizes, testOffset) }); a != 0 {
			t.Errorf("Read with %+v: %v allocs per batch, want 0", h, a)
		}
	}
}
