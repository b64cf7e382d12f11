package node_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"

	"github.com/aigrid/gridnet/node/nodetest/freeport"
)

// joinDeadline bounds each wait of the join test: generous, only a hang
// or a missing mechanism misses it.
const joinDeadline = 90 * time.Second

// TestEmbeddedNodeJoinsGridnetUp: a program that uses only the node
// package's public API joins a fabric of two `gridnet up` processes. Its
// only static peer is the seed; it learns the other node by gossip, dials
// it by name and fetches the page that node serves, and the seed's
// `gridnet status` lists it.
func TestEmbeddedNodeJoinsGridnetUp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the gridnet binary and runs two nodes; not in -short")
	}
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	bin := p("gridnet")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/aigrid/gridnet").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	gridnet := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir = dir
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("gridnet %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	gridnet("vault", "keyfile", "k")
	gridnet("ca", "init", "--name", "ca", "--domain", "corp.example", "--ca-vault", "ca.vault", "--ca-vault-key-file", "k", "--out", "ca.crt")
	for i, name := range []string{"seed", "web", "emb"} {
		gridnet("cert", "issue", "--ca-vault", "ca.vault", "--ca-vault-key-file", "k", "--ca-cert", "ca.crt",
			"--name", name, "--ip", fmt.Sprintf("100.64.0.%d/10", i+1), "--out-vault", name+".vault", "--out-vault-key-file", "k", "--out", name+".crt")
	}
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from web") }))
	defer site.Close()

	free := freeport.UDP(t, 3)
	ports := map[string]int{"seed": int(free[0]), "web": int(free[1]), "emb": int(free[2])}
	config := func(name, extra string) {
		t.Helper()
		peers := ""
		if name != "seed" {
			peers = fmt.Sprintf("peers: [\"127.0.0.1:%d\"]\n", ports["seed"])
		}
		cfg := fmt.Sprintf("vault: {path: %[1]s.vault, key_file: k}\nlisten: 0.0.0.0:%[2]d\n%[3]scontrol: {socket: %[1]s.sock}\nlog: {level: warn}\ngossip: {enabled: true, advertise: [\"127.0.0.1:%[2]d\"]}\n%[4]s",
			name, ports[name], peers, extra)
		if err := os.WriteFile(p(name+".yaml"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	config("seed", "")
	config("web", fmt.Sprintf("serve:\n  - {port: 80, to: %s}\nfirewall:\n  inbound:\n    - {proto: tcp, port: 80, host: any}\n", site.Listener.Addr()))
	config("emb", "")
	for _, name := range []string{"seed", "web"} {
		var logs bytes.Buffer
		cmd := exec.Command(bin, "up", "--config", name+".yaml")
		cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = dir, cleanEnv(), &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("gridnet up %s: %v\n%s", name, err, logs.String())
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Errorf("gridnet up %s did not stop within 30 s of SIGTERM", name)
			}
		})
	}

	// The embedding program: the public API only.
	n, err := node.StartFromConfig(ctx, p("emb.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	client := &http.Client{Transport: &http.Transport{DialContext: n.Dial}, Timeout: 10 * time.Second}
	var body []byte
	for deadline := time.Now().Add(joinDeadline); ; time.Sleep(200 * time.Millisecond) {
		resp, err := client.Get("http://web/")
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the embedded node never fetched web's page: %v; its peers: %+v", err, n.Peers())
		}
	}
	if string(body) != "hello from web" {
		t.Errorf("web served %q", body)
	}
	if a, err := n.Resolve("web.corp.example"); err != nil || a.String() != "100.64.0.2" {
		t.Errorf("Resolve(web.corp.example) = %v, %v", a, err)
	}
	for deadline := time.Now().Add(joinDeadline); ; time.Sleep(200 * time.Millisecond) {
		if strings.Contains(gridnet("status", "--socket", "seed.sock"), "emb ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the seed's status never listed emb:\n%s", gridnet("status", "--socket", "seed.sock"))
		}
	}
}

// cleanEnv is this process's environment without vault key sources, so
// that the commands use only the key file the test made.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(k, "GRIDNET_") && k != "CREDENTIALS_DIRECTORY" {
			env = append(env, kv)
		}
	}
	return env
}
