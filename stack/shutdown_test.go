package stack

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// dropSynAck drops TCP SYN-ACK segments, leaving the listener's connections
// half-open (SYN-RCVD, retransmitting their SYN-ACK on a timer) and the
// dialer's in SYN-SENT (retransmitting the SYN).
var dropSynAck = FilterFunc(func(pkt []byte) Verdict {
	var tcp []byte
	switch pkt[0] >> 4 {
	case 4:
		if pkt[9] != 6 {
			return Accept
		}
		tcp = pkt[int(pkt[0]&0x0f)*4:]
	case 6:
		if pkt[6] != 6 {
			return Accept
		}
		tcp = pkt[40:]
	}
	if len(tcp) >= 14 && tcp[13]&0x12 == 0x12 {
		return Drop
	}
	return Accept
})

// halfOpenClose builds a userspace pair whose A side keeps dialing B's
// listener with short timeouts while SYN-ACKs are dropped, lets TCP timers
// pile up, then closes both stacks while dials and retransmission timers are
// still running. With wireguard-go's netstack device this raced (close of
// the outbound channel vs. a send from a timer-driven write) and could panic
// with "send on closed channel".
func halfOpenClose(t *testing.T, withLink bool) {
	const port = 7020
	a, err := New(Config{Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/10")}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/10")}, Logger: quiet})
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	var ab, ba *link
	if withLink {
		ab, ba = startLink(t, a.Device(), b.Device()), startLink(t, b.Device(), a.Device())
	}
	// Without a link nobody reads the devices (as when WireGuard has already
	// stopped): gVisor's outbound queue fills and must not block shutdown.
	a.SetHooks(Hooks{Inbound: dropSynAck})
	l, err := b.ListenTCP(port)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	stop := make(chan struct{})
	var dialers sync.WaitGroup
	for range 32 {
		dialers.Add(1)
		go func() {
			defer dialers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				d := time.Duration(10+rand.IntN(90)) * time.Millisecond
				ctx, cancel := context.WithTimeout(context.Background(), d)
				c, err := a.DialContext(ctx, "tcp", netip.AddrPortFrom(addrB, port).String())
				cancel()
				if err == nil {
					c.Close() // a SYN-ACK got through (it cannot, but harmless)
				} else if errors.Is(err, ErrClosed) {
					return
				}
			}
		}()
	}
	// Long enough for the first SYN / SYN-ACK retransmissions (1s RTO) to
	// fire while later connections are still being opened.
	time.Sleep(1200 * time.Millisecond)

	// Inbound packets that the stacks answer synchronously from the
	// writing goroutine (ICMP port unreachable for UDP to a closed port),
	// as a peer's traffic does while a node shuts down.
	for _, to := range []struct {
		s        *Stack
		src, dst netip.Addr
	}{{a, addrB, addrA}, {b, addrA, addrB}} {
		dialers.Add(1)
		go func() {
			defer dialers.Done()
			probe := withOffset(udpProbe(to.src, to.dst, 9), testOffset, 0)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := to.s.Device().Write([][]byte{probe}, testOffset); err != nil {
					return
				}
				time.Sleep(100 * time.Microsecond)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	if withLink && a.Counters().Inbound.DroppedPackets == 0 {
		t.Error("no SYN-ACK was dropped: the test left no connection half-open")
	}
	// Close both stacks concurrently, with the dialers still running.
	var closers sync.WaitGroup
	for _, s := range []*Stack{a, b} {
		closers.Add(1)
		go func() {
			defer closers.Done()
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}()
	}
	closers.Wait()
	close(stop)
	dialers.Wait()
	l.Close()
	if withLink {
		ab.wait(t)
		ba.wait(t)
	}
	// A closed device fails cleanly.
	bufs, sizes := [][]byte{make([]byte, testOffset+MaxMTU)}, []int{0}
	if _, err := a.Device().Read(bufs, sizes, testOffset); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close: %v, want os.ErrClosed", err)
	}
	pkt := withOffset(mkPacket(addrB, addrA, 1, 60), testOffset, 0)
	if _, err := a.Device().Write([][]byte{pkt}, testOffset); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close: %v, want os.ErrClosed", err)
	}
}

// udpProbe returns an IPv4/UDP packet from src to dst:port with a valid
// header checksum (UDP checksum 0: none) and 8 bytes of payload.
func udpProbe(src, dst netip.Addr, port uint16) []byte {
	p := mkPacket(src, dst, 0, 36)
	binary.BigEndian.PutUint16(p[20:], 40000)
	binary.BigEndian.PutUint16(p[22:], port)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	return p
}

// TestCloseWithHalfOpenConnections is the regression test for the shutdown
// race: Close while TCP timers fire, with and without a reader on the
// devices; no race, no panic, no goroutine left behind.
func TestCloseWithHalfOpenConnections(t *testing.T) {
	for _, tc := range []struct {
		name     string
		withLink bool
	}{{"link", true}, {"no-reader", false}} {
		t.Run(tc.name, func(t *testing.T) {
			halfOpenClose(t, tc.withLink) // warm up package-level state
			settle(runtime.NumGoroutine(), time.Second)
			base := runtime.NumGoroutine()
			halfOpenClose(t, tc.withLink)
			if n := settle(base, 5*time.Second); n > base {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines after Close, baseline %d:\n%s", n, base, buf[:runtime.Stack(buf, true)])
			}
		})
	}
}

// TestNetstackDevCloseDuringTraffic closes a device while a reader, writers
// and TCP timers are active, and checks Read and Write end with
// os.ErrClosed.
func TestNetstackDevCloseDuringTraffic(t *testing.T) {
	p := newPair(t, 0)
	l, err := p.b.ListenTCP(7021)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 32<<10)
				for {
					if _, err := c.Read(buf); err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.a.DialContext(context.Background(), "tcp", netip.AddrPortFrom(addrB, 7021).String())
			if err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 32<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if err := p.a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.b.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}
