package policy

import (
	"testing"
)

// FuzzParse feeds arbitrary bytes to the packet parser and the whole
// filter: no panic, and a packet that parses has consistent bounds.
func FuzzParse(f *testing.F) {
	f.Add(tcpIn(v4(2), 1000, 22))
	f.Add(pk{src: v6(2), dst: selfV6, proto: protoICMPv6, icmpType: 128, icmpID: 3}.build())
	f.Add([]byte{0x45})
	fw, _ := testFW(f, "inbound:\n  - {port: any, proto: any, host: any}\n", peerInfo("a", 2))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p packet
		if parse(b, &p, false) == parseOK {
			if p.length > len(b) || p.l4 > p.length {
				t.Fatalf("bounds: length %d l4 %d len %d", p.length, p.l4, len(b))
			}
		}
		parse(b, &p, true)
		fw.Inbound(b)
		fw.Outbound(b)
	})
}

// FuzzParseConfig: any YAML is refused with an error or parsed, never a
// panic; a parsed config compiles.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(verdictRules))
	f.Add([]byte("inbound:\n  - {port: 90-80, proto: tcp, host: any}\n"))
	f.Add([]byte("tests:\n  - {from: {name: a}, proto: tcp, port: 22, expect: deny}\n"))
	f.Add([]byte("firewall:\n  inbound:\n    - {proto: tcp, port: 22, groups: [admins], domain: corp.example}\n"))
	f.Add([]byte("firewall:\nvault: {path: v}\n"))
	f.Add([]byte("trust: {blocked_window: 30s, icmp_penalty: true}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		fw, err := New(c, Options{Now: newClock().Now})
		if err != nil {
			t.Fatalf("parsed config does not compile: %v", err)
		}
		c.RunTests(fw)
		fw.Close()
	})
}
