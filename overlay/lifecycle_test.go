package overlay

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// udp4 builds an IPv4/UDP packet with valid header and UDP checksums.
func udp4(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	p := make([]byte, 28+len(payload))
	p[0], p[8], p[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:16], s4[:])
	copy(p[16:20], d4[:])
	binary.BigEndian.PutUint16(p[10:], ^csum(0, p[:20]))
	u := p[20:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	pseudo := append(append(append([]byte{}, s4[:]...), d4[:]...), 0, 17, byte(len(u)>>8), byte(len(u)))
	c := ^csum(uint32(csum(0, pseudo)), u)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return p
}

func csum(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

func TestSpoofedSourceDropped(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	victimTUN, attackerTUN := tuntest.NewChannelTUN(), tuntest.NewChannelTUN()
	victim := startNode(t, f, "victim", "100.64.0.1", nodeOpts{tun: victimTUN.TUN()})
	attacker := startNode(t, f, "attacker", "100.64.0.2", nodeOpts{tun: attackerTUN.TUN()})
	admit(t, attacker, victim)

	// Collect everything the victim's WireGuard delivers to its TUN.
	var mu sync.Mutex
	var got [][]byte
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case p, ok := <-victimTUN.Inbound:
				if !ok {
					return
				}
				mu.Lock()
				got = append(got, p)
				mu.Unlock()
			}
		}
	}()
	send := func(p []byte) {
		select {
		case attackerTUN.Outbound <- p:
		case <-time.After(5 * time.Second):
			t.Fatal("attacker TUN not read")
		}
	}
	forgedFrom := netip.MustParseAddr("100.64.0.3") // another overlay address
	for i := range 20 {
		send(udp4(forgedFrom, victim.addr, 4000, 5000, []byte{byte(i), 'f', 'o', 'r', 'g', 'e', 'd'}))
		send(udp4(victim.addr, victim.addr, 4000, 5000, []byte("forged-self")))
	}
	honest := udp4(attacker.addr, victim.addr, 4000, 5000, []byte("honest"))
	send(honest)
	waitFor(t, sessionTimeout, "honest packet delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(got, func(p []byte) bool { return bytes.Equal(p, honest) })
	})
	time.Sleep(300 * time.Millisecond) // anything still in flight
	mu.Lock()
	defer mu.Unlock()
	for _, p := range got {
		if src := netip.AddrFrom4([4]byte(p[12:16])); src != attacker.addr {
			t.Fatalf("victim TUN received a packet from forged source %s", src)
		}
	}
	if len(got) != 1 {
		t.Fatalf("victim TUN received %d packets, want 1", len(got))
	}
}

func TestRevalidateRevoked(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{})
	admit(t, a, b)
	if err := exchange(t, a, b, 7200, []byte("before"), exchangeTimeout); err != nil {
		t.Fatal(err)
	}
	if got := a.Revalidate(time.Now()); len(got) != 0 {
		t.Fatalf("Revalidate removed %v before revocation", got)
	}
	bid, _ := a.IdentityByAddr(b.addr)
	crl, err := f.ca.Revoke(nil, []*big.Int{bid.Serial}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.ApplyCRL(crl, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := a.Revalidate(time.Now()); !slices.Equal(got, []string{"node-b"}) {
		t.Fatalf("Revalidate removed %v, want [node-b]", got)
	}
	if wgPeerKeys(t, a.Overlay)[b.keys.wgPub] {
		t.Fatal("revoked peer still configured in WireGuard")
	}
	if _, ok := a.IdentityByAddr(b.addr); ok || len(a.Peers()) != 0 {
		t.Fatal("revoked peer still in the peer table")
	}
	if err := exchange(t, a, b, 7201, []byte("after"), time.Second); err == nil {
		t.Fatal("traffic still flows to a revoked peer")
	}
	if a.Stats().Removed != 1 {
		t.Fatalf("stats %+v", a.Stats())
	}
}

func TestRevalidateExpiryTimer(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{validity: 3 * time.Second})
	admit(t, a, b)
	id, _ := a.IdentityByAddr(b.addr)
	if time.Until(id.NotAfter) > 4*time.Second {
		t.Fatalf("NotAfter %v too far", id.NotAfter)
	}
	// No explicit Revalidate: the timer at the earliest NotAfter fires.
	waitFor(t, 8*time.Second, "expired peer removed by timer", func() bool {
		return !wgPeerKeys(t, a.Overlay)[b.keys.wgPub]
	})
	if time.Now().Before(id.NotAfter) {
		t.Fatal("peer removed before its certificate expired")
	}
}

