package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestConfigErrorsNameTheLine(t *testing.T) {
	cases := []struct {
		name, yml string
		line      int
		is        error
		has       string
	}{
		{"unknown top key", "inbound: []\nfirewal: {}\n", 2, ErrUnknownKey, "firewal"},
		{"unknown rule key", "inbound:\n  - {port: 22, proto: tcp, host: any}\n  - {port: 22, prot: tcp, host: any}\n", 3, ErrUnknownKey, "prot"},
		{"bad port range", "inbound:\n  - {port: 90-80, proto: tcp, host: any}\n", 2, ErrBadValue, "start after end"},
		{"port too big", "inbound:\n\n  - {port: 70000, proto: tcp, host: any}\n", 3, ErrBadValue, "70000"},
		{"bad proto", "inbound:\n  - {port: 22, proto: tcpp, host: any}\n", 2, ErrBadValue, "tcpp"},
		{"unknown service", "services:\n  ssh: {proto: tcp, port: 22}\ninbound:\n  - {service: web, host: any}\n", 4, ErrUnknownService, "web"},
		{"no identity", "inbound:\n  - {port: 22, proto: tcp}\n", 2, ErrMissing, "host: any"},
		{"missing port", "inbound:\n  - {proto: tcp, host: any}\n", 2, ErrMissing, "port"},
		{"group and groups", "inbound:\n  - {port: 22, proto: tcp, group: a,\n     groups: [b]}\n", 3, ErrBadValue, "not both"},
		{"bad cidr", "inbound:\n  - {port: 22, proto: tcp, cidr: 10.0.0/8}\n", 2, ErrBadValue, "cidr"},
		{"min_trust range", "inbound:\n  - {port: 22, proto: tcp, host: any, min_trust: 2}\n", 2, ErrBadValue, "min_trust"},
		{"min_trust on deny", "inbound:\n  - {action: deny, port: 22, proto: tcp, host: any, min_trust: 0.5}\n", 2, ErrBadValue, "allow rules"},
		{"bad action", "inbound:\n  - {action: maybe, port: 22, proto: tcp, host: any}\n", 2, ErrBadValue, "maybe"},
		{"icmp with port", "inbound:\n  - {port: 22, proto: icmp, host: any}\n", 2, ErrBadValue, "icmp"},
		{"service unknown key", "services:\n  web: {proto: tcp, port: 80, alow: {host: a}}\n", 2, ErrUnknownKey, "alow"},
		{"service port and rule port", "services:\n  web: {proto: tcp, port: 80}\ninbound:\n  - {service: web, port: 80, host: any}\n", 4, ErrBadValue, "service"},
		{"trust key", "trust:\n  threshhold: 0.3\n", 2, ErrUnknownKey, "threshhold"},
		{"flood value", "flood:\n  max_flows: -1\n", 2, ErrBadValue, "max_flows"},
		{"duration", "trust: {quarantine: soon}\n", 1, ErrBadValue, "soon"},
		{"test expect", "tests:\n  - {from: {name: a}, proto: tcp, port: 22, expect: maybe}\n", 2, ErrBadValue, "maybe"},
		{"duplicate key", "inbound:\n  - {port: 22, port: 23, proto: tcp, host: any}\n", 2, ErrBadValue, "duplicate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.yml))
			if err == nil {
				t.Fatal("accepted")
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("not a ConfigError: %v", err)
			}
			if ce.Line != c.line || !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.has) {
				t.Fatalf("got %q (line %d), want line %d, %v, containing %q", err, ce.Line, c.line, c.is, c.has)
			}
			if !strings.HasPrefix(err.Error(), "line ") {
				t.Fatalf("error does not start with the line: %q", err)
			}
		})
	}
}

