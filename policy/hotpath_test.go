package policy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestZeroAllocs(t *testing.T) {
	f, _ := testFW(t, "inbound:\n  - {port: 22, proto: tcp, host: any}\nflood: {new_flows_per_sec: 0, max_flows_per_peer: 100000, max_flows: 100000}\ntrust: {threshold: 0}\n", peerInfo("a", 2))
	f.Events(1) // a subscriber, so emitted events go through the channel path
	est := tcpIn(v4(2), 1000, 22)
	f.Inbound(est)
	if n := testing.AllocsPerRun(1000, func() { f.Inbound(est) }); n != 0 {
		t.Errorf("established hit: %v allocs", n)
	}
	port := uint16(2000)
	pkt := tcpIn(v4(2), port, 22)
	if n := testing.AllocsPerRun(1000, func() {
		port++
		binary.BigEndian.PutUint16(pkt[20:], port)
		if f.Inbound(pkt) != Accept {
			t.Fatal("new flow refused")
		}
	}); n != 0 {
		t.Errorf("new flow: %v allocs", n)
	}
	drop := tcpIn(v4(2), 1000, 23)
	if n := testing.AllocsPerRun(1000, func() { f.Inbound(drop) }); n != 0 {
		t.Errorf("drop path (repeat of a penalised port): %v allocs", n)
	}
	before := f.Peers()[0].Penalties
	scan := tcpIn(v4(2), 1000, 0)
	dport := uint16(30000)
	if n := testing.AllocsPerRun(1000, func() {
		dport++
		binary.BigEndian.PutUint16(scan[22:], dport)
		f.Inbound(scan)
	}); n != 0 {
		t.Errorf("drop path (new blocked port, penalised): %v allocs", n)
	}
	if got := f.Peers()[0].Penalties - before; got < 1000 {
		t.Errorf("the scan loop charged %d penalties: it did not take the penalty path", got)
	}
	ping := pk{src: v4(2), dst: selfV4, proto: protoICMP, icmpType: 8, icmpID: 1}.build()
	if n := testing.AllocsPerRun(1000, func() {
		ping[26]++ // sequence number
		f.Inbound(ping)
	}); n != 0 {
		t.Errorf("refused ping: %v allocs", n)
	}
	spoof := tcpIn(netip.MustParseAddr("100.64.99.1"), 1, 22)
	if n := testing.AllocsPerRun(1000, func() { f.Inbound(spoof) }); n != 0 {
		t.Errorf("spoof drop: %v allocs", n)
	}
	out := pk{src: selfV4, dst: v4(2), proto: protoTCP, sport: 22, dport: 1000, flags: tcpACK}.build()
	if n := testing.AllocsPerRun(1000, func() { f.Outbound(out) }); n != 0 {
		t.Errorf("outbound established: %v allocs", n)
	}
}

