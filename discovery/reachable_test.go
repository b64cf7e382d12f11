package discovery

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestSyncsGoOnlyToReachableMembers: with Config.Reachable set, a stale
// record of a member without a tunnel is pulled from a reachable member,
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
		if !slices.Equal(got, []netip.AddrPort{gossipAddr(2)}) {
			t.Fatalf("repair targets %v, want only the reachable relay %v", got, gossipAddr(2))
		}
		if got := d.randomAlive(5); !slices.Equal(got, []netip.AddrPort{gossipAddr(2)}) {
			t.Fatalf("settle targets %v, want only %v", got, gossipAddr(2))
		}
	}

	// Once the far member and the dead one have tunnels, they are synced
	// with directly.
	reachable[overlayAddr(3)], reachable[overlayAddr(4)] = true, true
	got := d.repairTargets(now)
	if !slices.Contains(got, gossipAddr(3)) || !slices.Contains(got, gossipAddr(4)) {
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
