package stack

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// testOffset mimics wireguard-go's offset (MessageTransportHeaderSize).
const testOffset = 16

// mkPacket builds a well-formed IPv4/UDP packet of total length size whose
// first payload byte is tag (used to check order and identity).
func mkPacket(src, dst netip.Addr, tag byte, size int) []byte {
	if size < 29 {
		size = 29
	}
	p := make([]byte, size)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(size))
	p[8] = 64
	p[9] = 17
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[24:], uint16(size-20))
	p[28] = tag
	return p
}

func tagOf(pkt []byte) byte { return pkt[28] }

// quiet discards the stacks' lifecycle logs in tests.
var quiet = slog.New(slog.DiscardHandler)

var (
	addrA = netip.MustParseAddr("100.64.0.1")
	addrB = netip.MustParseAddr("100.64.0.2")
)

// withOffset returns a buffer of cap offset+len(pkt)+extra with pkt at offset.
func withOffset(pkt []byte, offset, extra int) []byte {
	b := make([]byte, offset+len(pkt), offset+len(pkt)+extra)
	copy(b[offset:], pkt)
	return b
}

// fakeDev is a tun.Device for testing the hook layer. Read serves queued
// batches (or the same batch forever when loop is set); Write records the
// packets it is given (when record is set) and counts them.
type fakeDev struct {
	mu       sync.Mutex
	record   bool
	written  [][]byte
	writeErr error
	nWritten atomic.Int64

	batches [][][]byte
	loop    bool
	batch   int
	events  chan tun.Event
	closed  atomic.Bool
}

func newFakeDev(batch int) *fakeDev {
	return &fakeDev{batch: batch, events: make(chan tun.Event, 1)}
}

func (f *fakeDev) File() *os.File           { return nil }
func (f *fakeDev) MTU() (int, error)        { return DefaultMTU, nil }
func (f *fakeDev) Name() (string, error)    { return "fake", nil }
func (f *fakeDev) Events() <-chan tun.Event { return f.events }
func (f *fakeDev) BatchSize() int           { return f.batch }

func (f *fakeDev) Close() error {
	if f.closed.CompareAndSwap(false, true) {
		close(f.events)
	}
	return nil
}

func (f *fakeDev) Write(bufs [][]byte, offset int) (int, error) {
	if f.writeErr != nil {
		return 0, f.writeErr
	}
	f.nWritten.Add(int64(len(bufs)))
	if f.record {
		f.mu.Lock()
		for _, b := range bufs {
			f.written = append(f.written, append([]byte(nil), b[offset:]...))
		}
		f.mu.Unlock()
	}
	return len(bufs), nil
}

func (f *fakeDev) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed.Load() || len(f.batches) == 0 {
		return 0, os.ErrClosed
	}
	b := f.batches[0]
	if !f.loop {
		f.batches = f.batches[1:]
	}
	for i, p := range b {
		sizes[i] = copy(bufs[i][offset:], p)
	}
	return len(b), nil
}

func (f *fakeDev) writtenTags() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	tags := make([]byte, len(f.written))
	for i, p := range f.written {
		tags[i] = tagOf(p)
	}
	return tags
}

// link copies packets from one tun.Device to another like a network would:
// a reader goroutine feeds a bounded queue (full queue = packet loss), a
// writer goroutine drains it. Decoupling the two directions matters: gVisor
// may answer an injected packet synchronously (ICMP echo, RST), and a
// synchronous copy loop in each direction could deadlock.
type link struct {
	maxSize atomic.Int64 // largest packet seen at the device boundary
	packets atomic.Int64
	done    chan struct{}
}

// linkQueue bounds packets in flight per direction.
const linkQueue = 1024

func startLink(t testing.TB, from, to tun.Device) *link {
	l := &link{done: make(chan struct{})}
	q := make(chan []byte, linkQueue)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // reader
		defer wg.Done()
		defer close(q)
		n := from.BatchSize()
		bufs := make([][]byte, n)
		sizes := make([]int, n)
		for i := range bufs {
			bufs[i] = make([]byte, testOffset+MaxMTU)
		}
		for {
			k, err := from.Read(bufs, sizes, testOffset)
			for i := 0; i < k; i++ {
				l.packets.Add(1)
				if int64(sizes[i]) > l.maxSize.Load() {
					l.maxSize.Store(int64(sizes[i]))
				}
				p := make([]byte, testOffset+sizes[i])
				copy(p[testOffset:], bufs[i][testOffset:testOffset+sizes[i]])
				select {
				case q <- p:
				default: // queue full: lose the packet
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { // writer
		defer wg.Done()
		for p := range q {
			if _, err := to.Write([][]byte{p}, testOffset); err != nil && !errors.Is(err, os.ErrClosed) {
				t.Logf("link write: %v", err)
			}
		}
	}()
	go func() { wg.Wait(); close(l.done) }()
	return l
}

// wait waits (bounded) for the link's goroutines to end after the source
// device was closed.
func (l *link) wait(t testing.TB) {
	select {
	case <-l.done:
	case <-time.After(5 * time.Second):
		t.Error("link goroutines did not stop within 5s")
	}
}

// pair is two userspace stacks wired back to back without WireGuard.
type pair struct {
	a, b   *Stack
	ab, ba *link
}

func newPair(t testing.TB, mtu int) *pair {
	t.Helper()
	a, err := New(Config{Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/10")}, MTU: mtu, Logger: quiet})
	if err != nil {
		t.Fatalf("New A: %v", err)
	}
	b, err := New(Config{Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/10")}, MTU: mtu, Logger: quiet})
	if err != nil {
		a.Close()
		t.Fatalf("New B: %v", err)
	}
	p := &pair{a: a, b: b}
	p.ab = startLink(t, a.Device(), b.Device())
	p.ba = startLink(t, b.Device(), a.Device())
	t.Cleanup(p.close(t))
	return p
}

func (p *pair) close(t testing.TB) func() {
	return func() {
		if err := p.a.Close(); err != nil {
			t.Errorf("close A: %v", err)
		}
		if err := p.b.Close(); err != nil {
			t.Errorf("close B: %v", err)
		}
		p.ab.wait(t)
		p.ba.wait(t)
	}
}