// TestConcurrent pushes packets for several peers from several goroutines
// while rules reload and peers come and go. Run with -race.
func TestConcurrent(t *testing.T) {
	f, clk := testFW(t, "inbound:\n  - {port: any, proto: tcp, host: any}\nflood: {new_flows_per_sec: 0}\n")
	for i := byte(1); i <= 8; i++ {
		f.SetPeer(peerInfo(fmt.Sprint("p", i), i))
	}
	sub := f.Events(8)
	cfgA, _ := ParseConfig([]byte("inbound:\n  - {port: any, proto: tcp, host: any}\nflood: {new_flows_per_sec: 0}\n"))
	cfgB, _ := ParseConfig([]byte("inbound:\n  - {port: 1-1000, proto: tcp, host: any}\n"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := byte(1); g <= 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pkts := [][]byte{tcpIn(v4(g), 1, 80), tcpIn(v4(g), 2, 2000), pk{src: selfV4, dst: v4(g), proto: protoUDP, sport: 3, dport: 4}.build()}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := pkts[i%len(pkts)]
				if i%len(pkts) == 2 {
					f.Outbound(p)
				} else {
					f.Inbound(p)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			if i%2 == 0 {
				f.Reload(cfgA)
			} else {
				f.Reload(cfgB)
			}
			f.SetPeer(peerInfo("p7", 7))
			f.RemovePeer(localDomain, "p8")
			f.SetPeer(peerInfo("p8", 8))
			f.RemovePeer(localDomain, fmt.Sprint("p", 1+i%6))
			f.SetPeer(peerInfo(fmt.Sprint("p", 1+i%6), byte(1+i%6)))
			clk.Advance(time.Millisecond)
			_ = f.Stats()
			_ = f.Peers()
			_ = f.Check(Query{Peer: peerInfo("x", 9), Proto: ProtoTCP, Port: 80})
		}
	}()
	for len(sub.C) > 0 {
		<-sub.C
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	sub.Close()
	s := f.Stats()
	if s.Accepted == 0 {
		t.Fatal("nothing accepted")
	}
	n := 0
	for _, p := range f.Peers() {
		n += p.Flows
	}
	if n != s.Flows {
		t.Fatalf("flow count drift: peers hold %d, global says %d", n, s.Flows)
	}
}

func TestCoarseClock(t *testing.T) {
	f, err := New(nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for f.nanos() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if f.nanos() == 0 {
		t.Fatal("coarse clock does not tick")
	}
	f.Close()
	f.Close()
	a := f.nanos()
	time.Sleep(3 * coarseTick)
	if f.nanos() != a {
		t.Fatal("clock goroutine still running after Close")
	}
}

// benchRules builds n inbound rules: most share tcp/443 with the flow but
// name other hosts, the others match the peer on other ports; the rule
// that allows the flow is last.
func benchRules(n int) string {
	var b strings.Builder
	b.WriteString("flood: {packets_per_sec: 0, new_flows_per_sec: 0, max_flows_per_peer: 16000000, max_flows: 60000000}\ntrust: {threshold: 0}\ninbound:\n")
	for i := 0; i < n-1; i++ {
		if i%2 == 0 {
			fmt.Fprintf(&b, "  - {port: 443, proto: tcp, host: other-%d}\n", i)
		} else {
			fmt.Fprintf(&b, "  - {port: %d, proto: tcp, group: bench}\n", 1000+i%60000)
		}
	}
	b.WriteString("  - {port: 443, proto: tcp, group: bench}\n")
	return b.String()
}

func BenchmarkEstablished(b *testing.B) {
	f, _ := testFW(b, benchRules(100), peerInfo("a", 2, "bench"))
	pkt := tcpIn(v4(2), 1000, 443)
	f.Inbound(pkt)
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	b.ResetTimer()
	for b.Loop() {
		if f.Inbound(pkt) != Accept {
			b.Fatal("drop")
		}
	}
}

func BenchmarkEstablishedCoarseClock(b *testing.B) {
	cfg, _ := ParseConfig([]byte(benchRules(100)))
	f, _ := New(cfg, Options{})
	defer f.Close()
	f.SetPeer(peerInfo("a", 2, "bench"))
	pkt := tcpIn(v4(2), 1000, 443)
	f.Inbound(pkt)
	b.ReportAllocs()
	for b.Loop() {
		if f.Inbound(pkt) != Accept {
			b.Fatal("drop")
		}
	}
}

func BenchmarkEstablishedParallel(b *testing.B) {
	cfg, _ := ParseConfig([]byte(benchRules(100)))
	f, _ := New(cfg, Options{})
	defer f.Close()
	for i := byte(1); i <= 16; i++ {
		f.SetPeer(peerInfo(fmt.Sprint("p", i), i, "bench"))
	}
	var next sync.Mutex
	id := byte(0)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		next.Lock()
		id++
		pkt := tcpIn(v4(id), 1000, 443)
		next.Unlock()
		for pb.Next() {
			f.Inbound(pkt)
		}
	})
}

func BenchmarkNewFlow(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprint("rules=", n), func(b *testing.B) {
			f, _ := testFW(b, benchRules(n), peerInfo("a", 2, "bench"))
			pkt := tcpIn(v4(2), 0, 443)
			src := uint32(0)
			b.ReportAllocs()
			for b.Loop() {
				src++
				// A new flow each time: vary the source port and the
				// low bytes of the destination-side port space via the
				// remote address's flow key (source port wraps at 65536).
				binary.BigEndian.PutUint16(pkt[20:], uint16(src))
				if uint16(src) == 0 {
					f.RemovePeer(localDomain, "a")
					f.SetPeer(peerInfo("a", 2, "bench"))
				}
				if f.Inbound(pkt) != Accept {
					b.Fatal("drop")
				}
			}
		})
	}
}

func BenchmarkDrop(b *testing.B) {
	f, _ := testFW(b, benchRules(1000), peerInfo("a", 2, "bench"))
	pkt := tcpIn(v4(2), 1000, 22)
	b.ReportAllocs()
	for b.Loop() {
		if f.Inbound(pkt) != Drop {
			b.Fatal("accept")
		}
	}
}

func BenchmarkParse(b *testing.B) {
	pkt := pk{src: v6(2), dst: selfV6, proto: protoTCP, sport: 1, dport: 2}.build()
	var p packet
	for b.Loop() {
		parse(pkt, &p, false)
	}
}
