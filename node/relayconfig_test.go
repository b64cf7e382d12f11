package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/stack/relay"
)

// TestRelayConfigDefaultsAndOptions: the proxy, serve and forward
// sections read with their defaults and become Options, passwords read
// from their files.
func TestRelayConfigDefaultsAndOptions(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.pass"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "node.yaml")
	writeFile(t, cfgPath, `vault: {path: v}
proxy:
  socks5: 127.0.0.1:1080
  users: [{name: app, password_file: app.pass}]
serve:
  - {port: 80, to: 127.0.0.1:8000}
  - {port: 53, proto: udp, to: "[::1]:5353", max_conns_per_peer: 4, idle_timeout: 30s}
forward:
  - {listen: 127.0.0.1:5432, to: db1:5432, connect_timeout: 3s}
`)
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	p, serve, forward, err := relayOptions(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p == nil || p.SOCKS5 != "127.0.0.1:1080" || p.HTTP != "" || len(p.Users) != 1 || p.Users[0].Name != "app" || p.Users[0].Password != "s3cret" {
		t.Errorf("proxy options %+v", p)
	}
	if want := (relay.Limits{MaxConns: 1024, IdleTimeout: 10 * time.Minute, ConnectTimeout: 10 * time.Second}); p.Limits != want {
		t.Errorf("proxy limits %+v, want %+v", p.Limits, want)
	}
	if len(serve) != 2 || serve[0] != (ServeOptions{Proto: "tcp", Port: 80, To: "127.0.0.1:8000", Limits: relay.Limits{MaxConns: 1024, MaxConnsPerSource: 128, IdleTimeout: 10 * time.Minute}}) ||
		serve[1] != (ServeOptions{Proto: "udp", Port: 53, To: "[::1]:5353", Limits: relay.Limits{MaxConns: 1024, MaxConnsPerSource: 4, IdleTimeout: 30 * time.Second}}) {
		t.Errorf("serve options %+v", serve)
	}
	if len(forward) != 1 || forward[0] != (ForwardOptions{Proto: "tcp", Listen: "127.0.0.1:5432", To: "db1:5432", Limits: relay.Limits{MaxConns: 1024, IdleTimeout: 10 * time.Minute, ConnectTimeout: 3 * time.Second}}) {
		t.Errorf("forward options %+v", forward)
	}
	// No proxy address: no proxy.
	cfg.Proxy.SOCKS5 = OptionalAddrPort{}
	if p, _, _, _ := relayOptions(cfg); p != nil {
		t.Errorf("proxy options without an address: %+v", p)
	}
}

// TestRelayConfigProblemsNameTheirLines: bad entries are refused with
// their line, every one of them.
func TestRelayConfigProblemsNameTheirLines(t *testing.T) {
	src := `vault: {path: v}
gossip: {enabled: true}
proxy:
  socks5: 127.0.0.1:1080
  http: 127.0.0.1:1080
  users: [{name: app}]
  max_conns: -1
serve:
  - {port: 80, to: 127.0.0.1:8000}
  - {port: 80, to: 127.0.0.1:8001}
  - {port: 7946, to: 127.0.0.1:8002}
  - {port: 81, to: nowhere}
  - {port: 82, proto: sctp, to: 127.0.0.1:1}
  - {prot: 83, to: 127.0.0.1:1}
forward:
  - {listen: 127.0.0.1:5432}
  - {listen: 127.0.0.1:1080, to: db1:1}
  - {listen: 127.0.0.1:5433, to: db1:1, idle_timeout: soon}
`
	_, err := ParseConfig([]byte(src))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		"line 5: proxy.http: tcp local address 127.0.0.1:1080 is proxy.socks5 too",
		"line 6: proxy.users[0].password_file: required",
		"line 7: proxy.max_conns: -1",
		"line 10: serve[1].port: tcp overlay port 80 is serve[0].port too",
		"line 11: serve[2].port: 7946 is the gossip port",
		`line 12: serve[3].to: "nowhere"`,
		`line 13: proto "sctp": want tcp or udp`,
		`line 14: unknown key "prot" in serve[5]; did you mean "port"?`,
		"line 16: forward[0].to: required",
		"line 17: forward[1].listen: tcp local address 127.0.0.1:1080 is proxy.socks5 too",
		`line 18: duration "soon"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestDurationYAML(t *testing.T) {
	for in, want := range map[time.Duration]string{
		10 * time.Minute: "10m", 90 * time.Minute: "1h30m", time.Hour: "1h", 1500 * time.Millisecond: "1.5s", 2*time.Minute + 5*time.Second: "2m5s",
	} {
		if got := Duration(in).String(); got != want {
			t.Errorf("Duration(%v) = %q, want %q", in, got, want)
		}
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
