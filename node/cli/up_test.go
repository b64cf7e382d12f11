package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"

	"github.com/aigrid/gridnet/node/nodetest/freeport"
)

// freeUDPPort returns a port for a node to bind that no other socket
// gets meanwhile (see package freeport).
func freeUDPPort(t *testing.T) int { return freeUDPPorts(t, 1)[0] }

// freeUDPPorts returns n distinct such ports.
func freeUDPPorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	for _, p := range freeport.UDP(t, n) {
		out = append(out, int(p))
	}
	return out
}

// upNode runs `gridnet up` in-process until the test ends and checks that
// it shuts down cleanly.
func upNode(t *testing.T, config string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	env, _, errb := cliEnv("", nil)
	done := make(chan int, 1)
	go func() { done <- run(ctx, rootCommand(), []string{"gridnet"}, []string{"up", "--config", config}, env) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("up exited %d:\n%s", code, errb)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("up did not stop within 10 s of cancel")
		}
	})
}

// TestUpControlAPI runs two nodes with `gridnet up` in this process and uses
// status, ping and reload through their control sockets.
func TestUpControlAPI(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	mustGridnet(t, nil, "vault", "keyfile", p("k"))
	mustGridnet(t, nil, "ca", "init", "--name", "ca", "--domain", "corp.example", "--vault", p("ca.vault"), "--vault-key-file", p("k"), "--out", p("ca.crt"))
	ports := freeUDPPorts(t, 2)
	names := []string{"alpha", "beta"}
	for i, name := range names {
		mustGridnet(t, nil, "cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"), "--ca-cert", p("ca.crt"),
			"--name", name, "--out-vault", p(name+".vault"), "--out-vault-key-file", p("k"), "--ip", fmt.Sprintf("100.64.0.%d/10", i+1), "--out", p(name+".crt"))
		peers := ""
		if i == 1 {
			peers = fmt.Sprintf("peers: [\"127.0.0.1:%d\"]\n", ports[0])
		}
		// beta lets pings in; alpha has no firewall section: inbound denied.
		fw := ""
		if name == "beta" {
			fw = "firewall:\n  inbound:\n    - {proto: icmp, port: any, host: any}\n"
		}
		cfg := fmt.Sprintf("vault:\n  path: %s.vault\n  key_file: k\nlisten: 0.0.0.0:%d\n%scontrol:\n  socket: %s.sock\nlog:\n  level: debug\n%s",
			name, ports[i], peers, name, fw)
		if err := os.WriteFile(p(name+".yaml"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		// --test validates and prints without starting anything.
		if out := mustGridnet(t, nil, "up", "--config", p(name+".yaml"), "--test"); !strings.Contains(out, name+".vault") {
			t.Errorf("up --test printed:\n%s", out)
		}
		upNode(t, p(name+".yaml"))
	}

	// The control socket is the node user's alone.
	var fi os.FileInfo
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if fi, err = os.Stat(p("alpha.sock")); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if fi == nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("control socket: %v", fi)
	}

	var st node.Status
	for {
		out, _, code := gridnet(t, nil, "", "status", "--json", "--socket", p("alpha.sock"))
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil && len(st.Peers) == 1 && !st.Peers[0].LastHandshake.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alpha never got a session with beta; last status %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st.Name != "alpha" || st.Peers[0].Name != "beta" || st.Peers[0].Addresses[0] != "100.64.0.2/10" {
		t.Errorf("status: %+v", st)
	}
	text := mustGridnet(t, nil, "status", "--socket", p("beta.sock"))
	if !strings.Contains(text, "alpha") || !strings.Contains(text, "100.64.0.1/10") {
		t.Errorf("beta status:\n%s", text)
	}
	out := mustGridnet(t, nil, "ping", "beta", "-c", "2", "--interval", "50ms", "--socket", p("alpha.sock"))
	if strings.Count(out, "reply from 100.64.0.2") != 2 {
		t.Errorf("ping:\n%s", out)
	}
	if _, errOut, code := gridnet(t, nil, "", "ping", "nobody", "-c", "1", "--socket", p("alpha.sock")); code == 0 || !strings.Contains(errOut, "nobody") {
		t.Errorf("ping to an unknown name: exit %d, %s", code, errOut)
	}
	mustGridnet(t, nil, "reload", "--socket", p("alpha.sock"))

	// alpha's firewall drops beta's pings (replies to alpha's own pings
	// passed by conntrack above), and says so in its events.
	if out, _, code := gridnet(t, nil, "", "ping", "alpha", "-c", "1", "--socket", p("beta.sock")); code == 0 {
		t.Errorf("beta's ping passed alpha's default-deny firewall:\n%s", out)
	}
	events := mustGridnet(t, nil, "events", "--socket", p("alpha.sock"))
	if !strings.Contains(events, "peer=beta proto=1") || !strings.Contains(events, "reason=default-deny") {
		t.Errorf("alpha's events:\n%s", events)
	}

	// Hot reload: a bad rule is refused with its line and the old rules
	// stay; a good one lets the pings in without a restart.
	alphaCfg, err := os.ReadFile(p("alpha.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bad := string(alphaCfg) + "firewall:\n  inbound:\n    - {proto: icmp, port: any, hots: any}\n"
	if err := os.WriteFile(p("alpha.yaml"), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := gridnet(t, nil, "", "fw", "reload", "--socket", p("alpha.sock")); code == 0 || !strings.Contains(errOut, "line 11") {
		t.Errorf("reload of a bad rule: exit %d, %s", code, errOut)
	}
	good := string(alphaCfg) + "firewall:\n  inbound:\n    - {proto: icmp, port: any, host: beta}\n"
	if err := os.WriteFile(p("alpha.yaml"), []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	mustGridnet(t, nil, "fw", "reload", "--socket", p("alpha.sock"))
	if out := mustGridnet(t, nil, "ping", "alpha", "-c", "1", "--socket", p("beta.sock")); !strings.Contains(out, "reply from 100.64.0.1") {
		t.Errorf("ping after reload:\n%s", out)
	}
}

// TestDemo runs the demo end to end: it must succeed and show each step.
func TestDemo(t *testing.T) {
	out, errOut, code := gridnet(t, nil, "", "demo")
	if code != 0 {
		t.Fatalf("demo exited %d:\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{"alpha  admitted: beta", "echoed intact", "reply from gamma", "blocked; beta's event: drop inbound from alpha", "alpha's check of mallory", "unknown_ca", "demo finished"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