func TestParseConfigExample(t *testing.T) {
	c, err := ParseConfig([]byte(verdictRules + "outbound:\n  - {port: any, proto: any, host: any}\ntrust: {threshold: 0.3, quarantine: 60s}\nflood: {packets_per_sec: 1000, bytes_per_sec: 1e6, new_flows_per_sec: 50, max_flows_per_peer: 100, max_flows: 1000}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Inbound) != 12 || !c.OutboundSet || c.Flood.MaxFlows != 1000 || c.Trust.Quarantine.Seconds() != 60 {
		t.Fatalf("%+v", c)
	}
	if r := c.Inbound[1]; r.Line != 7 || r.Port.From != 22 || len(r.Groups) != 2 || r.MinTrust != 0.5 {
		t.Fatalf("rule %+v", r)
	}
	if c.Services[1].Name != "web" || c.Services[1].Port.To != 443 || len(c.Services[1].Allow) != 1 {
		t.Fatalf("services %+v", c.Services)
	}
	empty, err := ParseConfig(nil)
	if err != nil || len(empty.Inbound) != 0 || empty.OutboundSet {
		t.Fatalf("empty: %v %+v", err, empty)
	}
}

func TestCheck(t *testing.T) {
	f, _ := testFW(t, verdictRules)
	admin := peerInfo("admin1", 2, "admins", "prod")
	laptop := peerInfo("laptop-7", 4, "admins", "prod")
	cases := []struct {
		name      string
		q         Query
		allowed   bool
		rule, why string
	}{
		{"allowed", Query{Peer: admin, Proto: ProtoTCP, Port: 22}, true, "inbound[1] line 7", "allowed by rule inbound[1] line 7"},
		{"explicit deny", Query{Peer: laptop, Proto: ProtoTCP, Port: 22}, false, "inbound[4] line 10", "denied by rule inbound[4] line 10"},
		{"default", Query{Peer: admin, Proto: ProtoTCP, Port: 23}, false, "", "no rule matched (default deny)"},
		{"trust", Query{Peer: admin, Proto: ProtoTCP, Port: 22, Trust: 0.3}, false, "inbound[1] line 7", "trust 0.30 below 0.50 required by rule inbound[1] line 7"},
		{"range", Query{Peer: admin, Proto: ProtoTCP, Port: 8080}, true, "inbound[3] line 9", "allowed"},
		{"deny group", Query{Peer: PeerInfo{Name: "x", Groups: []string{"web-clients", "contractors"}}, Proto: ProtoTCP, Port: 7000}, false, "inbound[9] line 15", "denied by rule"},
		{"outbound default", Query{Direction: Outbound, Peer: admin, Proto: ProtoUDP, Port: 1}, true, "", "no outbound rules (default allow)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := f.Check(c.q)
			if d.Allowed != c.allowed || d.Rule != c.rule || !strings.HasPrefix(d.Reason, c.why) {
				t.Fatalf("got %+v, want allowed=%v rule=%q reason~%q", d, c.allowed, c.rule, c.why)
			}
		})
	}
	svc, _ := testFW(t, "services:\n  web: {proto: tcp, port: 80, allow: [{group: web-clients}]}\ninbound:\n  - {port: any, proto: any, host: any}\n")
	d := svc.Check(Query{Peer: admin, Proto: ProtoTCP, Port: 80})
	if d.Allowed || !strings.Contains(d.Reason, "allow list of service web (line 2)") {
		t.Fatalf("service layer: %+v", d)
	}
}

func TestRunTests(t *testing.T) {
	yml := verdictRules + `
tests:
  - {from: {name: laptop-7, groups: [admins, prod]}, proto: tcp, port: 22, expect: deny}
  - {from: {name: a1, groups: [admins, prod]}, proto: tcp, port: 22, expect: allow, rule: "inbound[1]"}
  - {from: {name: a1, groups: [admins]}, proto: tcp, port: 22, expect: allow}
  - {from: {name: a1, groups: [admins, prod]}, proto: tcp, port: 22, trust: 0.2, expect: allow}
  - {to: {name: any}, proto: udp, port: 53, expect: allow}
`
	c, err := ParseConfig([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(c, Options{Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res := c.RunTests(f)
	want := []bool{true, true, false, false, true}
	if len(res) != len(want) {
		t.Fatalf("%d results", len(res))
	}
	for i, r := range res {
		if r.Pass != want[i] {
			t.Errorf("test %d: pass=%v want %v (%s)", i, r.Pass, want[i], r.Problem)
		}
	}
	if !strings.Contains(res[3].Problem, "trust 0.20 below 0.50") {
		t.Errorf("problem: %q", res[3].Problem)
	}
}

// TestParseConfigWrapped: a rules file may hold the section as a node
// config writes it, under a single firewall: key, with the same lines in
// errors; a firewall: key next to other keys is refused.
func TestParseConfigWrapped(t *testing.T) {
	c, err := ParseConfig([]byte("firewall:\n  inbound:\n    - {proto: tcp, port: 22, groups: [admins]}\n  trust: {threshold: 0.4}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Inbound) != 1 || c.Inbound[0].Line != 3 || c.Trust.Threshold != 0.4 {
		t.Fatalf("wrapped: %+v", c)
	}
	if c, err := ParseConfig([]byte("firewall:\n")); err != nil || len(c.Inbound) != 0 {
		t.Fatalf("empty wrapped section: %v %+v", err, c)
	}
	_, err = ParseConfig([]byte("firewall:\n  inbound:\n    - {proto: tcp, port: 99999, host: any}\n"))
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("bad rule in a wrapped section: %v", err)
	}
	_, err = ParseConfig([]byte("vault: {path: v}\nfirewall:\n  inbound: []\n"))
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), "line 1") || !strings.Contains(err.Error(), `"vault" next to firewall`) {
		t.Fatalf("firewall next to other keys: %v", err)
	}
}
