package cli

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/aigrid/gridnet/node"
)

// checkSetup is a CA, a node vault with keys and certificate, and a config
// file that `up --test` accepts.
type checkSetup struct {
	t    *testing.T
	dir  string
	port int
}

func (s *checkSetup) p(name string) string { return filepath.Join(s.dir, name) }

// newCheckSetup issues node "alpha" (vault alpha.vault, certificate
// alpha.crt) from CA "corp-ca" (ca.crt).
func newCheckSetup(t *testing.T) *checkSetup {
	t.Helper()
	s := &checkSetup{t: t, dir: t.TempDir(), port: freeUDPPort(t)}
	mustGridnet(t, nil, "vault", "keyfile", s.p("k"))
	mustGridnet(t, nil, "ca", "init", "--name", "corp-ca", "--domain", "corp.example", "--vault", s.p("ca.vault"), "--vault-key-file", s.p("k"), "--out", s.p("ca.crt"))
	mustGridnet(t, nil, "cert", "issue", "--ca-vault", s.p("ca.vault"), "--ca-vault-key-file", s.p("k"), "--ca-cert", s.p("ca.crt"),
		"--name", "alpha", "--out-vault", s.p("alpha.vault"), "--out-vault-key-file", s.p("k"), "--ip", "100.64.0.1/10", "--out", s.p("alpha.crt"))
	return s
}

