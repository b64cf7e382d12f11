package policy

import (
	"strings"
	"testing"
	"time"
)

func TestConntrackTimeouts(t *testing.T) {
	cases := []struct {
		name    string
		out, in pk
		idle    time.Duration
		want    Verdict
	}{
		{"udp within", pk{src: selfV4, dst: v4(2), proto: protoUDP, sport: 1, dport: 2}, pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 2, dport: 1}, udpTimeout - time.Second, Accept},
		{"udp expired", pk{src: selfV4, dst: v4(2), proto: protoUDP, sport: 1, dport: 2}, pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 2, dport: 1}, udpTimeout + time.Second, Drop},
		{"icmp expired", pk{src: selfV4, dst: v4(2), proto: protoICMP, icmpType: 8, icmpID: 9}, pk{src: v4(2), dst: selfV4, proto: protoICMP, icmpType: 0, icmpID: 9}, icmpTimeout + time.Second, Drop},
		{"tcp unreplied expired", pk{src: selfV4, dst: v4(2), proto: protoTCP, sport: 1, dport: 2, flags: tcpSYN}, pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 2, dport: 1, flags: tcpACK}, tcpNewTimeout + time.Second, Drop},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, clk := testFW(t, "inbound: []\n", peerInfo("a", 2))
			if f.Outbound(c.out.build()) != Accept {
				t.Fatal("outbound refused")
			}
			clk.Advance(c.idle)
			if got := f.Inbound(c.in.build()); got != c.want {
				t.Fatalf("after %v: got %v want %v", c.idle, got, c.want)
			}
		})
	}
	// Established TCP lives 12 minutes idle.
	f, clk := testFW(t, "inbound: []\n", peerInfo("a", 2))
	syn := pk{src: selfV4, dst: v4(2), proto: protoTCP, sport: 1, dport: 2, flags: tcpSYN}.build()
	ack := pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 2, dport: 1, flags: tcpSYN | tcpACK}.build()
	f.Outbound(syn)
	f.Inbound(ack)
	clk.Advance(tcpTimeout - time.Second)
	if f.Inbound(ack) != Accept {
		t.Fatal("established flow expired early")
	}
	clk.Advance(tcpTimeout + time.Second)
	if f.Inbound(ack) != Drop {
		t.Fatal("established flow outlived its timeout")
	}
	// RST closes fast.
	f.Outbound(syn)
	f.Inbound(ack)
	f.Inbound(pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 2, dport: 1, flags: tcpRST}.build())
	clk.Advance(tcpClosingTimeout + time.Second)
	if f.Inbound(ack) != Drop {
		t.Fatal("flow alive after RST timeout")
	}
}

func TestConntrackPerPeerCap(t *testing.T) {
	f, _ := testFW(t, "inbound:\n  - {port: any, proto: udp, host: any}\nflood: {max_flows_per_peer: 10, max_flows: 1000, new_flows_per_sec: 0}\n",
		peerInfo("a", 2), peerInfo("b", 3))
	for i := 0; i < 10; i++ {
		if f.Inbound(pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: uint16(1000 + i), dport: 53}.build()) != Accept {
			t.Fatalf("flow %d refused", i)
		}
	}
	if f.Inbound(pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 2000, dport: 53}.build()) != Drop {
		t.Fatal("flow over the per-peer cap accepted")
	}
	// Established flows still pass, and the other peer is unaffected.
	if f.Inbound(pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1000, dport: 53}.build()) != Accept {
		t.Fatal("established flow refused at cap")
	}
	if f.Inbound(pk{src: v4(3), dst: selfV4, proto: protoUDP, sport: 1000, dport: 53}.build()) != Accept {
		t.Fatal("other peer refused")
	}
	if s := f.Stats(); s.Drops["flow-cap-peer"] != 1 || s.Flows != 11 {
		t.Fatalf("stats %+v", s)
	}
}

