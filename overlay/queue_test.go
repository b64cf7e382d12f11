package overlay

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/aigrid/gridnet/overlay/handshake"
)

// TestLastMessagesFirst: a msg3 that names a half-open handshake from its
// own source waits in a queue of its own, and the workers take it before
// the first messages that came earlier: it completes an admission both
// sides already paid for (on a loaded node a msg3 behind a queue of msg1s
// came seconds late, and the peer's session rules took the start over
// meanwhile). A msg3 naming no half-open handshake, or one from another
// source, is not queued at all.
func TestLastMessagesFirst(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	o := &Overlay{ctx: ctx, queue: make(chan inboundPacket, 8), finals: make(chan inboundPacket, 8),
		halfOpen: map[uint32]*halfOpenState{}}
	from := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port) }
	const idx = 77
	o.halfOpen[idx] = &halfOpenState{from: from(9)}
	msg3 := make([]byte, handshake.Msg3MinSize)
	msg3[0], msg3[1] = handshake.TypeGridnet, handshake.KindFinal
	binary.LittleEndian.PutUint32(msg3[6:10], idx)

	for port := uint16(1); port <= 3; port++ {
		o.queue <- inboundPacket{from: from(port)}
	}
	o.onGridnet(msg3, from(8)) // another source: dropped
	other := append([]byte(nil), msg3...)
	binary.LittleEndian.PutUint32(other[6:10], idx+1)
	o.onGridnet(other, from(9)) // no such handshake: dropped
	o.onGridnet(msg3, from(9))
	if len(o.finals) != 1 || len(o.queue) != 3 || o.stats.junk.Load() != 2 {
		t.Fatalf("queued %d last and %d other messages, %d junk; want 1, 3 and 2", len(o.finals), len(o.queue), o.stats.junk.Load())
	}
	var order []uint16
	for range 4 {
		in, ok := o.nextInbound()
		if !ok {
			t.Fatal("nextInbound ended with messages waiting")
		}
		order = append(order, in.from.Port())
	}
	if order[0] != 9 || order[1] != 1 || order[2] != 2 || order[3] != 3 {
		t.Fatalf("handled from ports %v, want the msg3 (9) first, then 1, 2, 3", order)
	}
	cancel()
	if _, ok := o.nextInbound(); ok {
		t.Fatal("nextInbound went on after the overlay closed")
	}
}
