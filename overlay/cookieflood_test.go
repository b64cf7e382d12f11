//go:build linux

package overlay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// sinkPort opens a UDP socket on all loopback addresses that nobody
// reads, and returns its port: the synthetic flood sources use it, so
// that what the node sends them is delivered (and dropped when the
// socket is full) rather than answered with ICMP errors.
func sinkPort(tb testing.TB) uint16 {
	tb.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// BenchmarkSpoofedFirstMessages is the CPU a node spends on first
// messages (msg1) from 5,000 spoofed sources, reported as CPU-seconds of
// the whole process per 10,000 messages (cpu-s/10k-msg1):
//
//   - cookies: the node is under load; each message gets a cookie reply
//     and costs nothing else.
//   - no-cookies: each message is answered as it was before cookies: a
//     half-open slot, msg2 with its DH work and signature. The half-open
//     table is emptied between batches, so every message is answered (as
//     a flood below the table's cap is; above it, the table is full and
//     newcomers are refused, which TestFloodFromManySourcesAdmitsNewcomer
//     shows).
//
// The messages are handed to the node's receive path directly, so the
// figure is the node's work only (the kernel's receive work is not in
// it; sending replies is).
func BenchmarkSpoofedFirstMessages(b *testing.B) {
	checkLeaks(b)
	for _, mode := range []struct {
		name string
		load loadMode
	}{{"cookies", loadAlways}, {"no-cookies", loadNever}} {
		b.Run(mode.name, func(b *testing.B) {
			f := newFixture(b, "alpha")
			n := startNode(b, f, "node-b", "100.64.0.2", nodeOpts{rate: 1e9, burst: 1e6})
			n.loadMode.Store(int32(mode.load))
			port := sinkPort(b)
			_, msg1 := msg1With(b, 1)
			const sources = 5000
			const batch = handshakeQueueLen / 2
			b.ReportAllocs()
			start := cpuTime(b)
			i := 0
			for b.Loop() {
				src := floodSource(i % sources)
				msg1[2], msg1[3], msg1[4], msg1[5] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24)|0x80
				for len(n.cookieQ) == cap(n.cookieQ) {
					time.Sleep(time.Millisecond) // every message is answered: wait for room
				}
				n.onGridnet(msg1, netip.AddrPortFrom(src, port))
				i++
				if mode.load == loadNever && i%batch == 0 {
					drainHalfOpen(b, n.Overlay, uint64(i))
				}
			}
			if mode.load == loadNever {
				drainHalfOpen(b, n.Overlay, uint64(i))
			} else {
				waitFor(b, time.Minute, "cookie replies sent", func() bool { return n.Stats().CookiesSent >= uint64(i) })
			}
			used := cpuTime(b) - start
			b.ReportMetric(used.Seconds()*10000/float64(i), "cpu-s/10k-msg1")
			st := n.Stats()
			if mode.load == loadAlways && st.CookiesSent != uint64(i) {
				b.Fatalf("%d cookie replies for %d messages", st.CookiesSent, i)
			}
		})
	}
}

// drainHalfOpen waits until the workers answered want first messages in
// all, then empties the half-open table.
func drainHalfOpen(tb testing.TB, o *Overlay, want uint64) {
	tb.Helper()
	waitFor(tb, time.Minute, "first messages answered", func() bool {
		s := o.Stats()
		return s.Responded+s.HalfOpenFull+s.QueueFull+s.RateLimited >= want
	})
	o.hsMu.Lock()
	for idx := range o.halfOpen {
		o.deleteHalfOpenLocked(idx)
	}
	o.hsMu.Unlock()
}

