package stack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/netstack"
)

// benchBatch is the batch size of the hook-layer benchmarks (wireguard-go's
// IdealBatchSize order of magnitude).
const benchBatch = 64

func benchHookDevice(b *testing.B, h Hooks) (*hookedDevice, [][]byte, [][]byte, []int) {
	inner := newFakeDev(benchBatch)
	inner.loop = true
	inner.batches = [][][]byte{make([][]byte, benchBatch)}
	tags := make([]byte, benchBatch)
	for i := range tags {
		tags[i] = byte(i)
		inner.batches[0][i] = mkPacket(addrA, addrB, byte(i), DefaultMTU)
	}
	d := newHookedDevice(inner)
	d.setHooks(h)
	rbufs := make([][]byte, benchBatch)
	for i := range rbufs {
		rbufs[i] = make([]byte, testOffset+MaxMTU)
	}
	return d, batchOf(tags, DefaultMTU), rbufs, make([]int, benchBatch)
}

var benchHooks = []struct {
	name  string
	hooks Hooks
}{
	{"pass", Hooks{Inbound: acceptAll{}, Outbound: acceptAll{}}},
	{"drop", Hooks{Inbound: dropAll{}, Outbound: dropOdd{}}}, // Read must return something: drop half
}

// BenchmarkHookWrite measures the Inbound path per packet.
func BenchmarkHookWrite(b *testing.B) {
	for _, bh := range benchHooks {
		b.Run(bh.name, func(b *testing.B) {
			d, wbufs, _, _ := benchHookDevice(b, bh.hooks)
			b.ReportAllocs()
			b.SetBytes(benchBatch * DefaultMTU)
			b.ResetTimer()
			for range b.N {
				d.Write(wbufs, testOffset)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchBatch), "ns/packet")
		})
	}
}

// BenchmarkHookRead measures the Outbound path per packet (the "drop" case
// drops every other packet, so half the packets are copied to compact).
func BenchmarkHookRead(b *testing.B) {
	for _, bh := range benchHooks {
		b.Run(bh.name, func(b *testing.B) {
			d, _, rbufs, sizes := benchHookDevice(b, bh.hooks)
			b.ReportAllocs()
			b.SetBytes(benchBatch * DefaultMTU)
			b.ResetTimer()
			for range b.N {
				d.Read(rbufs, sizes, testOffset)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchBatch), "ns/packet")
		})
	}
}

// benchChunk is the bytes moved per benchmark iteration.
const benchChunk = 1 << 20

// sink accepts one TCP connection on l and discards what it reads,
// acknowledging each benchChunk with one byte so the sender can time it.
func sink(l net.Listener) {
	c, err := l.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	buf := make([]byte, benchChunk)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write([]byte{1}); err != nil {
			return
		}
	}
}

// sendChunk writes benchChunk bytes and waits for the sink's ack; it returns
// the time taken.
func sendChunk(b *testing.B, c net.Conn, data []byte) time.Duration {
	start := time.Now()
	if _, err := c.Write(data); err != nil {
		b.Fatal(err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// rawNetstackConn wires two raw wireguard-go netstack devices (no hook
// layer) back to back and returns a TCP connection between them.
func rawNetstackConn(b *testing.B) net.Conn {
	devA, netA, err := netstack.CreateNetTUN([]netip.Addr{addrA}, nil, DefaultMTU)
	if err != nil {
		b.Fatal(err)
	}
	devB, netB, err := netstack.CreateNetTUN([]netip.Addr{addrB}, nil, DefaultMTU)
	if err != nil {
		b.Fatal(err)
	}
	ab, ba := startLink(b, devA, devB), startLink(b, devB, devA)
	l, err := netB.ListenTCPAddrPort(netip.AddrPortFrom(addrB, 7100))
	if err != nil {
		b.Fatal(err)
	}
	go sink(l)
	c, err := netA.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(addrB, 7100))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Close()
		l.Close()
		devA.Close()
		devB.Close()
		ab.wait(b)
		ba.wait(b)
	})
	return c
}

// hookedConn returns a TCP connection between two Stacks (hook layer with
// pass-through filters installed) wired back to back.
func hookedConn(b *testing.B) net.Conn {
	p := newPair(b, DefaultMTU)
	p.a.SetHooks(Hooks{Inbound: acceptAll{}, Outbound: acceptAll{}})
	p.b.SetHooks(Hooks{Inbound: acceptAll{}, Outbound: acceptAll{}})
	l, err := p.b.ListenTCP(7101)
	if err != nil {
		b.Fatal(err)
	}
	go sink(l)
	c, err := p.a.DialContext(context.Background(), "tcp", "100.64.0.2:7101")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(); l.Close() })
	return c
}

// BenchmarkTCPThroughput alternates 1 MiB transfers through the hook layer
// and directly between raw netstack devices in the same run, and reports
// both rates and their ratio (hooked/raw; 1.0 = no overhead).
func BenchmarkTCPThroughput(b *testing.B) {
	hooked, raw := hookedConn(b), rawNetstackConn(b)
	data := make([]byte, benchChunk)
	sendChunk(b, hooked, data) // warm up windows
	sendChunk(b, raw, data)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	var th, tr time.Duration
	for range b.N {
		th += sendChunk(b, hooked, data)
		tr += sendChunk(b, raw, data)
	}
	mb := float64(b.N) * benchChunk / 1e6
	b.ReportMetric(mb/th.Seconds(), "hooked-MB/s")
	b.ReportMetric(mb/tr.Seconds(), "raw-MB/s")
	b.ReportMetric(tr.Seconds()/th.Seconds(), "hooked/raw")
}
