package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fwRules = `inbound:
  - {proto: icmp, port: any, host: any}
  - {proto: tcp, port: 22, groups: [admins, prod], min_trust: 0.5}
  - {action: deny, proto: tcp, port: 22, host: laptop-7}
  - {proto: tcp, port: 8000-8100, domain: corp.example}
`

func TestFwCheckFlows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fw.yaml")
	if err := os.WriteFile(path, []byte(fwRules), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"allowed by group rule", []string{"--from", "a1", "--groups", "admins,prod", "--proto", "tcp", "--port", "22"}, 0, "allowed by inbound[1] line 3"},
		{"explicit deny beats allow", []string{"--from", "laptop-7", "--groups", "admins,prod", "--proto", "tcp", "--port", "22"}, 1, "line 4"},
		{"missing group", []string{"--from", "a2", "--groups", "admins", "--proto", "tcp", "--port", "22"}, 1, "no rule matched"},
		{"trust too low", []string{"--from", "a1", "--groups", "admins,prod", "--proto", "tcp", "--port", "22", "--trust", "0.3"}, 1, "trust 0.30 below 0.50"},
		{"port range and domain", []string{"--from", "w", "--domain", "corp.example", "--proto", "tcp", "--port", "8050"}, 0, "allowed by inbound[3] line 5"},
		{"outside the range", []string{"--from", "w", "--domain", "corp.example", "--proto", "tcp", "--port", "8101"}, 1, "no rule matched"},
		{"icmp from anyone", []string{"--from", "x", "--proto", "icmp"}, 0, "allowed by inbound[0] line 2"},
		{"outbound default allow", []string{"--from", "x", "--proto", "udp", "--port", "53", "--direction", "outbound"}, 0, "allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := gridnet(t, nil, "", append([]string{"fw", "check", "--rules", path}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.contains) {
				t.Errorf("exit %d (want %d), stdout %q (want %q), stderr %q", code, tt.code, out, tt.contains, errOut)
			}
		})
	}
}

func TestFwCheckRunsRuleSetTests(t *testing.T) {
	dir := t.TempDir()
	good := fwRules + `tests:
  - {from: {name: laptop-7, groups: [admins, prod]}, proto: tcp, port: 22, expect: deny}
  - {from: {name: a1, groups: [admins, prod]}, proto: tcp, port: 22, expect: allow}
`
	bad := good + `  - {from: {name: a1, groups: [admins]}, proto: tcp, port: 22, expect: allow}
`
	for _, tt := range []struct {
		name, yaml string
		code       int
		want       string
	}{
		{"passing", good, 0, "2 passed, 0 failed"},
		{"failing", bad, 1, "FAIL line 9"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			out, errOut, code := gridnet(t, nil, "", "fw", "check", "--rules", path)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Errorf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tt.code, out, errOut)
			}
		})
	}
}

// TestFwCheckBadRuleNamesLine: a node config with a bad rule is refused with
// the line of the rule.
func TestFwCheckBadRuleNamesLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.yaml")
	cfg := "vault:\n  path: v\nfirewall:\n  inbound:\n    - {proto: tcp, port: 22, host: any}\n    - {proto: tcp, port: 99999, host: any}\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := gridnet(t, nil, "", "fw", "check", "--config", path, "--from", "a", "--port", "22")
	if code == 0 || !strings.Contains(errOut, "line 6") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}
