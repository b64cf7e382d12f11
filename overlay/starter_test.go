package overlay

import (
	"net/netip"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
)

// twoNodes starts two nodes that know nothing of each other, and returns
// how to name each as a handshake peer.
func twoNodes(t *testing.T) (a, b *node, idOf func(*node) *handshake.Peer) {
	t.Helper()
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a = startNode(t, f, "a", "100.64.0.1", nodeOpts{})
	b = startNode(t, f, "b", "100.64.0.2", nodeOpts{})
	idOf = func(n *node) *handshake.Peer {
		id, err := f.pool.VerifyDER(n.der, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return &handshake.Peer{Identity: id, Static: id.WireGuardKey}
	}
	return a, b, idOf
}

// TestNonStarterStartsAfterGrace: two nodes that both admitted each other
// as the side that does not start the session (no endpoint given to
// WireGuard) would never get a session; after starterGrace each starts it
// itself, and the session forms.
func TestNonStarterStartsAfterGrace(t *testing.T) {
	a, b, idOf := twoNodes(t)
	since := time.Now().Add(-sessionSlack)
	if err := a.admit(idOf(b), b.ep, false, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.admit(idOf(a), a.ep, false, 0); err != nil {
		t.Fatal(err)
	}
	bKey := idOf(b).Static
	time.Sleep(starterGrace / 2)
	if st, _ := a.wgStats(); st[bKey] != nil && !st[bKey].lastHandshake.IsZero() {
		t.Fatal("a session formed before the grace, with no side starting it")
	}
	deadline := time.Now().Add(2*starterGrace + 10*time.Second)
	for !a.sessionSeen(bKey, since) {
		if time.Now().After(deadline) {
			t.Fatal("no session after the grace: neither non-starter started it")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := exchange(t, a, b, 7001, []byte("after grace"), 5*time.Second); err != nil {
		t.Fatalf("traffic after the late session: %v", err)
	}
}

// TestTakeOverStartsAtOnce: a node that admitted a peer as the side that
// does not start the session, and then admits it again as the starter,
// sends the initiation at once, even though a packet meanwhile made
// WireGuard try (and fail, without an endpoint) an initiation of its own,
// which holds back the next one for WireGuard's 5 s retry.
func TestTakeOverStartsAtOnce(t *testing.T) {
	a, b, idOf := twoNodes(t)
	if err := a.admit(idOf(b), b.ep, false, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.admit(idOf(a), a.ep, false, 0); err != nil {
		t.Fatal(err)
	}
	// A packet from a to b: a's WireGuard tries an initiation, which
	// fails for want of an endpoint.
	c, err := a.net.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(b.addr, 7002))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("no session yet")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	since := time.Now().Add(-sessionSlack)
	start := time.Now()
	if err := a.admit(idOf(b), b.ep, true, 0); err != nil {
		t.Fatal(err)
	}
	bKey := idOf(b).Static
	// Well before the starter kick (which would also heal it) and
	// WireGuard's 5 s retry.
	deadline := start.Add(starterKick - 300*time.Millisecond)
	for !a.sessionSeen(bKey, since) {
		if time.Now().After(deadline) {
			t.Fatalf("no session %v after taking the start over", time.Since(start))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
