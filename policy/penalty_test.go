package policy

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// echo builds an ICMP (v4) or ICMPv6 echo request from src to this node with
// the given identifier and sequence number.
func echo(src netip.Addr, id, seq uint16) []byte {
	p := pk{src: src, dst: selfV4, proto: protoICMP, icmpType: 8, icmpID: id}
	if src.Is6() {
		p.dst, p.proto, p.icmpType = selfV6, protoICMPv6, 128
	}
	b := p.build()
	l4 := 20
	if src.Is6() {
		l4 = 40
	}
	binary.BigEndian.PutUint16(b[l4+6:], seq)
	return b
}

// peerState returns the named peer's state.
func peerState(t *testing.T, f *Firewall, name string) PeerState {
	t.Helper()
	for _, ps := range f.Peers() {
		if ps.Name == name {
			return ps
		}
	}
	t.Fatalf("no peer %q", name)
	return PeerState{}
}

// sendPings sends n pings from src, each with its own identifier and
// sequence number and three resends 250 ms apart (what a pinger does when
// no reply comes), and returns how many were accepted.
func sendPings(f *Firewall, clk *fakeClock, src netip.Addr, n int) int {
	acc := 0
	for i := range n {
		for r := range 4 {
			if f.Inbound(echo(src, uint16(1000+i), uint16(4*i+r))) == Accept {
				acc++
			}
			clk.Advance(250 * time.Millisecond)
		}
	}
	return acc
}

// TestPingsToDeniedNodeCostNoTrust: 100 pings, with resends, to a node whose
// rules do not allow ICMP are all dropped, and the pinger keeps full trust
// and is never quarantined (by default a refused ping costs nothing).
func TestPingsToDeniedNodeCostNoTrust(t *testing.T) {
	f, clk := testFW(t, "inbound:\n  - {proto: tcp, port: 22, host: any}\n", peerInfo("pinger", 2))
	sub := f.Events(64)
	if got := sendPings(f, clk, v4(2), 100); got != 0 {
		t.Fatalf("%d echo requests accepted by a node that denies ICMP", got)
	}
	if got := sendPings(f, clk, v6(2), 100); got != 0 {
		t.Fatalf("%d ICMPv6 echo requests accepted", got)
	}
	ps := peerState(t, f, "pinger")
	if ps.Quarantined || ps.Quarantines != 0 || ps.Trust != 1 || ps.Penalties != 0 {
		t.Fatalf("after 200 refused pings: %+v, want full trust, no penalty, no quarantine", ps)
	}
	if ps.Drops["default-deny"] != 800 {
		t.Fatalf("drops %v, want 800 default-deny (every refused echo counted)", ps.Drops)
	}
	for len(sub.C) > 0 {
		if ev := <-sub.C; ev.Kind == EventQuarantine {
			t.Fatalf("quarantine event %+v", ev)
		}
	}
	// The pinger's allowed traffic still passes.
	if f.Inbound(tcpIn(v4(2), 4000, 22)) != Accept {
		t.Fatal("pinger's ssh refused after the pings")
	}
}

// TestPingPenaltyWhenConfigured: with icmp_penalty on, refused pings cost
// trust, but as one blocked key: once per blocked_window however many pings
// and resends, so 100 s of pinging costs two penalties with a 60 s window.
func TestPingPenaltyWhenConfigured(t *testing.T) {
	f, clk := testFW(t, "inbound: []\ntrust: {icmp_penalty: true}\n", peerInfo("pinger", 2))
	sendPings(f, clk, v4(2), 100) // 400 echoes over 100 s
	ps := peerState(t, f, "pinger")
	if ps.Penalties != 2 || ps.Quarantined {
		t.Fatalf("after 100 s of refused pings: %+v, want 2 penalties (one per 60 s window), not quarantined", ps)
	}
	if ps.Trust >= 1 {
		t.Fatalf("trust %v: icmp_penalty had no effect", ps.Trust)
	}
}

// TestRetransmittedSYNsCostOnePenalty: 100 SYNs to one denied port
// (retransmits of one connection and new connections from new source ports)
// cost one penalty within the window; the port costs again once the
// window has passed.
func TestRetransmittedSYNsCostOnePenalty(t *testing.T) {
	f, clk := testFW(t, "inbound:\n  - {proto: tcp, port: 22, host: any}\n", peerInfo("client", 2))
	for i := range 100 {
		sport := uint16(40000 + i/5) // five transmissions per connection attempt
		if f.Inbound(tcpIn(v4(2), sport, 23)) != Drop {
			t.Fatal("SYN to a denied port accepted")
		}
		clk.Advance(200 * time.Millisecond) // 20 s in all, inside the window
	}
	ps := peerState(t, f, "client")
	if ps.Penalties != 1 {
		t.Fatalf("100 SYNs to one denied port cost %d penalties, want 1", ps.Penalties)
	}
	if ps.Trust < 0.95 || ps.Trust >= 1 || ps.Quarantined {
		t.Fatalf("trust %v quarantined %v, want one penalty's worth (about 0.95)", ps.Trust, ps.Quarantined)
	}
	if ps.Drops["default-deny"] != 100 {
		t.Fatalf("drops %v, want every SYN counted", ps.Drops)
	}
	clk.Advance(DefaultBlockedWindow)
	f.Inbound(tcpIn(v4(2), 50000, 23))
	if got := peerState(t, f, "client").Penalties; got != 2 {
		t.Fatalf("after the window: %d penalties, want 2", got)
	}
	// UDP to the same port number is another key.
	f.Inbound(pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1, dport: 23}.build())
	if got := peerState(t, f, "client").Penalties; got != 3 {
		t.Fatalf("udp/23 after tcp/23: %d penalties, want 3", got)
	}
}

