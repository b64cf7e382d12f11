package stack

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// batchLink copies packets from one tun.Device to another in whole
// batches, as wireguard-go hands a peer's decrypted packets to Write, so
// that the receiving device can coalesce them. A reader goroutine reads a
// batch into buffers from a free list and queues it; a writer goroutine
// writes each batch and returns its buffers. Nothing is lost: when the
// queue is full the reader waits (gVisor never blocks on the way out, so
// this cannot deadlock).
type batchLink struct {
	maxSize atomic.Int64 // largest packet seen
	packets atomic.Int64
	batches atomic.Int64
	done    chan struct{}
}

func startBatchLink(t testing.TB, from, to tun.Device) *batchLink {
	const depth = 16
	l := &batchLink{done: make(chan struct{})}
	mtu, _ := from.MTU()
	n := from.BatchSize()
	free := make(chan [][]byte, depth)
	full := make(chan [][]byte, depth)
	for range depth {
		b := make([][]byte, n)
		for i := range b {
			b[i] = make([]byte, testOffset+mtu)
		}
		free <- b
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // reader
		defer wg.Done()
		defer close(full)
		bufs := make([][]byte, n)
		for i := range bufs {
			bufs[i] = make([]byte, testOffset+MaxMTU)
		}
		sizes := make([]int, n)
		for {
			k, err := from.Read(bufs, sizes, testOffset)
			if k > 0 {
				b := (<-free)[:k]
				for i := range k {
					if int64(sizes[i]) > l.maxSize.Load() {
						l.maxSize.Store(int64(sizes[i]))
					}
					if sizes[i] > mtu {
						t.Errorf("packet of %d bytes over a %d MTU", sizes[i], mtu)
						sizes[i] = mtu
					}
					b[i] = b[i][:testOffset+sizes[i]]
					copy(b[i][testOffset:], bufs[i][testOffset:testOffset+sizes[i]])
				}
				l.packets.Add(int64(k))
				l.batches.Add(1)
				full <- b
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { // writer
		defer wg.Done()
		for b := range full {
			if _, err := to.Write(b, testOffset); err != nil && !errors.Is(err, os.ErrClosed) {
				t.Errorf("link write: %v", err)
			}
			for i := range b {
				b[i] = b[i][:cap(b[i])]
			}
			free <- b[:cap(b)]
		}
	}()
	go func() { wg.Wait(); close(l.done) }()
	return l
}

// batchPair is two userspace stacks wired back to back by batch links.
type batchPair struct {
	a, b   *Stack
	ab, ba *batchLink
}

func newBatchPair(t testing.TB, offload bool) *batchPair {
	t.Helper()
	mk := func(addr string) *Stack {
		s, err := New(Config{Addresses: []netip.Prefix{netip.MustParsePrefix(addr)}, Logger: quiet, NoOffload: !offload})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		return s
	}
	p := &batchPair{a: mk("100.64.0.1/10"), b: mk("100.64.0.2/10")}
	p.ab = startBatchLink(t, p.a.Device(), p.b.Device())
	p.ba = startBatchLink(t, p.b.Device(), p.a.Device())
	t.Cleanup(func() {
		p.a.Close()
		p.b.Close()
		for _, l := range []*batchLink{p.ab, p.ba} {
			select {
			case <-l.done:
			case <-time.After(5 * time.Second):
				t.Error("batch link goroutines did not stop within 5s")
			}
		}
	})
	return p
}

// userDev returns the userspace device under s's hook layer.
func userDev(s *Stack) *netstackDev { return s.dev.inner.(*netstackDev) }

// TestOffloadLargeTransfer sends 1 GiB (256 MiB with -short, 32 MiB with
// -race) from one userspace stack to another with offload on, over batch
// links, and compares the SHA-256 of what was sent and received. It also
// checks that offload was at work (segments split on the way out, merged on
// the way in) and that no packet over the MTU crossed the devices.
func TestOffloadLargeTransfer(t *testing.T) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 256 << 20
	}
	if raceEnabled {
		size = 32 << 20
	}
	p := newBatchPair(t, true)
	l, err := p.b.ListenTCP(7300)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		n   int64
		sum []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		got <- result{n, h.Sum(nil), err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.a.DialContext(ctx, "tcp", "100.64.0.2:7300")
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	// A random 1 MiB block, stamped with its index each time it is sent,
	// so that reordered or repeated blocks change the hash.
	block := make([]byte, 1<<20)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(block)
	h := sha256.New()
	start := time.Now()
	for i := int64(0); i*int64(len(block)) < size; i++ {
		binary.BigEndian.PutUint64(block, uint64(i))
		h.Write(block)
		if _, err := c.Write(block); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	c.Close()
	res := <-got
	elapsed := time.Since(start)
	if res.err != nil || res.n != size {
		t.Fatalf("received %d of %d bytes: %v", res.n, size, res.err)
	}
	if !bytes.Equal(res.sum, h.Sum(nil)) {
		t.Fatal("received data differs from what was sent")
	}
	sa, sb := &userDev(p.a).stats, &userDev(p.b).stats
	t.Logf("%d MiB in %v (%.0f Mbit/s); A split %d segments into %d packets; B merged %d packets into %d segments; link A→B %d packets in %d batches",
		size>>20, elapsed.Round(time.Millisecond), float64(size*8)/elapsed.Seconds()/1e6,
		sa.splitSegments.Load(), sa.splitPackets.Load(), sb.mergedPackets.Load(), sb.merges.Load(), p.ab.packets.Load(), p.ab.batches.Load())
	if sa.splitSegments.Load() == 0 || sb.merges.Load() == 0 {
		t.Error("offload did not engage: no segment split or merged")
	}
	if m := p.ab.maxSize.Load(); m > DefaultMTU {
		t.Errorf("packet of %d bytes crossed the devices", m)
	}
}

// verdictLog records the verdicts of a rule filter per stack, direction,
// protocol, port and kind of packet, and the largest packet judged.
type verdictLog struct {
	mu      sync.Mutex
	seen    map[string]map[Verdict]bool
	maxSize int
}

// packetKind classifies an IPv4 packet for the verdict log: protocol,
// overlay port (the lower of the two, the services' ports being below the
// ephemeral range) and, for TCP, SYN/FIN/RST/DATA/ACK.
func packetKind(pkt []byte) string {
	ipLen := int(pkt[0]&0xf) * 4
	if len(pkt) < ipLen+4 {
		return "short"
	}
	sport, dport := binary.BigEndian.Uint16(pkt[ipLen:]), binary.BigEndian.Uint16(pkt[ipLen+2:])
	port := min(sport, dport)
	switch pkt[9] {
	case 17:
		return fmt.Sprintf("udp/%d", port)
	case 6:
		flags := pkt[ipLen+13]
		hdr := ipLen + int(pkt[ipLen+12]>>4)*4
		kind := "ACK"
		switch {
		case flags&tcpSYN != 0:
			kind = "SYN"
		case flags&tcpRST != 0:
			kind = "RST"
		case flags&tcpFIN != 0:
			kind = "FIN"
		case len(pkt) > hdr:
			kind = "DATA"
		}
		return fmt.Sprintf("tcp/%d/%s", port, kind)
	}
	return fmt.Sprintf("proto%d", pkt[9])
}

// rules is the verdict table the firewall test applies in both directions
// of both stacks: it reads ports, flags and length, the fields a split or
// merged packet would change.
func rules(pkt []byte) Verdict {
	ipLen := int(pkt[0]&0xf) * 4
	if len(pkt) < ipLen+4 || (pkt[9] == 6 && len(pkt) < ipLen+20) {
		return Accept
	}
	dport := binary.BigEndian.Uint16(pkt[ipLen+2:])
	sport := binary.BigEndian.Uint16(pkt[ipLen:])
	switch {
	case pkt[9] == 6 && dport == 7402: // TCP service closed
		return Drop
	case pkt[9] == 17 && dport == 7405: // UDP service closed
		return Drop
	case pkt[9] == 6 && (dport == 7407 || sport == 7407) && len(pkt) > 1000: // small packets only
		return Drop
	case pkt[9] == 6 && (dport == 7408 || sport == 7408) && pkt[ipLen+13]&tcpFIN != 0: // no FIN
		return Drop
	}
	return Accept
}

func (v *verdictLog) filter(who string) Filter {
	return FilterFunc(func(pkt []byte) Verdict {
		verdict := rules(pkt)
		key := who + " " + packetKind(pkt)
		v.mu.Lock()
		if v.seen[key] == nil {
			v.seen[key] = map[Verdict]bool{}
		}
		v.seen[key][verdict] = true
		v.maxSize = max(v.maxSize, len(pkt))
		v.mu.Unlock()
		return verdict
	})
}

func (v *verdictLog) String() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var lines []string
	for k, set := range v.seen {
		var vs []string
		for _, x := range []Verdict{Accept, Drop} {
			if set[x] {
				vs = append(vs, x.String())
			}
		}
		lines = append(lines, fmt.Sprintf("%s: %v", k, vs))
	}
	sort.Strings(lines)
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// firewallFlows runs the test's flows over p and returns each one's
// outcome.
func firewallFlows(t *testing.T, p *batchPair) map[string]string {
	out := map[string]string{}
	// quiet waits until no packet has crossed the links for 300ms (at most
	// 3s), so that a flow's closing packets are judged before the next
	// flow, and before the stacks close.
	quiet := func() {
		last, since := int64(-1), time.Now()
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			n := p.ab.packets.Load() + p.ba.packets.Load()
			if n != last {
				last, since = n, time.Now()
			} else if time.Since(since) > 300*time.Millisecond {
				return
			}
		}
	}
	// tcpFlow sends size bytes to port and closes its side. With
	// sentFirst, it waits until the data went out (the links are quiet)
	// before it closes: gVisor sends the FIN on its own then, and not
	// on the last data segment, as it may when the close comes before
	// that segment left; the flow's packets do not then depend on timing.
	tcpFlow := func(port uint16, size int, sentFirst bool) string {
		l, err := p.b.ListenTCP(port)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		recv := make(chan string, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				recv <- "no accept"
				return
			}
			c.SetDeadline(time.Now().Add(2 * time.Second))
			n, err := io.Copy(io.Discard, c)
			c.Close()
			recv <- fmt.Sprintf("received %d, EOF %v", n, err == nil)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		c, err := p.a.DialContext(ctx, "tcp", netip.AddrPortFrom(addrB, port).String())
		if err != nil {
			return "dial failed"
		}
		c.Write(make([]byte, size))
		if sentFirst {
			quiet()
		}
		c.(*TCPConn).CloseWrite()
		res := <-recv
		c.Close()
		quiet()
		return res
	}
	udpFlow := func(port uint16) string {
		srv, err := p.b.ListenUDP(port)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		go func() {
			buf := make([]byte, 2000)
			for {
				n, from, err := srv.ReadFrom(buf)
				if err != nil {
					return
				}
				srv.WriteTo(buf[:n], from)
			}
		}()
		c, err := p.a.DialContext(context.Background(), "udp", netip.AddrPortFrom(addrB, port).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		var buf [16]byte
		res := "no echo"
		if n, err := c.Read(buf[:]); err == nil {
			res = "echo " + string(buf[:n])
		}
		quiet()
		return res
	}
	out["tcp bulk 7401"] = tcpFlow(7401, 3<<20, false)
	out["tcp closed 7402"] = tcpFlow(7402, 100, false)
	out["tcp small 7403"] = tcpFlow(7403, 100, true) // its one data packet stays DATA, not FIN
	out["udp 7404"] = udpFlow(7404)
	out["udp closed 7405"] = udpFlow(7405)
	// Its data never arrives (every data packet is over the size the
	// rule allows): whether the FIN rides on the last of them (dropped)
	// or goes alone (accepted) must not depend on timing.
	out["tcp small packets only 7407"] = tcpFlow(7407, 8*1228, true)
	out["tcp no FIN 7408"] = tcpFlow(7408, 1<<20, false)
	return out
}

// TestOffloadFirewallVerdicts runs a table of flows through two stacks
// whose hooks apply the same rules, once with offload and once without, and
// checks that the outcomes and the verdicts (per stack, direction, flow and
// kind of packet) are identical, and that the hooks only ever judged
// packets of at most the MTU: offload is invisible to the firewall.
func TestOffloadFirewallVerdicts(t *testing.T) {
	run := func(offload bool) (map[string]string, *verdictLog) {
		p := newBatchPair(t, offload)
		v := &verdictLog{seen: map[string]map[Verdict]bool{}}
		p.a.SetHooks(Hooks{Inbound: v.filter("A in "), Outbound: v.filter("A out")})
		p.b.SetHooks(Hooks{Inbound: v.filter("B in "), Outbound: v.filter("B out")})
		out := firewallFlows(t, p)
		if offload && userDev(p.a).stats.splitSegments.Load() == 0 {
			t.Error("offload on, but no segment was split")
		}
		return out, v
	}
	withOut, vOff := run(false)
	withOn, vOn := run(true)
	want := map[string]string{
		"tcp bulk 7401":               fmt.Sprintf("received %d, EOF true", 3<<20),
		"tcp closed 7402":             "dial failed",
		"tcp small 7403":              "received 100, EOF true",
		"udp 7404":                    "echo ping",
		"udp closed 7405":             "no echo",
		"tcp small packets only 7407": "received 0, EOF false",
		"tcp no FIN 7408":             fmt.Sprintf("received %d, EOF false", 1<<20),
	}
	for k, w := range want {
		if withOut[k] != w {
			t.Errorf("without offload, %s: %q, want %q", k, withOut[k], w)
		}
		if withOn[k] != withOut[k] {
			t.Errorf("%s: with offload %q, without %q", k, withOn[k], withOut[k])
		}
	}
	if a, b := vOff.String(), vOn.String(); a != b {
		t.Errorf("verdicts differ.\nwithout offload:\n%s\nwith offload:\n%s", a, b)
	}
	for name, v := range map[string]*verdictLog{"without": vOff, "with": vOn} {
		if v.maxSize > DefaultMTU {
			t.Errorf("%s offload: a hook judged a %d-byte packet", name, v.maxSize)
		}
	}
	t.Logf("verdicts:\n%s", vOn)
}
