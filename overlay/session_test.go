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
func admittedPair(t *testing.T, timers ...func(*sessionTimers)) (*fixture, *node, *node) {
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

// loseSessionBeforeTraffic drops the session b started with a on both
// sides, before any transport message from a reached b, and clears b's
// transport watch of a, so that b's session check sees no session. b's
// device no longer holds the handshake of the initiation b sent, so the
// copy b keeps to send again goes too: the kick must start a new one.
func loseSessionBeforeTraffic(t *testing.T, f *fixture, a, b *node) {
	t.Helper()
	forgetSession(t, a, b, peerOf(t, f, b).Static)
	forgetSession(t, b, a, peerOf(t, f, a).Static)
	b.bind.forgetInitiation(a.ep)
	time.Sleep(100 * time.Millisecond)
	w := (*b.bind.watches.Load())[a.ep]
	if w == nil {
		t.Fatal("b does not watch a's endpoint while its session check is armed")
	}
	w.last.Store(0)
}

// awaitSession waits until n has a session with the peer key that came
// after since, and fails the test with what if none came by deadline.
func awaitSession(t *testing.T, n *node, key [32]byte, since, deadline time.Time, what string) {
	t.Helper()
	for !n.sessionSeen(key, since) {
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
// restart the WireGuard session the first admission brought up; only an
// admission of a peer admitted long ago (it may have restarted) does.
func TestFreshReadmissionKeepsSession(t *testing.T) {
	f, a, b := admittedPair(t)
	bKey := peerOf(t, f, b).Static
	handshakeOf := func() time.Time {
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
	// Admitted long ago: the peer may have restarted, so the session is
	// started afresh (the device drops the old one at once).
	a.peersMu.Lock()
	a.peers[bKey].admittedAt = time.Now().Add(-confirmWait)
	a.peersMu.Unlock()
	if err := a.admit(peerOf(t, f, b), b.ep, true, 0); err != nil {
		t.Fatal(err)
	}
	if got := handshakeOf(); got.Equal(first) {
		t.Fatal("re-admission of a peer admitted long ago kept the old session")
	}
	// Admitted moments ago but from another endpoint: a restarted
	// process, so the session is started afresh too.
	admit(t, a, b)
	second := handshakeOf()
	moved := netip.AddrPortFrom(b.ep.Addr(), b.ep.Port()+1)
	if err := a.admit(peerOf(t, f, b), moved, true, 0); err != nil {
		t.Fatal(err)
	}
	if got := handshakeOf(); got.Equal(second) {
		t.Fatal("fresh re-admission from a new endpoint kept the old session")
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
	f, a, b := admittedPair(t, noKick, noGrace, noWatchdog)
	aKey, bKey := peerOf(t, f, a).Static, peerOf(t, f, b).Static
	if !b.sessionSeen(aKey, time.Now().Add(-time.Minute)) {
		t.Fatal("no session after admission")
	}
	time.Sleep(sessionSlack + 200*time.Millisecond) // the session is now older than a new admission
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

// TestReadmissionRepeatsDroppedInitiation: the initiation this node sent
// when it admitted a peer was dropped there (the peer did not have this
// node then: it had removed it, and admits it afresh). When this node
// admits the peer again as the starter, no session having come, it sends
// the pending initiation again at once, well before the kick.
func TestReadmissionRepeatsDroppedInitiation(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	// Only the re-admission may send the initiation again.
	quiet := nodeOpts{timers: []func(*sessionTimers){noKick, noGrace, noWatchdog}}
	a := startNode(t, f, "a", "100.64.0.1", quiet)
	b := startNode(t, f, "b", "100.64.0.2", quiet)
	bKey := peerOf(t, f, b).Static
	since := time.Now()
	// b starts a session with a, which does not know b: a drops it.
	// WireGuard at b tries again 5 s after this first initiation.
	if err := b.admit(peerOf(t, f, a), a.ep, true, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if a.sessionSeen(bKey, since) {
		t.Fatal("a session with a peer a did not know")
	}
	// a admits b as the side that does not start; b admits a again.
	if err := a.admit(peerOf(t, f, b), b.ep, false, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.admit(peerOf(t, f, a), a.ep, true, 0); err != nil {
		t.Fatal(err)
	}
	awaitSession(t, a, bKey, since, since.Add(beforeWireGuardRetry),
		"no session soon after the re-admission: the dropped initiation was not sent again")
}

// TestWatchdogHealsHalfSession: one side loses its session state while the
// other keeps its keys (as when the last handshake message is lost after
// the other side derived its keys). No traffic flows, so nothing in
// WireGuard starts a new handshake soon; the watchdog of the side without
// a session restarts it.
func TestWatchdogHealsHalfSession(t *testing.T) {
	for _, withEndpoint := range []bool{true, false} {
		t.Run(fmt.Sprintf("endpoint=%v", withEndpoint), func(t *testing.T) {
			f, a, b := admittedPair(t)
			aKey := peerOf(t, f, a).Static
			// Let the admission's own session check (armStarterKick) pass first.
			time.Sleep(starterKick*4/3 + 200*time.Millisecond)
			// b's device forgets a (keys and all) and gets it back without
			// a session and without keepalive (and, in the second case,
			// without an endpoint); a keeps its session.
			forgetSessionEndpoint(t, b, a, aKey, withEndpoint)
			since := time.Now()
			b.peersMu.Lock()
			b.peers[aKey].admittedAt = time.Now().Add(-watchdogAfter)
			b.peersMu.Unlock()
			deadline := time.Now().Add(sessionTimeout)
			awaitSession(t, b, aKey, since, deadline, "the side without a session did not restart it")
			if b.Stats().Restarted == 0 {
				t.Error("Restarted counter did not move")
			}
			if err := exchange(t, b, a, 7002, []byte("healed"), exchangeTimeout); err != nil {
				t.Fatalf("traffic after the restart: %v", err)
			}
		})
	}
}

// TestStarterKickRestartsLostSession: the side that starts a new session
// restarts it at once when it is not up after starterKick, well before
// WireGuard's 5 s retry or the watchdog.
func TestStarterKickRestartsLostSession(t *testing.T) {
	// b, the responder, starts the session; the watchdog is off, so only
	// the kick can start it again.
	f, a, b := admittedPair(t, noWatchdog)
	aKey := peerOf(t, f, a).Static
	// The session b started is lost at once, on both sides, before any
	// transport message from a reached b: so nothing from a reaches b's
	// transport watch (which would tell the kick the session came).
	loseSessionBeforeTraffic(t, f, a, b)
	since := time.Now()
	awaitSession(t, b, aKey, since, since.Add(sessionTimeout), "the starter did not restart the lost session")
	if b.Stats().Restarted == 0 {
		t.Error("Restarted counter did not move")
	}
}

// TestStaleConfirmKeepsNewerAdmission: an admission whose session check
// fails must remove only the entry it made. When the other side admitted
// this node meanwhile, the newer entry has its own session coming, and
// removing it would kill that session too.
func TestStaleConfirmKeepsNewerAdmission(t *testing.T) {
	f, a, b := admittedPair(t)
	bKey := peerOf(t, f, b).Static
	a.peersMu.Lock()
	current := a.peers[bKey]
	a.peersMu.Unlock()
	stale := &peerEntry{id: current.id, key: bKey, endpoint: current.endpoint, admittedAt: current.admittedAt.Add(-time.Second)}
	w := a.bind.watch(b.ep)
	defer a.bind.unwatch(b.ep)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the check gives up at once
	future := time.Now().Add(time.Hour)
	if err := a.confirm(ctx, stale, future, future, w, nil, nil); !errors.Is(err, errNotConfirmed) {
		t.Fatalf("stale confirmation: got %v, want %v", err, errNotConfirmed)
	}
	if !a.hasPeer(bKey) {
		t.Fatal("a failed check of an older admission removed the newer admission")
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
// slow, the starter waits kickRTTs round trips before it starts a lost
// session again (an earlier kick would replace an initiation still queued
// at a loaded peer), and then does.
func TestSlowAdmissionDelaysKick(t *testing.T) {
	const rtt = time.Second
	f, a, b := admittedPair(t, noWatchdog) // only the kick restarts the session
	aKey := peerOf(t, f, a).Static
	// b admits a again (a second handshake moments later, from the same
	// endpoint: the session stays) and this admission took rtt.
	if err := b.admit(peerOf(t, f, a), a.ep, true, rtt); err != nil {
		t.Fatal(err)
	}
	loseSessionBeforeTraffic(t, f, a, b)
	since := time.Now()
	before := b.Stats().Restarted
	quiet := since.Add(b.timers.kickDelay(rtt) - 300*time.Millisecond)
	for time.Now().Before(quiet) {
		if got := b.Stats().Restarted; got != before {
			t.Fatalf("session kicked after %v, before %d round trips of %v", time.Since(since), kickRTTs, rtt)
		}
		time.Sleep(50 * time.Millisecond)
	}
	awaitSession(t, b, aKey, since, since.Add(sessionTimeout), "the starter did not restart the lost session")
	if b.Stats().Restarted == before {
		t.Error("the session came back without the kick")
	}
}

// TestKickRepeatsInitiation: the starter kick sends the pending
// initiation again byte for byte, so that if the first still waits in a
// loaded peer's queue, the peer answers the first, drops the copy as a
// replay, and the answer matches the handshake this side holds. (A new
// initiation would make this side drop the answer to the first, and the
// peer refuse the new one as a flood when it consumes both at once.)
func TestKickRepeatsInitiation(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp.example")
	a := startNode(t, f, "a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "b", "100.64.0.2", nodeOpts{timers: []func(*sessionTimers){noWatchdog}})
	// b's endpoint for a is a socket that never answers: a lost or
	// queued initiation.
	silent := udpSender(t)
	to := silent.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := b.admit(peerOf(t, f, a), to, true, 0); err != nil {
		t.Fatal(err)
	}
	read := func(within time.Duration) []byte {
		t.Helper()
		buf := make([]byte, 2048)
		silent.SetReadDeadline(time.Now().Add(within))
		n, err := silent.Read(buf)
		if err != nil {
			t.Fatalf("no initiation within %v: %v", within, err)
		}
		return buf[:n]
	}
	first := read(sessionTimeout)
	sent := time.Now()
	if len(first) != device.MessageInitiationSize || first[0] != device.MessageInitiationType {
		t.Fatalf("first datagram is not an initiation: % x", first[:min(len(first), 8)])
	}
	kicks := b.Stats().Restarted
	// The kick, before WireGuard's own retry (a new initiation) 5 s after
	// the first.
	again := read(time.Until(sent.Add(beforeWireGuardRetry)))
	if !bytes.Equal(again, first) {
		t.Fatal("the kick sent a new initiation, not the pending one again")
	}
	for deadline := time.Now().Add(sessionTimeout); b.Stats().Restarted == kicks; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("kick not counted")
		}
	}
}

func TestKickDelayBounds(t *testing.T) {
	for _, c := range []struct{ rtt, want time.Duration }{
		{0, starterKick},
		{100 * time.Millisecond, starterKick},
		{time.Second, kickRTTs * time.Second},
		{10 * time.Second, starterKickMax},
	} {
		if got := defaultSessionTimers().kickDelay(c.rtt); got != c.want {
			t.Errorf("kickDelay(%v) = %v, want %v", c.rtt, got, c.want)
		}
	}
}
