package policy

import (
	"net/netip"
	"testing"
)

const verdictRules = `
services:
  ssh: {proto: tcp, port: 22}
  web: {proto: tcp, port: 80-443, allow: {groups: [web-clients]}}
inbound:
  - {port: any, proto: icmp, host: any}
  - {port: 22, proto: tcp, groups: [admins, prod], min_trust: 0.5}
  - {service: web, group: web-clients}
  - {port: 8000-8100, proto: tcp, host: any}
  - {action: deny, port: 22, proto: tcp, host: laptop-7}
  - {port: 5432, proto: tcp, ca_name: "corp-ca", attr: {env: prod}, domain: corp.example, cidr: 100.64.1.0/28}
  - {port: 53, proto: udp, ca_sha: "aa:bb:cc"}
  - {port: 9000, proto: any, host: db1}
  - {port: 7000, proto: tcp, host: any}
  - {action: deny, port: 7000, proto: tcp, group: contractors}
  - {port: 6000, proto: tcp, host: any, action: deny}
  - {port: 6000, proto: tcp, group: admins, priority: 10}
`

func TestVerdictTable(t *testing.T) {
	admin := peerInfo("admin1", 2, "admins", "prod")
	adminOnly := peerInfo("admin2", 3, "admins")
	laptop := peerInfo("laptop-7", 4, "admins", "prod")
	webc := peerInfo("browser", 5, "web-clients")
	db := peerInfo("db1", 6, "prod")
	db.Attributes = map[string]string{"env": "prod"}
	dbFar := peerInfo("db2", 200, "prod") // outside cidr 100.64.1.0/28
	dbFar.Attributes = map[string]string{"env": "prod"}
	otherCA := peerInfo("alien", 7)
	otherCA.CAName, otherCA.CAFingerprint = "other-ca", "dd"
	contractor := peerInfo("c1", 8, "contractors")
	f, _ := testFW(t, verdictRules, admin, adminOnly, laptop, webc, db, dbFar, otherCA, contractor)

	cases := []struct {
		name string
		pkt  pk
		want Verdict
	}{
		{"icmp echo any host", pk{src: v4(7), dst: selfV4, proto: protoICMP, icmpType: 8, icmpID: 1}, Accept},
		{"icmpv6 echo", pk{src: v6(7), dst: selfV6, proto: protoICMPv6, icmpType: 128, icmpID: 1}, Accept},
		{"groups all match", pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 1000, dport: 22, flags: tcpSYN}, Accept},
		{"groups partial no match", pk{src: v4(3), dst: selfV4, proto: protoTCP, sport: 1000, dport: 22, flags: tcpSYN}, Drop},
		{"ipv6 groups", pk{src: v6(2), dst: selfV6, proto: protoTCP, sport: 1000, dport: 22, flags: tcpSYN}, Accept},
		{"explicit deny beats allow", pk{src: v4(4), dst: selfV4, proto: protoTCP, sport: 1000, dport: 22, flags: tcpSYN}, Drop},
		{"service with allow list", pk{src: v4(5), dst: selfV4, proto: protoTCP, sport: 1000, dport: 443, flags: tcpSYN}, Accept},
		{"service wrong group", pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 1000, dport: 80, flags: tcpSYN}, Drop},
		{"range low", pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 1000, dport: 8000, flags: tcpSYN}, Accept},
		{"range high", pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 1000, dport: 8100, flags: tcpSYN}, Accept},
		{"range out", pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 1000, dport: 8101, flags: tcpSYN}, Drop},
		{"range wrong proto", pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1000, dport: 8050}, Drop},
		{"ca+attr+domain+cidr", pk{src: v4(6), dst: selfV4, proto: protoTCP, sport: 1000, dport: 5432, flags: tcpSYN}, Accept},
		{"cidr out", pk{src: v4(200), dst: selfV4, proto: protoTCP, sport: 1000, dport: 5432, flags: tcpSYN}, Drop},
		{"attr missing", pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 1000, dport: 5432, flags: tcpSYN}, Drop},
		{"ca sha", pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1000, dport: 53}, Accept},
		{"ca sha other", pk{src: v4(7), dst: selfV4, proto: protoUDP, sport: 1000, dport: 53}, Drop},
		{"host name any proto tcp", pk{src: v4(6), dst: selfV4, proto: protoTCP, sport: 1000, dport: 9000, flags: tcpSYN}, Accept},
		{"host name any proto udp", pk{src: v4(6), dst: selfV4, proto: protoUDP, sport: 1000, dport: 9000}, Accept},
		{"host name other", pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 1000, dport: 9000, flags: tcpSYN}, Drop},
		{"deny group", pk{src: v4(8), dst: selfV4, proto: protoTCP, sport: 1000, dport: 7000, flags: tcpSYN}, Drop},
		{"allow others", pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 1000, dport: 7000, flags: tcpSYN}, Accept},
		{"priority allow beats deny", pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 1000, dport: 6000, flags: tcpSYN}, Accept},
		{"priority deny others", pk{src: v4(5), dst: selfV4, proto: protoTCP, sport: 1000, dport: 6000, flags: tcpSYN}, Drop},
		{"default deny", pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 1000, dport: 12345, flags: tcpSYN}, Drop},
		{"spoofed source", pk{src: netip.MustParseAddr("100.64.9.9"), dst: selfV4, proto: protoICMP, icmpType: 8}, Drop},
		{"not for us", pk{src: v4(2), dst: netip.MustParseAddr("100.64.0.99"), proto: protoICMP, icmpType: 8}, Drop},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := f.Inbound(c.pkt.build()); got != c.want {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

func TestMinTrust(t *testing.T) {
	admin := peerInfo("admin1", 2, "admins", "prod")
	f, _ := testFW(t, verdictRules+"trust: {threshold: 0}\n", admin)
	syn := func(sp uint16) []byte { return tcpIn(v4(2), sp, 22) }
	if f.Inbound(syn(1)) != Accept {
		t.Fatal("full trust refused")
	}
	// Blocked attempts to distinct ports lower trust below 0.5.
	for i := 0; i < 12; i++ {
		f.Inbound(tcpIn(v4(2), 2, uint16(12345+i)))
	}
	if got := f.Peers()[0].Trust; got >= 0.5 {
		t.Fatalf("trust %v, want < 0.5", got)
	}
	if f.Inbound(syn(3)) != Drop {
		t.Fatal("low trust accepted on a min_trust rule")
	}
	if f.Stats().Drops["low-trust"] != 1 {
		t.Fatalf("low-trust not counted: %v", f.Stats().Drops)
	}
}

func TestRepliesPassViaConntrack(t *testing.T) {
	p := peerInfo("web1", 2, "web")
	f, _ := testFW(t, "inbound: []\n", p) // deny all inbound, outbound default allow
	out := pk{src: selfV4, dst: v4(2), proto: protoTCP, sport: 40000, dport: 443, flags: tcpSYN}
	reply := pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 443, dport: 40000, flags: tcpSYN | tcpACK}
	if f.Inbound(reply.build()) != Drop {
		t.Fatal("unsolicited reply accepted")
	}
	if f.Outbound(out.build()) != Accept {
		t.Fatal("outbound refused")
	}
	if f.Inbound(reply.build()) != Accept {
		t.Fatal("reply dropped")
	}
	// ICMP echo out, reply in; UDP over IPv6.
	if f.Outbound(pk{src: selfV4, dst: v4(2), proto: protoICMP, icmpType: 8, icmpID: 77}.build()) != Accept ||
		f.Inbound(pk{src: v4(2), dst: selfV4, proto: protoICMP, icmpType: 0, icmpID: 77}.build()) != Accept {
		t.Fatal("echo reply dropped")
	}
	if f.Inbound(pk{src: v4(2), dst: selfV4, proto: protoICMP, icmpType: 0, icmpID: 78}.build()) != Drop {
		t.Fatal("echo reply with another id accepted")
	}
	if f.Outbound(pk{src: selfV6, dst: v6(2), proto: protoUDP, sport: 5353, dport: 53}.build()) != Accept ||
		f.Inbound(pk{src: v6(2), dst: selfV6, proto: protoUDP, sport: 53, dport: 5353}.build()) != Accept {
		t.Fatal("udp v6 reply dropped")
	}
	// Outbound to a non-peer is dropped.
	if f.Outbound(pk{src: selfV4, dst: netip.MustParseAddr("100.64.7.7"), proto: protoUDP, sport: 1, dport: 2}.build()) != Drop {
		t.Fatal("outbound to unknown peer accepted")
	}
}

