package overlay

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/handshake"
)

// orderedKeys returns two key sets, the first with the lower WireGuard
// key (the one that admits first when both sides want each other).
func orderedKeys(t *testing.T) (low, high keys) {
	t.Helper()
	low, high = newKeys(t), newKeys(t)
	if bytes.Compare(low.wgPub[:], high.wgPub[:]) > 0 {
		low, high = high, low
	}
	return low, high
}

// TestWantWaitsWhileAnswering: a node that wants a peer with a lower key
// (the peer admits first) and is answering a handshake from one of the
// peer's endpoints (the peer is admitting it) starts no admission of its
// own while that handshake is open: it would cross it. Once the
// handshake is over (here it expires: its last message never comes) the
// node admits the peer itself.
func TestWantWaitsWhileAnswering(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	low, high := orderedKeys(t)
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{keys: &high})
	peer, err := f.pool.VerifyDER(f.issue("b", low, "100.64.0.2", time.Hour).Raw, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// The peer's endpoint: it sends a its first message and then nothing.
	sock, ep := silentEndpoint(t)
	_, msg1 := msg1With(t, 7)
	if _, err := sock.WriteToUDPAddrPort(msg1, a.ep); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	sock.SetReadDeadline(time.Now().Add(sessionTimeout))
	n, err := readFromPeer(sock, a.ep, buf)
	if err != nil {
		t.Fatal(err)
	}
	if m := mustParseMessage(t, buf[:n]); m.Kind != handshake.KindResponse {
		t.Fatalf("a answered the first message with kind %d, want msg2", m.Kind)
	}
	answered := time.Now()
	if !a.Responding(ep) {
		t.Fatal("a does not report the handshake it answers")
	}
	a.Want(peer, []netip.AddrPort{ep})
	// Nothing from a while its answer is open (a margin before it
	// expires, for a loaded machine's timers).
	open := a.halfOpenTTL - time.Second
	sock.SetReadDeadline(answered.Add(open))
	if n, err := readFromPeer(sock, a.ep, buf); err == nil {
		t.Fatalf("a sent % x %v after it answered the peer's handshake, while that was open", buf[:min(n, 2)], time.Since(answered))
	}
	// Then its own admission: a msg1.
	sock.SetReadDeadline(time.Now().Add(sessionTimeout))
	n, err = readFromPeer(sock, a.ep, buf)
	if err != nil {
		t.Fatalf("a never admitted the peer after the handshake it answered was over: %v", err)
	}
	if m := mustParseMessage(t, buf[:n]); m.Kind != handshake.KindInit {
		t.Fatalf("a sent kind %d, want its msg1", m.Kind)
	}
}

// identityOf is n's verified identity.
func identityOf(t *testing.T, f *fixture, n *node) *cert.Identity {
	t.Helper()
	return peerOf(t, f, n).Identity
}

// TestWantBothSides: two nodes that want each other (as gossip makes
// them) get one working session, the lower key admitting; a leave
// removes the peer from the device at once, and a new Want brings it
// back.
func TestWantBothSides(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	low, high := orderedKeys(t)
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{keys: &low})
	b := startNode(t, f, "b", "100.64.0.2", nodeOpts{keys: &high})
	a.Want(identityOf(t, f, b), []netip.AddrPort{b.ep})
	b.Want(identityOf(t, f, a), []netip.AddrPort{a.ep})
	waitFor(t, sessionTimeout, "both admitted", func() bool { return a.HasPeer(high.wgPub) && b.HasPeer(low.wgPub) })
	if err := exchange(t, a, b, 7200, []byte("wanted"), exchangeTimeout); err != nil {
		t.Fatal(err)
	}
	if a.Stats().Initiated == 0 {
		t.Error("the lower key did not admit")
	}

	b.PeerLeft(low.wgPub)
	if b.HasPeer(low.wgPub) {
		t.Fatal("a peer that left is still admitted")
	}
	cfg, err := b.WireGuardConfig()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(cfg, hex.EncodeToString(low.wgPub[:])) {
		t.Fatal("a peer that left is still in the device")
	}
	// Its record comes back (it rejoined): wanted again.
	b.Want(identityOf(t, f, a), []netip.AddrPort{a.ep})
	waitFor(t, sessionTimeout, "admitted again", func() bool { return b.HasPeer(low.wgPub) })
	if err := exchange(t, b, a, 7201, []byte("back"), exchangeTimeout); err != nil {
		t.Fatal(err)
	}
}

// TestStaticPeerBackAfterLeave: a static peer that signed its leave (a
// restart) is removed at once and admitted again once it answers.
func TestStaticPeerBackAfterLeave(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "b", "100.64.0.2", nodeOpts{})
	bKey := peerOf(t, f, b).Static
	a.AddStaticPeer(b.ep)
	waitFor(t, sessionTimeout, "the static peer admitted", func() bool { return a.HasPeer(bKey) })
	a.PeerLeft(bKey)
	if a.HasPeer(bKey) {
		t.Fatal("a static peer that left is still admitted")
	}
	waitFor(t, sessionTimeout, "the static peer admitted again", func() bool { return a.HasPeer(bKey) })
	if err := exchange(t, a, b, 7202, []byte("static again"), exchangeTimeout); err != nil {
		t.Fatal(err)
	}
}

// TestWantedEndpointOfAnotherNode: a record that names another node's
// endpoint (an address reused, or an insider's lie) does not get that
// node admitted again, nor its working session restarted.
func TestWantedEndpointOfAnotherNode(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "b", "100.64.0.2", nodeOpts{})
	admit(t, a, b)
	bKey := peerOf(t, f, b).Static
	awaitSession(t, a, bKey, time.Time{}, time.Now().Add(sessionTimeout), "no session after admission")
	st, err := a.wgStats()
	if err != nil {
		t.Fatal(err)
	}
	first := st[bKey].lastHandshake
	completed := b.Stats().Completed
	m := newKeys(t)
	liar, err := f.pool.VerifyDER(f.issue("m", m, "100.64.0.3", time.Hour).Raw, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a.Want(liar, []netip.AddrPort{b.ep})
	// Long enough for a yield, a try, and a retry after its backoff.
	time.Sleep(4 * time.Second)
	if got := b.Stats().Completed; got != completed {
		t.Fatalf("b completed %d admissions for a record naming its endpoint", got-completed)
	}
	if st, err = a.wgStats(); err != nil || !st[bKey].lastHandshake.Equal(first) {
		t.Fatalf("b's session was restarted for a record naming its endpoint: %v", err)
	}
	if a.HasPeer(m.wgPub) {
		t.Fatal("a node that never answered is admitted")
	}
}
