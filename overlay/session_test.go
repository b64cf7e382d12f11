package overlay

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
	"github.com/aigrid/gridnet/overlay/internal/session"
	"golang.zx2c4.com/wireguard/device"
)

// peerOf returns n's identity as a handshake result, for calling admit
// directly.
func peerOf(t *testing.T, f *fixture, n *node) *handshake.Peer {
	t.Helper()
	id, err := f.pool.VerifyDER(n.der, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &handshake.Peer{Identity: id, Static: id.WireGuardKey}
}

// admittedPair starts nodes a (100.64.0.1) and b (100.64.0.2) of one
// fabric and admits b from a.
func admittedPair(t *testing.T, timers ...func(*session.Timers)) (*fixture, *node, *node) {
	t.Helper()
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{timers: timers})
	b := startNode(t, f, "b", "100.64.0.2", nodeOpts{timers: timers})
	admit(t, a, b)
	return f, a, b
}

// forgetSession makes b's device forget a (keys and all) and get it back
// without a session and without keepalive, while a keeps its session.
func forgetSession(t *testing.T, b, a *node, aKey [32]byte) {
	t.Helper()
	forgetSessionEndpoint(t, b, a, aKey, true)
}

// sessionSeen reports whether n's WireGuard completed a handshake with
// key at or after since (from a device dump).
func sessionSeen(n *node, key [32]byte, since time.Time) bool {
	st, err := n.wgStats()
	if err != nil || st[key] == nil || st[key].lastHandshake.IsZero() {
		return false
	}
	return !st[key].lastHandshake.Before(since)
}