func TestOutboundRulesDefaultDeny(t *testing.T) {
	f, _ := testFW(t, "outbound:\n  - {port: 443, proto: tcp, group: web}\n", peerInfo("web1", 2, "web"), peerInfo("db", 3, "db"))
	if f.Outbound(pk{src: selfV4, dst: v4(2), proto: protoTCP, sport: 1, dport: 443, flags: tcpSYN}.build()) != Accept {
		t.Fatal("allowed outbound refused")
	}
	if f.Outbound(pk{src: selfV4, dst: v4(3), proto: protoTCP, sport: 1, dport: 443, flags: tcpSYN}.build()) != Drop {
		t.Fatal("outbound to another group accepted")
	}
}

func TestFragments(t *testing.T) {
	f, _ := testFW(t, "inbound:\n  - {port: 53, proto: udp, host: any}\n", peerInfo("a", 2))
	first := pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1000, dport: 53, payload: 100}.build()
	first[4], first[5] = 0x12, 0x34 // id
	first[6] = 0x20                 // MF
	later := pk{src: v4(2), dst: selfV4, proto: protoUDP, payload: 100}.build()
	later[4], later[5] = 0x12, 0x34
	later[7] = 16 // offset 128 bytes
	stray := append([]byte(nil), later...)
	stray[5] = 0x35
	if f.Inbound(later) != Drop {
		t.Fatal("later fragment before first accepted")
	}
	if f.Inbound(first) != Accept {
		t.Fatal("first fragment refused")
	}
	if f.Inbound(later) != Accept {
		t.Fatal("later fragment of accepted first refused")
	}
	if f.Inbound(stray) != Drop {
		t.Fatal("fragment of another datagram accepted")
	}
	// A first fragment to a denied port does not open its fragments.
	bad := pk{src: v4(2), dst: selfV4, proto: protoUDP, sport: 1000, dport: 54, payload: 100}.build()
	bad[4], bad[6] = 0x99, 0x20
	badLater := append([]byte(nil), later...)
	badLater[4] = 0x99
	if f.Inbound(bad) != Drop || f.Inbound(badLater) != Drop {
		t.Fatal("fragments of a denied datagram accepted")
	}
}

