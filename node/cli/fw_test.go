package cli

import (
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestFwCheckWrappedRulesAndExitCodes: --rules takes the section under a
// firewall: key as well as bare; the exit status is 0 allowed, 1 denied, 2
// for rules that cannot be read or parsed and for a wrong invocation.
func TestFwCheckWrappedRulesAndExitCodes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wrapped := write("wrapped.yaml", "firewall:\n"+indent(fwRules)+"\n")
	bare := write("bare.yaml", fwRules)
	badRule := write("bad.yaml", "firewall:\n  inbound:\n    - {proto: tcp, port: 99999, host: any}\n")
	nodeCfg := write("node.yaml", "vault: {path: v}\nfirewall:\n  inbound: []\n")
	allow := []string{"--from", "a1", "--groups", "admins,prod", "--proto", "tcp", "--port", "22"}
	deny := []string{"--from", "a1", "--groups", "admins", "--proto", "tcp", "--port", "22"}
	for _, tt := range []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"wrapped allowed", append([]string{"--rules", wrapped}, allow...), 0, "allowed by inbound[1] line 4", ""},
		{"wrapped denied", append([]string{"--rules", wrapped}, deny...), 1, "no rule matched", ""},
		{"bare allowed", append([]string{"--rules", bare}, allow...), 0, "allowed by inbound[1] line 3", ""},
		{"wrapped tests section", []string{"--rules", write("wt.yaml", "firewall:\n"+indent(fwRules+"tests:\n  - {from: {name: a1, groups: [admins, prod]}, proto: tcp, port: 22, expect: allow}\n")+"\n")}, 0, "1 passed, 0 failed", ""},
		{"bad rule", append([]string{"--rules", badRule}, allow...), 2, "", "line 3"},
		{"missing file", append([]string{"--rules", filepath.Join(dir, "none.yaml")}, allow...), 2, "", "no such file"},
		{"node config as rules", append([]string{"--rules", nodeCfg}, allow...), 2, "", `"vault" next to firewall`},
		{"bad config", append([]string{"--config", filepath.Join(dir, "none.yaml")}, allow...), 2, "", "no such file"},
		{"usage", []string{"--rules", bare, "--from", "a", "--port", "70000"}, 2, "", "Usage:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := gridnet(t, nil, "", append([]string{"fw", "check"}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.stdout) || !strings.Contains(errOut, tt.stderr) {
				t.Errorf("exit %d (want %d)\nstdout: %s(want %q)\nstderr: %s(want %q)", code, tt.code, out, tt.stdout, errOut, tt.stderr)
			}
		})
	}
}

// TestFwCheckFederatedDomain: a host or groups rule without domain matches
// only this node's domain: a partner's admins are denied unless the rule
// names their domain, and the output says which domain matched.
func TestFwCheckFederatedDomain(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "fw.yaml")
	body := "firewall:\n  inbound:\n    - {proto: tcp, port: 22, groups: [admins]}\n    - {proto: tcp, port: 2222, groups: [admins], domain: partner.example}\n"
	if err := os.WriteFile(rules, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	// A node config whose cert: file says this node's domain.
	lca, err := newLocalCA("corp-ca", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := lca.NodeOptions("web1", netip.MustParsePrefix("100.64.0.2/10"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(dir, "web1.crt")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: opts.Certificate}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(cfg, []byte("vault: {path: v}\ncert: web1.crt\n"+body), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "gone.yaml") // names a cert: file that does not exist
	if err := os.WriteFile(missing, []byte("vault: {path: v}\ncert: gone.crt\n"+body), 0o600); err != nil {
		t.Fatal(err)
	}
	evil := []string{"--groups", "admins", "--domain", "evil.example", "--port", "22"}
	for _, tt := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"partner admin, no local domain known", append([]string{"--rules", rules}, evil...), 1,
			[]string{"denied: no rule matched", "domain: the peer's is evil.example", "hint: rule inbound[0] line 3 would allow it", "give --local-domain"}},
		{"partner admin, local domain given", append([]string{"--rules", rules, "--local-domain", "corp.example"}, evil...), 1,
			[]string{"denied", "only this node's domain corp.example", "add domain: evil.example"}},
		{"partner admin, local domain from cert:", append([]string{"--config", cfg}, evil...), 1,
			[]string{"denied", "only this node's domain corp.example"}},
		{"local admin by default", []string{"--config", cfg, "--groups", "admins", "--port", "22"}, 0,
			[]string{"allowed by inbound[0] line 5", "domain: corp.example matched as this node's domain"}},
		{"local admin named", []string{"--config", cfg, "--groups", "admins", "--domain", "corp.example", "--port", "22"}, 0,
			[]string{"allowed by inbound[0] line 5"}},
		{"rule naming the partner's domain", []string{"--rules", rules, "--groups", "admins", "--domain", "partner.example", "--port", "2222"}, 0,
			[]string{"allowed by inbound[1] line 4", "domain: partner.example matched, named by the rule"}},
		{"--local-domain wins over a missing cert:", []string{"--config", missing, "--local-domain", "corp.example", "--groups", "admins", "--port", "22"}, 0,
			[]string{"allowed by inbound[0] line 5"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := gridnet(t, nil, "", append([]string{"fw", "check"}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
		})
	}
	// Without --local-domain, a cert: file that cannot be read is a bad config.
	if _, errOut, code := gridnet(t, nil, "", "fw", "check", "--config", missing, "--groups", "admins", "--port", "22"); code != 2 || !strings.Contains(errOut, "--local-domain") {
		t.Errorf("unreadable cert: exit %d, stderr %q", code, errOut)
	}
}
