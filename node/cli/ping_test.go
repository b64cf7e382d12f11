package cli

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/internal/control"
	"github.com/aigrid/gridnet/node/nodetest"
	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/overlay/handshake"
	"github.com/aigrid/gridnet/policy"
)

// waitUntil polls cond every 20 ms until it holds or d passed.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestPingSummary(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    pingStats
		want string
	}{
		{"all answered", pingStats{target: "beta", transmitted: 3, rtts: []float64{1, 2, 3}, elapsed: 2003400 * time.Microsecond},
			"--- beta ping statistics ---\n3 packets transmitted, 3 received, 0% packet loss, time 2003ms\nrtt min/avg/max/mdev = 1.000/2.000/3.000/0.816 ms\n"},
		{"one of three", pingStats{target: "100.64.0.2", transmitted: 3, rtts: []float64{0.25}, elapsed: 4 * time.Second},
			"--- 100.64.0.2 ping statistics ---\n3 packets transmitted, 1 received, 66.6667% packet loss, time 4000ms\nrtt min/avg/max/mdev = 0.250/0.250/0.250/0.000 ms\n"},
		{"none", pingStats{target: "beta", transmitted: 2, elapsed: 4010 * time.Millisecond},
			"--- beta ping statistics ---\n2 packets transmitted, 0 received, 100% packet loss, time 4010ms\n"},
		{"interrupted before any", pingStats{target: "beta"},
			"--- beta ping statistics ---\n0 packets transmitted, 0 received, 0% packet loss, time 0ms\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.s.summary(); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

// startPair starts alpha and a second node (beta by default) in-process;
// the second one's static peer is alpha. mod adjusts beta's options and
// test switches.
func startPair(t *testing.T, mod func(*nodetest.LocalCA, *node.Options, *nodetest.Switches)) (alpha, beta *node.Node) {
	t.Helper()
	ca, err := nodetest.NewLocalCA("ca", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	start := func(name string, host int, mod func(*nodetest.LocalCA, *node.Options, *nodetest.Switches)) *node.Node {
		opts, err := ca.NodeOptions(name, netip.MustParsePrefix(fmt.Sprintf("100.64.0.%d/10", host)), nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		var sw nodetest.Switches
		if mod != nil {
			mod(ca, &opts, &sw)
		}
		n, err := nodetest.Start(t.Context(), opts, sw)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n.Node
	}
	alpha = start("alpha", 1, nil)
	beta = start("beta", 2, func(ca *nodetest.LocalCA, o *node.Options, sw *nodetest.Switches) {
		o.Peers = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), alpha.UnderlayPort())}
		if mod != nil {
			mod(ca, o, sw)
		}
	})
	return alpha, beta
}

// controlSocket serves n's control API on a socket in a temporary folder.
func controlSocket(t *testing.T, n *node.Node) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "gridnet.sock")
	ln, err := control.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	cs := n.ServeControl(ln, func() error { return nil })
	t.Cleanup(func() { cs.Close() })
	return path
}