// BenchmarkAdmitDuringFlood is the time a legitimate newcomer takes to be
// admitted (admit-s on average, max-admit-s the longest; from its first
// message to a confirmed WireGuard session) while first messages from 5,000 sources flood the node as fast
// as one goroutine of this process sends them (flood-msg1/s is the rate
// reached; cookie-drop-share is the share of msg1s without a cookie the
// node left unanswered because its cookie reply queue was full). Each
// newcomer is a new node, holding no cookie. no-cookies is
// the node as it was before cookies; its attempts give up after
// floodAdmitLimit (admitted reports the share admitted).
func BenchmarkAdmitDuringFlood(b *testing.B) {
	checkLeaks(b)
	for _, mode := range []struct {
		name string
		load loadMode
	}{{"cookies", loadAuto}, {"no-cookies", loadNever}} {
		b.Run(mode.name, func(b *testing.B) {
			f := newFixture(b, "alpha")
			y := startNode(b, f, "node-b", "100.64.0.2", nodeOpts{})
			y.loadMode.Store(int32(mode.load))
			fl := startFlood(b, y.ep, 5000, nil)
			floodStart := time.Now()
			waitFor(b, time.Minute, "the flood under way", func() bool { return fl.sent.Load() > 100_000 })
			var total, longest time.Duration
			admitted, i := 0, 0
			for b.Loop() {
				x := startNode(b, f, fmt.Sprintf("newcomer-%d", i), fmt.Sprintf("100.64.1.%d", i%250+1), nodeOpts{})
				ctx, cancel := context.WithTimeout(context.Background(), floodAdmitLimit)
				start := time.Now()
				_, err := x.Admit(ctx, y.ep)
				took := time.Since(start)
				cancel()
				x.Close()
				total += took
				longest = max(longest, took)
				if took > time.Second || err != nil {
					b.Logf("newcomer %d: %v (attempts %d, error %v)", i, took, x.Stats().Initiated, err)
				}
				i++
				if err == nil {
					admitted++
					y.RemovePeer(x.PublicKey(), "next newcomer")
				}
			}
			sent, dur := fl.sent.Load(), time.Since(floodStart)
			fl.halt()
			if st := y.Stats(); st.CookiesSent+st.CookiesDropped > 0 {
				b.ReportMetric(float64(st.CookiesDropped)/float64(st.CookiesSent+st.CookiesDropped), "cookie-drop-share")
			}
			b.ReportMetric(total.Seconds()/float64(i), "admit-s")
			b.ReportMetric(longest.Seconds(), "max-admit-s")
			b.ReportMetric(float64(admitted)/float64(i), "admitted")
			b.ReportMetric(float64(sent)/dur.Seconds(), "flood-msg1/s")
		})
	}
}

// floodAdmitLimit bounds one admission attempt in BenchmarkAdmitDuringFlood.
const floodAdmitLimit = 30 * time.Second

// flood sends first messages to dst from many loopback source addresses
// through one socket (IP_PKTINFO picks each datagram's source address;
// all of 127.0.0.0/8 is local on Linux, so no privilege is needed). The
// messages are genuine msg1s (each would cost the responder its DH work
// and a signature) with a fresh index each. Like a spoofer, the flood
// never reads what comes back, so it never answers a cookie.
type flood struct {
	sock    *net.UDPConn
	msg1s   [][]byte
	sources []netip.Addr
	dst     netip.AddrPort
	sent    atomic.Int64
	errs    atomic.Int64
	stop    chan struct{}
	wg      sync.WaitGroup
}

// floodSource is the i-th flood source address: 127.1.0.0 and up, away
// from 127.0.0.1 where the legitimate nodes are.
func floodSource(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 1 + byte(i>>16), byte(i >> 8), byte(i)})
}

// floodWindow is how many first messages a paced flood keeps ahead of
// the node's receive path: a fraction of a socket's default receive
// buffer, so the kernel drops none of them, nor anything else sent to
// the node meanwhile.
const floodWindow = 64