// config writes node.yaml: the base config with extra appended, and
// returns its path. The line numbers of the base are fixed: vault 1-3,
// ca 4, cert 5, crl 6, listen 7, control 8-9.
func (s *checkSetup) config(extra string) string {
	s.t.Helper()
	cfg := fmt.Sprintf("vault:\n  path: alpha.vault\n  key_file: k\nca: ca.crt\ncert: alpha.crt\ncrl: crl.pem\nlisten: 0.0.0.0:%d\ncontrol:\n  socket: alpha.sock\n%s", s.port, extra)
	path := s.p("node.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return path
}

// upTest runs `gridnet up --config path --test` with the clock at now.
func upTest(t *testing.T, path string, now time.Time) (stdout, stderr string, code int) {
	t.Helper()
	env, out, errb := cliEnv("", nil)
	env.Now = func() time.Time { return now }
	code = run(context.Background(), rootCommand(), []string{"gridnet"}, []string{"up", "--config", path, "--test"}, env)
	return out.String(), errb.String(), code
}

// wantProblems runs up --test and wants exit 1 and every want in stderr.
func wantProblems(t *testing.T, path string, now time.Time, want ...string) {
	t.Helper()
	out, errOut, code := upTest(t, path, now)
	if code != 1 {
		t.Fatalf("exit %d, want 1\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if out != "" {
		t.Errorf("printed a config despite problems:\n%s", out)
	}
	for _, w := range want {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
}

func TestUpTestAcceptsAGoodConfig(t *testing.T) {
	s := newCheckSetup(t)
	out, errOut, code := upTest(t, s.config(""), time.Now())
	if code != 0 || !strings.Contains(out, "vault:\n") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}

func TestUpTestMissingCAFile(t *testing.T) {
	s := newCheckSetup(t)
	if err := os.Remove(s.p("ca.crt")); err != nil {
		t.Fatal(err)
	}
	wantProblems(t, s.config(""), time.Now(), "config "+s.p("node.yaml")+": line 4: ca: open "+s.p("ca.crt")+": no such file or directory")
}

func TestUpTestForeignCA(t *testing.T) {
	s := newCheckSetup(t)
	// Another CA for the same domain: same name in the certificate's
	// issuer field would not help, the key differs.
	mustGridnet(t, nil, "ca", "init", "--name", "other-ca", "--domain", "corp.example", "--vault", s.p("other.vault"), "--vault-key-file", s.p("k"), "--out", s.p("other.crt"))
	path := s.config("")
	cfg := strings.Replace(readFile(t, path), "ca: ca.crt", "ca: other.crt", 1)
	writeFile(t, path, cfg)
	wantProblems(t, path, time.Now(), "line 5: cert: node certificate "+s.p("alpha.crt"), `is not signed by any CA of the CA bundle `+s.p("other.crt")+`: its issuer is "corp-ca"`)
}

func TestUpTestRevokedByCRL(t *testing.T) {
	s := newCheckSetup(t)
	path := s.config("")
	if _, _, code := upTest(t, path, time.Now()); code != 0 {
		t.Fatal("refused before the revocation")
	}
	mustGridnet(t, nil, "ca", "revoke", "--ca-vault", s.p("ca.vault"), "--vault-key-file", s.p("k"), "--ca-cert", s.p("ca.crt"), "--cert", s.p("alpha.crt"), "--crl", s.p("crl.pem"))
	wantProblems(t, path, time.Now(), "line 5: cert: ", `("alpha", serial `, "is revoked by the CRL "+s.p("crl.pem"))
}

func TestUpTestCertificateTimes(t *testing.T) {
	s := newCheckSetup(t)
	path := s.config("")
	// The certificate is valid for a year (the CA for five).
	wantProblems(t, path, time.Now().Add(400*24*time.Hour), "line 5: cert: ", `("alpha") expired at `, "renew it")
	wantProblems(t, path, time.Now().Add(-48*time.Hour), "line 5: cert: ", `("alpha") is not valid before `, "clock")
}

// TestUpTestCertificateForOtherKeys: a certificate the CA signed, but for
// another node's keys, is refused.
func TestUpTestCertificateForOtherKeys(t *testing.T) {
	s := newCheckSetup(t)
	mustGridnet(t, nil, "cert", "issue", "--ca-vault", s.p("ca.vault"), "--ca-vault-key-file", s.p("k"), "--ca-cert", s.p("ca.crt"),
		"--name", "beta", "--out-vault", s.p("beta.vault"), "--out-vault-key-file", s.p("k"), "--ip", "100.64.0.2/10", "--out", s.p("beta.crt"))
	path := s.config("")
	writeFile(t, path, strings.Replace(readFile(t, path), "cert: alpha.crt", "cert: beta.crt", 1))
	wantProblems(t, path, time.Now(), "line 5: cert: node certificate "+s.p("beta.crt")+" does not belong to the keys in the vault")
}

func TestUpTestPortInUse(t *testing.T) {
	s := newCheckSetup(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: s.port})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantProblems(t, s.config(""), time.Now(), fmt.Sprintf("line 7: listen: UDP port %d is already in use", s.port))
}

func TestUpTestControlSocketInTheWay(t *testing.T) {
	s := newCheckSetup(t)
	writeFile(t, s.p("alpha.sock"), "not a socket")
	wantProblems(t, s.config(""), time.Now(), "line 9: control.socket: "+s.p("alpha.sock")+" exists and is not a socket")
}

// TestUpTestListsEveryProblem: several problems are reported together, in
// the order of their lines.
func TestUpTestListsEveryProblem(t *testing.T) {
	s := newCheckSetup(t)
	for _, f := range []string{"ca.crt", "alpha.crt", "k"} {
		if err := os.Remove(s.p(f)); err != nil {
			t.Fatal(err)
		}
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: s.port})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, errOut, code := upTest(t, s.config(""), time.Now())
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	want := []string{"4 problems:", "\n  line 3: vault.key_file: ", "\n  line 4: ca: ", "\n  line 5: cert: ", "\n  line 7: listen: "}
	at := 0
	for _, w := range want {
		i := strings.Index(errOut[at:], w)
		if i < 0 {
			t.Fatalf("stderr lacks %q after offset %d:\n%s", w, at, errOut)
		}
		at += i + len(w)
	}
}

// TestUpTestVaultItems: without ca: and cert:, the bundle and the
// certificate in the vault are checked.
func TestUpTestVaultItems(t *testing.T) {
	s := newCheckSetup(t)
	cfg := fmt.Sprintf("vault:\n  path: alpha.vault\n  key_file: k\nlisten: 0.0.0.0:%d\ncontrol:\n  socket: alpha.sock\n", s.port)
	path := s.p("vault-only.yaml")
	writeFile(t, path, cfg)
	if out, errOut, code := upTest(t, path, time.Now()); code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	wantProblems(t, path, time.Now().Add(400*24*time.Hour), "line 2: vault.path: node certificate in the vault "+s.p("alpha.vault"), "expired at")
}

// TestUpTestPrintsEffectiveYAML: the output is YAML with the config file's
// keys, enum names, duration strings and the defaults filled in, and it
// loads back as the same configuration.
func TestUpTestPrintsEffectiveYAML(t *testing.T) {
	s := newCheckSetup(t)
	path := s.config("tun:\n  mode: userspace\nlog:\n  level: warn\ngossip:\n  enabled: true\n  advertise: [\"127.0.0.1:4242\"]\nfirewall:\n  inbound:\n    - {proto: icmp, port: any, host: any}\n  trust:\n    quarantine: 90s\n")
	out, errOut, code := upTest(t, path, time.Now())
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut)
	}
	for _, want := range []string{
		"\nvault:\n  path: " + s.p("alpha.vault") + "\n  key_file: " + s.p("k") + "\n",
		"\nca: " + s.p("ca.crt") + "\n",
		fmt.Sprintf("\nlisten: 0.0.0.0:%d\n", s.port),
		"\ntun:\n  mode: userspace\n  name: gridnet0\n  mtu: 1280\n",
		"\nlog:\n  level: warn\n  format: text\n",
		"\n  port: 7946\n",
		"\nmemory_limit_mib: 128\n",
		"\n    - {action: allow, proto: icmp, port: any, host: any}\n",
		"\n    quarantine: 1m30s\n",
		"\n    half_life: 5m\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, bad := range []string{"Vault", "MemoryLimitMiB", "Level:", "MTU", "\"Mode\"", "000000000"} {
		if strings.Contains(out, bad) {
			t.Errorf("output has %q (a Go field name or raw number):\n%s", bad, out)
		}
	}
	// Every key is a snake_case word.
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("output is not YAML: %v\n%s", err, out)
	}
	assertSnakeKeys(t, "", doc)

	// Round trip: load, print, load gives the same configuration, and
	// prints the same again.
	first, err := node.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(t.TempDir(), "printed.yaml")
	writeFile(t, again, out)
	second, err := node.LoadConfig(again)
	if err != nil {
		t.Fatalf("printed config does not load: %v\n%s", err, out)
	}
	if a, b := comparable(first), comparable(second); !reflect.DeepEqual(a, b) {
		t.Errorf("round trip changed the config:\n%+v\n%+v", a, b)
	}
	p1, err := effectiveYAML(first)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := effectiveYAML(second)
	if err != nil {
		t.Fatal(err)
	}
	if string(p1) != string(p2) {
		t.Errorf("printed configs differ:\n%s\n---\n%s", p1, p2)
	}
}