func TestICMPErrorRelated(t *testing.T) {
	f, _ := testFW(t, "inbound: []\n", peerInfo("a", 2))
	out := pk{src: selfV4, dst: v4(2), proto: protoUDP, sport: 5000, dport: 6000}.build()
	if f.Outbound(out) != Accept {
		t.Fatal("outbound refused")
	}
	mk := func(inner []byte) []byte {
		p := pk{src: v4(2), dst: selfV4, proto: protoICMP, icmpType: 3, payload: 28}.build()
		copy(p[28:], inner[:28])
		return p
	}
	if f.Inbound(mk(out)) != Accept {
		t.Fatal("unreachable for a tracked flow dropped")
	}
	other := pk{src: selfV4, dst: v4(2), proto: protoUDP, sport: 5001, dport: 6000}.build()
	if f.Inbound(mk(other)) != Drop {
		t.Fatal("unreachable for an unknown flow accepted")
	}
}

// TestTrustFallCutsFlowsThatNeededIt: a peer with an established flow on
// a min_trust rule loses that flow once blocked attempts take its trust
// below the rule's level; a flow on a rule without min_trust survives.
func TestTrustFallCutsFlowsThatNeededIt(t *testing.T) {
	const rules = `inbound:
  - {port: 22, proto: tcp, host: any, min_trust: 0.8}
  - {port: 80, proto: tcp, host: any}
trust: {threshold: 0}
`
	p := peerInfo("ops", 2)
	f, _ := testFW(t, rules, p)
	sub := f.Events(64)
	defer sub.Close()
	ssh := pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 5000, dport: 22, flags: tcpSYN}
	web := pk{src: v4(2), dst: selfV4, proto: protoTCP, sport: 5001, dport: 80, flags: tcpSYN}
	if f.Inbound(ssh.build()) != Accept || f.Inbound(web.build()) != Accept {
		t.Fatal("flows refused at full trust")
	}
	ssh.flags, web.flags = tcpACK, tcpACK
	// Three blocked attempts (distinct ports): trust 0.85, still above 0.8; the flow lives.
	for i := range 3 {
		f.Inbound(tcpIn(v4(2), uint16(6000+i), uint16(23+i)))
	}
	if f.Inbound(ssh.build()) != Accept {
		t.Fatal("established flow cut while trust was still above min_trust")
	}
	// Two more: 0.75, below 0.8.
	for i := range 2 {
		f.Inbound(tcpIn(v4(2), uint16(7000+i), uint16(30+i)))
	}
	if got := f.Peers()[0].Trust; got >= 0.8 {
		t.Fatalf("trust %v, want below 0.8", got)
	}
	if f.Inbound(ssh.build()) != Drop {
		t.Fatal("established flow on a min_trust rule survived the trust fall")
	}
	if f.Inbound(web.build()) != Accept {
		t.Fatal("flow on a rule without min_trust was cut")
	}
	cut := false
	for len(sub.C) > 0 {
		if e := <-sub.C; e.Kind == EventFlowCut && e.Reason == ReasonLowTrust && e.DstPort == 22 {
			cut = true
		}
	}
	if !cut {
		t.Error("no flow-cut event with reason low-trust for the port 22 flow")
	}
}
