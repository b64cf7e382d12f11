package overlay

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
	"github.com/aigrid/gridnet/overlay/internal/session"
)

// nonStarters starts two nodes that admit each other as the side that
// does not start the session (neither gives WireGuard an endpoint), and
// returns how to name each as a handshake peer.
func nonStarters(t *testing.T, timers ...func(*session.Timers)) (a, b *node, idOf func(*node) *handshake.Peer) {
	t.Helper()
	return nonStartersWith(t, timers, timers)
}

// nonStartersWith is nonStarters with timers of each node's own.
func nonStartersWith(t *testing.T, timersA, timersB []func(*session.Timers)) (a, b *node, idOf func(*node) *handshake.Peer) {
	t.Helper()
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a = startNode(t, f, "a", "100.64.0.1", nodeOpts{timers: timersA})
	b = startNode(t, f, "b", "100.64.0.2", nodeOpts{timers: timersB})
	idOf = func(n *node) *handshake.Peer {
		id, err := f.pool.VerifyDER(n.der, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return &handshake.Peer{Identity: id, Static: id.WireGuardKey}
	}
	if err := a.admit(idOf(b), b.ep, false, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.admit(idOf(a), a.ep, false, 0); err != nil {
		t.Fatal(err)
	}
	return a, b, idOf
}

// TestNonStarterStartsAfterGrace: two nodes that both admitted each other
// as the side that does not start the session (no endpoint given to
// WireGuard) would never get a session; after the grace a takes the start
// over, and the session forms. (b's grace is off: two take-overs at once
// cross, and their session may need WireGuard's 5 s retry, after the
// session rules give a late take-over up.)
func TestNonStarterStartsAfterGrace(t *testing.T) {
	since := time.Now().Add(-time.Second)
	a, b, idOf := nonStartersWith(t, nil, []func(*session.Timers){noGrace})
	bKey := idOf(b).Static
	time.Sleep(a.timers.Grace / 2)
	if st, _ := a.wgStats(); st[bKey] != nil && !st[bKey].lastHandshake.IsZero() {
		t.Fatal("a session formed before the grace, with no side starting it")
	}
	deadline := time.Now().Add(2*a.timers.Grace + sessionTimeout)
	awaitSession(t, a, bKey, since, deadline, "no session after the grace: neither non-starter started it")
	if err := exchange(t, a, b, 7001, []byte("after grace"), exchangeTimeout); err != nil {
		t.Fatalf("traffic after the late session: %v", err)
	}
}

// TestTakeOverStartsAtOnce: a node that admitted a peer as the side that
// does not start the session, and then admits it again as the starter,
// sends the initiation at once, even though a packet meanwhile made
// WireGuard try (and fail, without an endpoint) an initiation of its own,
// which holds back the next one for WireGuard's 5 s retry.
func TestTakeOverStartsAtOnce(t *testing.T) {
	a, b, idOf := nonStarters(t, noKick, noGrace)
	failedTry(t, a, b)
	since := time.Now().Add(-time.Second)
	if err := a.admit(idOf(b), b.ep, true, 0); err != nil {
		t.Fatal(err)
	}
	// The kick and the grace are off; before WireGuard's 5 s retry.
	awaitSession(t, a, idOf(b).Static, since, time.Now().Add(beforeWireGuardRetry),
		"no session soon after taking the start over")
}

// TestGraceStartsDespiteFailedTry: when the grace runs out, the node that
// was not to start the session starts it at once, even though a packet
// meanwhile made WireGuard try (and fail, without an endpoint) an
// initiation, which holds back the next one for WireGuard's 5 s retry.
//
// What tells "at once" from WireGuard's retry is when a's first
// initiation leaves: within the grace (1 s, no jitter) and well before
// the retry. The session that follows is then awaited without a bound
// that a loaded machine could miss.
func TestGraceStartsDespiteFailedTry(t *testing.T) {
	const grace = time.Second
	graceNoJitter := func(t *session.Timers) {
		t.Grace = grace
		t.Jitter = func(time.Duration) time.Duration { return 0 }
	}
	// b's grace is off: two take-overs at once would cross.
	a, b, idOf := nonStartersWith(t, []func(*session.Timers){noKick, graceNoJitter}, []func(*session.Timers){noKick, noGrace})
	failedTry(t, a, b)
	tried := time.Now() // WireGuard holds its next initiation until tried + 5 s
	since := tried.Add(-time.Second)
	// a sends no initiation before its take-over: it has no endpoint for
	// b, and the failed try never reaches the socket.
	for a.bind.initiationsSent.Load() == 0 {
		if time.Since(tried) > beforeWireGuardRetry {
			t.Fatal("no initiation soon after the grace ran out: the take-over waited for WireGuard's retry")
		}
		time.Sleep(5 * time.Millisecond)
	}
	awaitSession(t, a, idOf(b).Static, since, time.Now().Add(sessionTimeout), "no session after the take-over's initiation")
}

// failedTry sends a packet from a to b while a's WireGuard has no endpoint
// for b: WireGuard tries an initiation, which fails, and holds the next
// one back for its 5 s retry.
func failedTry(t *testing.T, a, b *node) {
	t.Helper()
	c, err := a.net.DialContext(context.Background(), "udp", netip.AddrPortFrom(b.addr, 7002).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("no session yet")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
}