func TestConntrackGlobalFairShare(t *testing.T) {
	f, _ := testFW(t, "inbound:\n  - {port: any, proto: udp, host: any}\nflood: {max_flows_per_peer: 1000, max_flows: 80, new_flows_per_sec: 0}\n",
		peerInfo("hog", 2), peerInfo("small", 3), peerInfo("new", 4))
	// The small peer opens a few flows, the hog fills towards the cap.
	for i := 0; i < 5; i++ {
		f.Inbound(pk{src: v4(3), dst: selfV4, proto: protoUDP, sport: uint16(i + 1), dport: 53}.build())
	}
	hog := 0
	for i := 0; i < 200; i++ {
		if f.Inbound(pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: uint16(i + 1), dport: 53}.build()) == Accept {
			hog++
		}
	}
	if hog >= 80-5 {
		t.Fatalf("hog got %d flows: no fair share", hog)
	}
	// Below their share, the others can still add flows.
	if f.Inbound(pk{src: v4(3), dst: selfV4, proto: protoUDP, sport: 100, dport: 53}.build()) != Accept {
		t.Fatal("small peer refused while near full")
	}
	if f.Inbound(pk{src: v4(4), dst: selfV4, proto: protoUDP, sport: 100, dport: 53}.build()) != Accept {
		t.Fatal("new peer refused while near full")
	}
	if f.Stats().Drops["flow-cap-global"] == 0 {
		t.Fatal("global cap drops not counted")
	}
}

func TestReloadRecheck(t *testing.T) {
	f, _ := testFW(t, "inbound:\n  - {port: 22, proto: tcp, host: any}\n  - {port: 80, proto: tcp, host: any}\n", peerInfo("a", 2))
	sub := f.Events(16)
	ssh := tcpIn(v4(2), 1000, 22)
	web := tcpIn(v4(2), 1001, 80)
	if f.Inbound(ssh) != Accept || f.Inbound(web) != Accept {
		t.Fatal("setup refused")
	}
	bad := &Config{}
	if _, err := ParseConfig([]byte("inbound:\n  - {port: 80, proto: tcpp, host: any}\n")); err == nil {
		t.Fatal("bad config parsed")
	}
	bad.Inbound = []Rule{{Line: 7, Service: "nope", Match: Match{Host: "any"}}}
	if err := f.Reload(bad); err == nil || !strings.Contains(err.Error(), "line 7") {
		t.Fatalf("bad reload: %v", err)
	}
	if f.Inbound(ssh) != Accept {
		t.Fatal("old rules lost after a refused reload")
	}
	cfg, err := ParseConfig([]byte("inbound:\n  - {port: 80, proto: tcp, host: any}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	ack := func(sp, dp uint16) []byte {
		return pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: sp, dport: dp, flags: tcpACK}.build()
	}
	if f.Inbound(ack(1000, 22)) != Drop {
		t.Fatal("flow denied by new rules survived")
	}
	if f.Inbound(ack(1001, 80)) != Accept {
		t.Fatal("flow still allowed was cut")
	}
	if s := f.Stats(); s.FlowsCut != 1 {
		t.Fatalf("FlowsCut = %d", s.FlowsCut)
	}
	select {
	case ev := <-sub.C:
		if ev.Kind != EventFlowCut || ev.DstPort != 22 {
			t.Fatalf("event %+v", ev)
		}
	default:
		t.Fatal("no flow-cut event")
	}
}

