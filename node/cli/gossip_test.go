package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"
)

// TestUpGossipPeersAndCRLPush: three `gridnet up` nodes with gossip, where
// gamma knows only alpha, find each other; `gridnet peers` shows them and
// `gridnet crl push` at gamma cuts beta off at alpha.
func TestUpGossipPeersAndCRLPush(t *testing.T) {
	if testing.Short() {
		t.Skip("three nodes with LAN gossip timings")
	}
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	mustGridnet(t, nil, "vault", "keyfile", p("k"))
	mustGridnet(t, nil, "ca", "init", "--name", "ca", "--domain", "corp.example", "--vault", p("ca.vault"), "--vault-key-file", p("k"), "--out", p("ca.crt"))
	names := []string{"alpha", "beta", "gamma"}
	ports := freeUDPPorts(t, 3)
	for i, name := range names {
		mustGridnet(t, nil, "cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"), "--ca-cert", p("ca.crt"),
			"--name", name, "--out-vault", p(name+".vault"), "--out-vault-key-file", p("k"), "--ip", fmt.Sprintf("100.64.0.%d/10", i+1), "--out", p(name+".crt"))
		peers := ""
		if i > 0 {
			peers = fmt.Sprintf("peers: [\"127.0.0.1:%d\"]\n", ports[0])
		}
		cfg := fmt.Sprintf("vault:\n  path: %s.vault\n  key_file: k\nlisten: 0.0.0.0:%d\n%scontrol:\n  socket: %s.sock\n"+
			"gossip:\n  enabled: true\n  advertise: [\"127.0.0.1:%d\"]\nfirewall:\n  inbound:\n    - {proto: icmp, port: any, host: any}\n",
			name, ports[i], peers, name, ports[i])
		if err := os.WriteFile(p(name+".yaml"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		upNode(t, p(name+".yaml"))
	}

	deadline := time.Now().Add(30 * time.Second)
	var members []node.MemberView
	for {
		out, _, code := gridnet(t, nil, "", "peers", "--json", "--socket", p("gamma.sock"))
		members = nil
		ok := code == 0 && json.Unmarshal([]byte(out), &members) == nil
		admitted := 0
		for _, m := range members {
			if m.Admitted && m.State == "alive" {
				admitted++
			}
		}
		if ok && admitted == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gamma never admitted both others through gossip: %+v", members)
		}
		time.Sleep(100 * time.Millisecond)
	}
	text := mustGridnet(t, nil, "peers", "--socket", p("gamma.sock"))
	if !strings.Contains(text, "beta") || !strings.Contains(text, "alive") {
		t.Errorf("peers:\n%s", text)
	}
	// gamma reaches beta, which it was never told about.
	if out := mustGridnet(t, nil, "ping", "beta", "-c", "1", "--socket", p("gamma.sock")); !strings.Contains(out, "reply from 100.64.0.2") {
		t.Errorf("gamma ping beta:\n%s", out)
	}

	mustGridnet(t, nil, "ca", "revoke", "--ca-vault", p("ca.vault"), "--vault-key-file", p("k"), "--ca-cert", p("ca.crt"),
		"--cert", p("beta.crt"), "--crl", p("crl.pem"))
	if out := mustGridnet(t, nil, "crl", "push", p("crl.pem"), "--socket", p("gamma.sock")); !strings.Contains(out, "applied") {
		t.Errorf("crl push:\n%s", out)
	}
	if out := mustGridnet(t, nil, "crl", "push", p("crl.pem"), "--socket", p("gamma.sock")); !strings.Contains(out, "not newer") {
		t.Errorf("second crl push:\n%s", out)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var st node.Status
		out := mustGridnet(t, nil, "status", "--json", "--socket", p("alpha.sock"))
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		still := false
		for _, peer := range st.Peers {
			still = still || peer.Name == "beta"
		}
		if !still {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("alpha still has beta 10 s after the CRL was pushed at gamma")
		}
	}
}