func TestRevalidateInjectedClock(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{now: clock})
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{validity: 2 * time.Hour})
	c := startNode(t, f, "node-c", "100.64.0.3", nodeOpts{validity: 6 * time.Hour})
	admit(t, a, b)
	admit(t, a, c)
	offset.Store(int64(3 * time.Hour))
	if got := a.Revalidate(clock()); !slices.Equal(got, []string{"node-b"}) {
		t.Fatalf("Revalidate removed %v, want [node-b]", got)
	}
	keys := wgPeerKeys(t, a.Overlay)
	if keys[b.keys.wgPub] || !keys[c.keys.wgPub] {
		t.Fatalf("WireGuard peers after expiry: %v", keys)
	}
	if err := exchange(t, a, b, 7300, []byte("x"), time.Second); err == nil {
		t.Fatal("traffic still flows to an expired peer")
	}
	if err := exchange(t, a, c, 7301, []byte("y"), exchangeTimeout); err != nil {
		t.Fatal(err)
	}
}

func TestJunkFlood(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{})
	admit(t, a, b)

	const floodCount = 200_000
	sock := udpSender(t)
	var sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		dst := net.UDPAddrFromAddrPort(b.ep)
		buf := make([]byte, handshake.Msg1Size)
		deadline := time.Now().Add(15 * time.Second)
		for i := 0; i < floodCount && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			default:
			}
			rand.Read(buf)
			pkt := buf[:1+i%200]
			switch i % 4 {
			case 1: // handshake-typed garbage: passes the size check
				buf[0], buf[1] = handshake.TypeGridnet, handshake.KindInit
				pkt = buf[:handshake.Msg1Size]
			case 2: // WireGuard-typed garbage
				buf[0], buf[1], buf[2], buf[3] = 1, 0, 0, 0
				pkt = buf[:148]
			case 3:
				if pkt[0] == handshake.TypeGridnet || (pkt[0] >= 1 && pkt[0] <= 4) {
					pkt[0] = 0x99
				}
			}
			sock.WriteToUDP(pkt, dst)
			sent.Add(1)
		}
	}()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 64*1024) // 1 MiB
	err := exchange(t, a, b, 7400, payload, exchangeTimeout)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("exchange under flood (%d junk sent): %v", sent.Load(), err)
	}
	st := b.Stats()
	t.Logf("sent %d junk datagrams; stats %+v", sent.Load(), st)
	if st.Junk == 0 || st.RateLimited == 0 {
		t.Fatalf("flood not accounted: %+v", st)
	}
	if len(b.Peers()) != 1 {
		t.Fatal("flood disturbed the peer table")
	}
}

// TestLimitCountsFirstMessagesOnly: the per-source handshake limit counts
// only first messages. A node whose limit admits one message from an
// address (nodes behind one address share it) still completes the
// handshake it answered: the last message names state it holds.
func TestLimitCountsFirstMessagesOnly(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "b", "100.64.0.2", nodeOpts{rate: 0.01, burst: 1})
	admit(t, a, b)
	// a is done once it sent msg3; b counts the completion when it got it.
	// (RateLimited may count a's resends of its msg1, which are first
	// messages too: the completion is what the limit must not stop.)
	waitFor(t, sessionTimeout, "b completes the handshake it answered", func() bool { return b.Stats().Completed == 1 })
	// A second first message from the same address within the limit's
	// refill time is dropped.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c := startNode(t, f, "c", "100.64.0.3", nodeOpts{})
	if _, err := c.Admit(ctx, b.ep); err == nil {
		t.Fatal("a second handshake from the same address passed a limit of one")
	}
	if b.Stats().RateLimited == 0 {
		t.Fatal("the dropped first message was not counted")
	}
}