func TestFloodBuckets(t *testing.T) {
	f, clk := testFW(t, "inbound:\n  - {port: any, proto: udp, host: any}\nflood: {packets_per_sec: 100, packets_burst: 10, new_flows_per_sec: 0}\n",
		peerInfo("flood", 2), peerInfo("calm", 3))
	pkt := pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1, dport: 2}.build()
	calm := pk{src: v4(3), dst: selfV4, proto: protoUDP, sport: 1, dport: 2}.build()
	timeline := []struct {
		advance time.Duration
		send    int
		accept  int
	}{
		{0, 20, 10},                      // burst of 10
		{10 * time.Millisecond, 5, 1},    // 100/s refills 1 per 10 ms
		{100 * time.Millisecond, 20, 10}, // 10 refilled (capped by burst)
		{time.Second, 20, 10},            // never more than the burst
	}
	for i, st := range timeline {
		clk.Advance(st.advance)
		got := 0
		for j := 0; j < st.send; j++ {
			if f.Inbound(pkt) == Accept {
				got++
			}
		}
		if got != st.accept {
			t.Fatalf("step %d: accepted %d, want %d", i, got, st.accept)
		}
		if f.Inbound(calm) != Accept {
			t.Fatalf("step %d: calm peer limited by the flooder", i)
		}
	}
	if f.Stats().PeerDrops["flood"]["flood-packets"] == 0 || len(f.Stats().PeerDrops["calm"]) != 0 {
		t.Fatalf("drops %+v", f.Stats().PeerDrops)
	}
}

func TestNewFlowRate(t *testing.T) {
	f, _ := testFW(t, "inbound:\n  - {port: any, proto: tcp, host: any}\nflood: {new_flows_per_sec: 10, new_flows_burst: 5}\ntrust: {threshold: 0}\n", peerInfo("scan", 2))
	got := 0
	for i := 0; i < 50; i++ {
		if f.Inbound(tcpIn(v4(2), uint16(1000+i), 80)) == Accept {
			got++
		}
	}
	if got != 5 {
		t.Fatalf("accepted %d new flows, want the burst of 5", got)
	}
	if f.Inbound(tcpIn(v4(2), 1000, 80)) != Accept {
		t.Fatal("established flow refused by the new-flow limit")
	}
}

func TestTrustQuarantine(t *testing.T) {
	f, clk := testFW(t, "inbound:\n  - {port: 22, proto: tcp, host: any}\ntrust: {threshold: 0.5, quarantine: 60s, half_life: 1m, blocked_penalty: 0.1}\n",
		peerInfo("lateral", 2), peerInfo("good", 3))
	sub := f.Events(64)
	ok := tcpIn(v4(2), 999, 22)
	if f.Inbound(ok) != Accept {
		t.Fatal("setup")
	}
	// Scan: blocked attempts lower the score 0.1 each; the 6th crosses 0.5.
	for i := 0; i < 6; i++ {
		f.Inbound(tcpIn(v4(2), 1000, uint16(100+i)))
	}
	ps := f.Peers() // sorted: good, lateral
	if !ps[1].Quarantined || ps[1].Name != "lateral" || ps[0].Quarantined {
		t.Fatalf("peers %+v", ps)
	}
	if f.Inbound(ok) != Drop {
		t.Fatal("quarantined peer's established flow passed")
	}
	if f.Inbound(tcpIn(v4(3), 1, 22)) != Accept {
		t.Fatal("good peer affected")
	}
	alert := false
	for len(sub.C) > 0 {
		if ev := <-sub.C; ev.Kind == EventQuarantine && ev.Peer == "lateral" {
			alert = true
		}
	}
	if !alert {
		t.Fatal("no quarantine alert")
	}
	clk.Advance(61 * time.Second)
	if f.Inbound(ok) != Accept {
		t.Fatal("not released after the cool-down")
	}
	if tr := f.Peers()[1].Trust; tr <= 0.4 || tr >= 1 {
		t.Fatalf("trust after 61 s: %v (want recovering)", tr)
	}
	clk.Advance(10 * time.Minute)
	if tr := f.Peers()[1].Trust; tr < 0.99 {
		t.Fatalf("trust after 10 half-lives: %v", tr)
	}
}

