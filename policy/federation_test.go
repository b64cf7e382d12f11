package policy

import (
	"strings"
	"testing"
)

// partner returns a peer certified by a federated CA of another domain,
// named like a local admin and in the local admins group.
func partner(name string, n byte, groups ...string) PeerInfo {
	p := peerInfo(name, n, groups...)
	p.Domain, p.CAName, p.CAFingerprint = "evil.example", "partner-ca", "EE:EE"
	return p
}

// TestFederatedNamesMatchOnlyTheirDomain: a partner CA's certificate named
// like a local admin, in group admins, does not pass host, groups or attr
// rules meant for the local domain; it passes a rule that names its domain,
// CA name or CA fingerprint, and host: any.
func TestFederatedNamesMatchOnlyTheirDomain(t *testing.T) {
	const rules = `
services:
  web: {proto: tcp, port: 443, allow: [{group: web-clients}]}
inbound:
  - {proto: tcp, port: 22, groups: [admins]}
  - {proto: tcp, port: 23, host: admin1}
  - {proto: tcp, port: 24, attr: {env: prod}}
  - {proto: tcp, port: 25, groups: [admins], domain: evil.example}
  - {proto: tcp, port: 26, groups: [admins], ca_name: partner-ca}
  - {proto: tcp, port: 27, groups: [admins], ca_sha: "ee:ee"}
  - {proto: tcp, port: 28, host: any}
  - {proto: tcp, port: 29, cidr: 100.64.1.0/24}
  - {proto: tcp, port: 443, host: any}
  - {action: deny, proto: tcp, port: 28, host: admin1, priority: 5}
`
	local := peerInfo("admin1", 2, "admins", "web-clients")
	local.Attributes = map[string]string{"env": "prod"}
	evil := partner("admin1", 3, "admins", "web-clients")
	evil.Attributes = map[string]string{"env": "prod"}
	f, _ := testFW(t, rules, local, evil)
	cases := []struct {
		port        uint16
		local, evil Verdict
	}{
		{22, Accept, Drop},   // groups without domain: local only
		{23, Accept, Drop},   // named host: local only
		{24, Accept, Drop},   // attributes: local only
		{25, Drop, Accept},   // domain: names the partner
		{26, Drop, Accept},   // ca_name: names the partner's CA
		{27, Drop, Accept},   // ca_sha: names the partner's CA
		{28, Drop, Accept},   // host: any, but the deny names the local admin1 only
		{29, Accept, Accept}, // cidr: any domain
		{443, Accept, Drop},  // a service allow list's group: local only
	}
	for _, c := range cases {
		if got := f.Inbound(tcpIn(v4(2), 1000, c.port)); got != c.local {
			t.Errorf("local admin1 to %d: %v, want %v", c.port, got, c.local)
		}
		if got := f.Inbound(tcpIn(v4(3), 1000, c.port)); got != c.evil {
			t.Errorf("partner admin1 to %d: %v, want %v", c.port, got, c.evil)
		}
	}
}