// TestPortScanStillQuarantines: a scan of 100 distinct ports costs a
// penalty per port and quarantines the scanner, however slowly it retries
// each port.
func TestPortScanStillQuarantines(t *testing.T) {
	f, clk := testFW(t, "inbound:\n  - {proto: tcp, port: 22, host: any}\n", peerInfo("scanner", 2), peerInfo("good", 3))
	sub := f.Events(64)
	for i := range 100 {
		for range 3 { // each probe retransmitted
			f.Inbound(tcpIn(v4(2), 40000, uint16(1000+i)))
		}
		clk.Advance(10 * time.Millisecond)
	}
	ps := peerState(t, f, "scanner")
	if !ps.Quarantined || ps.Quarantines != 1 {
		t.Fatalf("scanner after 100 ports: %+v, want quarantined", ps)
	}
	alert := false
	for len(sub.C) > 0 {
		if ev := <-sub.C; ev.Kind == EventQuarantine && ev.Peer == "scanner" {
			alert = true
		}
	}
	if !alert {
		t.Fatal("no quarantine event for the scanner")
	}
	if f.Inbound(tcpIn(v4(3), 1, 22)) != Accept || peerState(t, f, "good").Penalties != 0 {
		t.Fatal("the other peer was affected")
	}
}

// TestFullBlockedTableStillCharges: more distinct ports than the table
// holds each cost a penalty; a full table never waives one.
func TestFullBlockedTableStillCharges(t *testing.T) {
	f, _ := testFW(t, "inbound: []\ntrust: {threshold: 0, blocked_penalty: 0.001}\n", peerInfo("scanner", 2))
	const ports = 4 * blockedSlots
	for i := range ports {
		f.Inbound(tcpIn(v4(2), 40000, uint16(1000+i)))
	}
	if got := peerState(t, f, "scanner").Penalties; got != ports {
		t.Fatalf("%d distinct ports cost %d penalties", ports, got)
	}
	// A second pass over the same ports: the table remembers only the
	// last blockedSlots of them, every other one costs again.
	for i := range ports {
		f.Inbound(tcpIn(v4(2), 40000, uint16(1000+i)))
	}
	if got := peerState(t, f, "scanner").Penalties; got < 2*ports-blockedSlots {
		t.Fatalf("second pass: %d penalties in all, want at least %d", got, 2*ports-blockedSlots)
	}
}

// TestBlockedWindowZeroChargesEveryPacket: blocked_window: 0s restores a
// penalty per blocked packet.
func TestBlockedWindowZeroChargesEveryPacket(t *testing.T) {
	f, _ := testFW(t, "inbound: []\ntrust: {threshold: 0, blocked_window: 0s}\n", peerInfo("a", 2))
	for range 5 {
		f.Inbound(tcpIn(v4(2), 40000, 23))
	}
	if got := peerState(t, f, "a").Penalties; got != 5 {
		t.Fatalf("%d penalties for 5 blocked packets with window 0, want 5", got)
	}
}

func TestBlockedTable(t *testing.T) {
	var tb blockedTable
	w := time.Minute
	if !tb.charge(1, 0, w) || tb.charge(1, 1, w) {
		t.Fatal("first sight must charge, a repeat must not")
	}
	if !tb.charge(1, int64(w), w) {
		t.Fatal("a key must charge again when its window has passed")
	}
	for k := uint32(100); k < 100+blockedSlots; k++ { // fill every slot
		if !tb.charge(k, int64(w)+1, w) {
			t.Fatalf("new key %d not charged", k)
		}
	}
	if !tb.charge(999, int64(w)+2, w) {
		t.Fatal("a new key into a full table was not charged")
	}
	if tb.charge(999, int64(w)+3, w) {
		t.Fatal("the new key was not remembered in a full table")
	}
}

func TestTrustConfigKeys(t *testing.T) {
	c, err := ParseConfig([]byte("trust: {blocked_window: 2m, icmp_penalty: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Trust.BlockedWindow != 2*time.Minute || !c.Trust.ICMPPenalty {
		t.Fatalf("trust %+v", c.Trust)
	}
	if d := DefaultConfig().Trust; d.BlockedWindow != DefaultBlockedWindow || d.ICMPPenalty {
		t.Fatalf("defaults %+v", d)
	}
	for _, bad := range []string{"trust: {icmp_penalty: sometimes}\n", "trust: {blocked_window: -1s}\n", "trust: {blocked_window: soon}\n"} {
		if _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
