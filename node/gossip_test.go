package node

import (
	"fmt"
	"math"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aigrid/gridnet/discovery"
	"github.com/aigrid/gridnet/discovery/insider"
	"github.com/aigrid/gridnet/overlay"
)

// TestFalseDeathKeepsTunnel: when failure detection declares a member dead
// that still answers through its tunnel, the tunnel stays; a member that
// really crashed is removed.
func TestFalseDeathKeepsTunnel(t *testing.T) {
	a, b := gossipPair(t)

	a.gossip.onLeave("beta", true) // as if failure detection declared beta dead
	time.Sleep(2 * time.Second)    // longer than deathPings probe timeouts
	if !admitted(a, "beta") {
		t.Fatal("a member that answers through its tunnel was removed on a false death")
	}

	b.shutdown(false) // a crash: no leave notice
	a.gossip.onLeave("beta", true)
	for deadline := time.Now().Add(30 * time.Second); admitted(a, "beta"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a crashed member declared dead was not removed")
		}
	}
}

// TestLateAnswerKeepsTunnel: on a loaded node the answers to the pings
// that check a death verdict can come after memberlist's probe timeout.
// WireGuard still receives them (and the member's other traffic): what it
// authenticated from the member during the check keeps the tunnel.
func TestLateAnswerKeepsTunnel(t *testing.T) {
	a, b := gossipPair(t)
	a.gossip.ping = func(string) bool {
		// Every ping answered too late; beta sends through its tunnel
		// meanwhile, as a live member's gossip and answers do.
		c, err := b.Dial(t.Context(), "udp", netip.AddrPortFrom(a.Addr(), 9).String())
		if err == nil {
			c.Write([]byte("late"))
			c.Close()
		}
		time.Sleep(300 * time.Millisecond)
		return false
	}
	removed := a.ov.Stats().Removed
	a.gossip.onLeave("beta", true)
	time.Sleep(2 * time.Second) // longer than the check
	if got := a.ov.Stats().Removed; got != removed {
		t.Fatalf("a member heard from through its tunnel during the check was removed (%d removals)", got-removed)
	}
}

// TestDeathCheckWaitsForNewSession: a member declared dead a moment after
// its admission, before its WireGuard session came, is pinged only once
// sessionSetup has passed since the admission (before that its pings
// could not pass the tunnel); a member with a session is pinged at once.
func TestDeathCheckWaitsForNewSession(t *testing.T) {
	a, b := gossipPair(t)
	key := b.Identity().WireGuardKey
	for _, c := range []struct {
		name     string
		session  bool
		from, to time.Duration // when the first ping may come
	}{
		{"no session yet", false, sessionSetup - time.Second - 200*time.Millisecond, sessionSetup},
		{"session up", true, 0, 500 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			admittedAt := a.opts.Now().Add(-time.Second)
			var handshake time.Time
			if c.session {
				handshake = time.Now()
			}
			a.gossip.tunnels = func(string) map[[32]byte]overlay.PeerStatus {
				return map[[32]byte]overlay.PeerStatus{key: {AdmittedAt: admittedAt, LastHandshake: handshake}}
			}
			pinged := make(chan time.Time, deathPings)
			a.gossip.ping = func(string) bool {
				pinged <- time.Now()
				return true // it answers: the check ends, the tunnel stays
			}
			declared := time.Now()
			a.gossip.onLeave("beta", true)
			select {
			case at := <-pinged:
				if waited := at.Sub(declared); waited < c.from || waited > c.to {
					t.Fatalf("first ping %v after the verdict, want between %v and %v", waited, c.from, c.to)
				}
			case <-time.After(c.to + 2*time.Second):
				t.Fatal("the member declared dead was never pinged")
			}
		})
	}
	if !admitted(a, "beta") {
		t.Fatal("a member that answered its pings was removed")
	}
}