// awaitSession waits until n has a session with the peer key that came
// after since, and fails the test with what if none came by deadline.
func awaitSession(t *testing.T, n *node, key [32]byte, since, deadline time.Time, what string) {
	t.Helper()
	for !sessionSeen(n, key, since) {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// forgetSessionEndpoint is forgetSession; withEndpoint false leaves b's
// device without an endpoint for a (as a peer admitted for the other side
// to start the session has).
func forgetSessionEndpoint(t *testing.T, b, a *node, aKey [32]byte, withEndpoint bool) {
	t.Helper()
	endpoint := ""
	if withEndpoint {
		endpoint = fmt.Sprintf("endpoint=%s\n", a.ep)
	}
	cfg := fmt.Sprintf("public_key=%s\nremove=true\npublic_key=%s\n%sallowed_ip=%s/32\n",
		hex.EncodeToString(aKey[:]), hex.EncodeToString(aKey[:]), endpoint, a.addr)
	if err := b.dev.IpcSet(cfg); err != nil {
		t.Fatal(err)
	}
}

// TestFreshReadmissionKeepsSession: a second admission of a peer moments
// after the first (the two nodes admitting each other at once) must not
// restart the WireGuard session the first admission brought up; an
// admission that began after the session came (the peer may have
// restarted) does, and so does one from another endpoint.
func TestFreshReadmissionKeepsSession(t *testing.T) {
	f, a, b := admittedPair(t)
	bKey := peerOf(t, f, b).Static
	handshakeOf := func() time.Time {
		t.Helper()
		syncSessions(t, a)
		st, err := a.wgStats()
		if err != nil || st[bKey] == nil {
			t.Fatalf("b missing from a's device: %v", err)
		}
		return st[bKey].lastHandshake
	}
	// Admit returns at the first transport message from b, as the Bind
	// sees it, which can be a moment before WireGuard has processed it.
	awaitSession(t, a, bKey, time.Time{}, time.Now().Add(sessionTimeout), "no session after admission")
	first := handshakeOf()
	// a, as the responder of a second handshake, admits b again.
	if err := a.admit(peerOf(t, f, b), b.ep, true, 0); err != nil {
		t.Fatal(err)
	}
	if got := handshakeOf(); !got.Equal(first) {
		t.Fatalf("fresh re-admission restarted the session (handshake %v, was %v)", got, first)
	}
	// An admission that began after the session came up: the peer may
	// have restarted, so the session is started afresh (the device drops
	// the old one at once).
	time.Sleep(a.timers.Slack + 200*time.Millisecond)
	if err := a.admit(peerOf(t, f, b), b.ep, true, 0); err != nil {
		t.Fatal(err)
	}
	if got := handshakeOf(); got.Equal(first) {
		t.Fatal("re-admission of a peer whose session is older than the admission kept the old session")
	}
	// Admitted moments ago but from another endpoint: a restarted
	// process, so the session is started afresh too.
	since := time.Now().Add(-time.Second)
	admit(t, a, b)
	awaitSession(t, a, bKey, since, time.Now().Add(sessionTimeout), "no session after the third admission")
	second := handshakeOf()
	moved := netip.AddrPortFrom(b.ep.Addr(), b.ep.Port()+1)
	if err := a.admit(peerOf(t, f, b), moved, true, 0); err != nil {
		t.Fatal(err)
	}
	if got := handshakeOf(); got.Equal(second) {
		t.Fatal("fresh re-admission from a new endpoint kept the old session")
	}
}

// syncSessions waits until n's session table has run everything posted
// so far (the device follows admissions through it).
func syncSessions(t testing.TB, n *node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sessionTimeout)
	defer cancel()
	n.sessions.Sync(ctx)
	if ctx.Err() != nil {
		t.Fatal("the session table did not run what was posted")
	}
}

// TestReadmissionRestartsSessionPeerLost: the other side dropped this node
// and admitted it afresh (after a death verdict, say) while this node kept
// the session they had. When this node then admits it again and starts the
// session, its keepalive is on already and sends nothing new: it must
// start a new session at once, or the peer waits for the starter kick.
func TestReadmissionRestartsSessionPeerLost(t *testing.T) {
	// b, the responder, starts the session; only the re-admission may
	// start it again.
	f, a, b := admittedPair(t, noKick, noGrace)
	aKey, bKey := peerOf(t, f, a).Static, peerOf(t, f, b).Static
	awaitSession(t, b, aKey, time.Time{}, time.Now().Add(sessionTimeout), "no session after admission")
	time.Sleep(b.timers.Slack + 200*time.Millisecond) // the session is now older than a new admission
	// a drops b and has it back as a peer whose session b starts.
	forgetSessionEndpoint(t, a, b, bKey, false)
	since := time.Now()
	if err := b.admit(peerOf(t, f, a), a.ep, true, 0); err != nil {
		t.Fatal(err)
	}
	awaitSession(t, a, bKey, since, since.Add(beforeWireGuardRetry),
		"the peer that lost the session got none soon after the re-admission")
	if err := exchange(t, a, b, 7003, []byte("after re-admission"), exchangeTimeout); err != nil {
		t.Fatalf("traffic after the re-admission: %v", err)
	}
}

// TestKickRecoversDroppedInitiation: the initiation this node sent when
// it admitted a peer was dropped there (the peer did not have this node
// then: it had removed it, and admits it afresh). The starter's kick sends
// it again, and the session comes before WireGuard's own 5 s retry.
func TestKickRecoversDroppedInitiation(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	quiet := nodeOpts{timers: []func(*session.Timers){noGrace}} // only b's kick may start it again
	a := startNode(t, f, "a", "100.64.0.1", quiet)
	b := startNode(t, f, "b", "100.64.0.2", quiet)
	bKey := peerOf(t, f, b).Static
	since := time.Now()
	// b starts a session with a, which does not know b: a drops it.
	// WireGuard at b tries again 5 s after this first initiation.
	if err := b.admit(peerOf(t, f, a), a.ep, true, 0); err != nil {
		t.Fatal(err)
	}
	syncSessions(t, b)
	time.Sleep(100 * time.Millisecond)
	if sessionSeen(a, bKey, since) {
		t.Fatal("a session with a peer a did not know")
	}
	// a admits b as the side that does not start.
	if err := a.admit(peerOf(t, f, b), b.ep, false, 0); err != nil {
		t.Fatal(err)
	}
	awaitSession(t, a, bKey, since, since.Add(beforeWireGuardRetry),
		"no session soon after a admitted b: the dropped initiation was not sent again")
	if b.Stats().Restarted == 0 {
		t.Error("Restarted counter did not move")
	}
}

// TestGivenUpSessionOfOlderAdmissionKeepsNewer: when the session table
// gives up the session of an admission, only that admission's entry
// goes: a newer admission of the same peer (the other side admitting
// this node meanwhile) has its own session coming.
func TestGivenUpSessionOfOlderAdmissionKeepsNewer(t *testing.T) {
	f, a, b := admittedPair(t)
	bKey := peerOf(t, f, b).Static
	a.peersMu.Lock()
	current := a.peers[bKey]
	a.peersMu.Unlock()
	if a.dropAdmission(bKey, current.gen-1, "test: an older admission given up", false) || !a.hasPeer(bKey) {
		t.Fatal("giving up an older admission removed the newer admission")
	}
	if !a.dropAdmission(bKey, current.gen, "test: this admission given up", false) || a.hasPeer(bKey) {
		t.Fatal("giving up the current admission left its entry")
	}
}

// TestRemovePeerAdmittedBefore: a removal decided before the peer's latest
// admission leaves that admission alone; one decided after it removes it.
func TestRemovePeerAdmittedBefore(t *testing.T) {
	decided := time.Now().Add(-time.Second)
	f, a, b := admittedPair(t)
	bKey := peerOf(t, f, b).Static
	if a.RemovePeerAdmittedBefore(bKey, decided, "test") || !a.hasPeer(bKey) {
		t.Fatal("a removal decided before the admission removed it")
	}
	if !a.RemovePeerAdmittedBefore(bKey, time.Now().Add(time.Second), "test") || a.hasPeer(bKey) {
		t.Fatal("a removal decided after the admission left it")
	}
}

// TestSlowAdmissionDelaysKick: after an admission whose round trip was
// slow, the starter waits KickRTTs round trips before it sends its
// initiation again (an earlier kick would replace an initiation still
// queued at a loaded peer), and then does, before WireGuard's own retry.
func TestSlowAdmissionDelaysKick(t *testing.T) {
	const rtt = time.Second
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "b", "100.64.0.2", nodeOpts{})
	silent, to := silentEndpoint(t)
	if err := b.admit(peerOf(t, f, a), to, true, rtt); err != nil {
		t.Fatal(err)
	}
	first := readInitiation(t, silent, sessionTimeout)
	sent := time.Now()
	again := readInitiation(t, silent, sessionTimeout)
	took := time.Since(sent)
	if d := b.timers.KickDelay(rtt); took < d-300*time.Millisecond {
		t.Fatalf("initiation sent again after %v, before %d round trips of %v", took, b.timers.KickRTTs, rtt)
	}
	if !bytes.Equal(again, first) {
		t.Fatalf("after %v a new initiation came, not the kick's copy of the first (WireGuard's own retry came first)", took)
	}
}