func TestTrustExpiry(t *testing.T) {
	f, clk := testFW(t, "inbound: []\n")
	p := peerInfo("old", 2)
	p.NotBefore = clk.Now().Add(-90 * time.Hour)
	p.NotAfter = clk.Now().Add(10 * time.Hour)
	f.SetPeer(p)
	if tr := f.Peers()[0].Trust; tr != 1 {
		t.Fatalf("trust at 10%% left: %v", tr)
	}
	clk.Advance(5 * time.Hour)
	if tr := f.Peers()[0].Trust; tr < 0.74 || tr > 0.76 {
		t.Fatalf("trust at 5%% left: %v, want 0.75", tr)
	}
}

func TestEventRateLimit(t *testing.T) {
	f, clk := testFW(t, "inbound: []\ntrust: {threshold: 0}\n", peerInfo("a", 2))
	sub := f.Events(1000)
	small := f.Events(1)
	for i := 0; i < 1000; i++ {
		f.Inbound(tcpIn(v4(2), 1, 22))
	}
	if n := len(sub.C); n != eventBurst {
		t.Fatalf("%d events for 1000 drops, want %d", n, eventBurst)
	}
	if small.Dropped() != eventBurst-1 {
		t.Fatalf("full subscriber dropped %d", small.Dropped())
	}
	clk.Advance(eventWindow)
	f.Inbound(tcpIn(v4(2), 1, 22))
	var last Event
	for len(sub.C) > 0 {
		last = <-sub.C
	}
	if last.Suppressed != 1000-eventBurst || last.Reason != ReasonDefaultDeny || last.DstPort != 22 || last.Peer != "a" {
		t.Fatalf("last event %+v", last)
	}
	if f.Stats().PeerDrops["a"]["default-deny"] != 1001 {
		t.Fatal("drops not all counted")
	}
	sub.Close()
	sub.Close()
	f.Close()
	if _, open := <-small.C; open {
		// drain the one buffered event
		if _, open := <-small.C; open {
			t.Fatal("subscription not closed by Close")
		}
	}
}

func TestLoadsCountInboundOnly(t *testing.T) {
	f, _ := testFW(t, "inbound:\n  - {port: 53, proto: udp, host: any}\n", peerInfo("a", 2), peerInfo("b", 3))
	ok := pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1000, dport: 53}.build()
	denied := pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1000, dport: 54}.build()
	out := pk{src: selfV4, dst: v4(3), proto: protoUDP, sport: 1000, dport: 9}.build()
	for range 3 {
		f.Inbound(ok)
	}
	for range 5 {
		f.Inbound(denied)
	}
	f.Outbound(out) // outbound: counted elsewhere, not as load
	got := map[string]PeerLoad{}
	for _, l := range f.Loads(nil) {
		got[l.Name] = l
	}
	if a := got["a"]; a.Accepted != 3 || a.Dropped != 5 {
		t.Errorf("peer a: %+v, want 3 accepted and 5 dropped inbound", a)
	}
	if b := got["b"]; b.Name != "b" || b.Accepted != 0 || b.Dropped != 0 {
		t.Errorf("peer b: %+v, want listed with no inbound load", b)
	}
}