// TestAdmissionWaitsWhileResponding: a node that is answering a handshake
// from a learned member's endpoint (the member is admitting it) starts no
// crossing admission of its own; it looks again after respondingRecheck
// and admits the member then.
func TestAdmissionWaitsWhileResponding(t *testing.T) {
	a, b := gossipPair(t)
	var rec discovery.Record
	for _, m := range a.gossip.d.Members() {
		if m.Name == "beta" {
			rec = m.Record
		}
	}
	if len(rec.Endpoints) == 0 {
		t.Fatal("alpha holds no record of beta")
	}
	if !a.ov.RemovePeer(b.Identity().WireGuardKey, "test") {
		t.Fatal("alpha had no beta to remove")
	}
	const answering = 200 * time.Millisecond // < respondingRecheck
	start := time.Now()
	var asked atomic.Int32
	a.gossip.responding = func(ep netip.AddrPort) bool {
		if !slices.Contains(rec.Endpoints, ep) {
			return false
		}
		asked.Add(1)
		return time.Since(start) < answering
	}
	a.gossip.admit(pendingRecord{rec: rec, yielded: true})
	for time.Since(start) < answering {
		if admitted(a, "beta") {
			t.Fatalf("beta admitted %v after the record came, while a handshake from it was being answered", time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
	for deadline := start.Add(3 * time.Second); !admitted(a, "beta"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("beta not admitted once no handshake was open (asked %d times)", asked.Load())
		}
	}
	if asked.Load() < 2 {
		t.Fatalf("asked %d times whether a handshake was open, want the first look and the re-check", asked.Load())
	}
}

// TestSessionSetupLeft: a member declared dead is checked at once unless
// one of its entries was admitted moments ago and has no session yet: its
// pings could not pass the tunnel.
func TestSessionSetupLeft(t *testing.T) {
	now := time.Now()
	entry := func(admittedAgo time.Duration, session bool) overlay.PeerStatus {
		ps := overlay.PeerStatus{AdmittedAt: now.Add(-admittedAgo)}
		if session {
			ps.LastHandshake = now.Add(-time.Second)
		}
		return ps
	}
	for _, c := range []struct {
		name  string
		peers []overlay.PeerStatus
		want  time.Duration
	}{
		{"none", nil, 0},
		{"with session", []overlay.PeerStatus{entry(time.Second, true)}, 0},
		{"new without session", []overlay.PeerStatus{entry(time.Second, false)}, sessionSetup - time.Second},
		{"old without session", []overlay.PeerStatus{entry(2*sessionSetup, false)}, 0},
		{"newest entry counts", []overlay.PeerStatus{entry(2*sessionSetup, false), entry(2*time.Second, false)}, sessionSetup - 2*time.Second},
	} {
		peers := map[[32]byte]overlay.PeerStatus{}
		for i, ps := range c.peers {
			peers[[32]byte{byte(i + 1)}] = ps
		}
		if got := max(sessionSetupLeft(peers, now), 0); got != c.want {
			t.Errorf("%s: wait %v, want %v", c.name, got, c.want)
		}
	}
}

// gossipPair starts alpha and beta with gossip (beta's seed is alpha) and
// waits until alpha has admitted beta and sees it alive.
func gossipPair(t *testing.T) (a, b *Node) {
	t.Helper()
	ns := gossipNodes(t, "alpha", "beta")
	return ns[0], ns[1]
}

// gossipNodes starts nodes with gossip (ProfileLocal), the first one the
// seed of the others, and waits until the seed has admitted every other
// node and sees it alive.
func gossipNodes(t *testing.T, names ...string) []*Node {
	t.Helper()
	f := newGossipFleet(t, discovery.ProfileLocal)
	for _, name := range names {
		f.start(name)
	}
	f.waitSeedSeesAll(20 * time.Second)
	return f.nodes
}

// gossipNodesWith is gossipNodes with mod applied to the options of
// each node (i counts from 0, the seed) before it starts.
func gossipNodesWith(t *testing.T, mod func(i int, o *Options), names ...string) []*Node {
	t.Helper()
	f := newGossipFleet(t, discovery.ProfileLocal)
	f.mod = mod
	for _, name := range names {
		f.start(name)
	}
	f.waitSeedSeesAll(20 * time.Second)
	return f.nodes
}

// gossipFleet starts gossip nodes of one CA on 127.0.0.1, each after the
// first with the first as its seed.
type gossipFleet struct {
	tb      testing.TB
	ca      *localCA
	profile discovery.Profile
	nodes   []*Node
	// mod, when set, changes the options of node i (from 0, the seed)
	// before it starts.
	mod func(i int, o *Options)
}

func newGossipFleet(tb testing.TB, profile discovery.Profile) *gossipFleet {
	tb.Helper()
	ca, err := newLocalCA("ca", "corp.example")
	if err != nil {
		tb.Fatal(err)
	}
	return &gossipFleet{tb: tb, ca: ca, profile: profile}
}

// start starts the next node, called name, at overlay address
// 100.64.0.N (N its place in the fleet, from 1).
func (f *gossipFleet) start(name string) *Node {
	f.tb.Helper()
	host := len(f.nodes) + 1
	opts, err := f.ca.NodeOptions(name, netip.MustParsePrefix(fmt.Sprintf("100.64.%d.%d/10", host/250, host%250)), nil, time.Hour)
	if err != nil {
		f.tb.Fatal(err)
	}
	opts.Gossip = &GossipOptions{Profile: f.profile}
	if len(f.nodes) > 0 {
		opts.Peers = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), f.nodes[0].UnderlayPort())}
	}
	if f.mod != nil {
		f.mod(host-1, &opts)
	}
	n, err := Start(f.tb.Context(), opts)
	if err != nil {
		f.tb.Fatal(err)
	}
	f.tb.Cleanup(func() { n.Close() })
	f.nodes = append(f.nodes, n)
	return n
}