// silentEndpoint is a socket that never answers, as a peer endpoint: a
// lost or queued initiation.
func silentEndpoint(t *testing.T) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	silent := udpSender(t)
	return silent, silent.LocalAddr().(*net.UDPAddr).AddrPort()
}

// readInitiation reads the next datagram from c within d and checks that
// it is a WireGuard handshake initiation.
func readInitiation(t *testing.T, c *net.UDPConn, d time.Duration) []byte {
	t.Helper()
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no initiation within %v: %v", d, err)
	}
	if n != device.MessageInitiationSize || buf[0] != device.MessageInitiationType {
		t.Fatalf("datagram is not an initiation: % x", buf[:min(n, 8)])
	}
	return buf[:n]
}

// TestKickRepeatsInitiation: the starter's first kick sends the pending
// initiation again byte for byte, so that if the first still waits in a
// loaded peer's queue, the peer answers the first, drops the copy as a
// replay, and the answer matches the handshake this side holds. (A new
// initiation would make this side drop the answer to the first, and the
// peer refuse the new one as a flood when it consumes both at once.) The
// next kick sends a new initiation: a copy the peer consumed is a replay
// to it.
func TestKickRepeatsInitiation(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "b", "100.64.0.2", nodeOpts{})
	silent, to := silentEndpoint(t)
	if err := b.admit(peerOf(t, f, a), to, true, 0); err != nil {
		t.Fatal(err)
	}
	first := readInitiation(t, silent, sessionTimeout)
	sent := time.Now()
	kicks := b.Stats().Restarted
	// The kick, before WireGuard's own retry (a new initiation) 5 s after
	// the first.
	again := readInitiation(t, silent, time.Until(sent.Add(beforeWireGuardRetry)))
	if !bytes.Equal(again, first) {
		t.Fatal("the first kick sent a new initiation, not the pending one again")
	}
	third := readInitiation(t, silent, sessionTimeout)
	if bytes.Equal(third, first) {
		t.Fatal("the second kick sent the consumed initiation again")
	}
	if b.Stats().Restarted == kicks {
		t.Fatal("kicks not counted")
	}
}