// TestPingExplainsTimeout: `gridnet ping` sums up like ping(8) and says why
// requests went unanswered: a tunnel that is up to a node whose firewall
// drops ICMP (the default), an address nobody holds, this node's own
// firewall.
func TestPingExplainsTimeout(t *testing.T) {
	alpha, beta := startPair(t, nil)
	waitUntil(t, 20*time.Second, "a session between alpha and beta", func() bool {
		for _, p := range alpha.Peers() {
			if p.Name == "beta" && p.State == overlay.PeerConnected {
				return true
			}
		}
		return false
	})
	sock := controlSocket(t, alpha)

	out, errOut, code := gridnet(t, nil, "", "ping", "beta", "-c", "1", "--socket", sock)
	if code != 1 || !strings.Contains(out, "1 packets transmitted, 0 received, 100% packet loss") ||
		!strings.Contains(errOut, "tunnel up, no reply: beta's firewall probably does not allow ICMP") {
		t.Errorf("ping to a default-deny node: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	out, errOut, code = gridnet(t, nil, "", "ping", "100.64.0.99", "-c", "2", "--interval", "10ms", "--socket", sock)
	if code != 1 || !strings.Contains(out, "2 packets transmitted, 0 received") ||
		!strings.Contains(errOut, "no route to 100.64.0.99: no admitted peer holds this address") {
		t.Errorf("ping to an address nobody holds: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	deny, err := policy.ParseConfig([]byte("outbound:\n  - {action: deny, proto: icmp, port: any, host: beta}\n  - {proto: any, port: any, host: any}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := alpha.ReloadFirewall(deny); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = gridnet(t, nil, "", "ping", "beta", "-c", "1", "--socket", sock)
	if code != 1 || !strings.Contains(errOut, "this node's firewall drops the echo request to beta") {
		t.Errorf("ping that alpha's own firewall drops: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	// With ICMP allowed at beta every request is answered: no hint, the
	// rtt line.
	if err := alpha.ReloadFirewall(policy.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	allow, err := policy.ParseConfig([]byte("inbound:\n  - {proto: icmp, port: any, host: any}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := beta.ReloadFirewall(allow); err != nil {
		t.Fatal(err)
	}
	out = mustGridnet(t, nil, "ping", "beta", "-c", "3", "--interval", "10ms", "--socket", sock)
	if !strings.Contains(out, "3 packets transmitted, 3 received, 0% packet loss") || !strings.Contains(out, "rtt min/avg/max/mdev = ") ||
		strings.Contains(out, "lost requests") {
		t.Errorf("ping answered:\n%s", out)
	}
}

// TestStatusShowsRefusal: a node with an expired certificate is told so by
// the node it tries to join; its status (text and JSON) shows who refused
// it and why, and its ping of that node says so.
func TestStatusShowsRefusal(t *testing.T) {
	_, beta := startPair(t, func(ca *nodetest.LocalCA, o *node.Options, sw *nodetest.Switches) {
		back := time.Now().Add(-3 * time.Hour)
		prev := ca.Now
		ca.Now = func() time.Time { return back }
		expired, err := ca.NodeOptions("beta", netip.MustParsePrefix("100.64.0.2/10"), nil, time.Hour)
		ca.Now = prev
		if err != nil {
			t.Fatal(err)
		}
		expired.Peers = o.Peers
		sw.SkipSelfCheck = true // it would not start otherwise
		*o = expired
	})
	var st node.Status
	waitUntil(t, 20*time.Second, "beta told of its refusal", func() bool {
		st = beta.Status()
		return len(st.Refusals) > 0
	})
	r := st.Refusals[0]
	if r.Peer != "alpha" || r.Reason != handshake.RefusalExpired.String() || r.Count == 0 || r.At.IsZero() {
		t.Fatalf("refusal in status: %+v", r)
	}
	if st.Admission["refused_by_peer_expired"] == 0 {
		t.Errorf("admission counters: %v", st.Admission)
	}

	sock := controlSocket(t, beta)
	text := mustGridnet(t, nil, "status", "--socket", sock)
	if !strings.Contains(text, "REFUSED BY") || !strings.Contains(text, "alpha") || !strings.Contains(text, "expired: this node's certificate has expired") {
		t.Errorf("status text:\n%s", text)
	}
	var js node.Status
	if err := json.Unmarshal([]byte(mustGridnet(t, nil, "status", "--json", "--socket", sock)), &js); err != nil {
		t.Fatal(err)
	}
	if len(js.Refusals) == 0 || js.Refusals[0].Reason != "expired" || js.Refusals[0].Peer != "alpha" {
		t.Errorf("status --json refusals: %+v", js.Refusals)
	}
	_, errOut, code := gridnet(t, nil, "", "ping", "alpha", "-c", "1", "--socket", sock)
	if code == 0 || !strings.Contains(errOut, `no route to "alpha"`) || !strings.Contains(errOut, "alpha at 127.0.0.1:") || !strings.Contains(errOut, "refused this node") || !strings.Contains(errOut, "(expired): this node's certificate has expired") {
		t.Errorf("ping of the refuser: exit %d, stderr %s", code, errOut)
	}
}