// waitSeedSeesAll waits until the seed has admitted every other node and
// sees it alive.
func (f *gossipFleet) waitSeedSeesAll(timeout time.Duration) {
	f.tb.Helper()
	seed := f.nodes[0]
	for deadline := time.Now().Add(timeout); ; time.Sleep(50 * time.Millisecond) {
		ready := seed.gossip.aliveOthers() == len(f.nodes)-1
		for _, n := range f.nodes[1:] {
			ready = ready && admitted(seed, n.Identity().Name)
		}
		if ready {
			return
		}
		if time.Now().After(deadline) {
			f.tb.Fatalf("%s never admitted all %d others and saw them alive", seed.Identity().Name, len(f.nodes)-1)
		}
	}
}

// admitted reports whether n has admitted a peer called name.
func admitted(n *Node, name string) bool {
	for _, id := range n.ov.Admitted() {
		if id.Name == name {
			return true
		}
	}
	return false
}

// TestReconcileReadmitsLiveMember: a live member whose tunnel went away
// without any gossip event (no death, no new record) is admitted again by
// the reconcile pass.
func TestReconcileReadmitsLiveMember(t *testing.T) {
	a, b := gossipPair(t)
	if !a.ov.RemovePeer(b.Identity().WireGuardKey, "test") {
		t.Fatal("alpha had no beta to remove")
	}
	// beta still holds alpha, and no gossip event says anything changed:
	// only alpha's reconcile pass brings beta back (the loop runs it every
	// reconcileInterval; here it is called at once).
	a.gossip.reconcile()
	// Within 2 s: sooner than failure detection (at least a probe round,
	// the suspicion timeout, two pings and a retry: about 4 s with these
	// timings) could bring beta back another way.
	for deadline := time.Now().Add(2 * time.Second); !admitted(a, "beta"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("reconcile did not admit the live member again")
		}
	}
}

// A record that comes for a node a worker is admitting waits until that
// admission is done: two handshakes with one node at once would restart
// the WireGuard session the first one started.
func TestOneAdmissionPerNodeAtATime(t *testing.T) {
	g := &gossip{pending: map[string]pendingRecord{}, admitting: map[string]bool{}, retries: map[string]int{}, wake: make(chan struct{}, 1)}
	rec := func(name string, v uint64) pendingRecord {
		return pendingRecord{rec: discovery.Record{Name: name, Version: v}}
	}
	g.queue(rec("a", 1))
	first, ok := g.next()
	if !ok || first.rec.Name != "a" {
		t.Fatalf("next = %+v, %v; want a", first, ok)
	}
	g.queue(rec("a", 2)) // a newer record while a is being admitted
	g.queue(rec("b", 1))
	if p, ok := g.next(); !ok || p.rec.Name != "b" {
		t.Fatalf("next = %+v, %v; want b (a is busy)", p, ok)
	}
	if p, ok := g.next(); ok {
		t.Fatalf("next handed out %q while its admission runs", p.rec.Name)
	}
	g.done("a")
	if p, ok := g.next(); !ok || p.rec.Name != "a" || p.rec.Version != 2 {
		t.Fatalf("after done: next = %+v, %v; want a's newer record", p, ok)
	}
}