// TestPeersCountByDirection: Peers splits each peer's packets by
// direction and verdict, and the splits add up to Accepted and Dropped.
func TestPeersCountByDirection(t *testing.T) {
	rules := "inbound:\n  - {port: 53, proto: udp, host: any}\n" +
		"outbound:\n  - {action: deny, proto: udp, port: 9, host: any}\n  - {proto: any, port: any, host: any}\n"
	f, _ := testFW(t, rules, peerInfo("a", 2))
	in := pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1000, dport: 53}.build()
	inDenied := pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1000, dport: 54}.build()
	out := pk{src: selfV4, dst: v4(2), proto: protoUDP, sport: 2000, dport: 80}.build()
	outDenied := pk{src: selfV4, dst: v4(2), proto: protoUDP, sport: 2000, dport: 9}.build()
	for range 3 {
		f.Inbound(in)
	}
	for range 2 {
		f.Inbound(inDenied)
	}
	for range 4 {
		f.Outbound(out)
	}
	f.Outbound(outDenied)
	ps := f.Peers()
	if len(ps) != 1 {
		t.Fatalf("%d peers", len(ps))
	}
	p := ps[0]
	if p.InAccepted != 3 || p.InDropped != 2 || p.OutAccepted != 4 || p.OutDropped != 1 {
		t.Errorf("in %d/%d out %d/%d (accepted/dropped), want 3/2 and 4/1", p.InAccepted, p.InDropped, p.OutAccepted, p.OutDropped)
	}
	if p.Accepted != p.InAccepted+p.OutAccepted || p.Dropped != p.InDropped+p.OutDropped {
		t.Errorf("accepted %d, dropped %d: not the sums of the directions", p.Accepted, p.Dropped)
	}
}

// The flow table's hint (last slot found) must never answer for another
// key: not after its flow was deleted and the slot reused, and not for an
// expired flow.
func TestFlowTableHintFollowsKeys(t *testing.T) {
	var tb flowTable
	a := flowKey{localPort: 1, remotePort: 2, proto: protoTCP}
	b := flowKey{localPort: 3, remotePort: 4, proto: protoTCP}
	tb.insert(flow{key: a, expires: 100})
	if f, _ := tb.lookup(&a, 10); f == nil || f.key != a {
		t.Fatalf("lookup a: %+v", f)
	}
	tb.delete(tb.index[a])
	tb.insert(flow{key: b, expires: 100}) // reuses a's slot
	if f, _ := tb.lookup(&a, 10); f != nil {
		t.Fatalf("deleted key a found as %+v", f.key)
	}
	if f, _ := tb.lookup(&b, 10); f == nil || f.key != b {
		t.Fatalf("lookup b: %+v", f)
	}
	if f, expired := tb.lookup(&b, 100); f != nil || !expired {
		t.Fatalf("expired b: got %+v, expired %v", f, expired)
	}
	if tb.len() != 0 {
		t.Fatalf("%d flows left, want 0", tb.len())
	}
	if f, expired := tb.lookup(&b, 10); f != nil || expired {
		t.Fatalf("b after expiry: got %+v, expired %v", f, expired)
	}
}

// TestDropReasonsListsEveryReason: DropReasons names every drop reason
// once, without ReasonNone.
func TestDropReasonsListsEveryReason(t *testing.T) {
	rs := DropReasons()
	if len(rs) != int(numReasons)-1 {
		t.Fatalf("%d reasons, want %d", len(rs), numReasons-1)
	}
	seen := map[Reason]bool{}
	for _, r := range rs {
		if r == ReasonNone || r >= numReasons || seen[r] {
			t.Errorf("reason %d (%s) listed", r, r)
		}
		seen[r] = true
	}
}

// TestStatsNeverDipWhenPeersGo: while peers are removed and added again,
// the firewall-wide accepted total a concurrent Stats reports never goes
// down (a removed peer's counts move into the totals of gone peers).
func TestStatsNeverDipWhenPeersGo(t *testing.T) {
	f, _ := testFW(t, "inbound:\n  - {proto: tcp, port: 443, host: any}\n", peerInfo("a", 2))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if f.Inbound(tcpIn(v4(2), uint16(1000+i%20000), 443)) != Accept {
				t.Error("the allowed packet was dropped")
				return
			}
			f.RemovePeer(localDomain, "a")
			f.SetPeer(peerInfo("a", 2))
		}
	}()
	var last uint64
	for range 20000 {
		got := f.Stats().Accepted
		if got < last {
			t.Fatalf("accepted total went down from %d to %d", last, got)
		}
		last = got
	}
	close(stop)
	<-done
	if last == 0 {
		t.Fatal("no packet was counted")
	}
}
