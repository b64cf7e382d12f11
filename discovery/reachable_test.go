package discovery

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestSyncsGoOnlyToReachableMembers: with Config.Reachable set, a stale
// record of a member without a tunnel is pulled from a reachable member
// (a pull, not a push/pull),
// a dead member without a tunnel is not reconnected to (that would wait
// out a TCP timeout), and settle picks only reachable members.
func TestSyncsGoOnlyToReachableMembers(t *testing.T) {
	gossipAddr := func(i int) netip.AddrPort { return netip.AddrPortFrom(overlayAddr(i), DefaultPort) }
	reachable := map[netip.Addr]bool{overlayAddr(2): true}
	now := time.Now()
	long := now.Add(-time.Hour)
	d := &Discovery{
		cfg: Config{Reachable: func(a netip.Addr) bool { return reachable[a] }},
		tun: ProfileLocal.tuning(),
		members: map[string]*member{
			// Alive and reachable, record current.
			"relay": {gossip: gossipAddr(2), state: StateAlive, hasRec: true, inML: true, metaSeen: long, stateChange: now},
			// Alive, unreachable, record missing for long: to be repaired.
			"far": {gossip: gossipAddr(3), state: StateAlive, inML: true, metaSeen: long, stateChange: now},
			// Dead and unreachable.
			"gone": {gossip: gossipAddr(4), state: StateDead, inML: true, stateChange: now},
		},
	}
	d.tun.reconnectInterval = 0
	for range 20 {
		got := d.repairTargets(now)
		if !slices.Equal(got, []syncRequest{{addr: gossipAddr(2), pull: true}}) {
			t.Fatalf("repair targets %v, want only a pull from the reachable relay %v", got, gossipAddr(2))
		}
		if got := d.randomAlive(5); !slices.Equal(got, []netip.AddrPort{gossipAddr(2)}) {
			t.Fatalf("settle targets %v, want only %v", got, gossipAddr(2))
		}
	}

	// Once the far member and the dead one have tunnels, they are synced
	// with directly.
	reachable[overlayAddr(3)], reachable[overlayAddr(4)] = true, true
	got := d.repairTargets(now)
	if !slices.Contains(got, syncRequest{addr: gossipAddr(3), pull: true}) || !slices.Contains(got, syncRequest{addr: gossipAddr(4)}) {
		t.Fatalf("repair targets %v, want the far member %v and the dead one %v", got, gossipAddr(3), gossipAddr(4))
	}

	// Without Reachable every member counts as reachable.
	d.cfg.Reachable = nil
	reachable = nil
	if got := d.randomAlive(5); len(got) != 2 {
		t.Fatalf("settle targets without Reachable: %v, want both live members", got)
	}
}

// TestGossipPacketsFitSmallestMTU: memberlist's packets plus IPv6 and UDP
// headers fit the smallest overlay MTU a node accepts (1280), so gossip is
// never fragmented inside the tunnel.
func TestGossipPacketsFitSmallestMTU(t *testing.T) {
	const smallestMTU, ipv6UDP = 1280, 40 + 8
	for _, p := range []Profile{ProfileLAN, ProfileLocal} {
		if size := p.memberlistConfig().UDPBufferSize; size+ipv6UDP > smallestMTU {
			t.Errorf("profile %v: %d-byte gossip packets need %d bytes with headers, above the %d-byte MTU", p, size, size+ipv6UDP, smallestMTU)
		}
	}
}

// TestUnreportedMemberOfferedForCheck: a member known only by its record,
// that memberlist has not reported for unseenAfter, is offered to OnLeave
// as dead (again every unseenAfter, not on every tick): failure detection
// will never declare a member it does not know dead, and the node may
// have a tunnel to it. Members memberlist reports are left to it.
func TestUnreportedMemberOfferedForCheck(t *testing.T) {
	now := time.Now()
	long := now.Add(-10 * time.Second) // past unseenAfter, not yet forgotten
	var calls []string
	d := &Discovery{
		cfg: Config{OnLeave: func(name string, dead bool) { calls = append(calls, fmt.Sprintf("%s dead=%v", name, dead)) }},
		tun: ProfileLocal.tuning(),
		members: map[string]*member{
			"unreported": {gossip: netip.AddrPortFrom(overlayAddr(3), DefaultPort), hasRec: true, updated: long},
			"fresh":      {gossip: netip.AddrPortFrom(overlayAddr(4), DefaultPort), hasRec: true, updated: now},
			"reported":   {gossip: netip.AddrPortFrom(overlayAddr(5), DefaultPort), hasRec: true, inML: true, state: StateAlive, updated: long, metaSeen: long, stateChange: long},
		},
		events: newNotifier(),
	}
	run := func() {
		for _, f := range d.events.take() {
			f()
		}
	}
	d.repairTargets(now)
	d.repairTargets(now.Add(d.tun.unseenAfter / 2))
	run()
	if want := []string{"unreported dead=true"}; !slices.Equal(calls, want) {
		t.Fatalf("OnLeave calls %v, want %v", calls, want)
	}
	// Another unseenAfter later: the unreported member is checked again,
	// and the fresh one has now gone unreported long enough too.
	d.repairTargets(now.Add(d.tun.unseenAfter))
	run()
	later := slices.Sorted(slices.Values(calls[1:]))
	if want := []string{"fresh dead=true", "unreported dead=true"}; !slices.Equal(later, want) {
		t.Fatalf("OnLeave calls %v after another unseenAfter, want %v", later, want)
	}
}
