package stack

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestNetstackDevZeroAlloc checks that the userspace device adds no
// allocation per packet: Write of a packet the stack drops at once, and Read
// (measured as the difference between sending a UDP datagram and reading it
// from the device, and sending it and discarding it inside gVisor).
func TestNetstackDevZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless with -race (sync.Pool drops objects)")
	}
	d, err := newNetstackDev([]netip.Addr{addrA}, DefaultMTU, true, Tuning{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// Not addressed to the node: the stack drops it (no forwarding).
	wbufs := [][]byte{withOffset(udpProbe(addrB, netip.MustParseAddr("100.64.0.9"), 9), testOffset, 0)}
	if a := testing.AllocsPerRun(500, func() { d.Write(wbufs, testOffset) }); a != 0 {
		t.Errorf("Write: %v allocs per packet, want 0", a)
	}

	u := &userspace{dev: d}
	c, err := u.dialUDP(context.Background(), "udp", addrA, netip.AddrPortFrom(addrB, 9))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 100)
	rbufs := [][]byte{make([]byte, testOffset+MaxMTU)}
	sizes := []int{0}
	withRead := testing.AllocsPerRun(500, func() {
		c.Write(msg)
		if n, err := d.Read(rbufs, sizes, testOffset); n != 1 || err != nil {
			t.Fatalf("Read = %d, %v", n, err)
		}
	})
	withoutRead := testing.AllocsPerRun(500, func() {
		c.Write(msg)
		d.ep.Drain()
	})
	if withRead > withoutRead {
		t.Errorf("Read: %v allocs per packet, want 0", withRead-withoutRead)
	}
}

// TestNetstackDevReadBatch checks that Read returns every queued packet in
// one call, intact and in order.
func TestNetstackDevReadBatch(t *testing.T) {
	d, err := newNetstackDev([]netip.Addr{addrA}, DefaultMTU, true, Tuning{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	u := &userspace{dev: d}
	c, err := u.dialUDP(context.Background(), "udp", addrA, netip.AddrPortFrom(addrB, 9))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 5 {
		if _, err := c.Write(make([]byte, 10+i)); err != nil {
			t.Fatal(err)
		}
	}
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, testOffset+MaxMTU)
	}
	sizes := make([]int, 8)
	n, err := d.Read(bufs, sizes, testOffset)
	if n != 5 || err != nil {
		t.Fatalf("Read = %d, %v; want 5 packets", n, err)
	}
	for i := range n {
		pkt := bufs[i][testOffset : testOffset+sizes[i]]
		src, dst, ok := PacketAddrs(pkt)
		if !ok || src != addrA || dst != addrB || sizes[i] != 20+8+10+i {
			t.Errorf("packet %d: %v→%v ok=%v size %d", i, src, dst, ok, sizes[i])
		}
	}
}

// TestTuning checks that the defaults are the documented ones, that every
// override reaches gVisor and the device, and that an unknown congestion
// control is refused by name.
func TestTuning(t *testing.T) {
	check := func(tn Tuning, cc string, recovery tcpip.TCPRecovery, batch, queue, rcvMax, sndMax int) {
		t.Helper()
		d, err := newNetstackDev([]netip.Addr{addrA}, DefaultMTU, true, tn)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		var gotCC tcpip.CongestionControlOption
		if err := d.stack.TransportProtocolOption(tcp.ProtocolNumber, &gotCC); err != nil {
			t.Fatal(err)
		}
		var gotRecovery tcpip.TCPRecovery
		if err := d.stack.TransportProtocolOption(tcp.ProtocolNumber, &gotRecovery); err != nil {
			t.Fatal(err)
		}
		if string(gotCC) != cc || gotRecovery != recovery {
			t.Errorf("%+v: congestion control %q, recovery %v; want %q, %v", tn, gotCC, gotRecovery, cc, recovery)
		}
		var rcv tcpip.TCPReceiveBufferSizeRangeOption
		var snd tcpip.TCPSendBufferSizeRangeOption
		if err := d.stack.TransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
			t.Fatal(err)
		}
		if err := d.stack.TransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
			t.Fatal(err)
		}
		if rcv.Max != rcvMax || snd.Max != sndMax || rcv.Default > rcv.Max || snd.Default > snd.Max {
			t.Errorf("%+v: buffers receive %+v send %+v, want maxima %d and %d", tn, rcv, snd, rcvMax, sndMax)
		}
		if d.BatchSize() != batch {
			t.Errorf("%+v: batch %d, want %d", tn, d.BatchSize(), batch)
		}
		// The queue refuses packets past its capacity.
		u := &userspace{dev: d}
		c, err := u.dialUDP(context.Background(), "udp", addrA, netip.AddrPortFrom(addrB, 9))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for range queue + 10 {
			c.Write(make([]byte, 10))
		}
		if n := d.ep.NumQueued(); n != queue {
			t.Errorf("%+v: %d packets queued, want the capacity %d", tn, n, queue)
		}
	}
	check(Tuning{}, "reno", 0, 128, 1024, 8<<20, 6<<20)
	check(Tuning{CongestionControl: "cubic", RACK: true, Batch: 32, QueueLen: 64, MaxReceiveBuffer: 512 << 10, MaxSendBuffer: 16 << 20},
		"cubic", tcpip.TCPRACKLossDetection, 32, 64, 512<<10, 16<<20)

	_, err := newNetstackDev([]netip.Addr{addrA}, DefaultMTU, true, Tuning{CongestionControl: "bbr"})
	if err == nil || !strings.Contains(err.Error(), `"bbr"`) {
		t.Errorf("unknown congestion control: err = %v, want one that names it", err)
	}
}