// comparable is c without what a round trip may change: where it was
// read from and its lines (the unexported fields: only the exported ones
// are copied), empty lists, and the firewall section's YAML (its rules
// are compared as printed).
func comparable(c *node.Config) node.Config {
	var out node.Config
	src, dst := reflect.ValueOf(c).Elem(), reflect.ValueOf(&out).Elem()
	for i := 0; i < src.NumField(); i++ {
		if src.Type().Field(i).IsExported() {
			dst.Field(i).Set(src.Field(i))
		}
	}
	out.Firewall, out.FirewallRules = yaml.Node{}, nil
	// "peers: []" and no peers key are the same.
	if len(out.Peers) == 0 {
		out.Peers = nil
	}
	if len(out.Gossip.Advertise) == 0 {
		out.Gossip.Advertise = nil
	}
	if len(out.Serve) == 0 {
		out.Serve = nil
	}
	if len(out.Forward) == 0 {
		out.Forward = nil
	}
	if len(out.Proxy.Users) == 0 {
		out.Proxy.Users = nil
	}
	return out
}

func assertSnakeKeys(t *testing.T, path string, v any) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if k != strings.ToLower(k) || strings.ContainsAny(k, "- ") {
				t.Errorf("key %q at %q is not snake_case", k, path)
			}
			assertSnakeKeys(t, path+"."+k, e)
		}
	case []any:
		// Flow-style rules are mappings too, but their keys are the
		// firewall's (checked by package policy); lists of scalars have
		// none.
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// FuzzConfigRoundTrip: a config ParseConfig accepts has no key a strict
// decoder would refuse (the key check misses nothing), and its effective
// YAML parses back into the same configuration.
func FuzzConfigRoundTrip(f *testing.F) {
	f.Add([]byte("vault:\n  path: v\n"))
	f.Add([]byte("vault: {path: v, key_file: k}\nca: c\ncert: n\ncrl: r\nlisten: \"[::]:1\"\npeers: [\"127.0.0.1:2\"]\ntun: {mode: kernel, name: t0, mtu: 9000}\ncontrol: {socket: s}\nlog: {level: debug+2, format: json}\ngossip: {enabled: true, port: 1, advertise: [\"[::1]:3\"]}\nmemory_limit_mib: -1\nfirewall:\n  inbound:\n    - {proto: tcp, port: 22, host: \"yes\"}\n"))
	f.Add([]byte("vault:\n  <<: {path: v}\n  key_file: k\nlog: &l {level: warn}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := node.ParseConfig(data)
		if err != nil {
			return
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&node.Config{}); err != nil && err.Error() != "EOF" {
			t.Fatalf("accepted a config a strict decoder refuses: %v", err)
		}
		out, err := effectiveYAML(cfg)
		if err != nil {
			t.Fatal(err)
		}
		back, err := node.ParseConfig(out)
		if err != nil {
			t.Fatalf("printed config does not parse: %v\n%s", err, out)
		}
		if a, b := comparable(cfg), comparable(back); !reflect.DeepEqual(a, b) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v\nprinted:\n%s", a, b, out)
		}
		again, err := effectiveYAML(back)
		if err != nil {
			t.Fatal(err)
		}
		if string(again) != string(out) {
			t.Fatalf("printed twice differently:\n%s\n---\n%s", out, again)
		}
	})
}
