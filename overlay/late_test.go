package overlay

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// delayRelay forwards UDP between a client and a target on 127.0.0.1:
// client to target at once, target to client after delay (a loaded
// target: its answers come late). The target sees the relay's own socket
// as the client.
type delayRelay struct {
	front, back *net.UDPConn
	addr        netip.AddrPort // where the client sends
	mu          sync.Mutex
	client      netip.AddrPort
	wg          sync.WaitGroup
}

func newDelayRelay(t *testing.T, target netip.AddrPort, delay time.Duration) *delayRelay {
	t.Helper()
	front, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &delayRelay{front: front, back: back, addr: front.LocalAddr().(*net.UDPAddr).AddrPort()}
	r.wg.Add(2)
	go func() { // client → target
		defer r.wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := front.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			if !r.client.IsValid() {
				r.client = from // the relay's one client: the first to send
			}
			ours := r.client == from
			r.mu.Unlock()
			if ours {
				_, _ = back.WriteToUDPAddrPort(buf[:n], target)
			}
		}
	}()
	go func() { // target → client, late
		defer r.wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := back.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if from != target {
				continue // not from the target: another process's leftover
			}
			pkt := append([]byte(nil), buf[:n]...)
			r.mu.Lock()
			to := r.client
			r.mu.Unlock()
			time.AfterFunc(delay, func() { _, _ = front.WriteToUDPAddrPort(pkt, to) })
		}
	}()
	t.Cleanup(func() {
		front.Close()
		back.Close()
		r.wg.Wait()
		time.Sleep(delay) // let the last delayed writes fail on the closed socket
	})
	return r
}

// TestLateAnswerCompletesTheAttempt: a responder whose msg2 comes late
// (an overloaded node) is admitted by the attempt it answered. The
// initiator starts no second attempt, which would cost the responder a
// second answer while the first is on its way.
func TestLateAnswerCompletesTheAttempt(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "b", "100.64.0.2", nodeOpts{})
	// Later than the second an attempt used to wait, and far enough
	// within AttemptTimeout that a loaded machine does not push it out.
	relay := newDelayRelay(t, b.ep, 1500*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 3*AttemptTimeout)
	defer cancel()
	id, err := a.Admit(ctx, relay.addr)
	if err != nil {
		t.Fatalf("admission through a slow responder: %v", err)
	}
	if id.Name != b.name {
		t.Fatalf("admitted %q, want %q", id.Name, b.name)
	}
	if st := a.Stats(); st.Initiated != 1 || st.Timeouts != 0 {
		t.Fatalf("%d attempts, %d timed out (%+v): want the first attempt to take the late msg2", st.Initiated, st.Timeouts, st)
	}
	if st := b.Stats(); st.Responded != 1 {
		t.Fatalf("the responder answered %d msg1s with a new handshake, want 1", st.Responded)
	}
}

// TestRespondingWhileHandshakeOpen: Responding reports an unexpired
// half-open handshake from the endpoint, and nothing else.
func TestRespondingWhileHandshakeOpen(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{})
	from := netip.MustParseAddrPort("127.0.0.1:40000")
	if a.Responding(from) {
		t.Fatal("responding with no handshake open")
	}
	a.hsMu.Lock()
	a.halfOpen[7] = &halfOpenState{from: from, expires: time.Now().Add(time.Minute)}
	a.halfOpen[8] = &halfOpenState{from: netip.MustParseAddrPort("127.0.0.1:40001"), expires: time.Now().Add(-time.Second)}
	a.hsMu.Unlock()
	if !a.Responding(from) {
		t.Fatal("not responding with a handshake open from the endpoint")
	}
	if a.Responding(netip.MustParseAddrPort("127.0.0.1:40001")) {
		t.Fatal("responding for an expired handshake")
	}
	if a.Responding(netip.MustParseAddrPort("127.0.0.1:40002")) {
		t.Fatal("responding for another endpoint")
	}
}