// TestLostSessionIsChecked: a session that is up by the session rules but
// that WireGuard no longer has (here its keys and endpoint vanish from
// the device) is found by the periodic check, and this side starts a new
// one at once.
func TestLostSessionIsChecked(t *testing.T) {
	f, a, b := admittedPair(t)
	bKey := peerOf(t, f, b).Static
	awaitSession(t, a, bKey, time.Time{}, time.Now().Add(sessionTimeout), "no session after admission")
	syncSessions(t, a)
	// a's device loses b's keys and endpoint; what b then sends on the
	// session names indices a no longer holds.
	forgetSessionEndpoint(t, a, b, bKey, false)
	syncSessions(t, a)
	if w := a.exec.watches[bKey]; w != nil {
		w.sentInit.Store(0)
		w.sentResp.Store(0)
	}
	st, err := a.wgStats()
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	a.checkSessions(st, time.Now().Add(a.timers.SessionSetup+time.Second), checkedSessionUp)
	if a.Stats().SessionsLost == 0 {
		t.Fatal("the lost session was not reported")
	}
	// a starts a new session (it has no endpoint of its own: the check
	// gives it the admitted one).
	awaitSession(t, a, bKey, since, since.Add(beforeWireGuardRetry), "no new session after the lost one was found")
	if err := exchange(t, a, b, 7004, []byte("after the check"), exchangeTimeout); err != nil {
		t.Fatalf("traffic after the check: %v", err)
	}
}

// TestRulesCancelKeepsCompletedAdmission: an admission the session rules
// stop after it installed the peer (the peer's own admission of this node
// completed meanwhile, so the rules cancel this one), or that runs out of
// the time the rules gave it after that (it completed late on a loaded
// node), leaves the peer installed: the rules have taken that admission
// and judge its session.
// Only a caller that gives up removes the admission's entry. (A 100-node
// mesh lost about one pair in a thousand this way: the entry went, and
// the pair waited for the other side to give up its session, 5 s or
// more.)
func TestRulesCancelKeepsCompletedAdmission(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	quiet := nodeOpts{timers: []func(*session.Timers){noKick, noGrace, func(t *session.Timers) { t.SessionSetup = never }}}
	a := startNode(t, f, "a", "100.64.0.1", quiet)
	b := startNode(t, f, "b", "100.64.0.2", quiet)
	_, silent := silentEndpoint(t) // no session can come
	bKey := peerOf(t, f, b).Static
	entryOf := func() *peerEntry {
		t.Helper()
		if err := a.admit(peerOf(t, f, b), silent, false, 0); err != nil {
			t.Fatal(err)
		}
		syncSessions(t, a)
		a.peersMu.Lock()
		defer a.peersMu.Unlock()
		return a.peers[bKey]
	}

	// Through the executor, as the rules stop an admission.
	x := a.exec
	ruled, stop := context.WithCancelCause(context.Background())
	x.admitting[bKey] = stop
	x.cancelAdmit(bKey)
	if err := a.awaitSession(ruled, entryOf(), nil, nil); err != nil {
		t.Fatalf("an admission the rules stopped after it completed: %v", err)
	}
	if !a.hasPeer(bKey) {
		t.Fatal("the rules' cancel removed the admission's peer")
	}

	// An admission of the rules that ran out of the time they gave it
	// after it installed the peer leaves the session to them too.
	late, stopRuled, release := ruledAdmission(context.Background(), time.Millisecond)
	defer stopRuled(nil)
	defer release()
	<-late.Done()
	if err := a.awaitSession(late, entryOf(), nil, nil); err != nil {
		t.Fatalf("an admission of the rules that ran out of time after it completed: %v", err)
	}
	if !a.hasPeer(bKey) {
		t.Fatal("running out of the rules' bound removed the admission's peer")
	}

	// A caller that gives up takes its admission's entry with it.
	gaveUp, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.awaitSession(gaveUp, entryOf(), nil, nil); !errors.Is(err, errNotConfirmed) {
		t.Fatalf("a caller's cancel: %v, want errNotConfirmed", err)
	}
	if a.hasPeer(bKey) {
		t.Fatal("the admission's entry stayed after its caller gave up")
	}
}