// newInsider makes node n (an admitted member with a valid certificate)
// the malicious member: it sends forgeries from its own overlay address.
func newInsider(t testing.TB, n *Node) *insider.Member {
	t.Helper()
	pc, err := n.ListenPacket("udp", ":40000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return &insider.Member{Name: n.Identity().Name, Key: n.opts.IdentityKey, Packets: pc, Dial: n.Dial}
}

// gossipAddrOf is n's gossip address on the overlay.
func gossipAddrOf(n *Node) netip.AddrPort { return netip.AddrPortFrom(n.Addr(), discovery.DefaultPort) }

// TestForgedLeaveAndDeathKeepTunnel: an admitted member (mallory) sends
// alpha a leave notice for beta with version 2^64-1 (signed by its own
// key) and a memberlist dead message for beta with incarnation 2^32-1,
// the attack that made every node drop beta's tunnel and keep beta dead
// (its refutation wrapped to incarnation 0). alpha refuses the notice,
// its transport drops the dead message, and beta stays admitted and
// alive. A forged death with a plausible incarnation does reach
// memberlist: alpha checks beta through its tunnel, keeps it, and beta's
// refutation brings it back alive.
func TestForgedLeaveAndDeathKeepTunnel(t *testing.T) {
	ns := gossipNodes(t, "alpha", "beta", "mallory")
	a, m := ns[0], ns[2]
	evil := newInsider(t, m)
	removed := a.ov.Stats().Removed
	before := a.gossip.d.Stats()
	packet := insider.Compound(
		insider.UserMsg(insider.Leave(evil.Key, "beta", math.MaxUint64, time.Now())),
		insider.DeadMsg("beta", insider.MaxIncarnation, "mallory"),
	)
	if err := evil.Send(gossipAddrOf(a), packet); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st := a.gossip.d.Stats()
		if st.LeavesRefused > before.LeavesRefused && st.Filtered > before.Filtered {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alpha did not refuse the forged leave and drop the forged death: %+v", st)
		}
	}
	betaState := func() string {
		for _, mv := range a.Members() {
			if mv.Name == "beta" {
				return mv.State
			}
		}
		return "unknown"
	}
	if s := betaState(); s != "alive" {
		t.Fatalf("alpha shows beta %q after the forged leave and death", s)
	}

	// A death with a plausible incarnation is a verdict memberlist acts
	// on: the node checks it, and beta refutes it.
	if err := evil.Send(gossipAddrOf(a), insider.DeadMsg("beta", 1000, "mallory")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); a.gossip.checksKept.Load()+a.gossip.checksRemoved.Load() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("alpha never checked beta after a forged death memberlist took")
		}
	}
	for deadline := time.Now().Add(20 * time.Second); betaState() != "alive"; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("beta's refutation never brought it back at alpha: %q", betaState())
		}
	}
	if got := a.ov.Stats().Removed; got != removed || !admitted(a, "beta") {
		t.Fatalf("alpha removed %d peers after forged messages (beta admitted: %v)", got-removed, admitted(a, "beta"))
	}
	if k, r := a.gossip.checksKept.Load(), a.gossip.checksRemoved.Load(); r != 0 {
		t.Fatalf("death checks: %d kept, %d removed", k, r)
	}
}

// TestDeathChecksBounded: a flood of death verdicts (the same member
// over and over, and many members at once, as forged verdicts or a
// flapping fabric bring) runs at most deathCheckWorkers checks at once,
// one at a time per member, without a goroutine per verdict; every
// member is checked.
func TestDeathChecksBounded(t *testing.T) {
	a, _ := gossipPair(t)
	release := make(chan struct{})
	var running, most atomic.Int32
	var mu sync.Mutex
	perName := map[string]int{}
	pinged := map[string]bool{}
	a.gossip.ping = func(name string) bool {
		mu.Lock()
		perName[name]++
		if perName[name] > 1 {
			mu.Unlock()
			t.Errorf("two checks of %s at once", name)
			return true
		}
		pinged[name] = true
		mu.Unlock()
		n := running.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		<-release
		running.Add(-1)
		mu.Lock()
		perName[name]--
		mu.Unlock()
		return true // it answers: the tunnel stays
	}
	base := runtime.NumGoroutine()
	const members = 40
	for round := range 50 {
		for i := range members {
			a.gossip.onLeave(fmt.Sprintf("member-%d", i), true)
		}
		if round == 0 {
			a.gossip.onLeave("beta", true)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); running.Load() < deathCheckWorkers; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d checks running, want %d", running.Load(), deathCheckWorkers)
		}
	}
	if g := runtime.NumGoroutine() - base; g > 10 {
		t.Errorf("%d more goroutines while %d verdicts wait", g, 50*members+1)
	}
	close(release)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		done := len(pinged) == members+1
		mu.Unlock()
		if done && running.Load() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("checked %d of %d members", len(pinged), members+1)
		}
	}
	if m := most.Load(); m > deathCheckWorkers {
		t.Fatalf("%d checks at once, limit %d", m, deathCheckWorkers)
	}
	if !admitted(a, "beta") {
		t.Fatal("a member that answered its check was removed")
	}
}
