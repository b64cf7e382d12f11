package discovery

import (
	"fmt"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/aigrid/gridnet/discovery/insider"
	"github.com/hashicorp/memberlist"
)

// These tests play an admitted member that runs modified code (package
// insider) against honest members, one attack each.

// insiderPort is the UDP port the insider sends its forgeries from: any
// port on its own overlay address (the receivers know the address).
const insiderPort = 40000

// newInsider makes test node i (a member with a valid certificate,
// started or not) the malicious member.
func newInsider(t testing.TB, f *fabric, i int) *insider.Member {
	t.Helper()
	host := f.hub.Host(overlayAddr(i))
	pc, err := host.ListenUDP(insiderPort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return &insider.Member{Name: nodeName(i), Key: testKey(nodeName(i)), Packets: pc, Dial: host.DialContext}
}

// gossipAddr is test node i's gossip address.
func gossipAddr(i int) netip.AddrPort { return netip.AddrPortFrom(overlayAddr(i), DefaultPort) }

// memberOf returns node's bookkeeping for name (a copy).
func memberOf(nd *tnode, name string) (member, bool) {
	nd.d.mu.Lock()
	defer nd.d.mu.Unlock()
	m := nd.d.members[name]
	if m == nil {
		return member{}, false
	}
	return *m, true
}

// TestForgedLeaveChangesNothing: an insider's leave notices for another
// member (unsigned with version 2^64-1, signed by the insider's own key,
// the victim's genuine notice replayed from long ago or dated in the
// future) are refused by every receiver: none marks the victim as
// leaving, none relays them, and a death verdict that follows is still
// reported as a death (which the node checks), not as a leave. The
// victim's genuine notice, sent the same way, is accepted: the forgeries
// are refused for what they are, not for their form.
func TestForgedLeaveChangesNothing(t *testing.T) {
	checkLeaks(t)
	const n = 4
	f := newFabric(t, ProfileLocal)
	f.startConverged(n)
	const victim, mallory = 1, 3
	vname := nodeName(victim)
	vkey := testKey(vname)
	version := f.nodes[victim].d.Self().Version
	evil := newInsider(t, f, mallory)
	now := time.Now()
	forged := [][]byte{
		insider.UnsignedLeave(vname, math.MaxUint64),
		insider.Leave(evil.Key, vname, math.MaxUint64, now),
		insider.Leave(evil.Key, vname, version, now),
		insider.Leave(vkey, vname, version, now.Add(-time.Hour)),             // replayed
		insider.Leave(vkey, vname, version, now.Add(MaxClockSkew+time.Hour)), // from the future
	}
	targets := []int{0, 2}
	for _, i := range targets {
		for _, msg := range forged {
			if err := evil.Send(gossipAddr(i), insider.UserMsg(msg)); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, callbackTimeout, "forged leave notices processed", func() error {
		for _, i := range targets {
			if got := f.nodes[i].d.Stats().LeavesRefused; got < uint64(len(forged)) {
				return fmt.Errorf("node %d refused %d of %d forged notices", i, got, len(forged))
			}
		}
		return nil
	})
	for _, nd := range f.nodes {
		if nd.i == victim {
			continue
		}
		m, ok := memberOf(nd, vname)
		if !ok || m.leaving || m.state != StateAlive {
			t.Fatalf("node %d after forged leaves: %s known %v, leaving %v, state %v", nd.i, vname, ok, m.leaving, m.state)
		}
	}
	// A death verdict now is a death, for the node to check: not a leave.
	nd := f.nodes[0]
	(*eventDelegate)(nd.d).NotifyLeave(&memberlist.Node{Name: vname})
	waitFor(t, callbackTimeout, "OnLeave for the verdict", func() error {
		nd.mu.Lock()
		defer nd.mu.Unlock()
		dead, ok := nd.leaves[vname]
		if !ok {
			return fmt.Errorf("no OnLeave(%s)", vname)
		}
		if !dead {
			t.Fatalf("a death verdict after forged leave notices was reported as a graceful leave")
		}
		return nil
	})
	if m, _ := memberOf(nd, vname); m.state != StateDead {
		t.Fatalf("state after the verdict %v, want dead", m.state)
	}

	// The victim's own notice, sent the same way, is a leave.
	if err := evil.Send(gossipAddr(2), insider.UserMsg(insider.Leave(vkey, vname, version, time.Now()))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, callbackTimeout, "genuine leave accepted", func() error {
		if m, _ := memberOf(f.nodes[2], vname); !m.leaving {
			return fmt.Errorf("node 2 does not see %s leaving", vname)
		}
		return nil
	})
}
