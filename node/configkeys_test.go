package node

import (
	"strings"
	"testing"
)

// TestParseConfigSuggestsKeys: an unknown key in the node config names the
// closest known key of its section, and every problem is listed.
func TestParseConfigSuggestsKeys(t *testing.T) {
	src := "vault:\n  pth: v\nlisen: 0.0.0.0:1\ntun:\n  mdoe: kernel\n  mtu: 12\nbogus: 1\nfirewall:\n  inbound:\n    - {proto: tcp, prot: 22, host: any}\n"
	_, err := ParseConfig([]byte(src))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		`line 2: unknown key "pth" in vault; did you mean "path"?`,
		`line 3: unknown key "lisen"; did you mean "listen"?`,
		`line 5: unknown key "mdoe" in tun; did you mean "mode"?`,
		`line 6: mtu "12": want an integer from 1280 to 9000`,
		`line 7: unknown key "bogus" (want vault, ca, cert, crl, listen, peers, tun, control, log, gossip, proxy, serve, forward, dns, metrics, memory_limit_mib, firewall)`,
		`line 10: firewall.inbound[0].prot: unknown key "prot"; did you mean "proto"?`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// TestParseConfigSectionNotAMapping: a section written as a scalar or a
// list is named as such, once, with the keys it takes.
func TestParseConfigSectionNotAMapping(t *testing.T) {
	_, err := ParseConfig([]byte("vault: [1, 2]\ntun: 3\n"))
	if err == nil {
		t.Fatal("accepted")
	}
	want := "config: 2 problems:\n  line 1: vault: want a mapping of path, key_file\n  line 2: tun: want a mapping of mode, name, mtu"
	if err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}