// TestCheckShowsDomain: Check says which domain the deciding rule matched
// and explains a denial that only the domain caused.
func TestCheckShowsDomain(t *testing.T) {
	f, _ := testFW(t, "inbound:\n  - {proto: tcp, port: 22, groups: [admins]}\n  - {proto: tcp, port: 25, groups: [admins], domain: evil.example}\n  - {proto: tcp, port: 28, host: any}\n")
	admins := PeerInfo{Name: "admin1", Groups: []string{"admins"}}
	d := f.Check(Query{Peer: admins, Proto: ProtoTCP, Port: 22})
	if !d.Allowed || d.Scope != ScopeLocal || d.Domain != localDomain || d.LocalDomain != localDomain {
		t.Errorf("local admin, no domain given: %+v", d)
	}
	evil := admins
	evil.Domain = "evil.example"
	d = f.Check(Query{Peer: evil, Proto: ProtoTCP, Port: 22})
	if d.Allowed || !strings.Contains(d.Hint, "rule inbound[0] line 2 would allow it") || !strings.Contains(d.Hint, `add domain: evil.example`) {
		t.Errorf("partner admin on a local groups rule: %+v", d)
	}
	d = f.Check(Query{Peer: evil, Proto: ProtoTCP, Port: 25})
	if !d.Allowed || d.Scope != ScopeNamed || d.Domain != "evil.example" {
		t.Errorf("partner admin on a rule naming its domain: %+v", d)
	}
	d = f.Check(Query{Peer: evil, Proto: ProtoTCP, Port: 28})
	if !d.Allowed || d.Scope != ScopeAny || d.Domain != "" {
		t.Errorf("host: any: %+v", d)
	}
	if d = f.Check(Query{Peer: evil, Proto: ProtoTCP, Port: 99}); d.Hint != "" {
		t.Errorf("hint for a flow no rule allows in any domain: %+v", d)
	}
	// A service whose allow list names a group: the hint names the service.
	svc, _ := testFW(t, "services:\n  web: {proto: tcp, port: 443, allow: [{group: web-clients}]}\ninbound:\n  - {proto: tcp, port: 443, host: any}\n")
	evil.Groups = []string{"web-clients"}
	d = svc.Check(Query{Peer: evil, Proto: ProtoTCP, Port: 443})
	if d.Allowed || !strings.Contains(d.Hint, "allow list of service web (line 2) would admit it") || !strings.Contains(d.Hint, "add domain: evil.example to the entry") {
		t.Errorf("partner on a service allow list: %+v", d)
	}
}

// TestUnknownLocalDomainFailsClosed: a firewall told no domain of its own
// matches host and groups rules only for peers without a domain.
func TestUnknownLocalDomainFailsClosed(t *testing.T) {
	cfg, err := ParseConfig([]byte("inbound:\n  - {proto: tcp, port: 22, groups: [admins]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(cfg, Options{Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.SetPeer(partner("admin1", 3, "admins"))
	if f.Inbound(tcpIn(v4(3), 1000, 22)) != Drop {
		t.Fatal("a peer with a domain passed a groups rule of a firewall without one")
	}
	if d := f.Check(Query{Peer: PeerInfo{Name: "a", Groups: []string{"admins"}}, Proto: ProtoTCP, Port: 22}); !d.Allowed {
		t.Fatalf("a query without a domain: %+v", d)
	}
}

// TestSameNameOtherDomainIsAnotherPeer: a partner's peer named like a local
// one is a peer of its own: admitting or removing it leaves the local
// peer's addresses, state and counters alone, and events name its domain.
func TestSameNameOtherDomainIsAnotherPeer(t *testing.T) {
	f, _ := testFW(t, "inbound:\n  - {proto: tcp, port: 22, host: any}\n", peerInfo("admin1", 2))
	sub := f.Events(16)
	if f.Inbound(tcpIn(v4(2), 1000, 22)) != Accept {
		t.Fatal("local admin1 refused")
	}
	f.SetPeer(partner("admin1", 3))
	if f.Inbound(tcpIn(v4(2), 1001, 22)) != Accept {
		t.Fatal("local admin1 lost its addresses when a partner's admin1 was admitted")
	}
	f.Inbound(tcpIn(v4(3), 1000, 23)) // a drop by the partner's admin1
	ps := f.Peers()
	if len(ps) != 2 || ps[0].Domain != localDomain || ps[1].Domain != "evil.example" || ps[0].Accepted != 2 || ps[1].Dropped != 1 {
		t.Fatalf("peers %+v", ps)
	}
	if st := f.Stats(); st.PeerDrops["admin1@evil.example"]["default-deny"] != 1 || len(st.PeerDrops["admin1"]) != 0 {
		t.Fatalf("peer drops %v", st.PeerDrops)
	}
	if ev := <-sub.C; ev.Peer != "admin1@evil.example" {
		t.Fatalf("event names %q, want admin1@evil.example", ev.Peer)
	}
	f.RemovePeer("evil.example", "admin1")
	if f.Inbound(tcpIn(v4(2), 1002, 22)) != Accept {
		t.Fatal("removing the partner's admin1 removed the local one")
	}
	if f.Inbound(tcpIn(v4(3), 1001, 22)) != Drop {
		t.Fatal("the removed partner peer still passes")
	}
	loads := f.Loads(nil)
	if len(loads) != 1 || loads[0].Name != "admin1" || loads[0].Domain != localDomain {
		t.Fatalf("loads %+v", loads)
	}
}
