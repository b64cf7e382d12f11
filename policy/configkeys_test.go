package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestUnknownKeySuggests: an unknown key near a known one of the same
// level gets a "did you mean" hint naming it, with the key's line.
func TestUnknownKeySuggests(t *testing.T) {
	cases := []struct {
		name, yml string
		line      int
		want      string
	}{
		{"top", "inbound: []\ninbuond: []\n", 2, `unknown key "inbuond"; did you mean "inbound"?`},
		{"rule", "inbound:\n  - {port: 22, prot: tcp, host: any}\n", 2, `unknown key "prot"; did you mean "proto"?`},
		{"rule identity", "inbound:\n  - {port: 22, proto: tcp,\n     gropus: [a]}\n", 3, `unknown key "gropus"; did you mean "groups"?`},
		{"service", "services:\n  web: {proto: tcp, port: 80, alow: {host: a}}\n", 2, `unknown key "alow"; did you mean "allow"?`},
		{"allow entry", "services:\n  web:\n    proto: tcp\n    port: 80\n    allow:\n      - {hots: a}\n", 6, `unknown key "hots" in an allow entry; did you mean "host"?`},
		{"trust", "trust:\n  threshhold: 0.3\n", 2, `unknown key "threshhold"; did you mean "threshold"?`},
		{"flood", "flood:\n  max_flow: 10\n", 2, `unknown key "max_flow"; did you mean "max_flows"?`},
		{"test", "tests:\n  - {form: {name: a}, proto: tcp, port: 22, expect: deny}\n", 2, `unknown key "form"; did you mean "from"?`},
		{"test peer", "tests:\n  - {from: {nmae: a}, proto: tcp, port: 22, expect: deny}\n", 2, `unknown key "nmae"; did you mean "name"?`},
		{"nothing close", "trust:\n  colour: blue\n", 2, `unknown key "colour" (want threshold, quarantine,`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.yml))
			var ce *ConfigError
			if !errors.As(err, &ce) || !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("want an unknown-key ConfigError, got %v", err)
			}
			if ce.Line != c.line || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %q (line %d), want line %d containing %q", err, ce.Line, c.line, c.want)
			}
		})
	}
}

// TestSuggestedKeysAreKeys: every key the hints may suggest is one the
// parser accepts at that level (a value of the wrong shape is a bad value,
// never an unknown key), and a one-letter slip of it suggests it.
func TestSuggestedKeysAreKeys(t *testing.T) {
	levels := []struct {
		name string
		keys []string
		// yml places key (with a value no key accepts) at this level.
		yml func(key string) string
	}{
		{"top", []string{"services", "inbound", "outbound", "trust", "flood", "tests"},
			func(k string) string { return k + ": [[[]]]\n" }},
		{"rule", append([]string{"action", "proto", "port", "service", "priority", "name", "description"}, matchKeys()...),
			func(k string) string { return "inbound:\n  - {" + k + ": [[[]]]}\n" }},
		{"service", []string{"proto", "port", "allow"},
			func(k string) string { return "services:\n  web: {" + k + ": [[[]]]}\n" }},
		{"allow entry", matchKeys(),
			func(k string) string {
				return "services:\n  web: {proto: tcp, port: 1, allow: [{" + k + ": [[[]]]}]}\n"
			}},
		{"trust", []string{"threshold", "quarantine", "half_life", "blocked_penalty", "flood_penalty", "expiry_window"},
			func(k string) string { return "trust: {" + k + ": [[[]]]}\n" }},
		{"flood", []string{"packets_per_sec", "packets_burst", "bytes_per_sec", "bytes_burst", "new_flows_per_sec", "new_flows_burst", "max_flows_per_peer", "max_flows"},
			func(k string) string { return "flood: {" + k + ": [[[]]]}\n" }},
		{"test", []string{"from", "to", "proto", "port", "trust", "expect", "rule"},
			func(k string) string { return "tests:\n  - {" + k + ": [[[]]]}\n" }},
		{"test peer", []string{"name", "group", "groups", "domain", "ca_name", "ca_sha", "attr", "addr"},
			func(k string) string { return "tests:\n  - {from: {" + k + ": {x: [[[]]]}}}\n" }},
	}
	for _, l := range levels {
		for _, k := range l.keys {
			t.Run(l.name+"/"+k, func(t *testing.T) {
				_, err := ParseConfig([]byte(l.yml(k)))
				if err == nil || errors.Is(err, ErrUnknownKey) {
					t.Fatalf("%q at %s: %v", k, l.name, err)
				}
				slip := k + "x"
				_, err = ParseConfig([]byte(l.yml(slip)))
				if want := fmt.Sprintf("did you mean %q?", k); !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), want) {
					t.Fatalf("%q at %s: got %v, want %s", slip, l.name, err, want)
				}
			})
		}
	}
}
