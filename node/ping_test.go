package node

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay"
)

func TestExplainNoReply(t *testing.T) {
	addr := netip.MustParseAddr("100.64.0.2")
	refusal := "alpha at 127.0.0.1:4242 refused this node 3s ago (expired): ..."
	for _, tc := range []struct {
		name string
		f    pingFacts
		want []string
	}{
		{"own address", pingFacts{addr: addr, own: true}, []string{"own address"}},
		{"no route", pingFacts{addr: addr}, []string{"no route to 100.64.0.2", "no admitted peer holds this address"}},
		{"no route, refused", pingFacts{addr: addr, refusal: refusal}, []string{"no route to 100.64.0.2", refusal}},
		{"own firewall", pingFacts{addr: addr, peer: "beta", fwDrop: "denied by outbound[0] line 3", state: overlay.PeerConnected},
			[]string{"this node's firewall drops the echo request to beta: denied by outbound[0] line 3"}},
		{"quarantined", pingFacts{addr: addr, peer: "beta", quarantined: true, state: overlay.PeerConnected},
			[]string{"this node's firewall has quarantined beta"}},
		{"no session", pingFacts{addr: addr, peer: "beta", state: overlay.PeerAdmitted, refusal: refusal},
			[]string{"no WireGuard session with beta (admitted, state admitted)", refusal}},
		{"idle session", pingFacts{addr: addr, peer: "beta", state: overlay.PeerIdle}, []string{"no WireGuard session with beta"}},
		{"tunnel up", pingFacts{addr: addr, peer: "beta", state: overlay.PeerConnected},
			[]string{"tunnel up, no reply: beta's firewall probably does not allow ICMP"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := explainNoReply(tc.f)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("explanation %q lacks %q", got, w)
				}
			}
		})
	}
}

// waitUntil polls cond every 20 ms until it holds or d passed.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// startPair starts alpha and a second node (beta by default) in-process;
// the second one's static peer is alpha. mod adjusts beta's options.
func startPair(t *testing.T, mod func(*localCA, *Options)) (alpha, beta *Node) {
	t.Helper()
	ca, err := newLocalCA("ca", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	start := func(name string, host int, mod func(*localCA, *Options)) *Node {
		opts, err := ca.NodeOptions(name, netip.MustParsePrefix(fmt.Sprintf("100.64.0.%d/10", host)), nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if mod != nil {
			mod(ca, &opts)
		}
		n, err := Start(t.Context(), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	alpha = start("alpha", 1, nil)
	beta = start("beta", 2, func(ca *localCA, o *Options) {
		o.Peers = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), alpha.UnderlayPort())}
		if mod != nil {
			mod(ca, o)
		}
	})
	return alpha, beta
}
