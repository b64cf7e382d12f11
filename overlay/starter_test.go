package overlay

import (
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
)

// TestNonStarterStartsAfterGrace: two nodes that both admitted each other
// as the side that does not start the session (no endpoint given to
// WireGuard) would never get a session; after starterGrace each starts it
// itself, and the session forms.
func TestNonStarterStartsAfterGrace(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "b", "100.64.0.2", nodeOpts{})
	idOf := func(n *node) *handshake.Peer {
		id, err := f.pool.VerifyDER(n.der, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return &handshake.Peer{Identity: id, Static: id.WireGuardKey}
	}
	since := time.Now().Add(-sessionSlack)
	if err := a.admit(idOf(b), b.ep, false); err != nil {
		t.Fatal(err)
	}
	if err := b.admit(idOf(a), a.ep, false); err != nil {
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