// startFlood floods dst from sources addresses until the returned flood
// is stopped: as fast as one goroutine can send, or, with paceBy set, as
// fast as paceBy's receive path takes them (at most floodWindow ahead).
// A paced flood tests what the node does with each message rather than
// how many the kernel drops: a machine loaded by other work (or the race
// detector) would otherwise decide which messages of the legitimate node
// get through.
func startFlood(t testing.TB, dst netip.AddrPort, sources int, paceBy *Overlay) *flood {
	t.Helper()
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero, Port: 0})
	if err != nil {
		t.Fatal(err)
	}
	fl := &flood{sock: sock, dst: dst, stop: make(chan struct{})}
	for i := range 64 {
		_, m := msg1With(t, uint32(i+1))
		fl.msg1s = append(fl.msg1s, m)
	}
	for i := range sources {
		fl.sources = append(fl.sources, floodSource(i))
	}
	fl.wg.Add(1)
	go fl.run(paceBy)
	t.Cleanup(func() { fl.halt() })
	return fl
}

// taken counts the first messages o's receive path has dealt with, by
// any outcome (a few in a worker's hands are not counted yet).
func taken(o *Overlay) int64 {
	c := &o.stats
	n := c.junk.Load() + c.rateLimited.Load() + c.halfOpenFull.Load() + c.queueFull.Load() +
		c.responded.Load() + c.cookiesSent.Load() + c.cookiesDropped.Load()
	return int64(n) + int64(len(o.queue)+len(o.cookieQ))
}

func (fl *flood) run(paceBy *Overlay) {
	defer fl.wg.Done()
	oobs := make([][]byte, len(fl.sources))
	for i, a := range fl.sources {
		oobs[i] = (&ipv4.ControlMessage{Src: a.AsSlice()}).Marshal()
	}
	for n := 0; ; n++ {
		if n%16 == 0 {
			select {
			case <-fl.stop:
				return
			default:
			}
			for paceBy != nil && int64(n)-taken(paceBy) > floodWindow {
				select {
				case <-fl.stop:
					return
				case <-time.After(100 * time.Microsecond):
				}
			}
		}
		m := fl.msg1s[n%len(fl.msg1s)]
		m[2], m[3], m[4], m[5] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)|0x80 // a new non-zero index
		if _, _, err := fl.sock.WriteMsgUDPAddrPort(m, oobs[n%len(oobs)], fl.dst); err != nil {
			fl.errs.Add(1)
			continue
		}
		fl.sent.Add(1)
	}
}

// halt stops the flood and closes its socket; it is idempotent.
func (fl *flood) halt() {
	select {
	case <-fl.stop:
		return
	default:
	}
	close(fl.stop)
	fl.wg.Wait()
	fl.sock.Close()
}

// TestFloodFromManySourcesAdmitsNewcomer: while first messages from 5,000
// source addresses flood a node (each source within the per-source limit,
// none answering cookies, paced to what the node takes in: thousands a
// second), a legitimate newcomer is still admitted, by the cookie round
// trip. Before cookies, the flood filled the half-open table and the
// handshake queue, and the newcomer got nothing but busy refusals for the
// whole flood. (BenchmarkAdmitDuringFlood floods at full speed.)
func TestFloodFromManySourcesAdmitsNewcomer(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{})
	fl := startFlood(t, b.ep, 5000, b.Overlay)
	// Enough to fill the half-open table twice over, had cookies not
	// stopped the flood before it.
	waitFor(t, time.Minute, "the flood under way", func() bool { return taken(b.Overlay) > 2*HalfOpenCap })

	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := a.Admit(ctx, b.ep); err != nil {
		t.Fatalf("newcomer kept out by the flood (%d first messages sent): %v; b: %+v", fl.sent.Load(), err, b.Stats())
	}
	took := time.Since(start)
	fl.halt()
	st := b.Stats()
	t.Logf("admitted in %v during a flood of %d first messages (%d send errors); b: %+v", took, fl.sent.Load(), fl.errs.Load(), st)
	if st.CookiesSent == 0 {
		t.Fatal("b sent no cookie under the flood")
	}
	if len(b.Peers()) != 1 {
		t.Fatalf("b has %d peers", len(b.Peers()))
	}
}