// TestHalfOpenTableBounded: initiators that answer cookies (so they pass
// when the node is under load) still get no more than HalfOpenCap
// half-open handshakes.
func TestHalfOpenTableBounded(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{rate: 1e6})
	sock := udpSender(t)
	dst := net.UDPAddrFromAddrPort(a.ep)
	var mu sync.Mutex
	inits := make(map[uint32]*handshake.Initiator)
	done := make(chan struct{})
	go func() { // drain msg2s, answer cookie replies
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, _, err := sock.ReadFromUDP(buf)
			if err != nil {
				return
			}
			m, err := handshake.ParseMessage(buf[:n])
			if err != nil || m.Kind != handshake.KindCookie {
				continue
			}
			mu.Lock()
			init := inits[m.Receiver]
			mu.Unlock()
			c, err := init.OpenCookie(m)
			if err != nil {
				continue
			}
			again, err := init.Msg1WithCookie(c)
			if err == nil {
				sock.WriteToUDP(again, dst)
			}
		}
	}()
	t.Cleanup(func() { sock.Close(); <-done })
	k := newKeys(t)
	cred := handshake.Credentials{StaticPrivate: k.wgPriv, IdentityKey: k.idKey}
	a.hsMu.Lock()
	a.halfOpenTTL = time.Hour  // slow -race runs must not expire entries
	a.halfOpenPerSrc = 1 << 20 // one test socket plays many sources
	a.hsMu.Unlock()
	const chunk = 64 // well below the worker queue, so nothing is dropped there
	for sent := 0; sent < HalfOpenCap+20; {
		for range min(chunk, HalfOpenCap+20-sent) {
			init, msg1, err := handshake.NewInitiator(cred, uint32(sent+1))
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			inits[uint32(sent+1)] = init
			mu.Unlock()
			sock.WriteToUDP(msg1, dst)
			sent++
		}
		waitFor(t, 20*time.Second, "msg1 chunk handled", func() bool {
			s := a.Stats()
			return s.Responded+s.HalfOpenFull+s.QueueFull >= uint64(sent)
		})
	}
	st := a.Stats()
	if st.CookiesSent == 0 {
		t.Fatal("a filling half-open table put the node under no load")
	}
	if st.Responded != HalfOpenCap || st.HalfOpenFull != 20 {
		t.Fatalf("responded %d, refused %d; want %d, 20", st.Responded, st.HalfOpenFull, HalfOpenCap)
	}
	a.hsMu.Lock()
	n := len(a.halfOpen)
	a.hsMu.Unlock()
	if n != HalfOpenCap {
		t.Fatalf("half-open table holds %d", n)
	}
}

// TestHalfOpenPerSource: one source cannot hold more than HalfOpenPerSource
// half-open handshakes, and while it holds them an honest node from
// another address is still admitted.
func TestHalfOpenPerSource(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{rate: 1e6})
	a.hsMu.Lock()
	a.halfOpenTTL = time.Hour
	a.hsMu.Unlock()
	// The flooder sends from 127.0.0.2; the honest node from 127.0.0.1.
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	go func() { // drain msg2s
		buf := make([]byte, 4096)
		for {
			if _, _, err := sock.ReadFromUDP(buf); err != nil {
				return
			}
		}
	}()
	k := newKeys(t)
	cred := handshake.Credentials{StaticPrivate: k.wgPriv, IdentityKey: k.idKey}
	dst := net.UDPAddrFromAddrPort(a.ep)
	const sent = 3 * HalfOpenPerSource
	for i := range sent {
		_, msg1, err := handshake.NewInitiator(cred, uint32(i+1))
		if err != nil {
			t.Fatal(err)
		}
		sock.WriteToUDP(msg1, dst)
	}
	waitFor(t, 20*time.Second, "msg1s handled", func() bool {
		s := a.Stats()
		return s.Responded+s.HalfOpenFull+s.QueueFull >= sent
	})
	if st := a.Stats(); st.Responded != HalfOpenPerSource || st.HalfOpenFull != sent-HalfOpenPerSource {
		t.Fatalf("responded %d, refused %d; want %d, %d", st.Responded, st.HalfOpenFull, HalfOpenPerSource, sent-HalfOpenPerSource)
	}
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{rate: 1e6})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Admit(ctx, a.ep); err != nil {
		t.Fatalf("honest node refused while another source holds its half-open share: %v", err)
	}
}
