package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"
)

// userEnv is a command Env for a process with effective user id euid and
// the environment variables vars.
func userEnv(euid int, vars map[string]string) Env {
	env, _, _ := cliEnv("", vars)
	env.Geteuid = func() int { return euid }
	return env
}

// TestDefaultControlSocket: root keeps /run/gridnet; another user gets
// $XDG_RUNTIME_DIR/gridnet, else the config's folder; $GRIDNET_SOCKET and
// the config's control.socket come first.
func TestDefaultControlSocket(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(cfgPath, []byte("vault: {path: node.vault}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withSocket := filepath.Join(dir, "explicit.yaml")
	if err := os.WriteFile(withSocket, []byte("vault: {path: node.vault}\ncontrol: {socket: my.sock}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	xdg := map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}
	cases := []struct {
		name   string
		env    Env
		config string
		want   string
	}{
		{"root", userEnv(0, xdg), cfgPath, DefaultControlSocket},
		{"user with XDG_RUNTIME_DIR", userEnv(1000, xdg), cfgPath, "/run/user/1000/gridnet/gridnet.sock"},
		{"user without XDG_RUNTIME_DIR", userEnv(1000, nil), cfgPath, filepath.Join(dir, "gridnet.sock")},
		{"relative XDG_RUNTIME_DIR is ignored", userEnv(1000, map[string]string{"XDG_RUNTIME_DIR": "run"}), cfgPath, filepath.Join(dir, "gridnet.sock")},
		{"GRIDNET_SOCKET", userEnv(1000, map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000", SocketEnv: "/tmp/g.sock"}), cfgPath, "/tmp/g.sock"},
		{"GRIDNET_SOCKET for root", userEnv(0, map[string]string{SocketEnv: "/tmp/g.sock"}), cfgPath, "/tmp/g.sock"},
		{"config wins", userEnv(1000, map[string]string{SocketEnv: "/tmp/g.sock"}), withSocket, filepath.Join(dir, "my.sock")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := node.LoadConfig(c.config)
			if err != nil {
				t.Fatal(err)
			}
			resolveControlSocket(cfg, c.config, c.env)
			if cfg.Control.Socket != c.want {
				t.Errorf("up's socket = %q, want %q", cfg.Control.Socket, c.want)
			}
			// A client given the same config finds the same socket.
			got, err := (&socketFlag{config: c.config}).path(c.env)
			if err != nil || got != c.want {
				t.Errorf("client with --config: %q, %v; want %q", got, err, c.want)
			}
		})
	}

	// Without --config a client uses --socket, $GRIDNET_SOCKET or the
	// user's default.
	clients := []struct {
		name string
		flag socketFlag
		env  Env
		want string
	}{
		{"--socket", socketFlag{socket: "/a.sock"}, userEnv(1000, map[string]string{SocketEnv: "/b.sock"}), "/a.sock"},
		{"GRIDNET_SOCKET", socketFlag{}, userEnv(1000, map[string]string{SocketEnv: "/b.sock", "XDG_RUNTIME_DIR": "/run/user/1000"}), "/b.sock"},
		{"user default", socketFlag{}, userEnv(1000, xdg), "/run/user/1000/gridnet/gridnet.sock"},
		{"root default", socketFlag{}, userEnv(0, xdg), DefaultControlSocket},
	}
	for _, c := range clients {
		if got, err := c.flag.path(c.env); err != nil || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	if _, err := (&socketFlag{socket: "/a.sock", config: cfgPath}).path(userEnv(0, nil)); err == nil {
		t.Error("--socket and --config together accepted")
	}
}

// startUp runs `gridnet up --config config` in-process with env until the
// test ends; it returns a channel that receives the exit code.
func startUp(t *testing.T, env Env, config string) <-chan int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- run(ctx, rootCommand(), []string{"gridnet"}, []string{"up", "--config", config}, env) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("up did not stop within 10 s of cancel")
		}
	})
	return done
}

// runAs runs one command in-process with env and returns stdout, stderr
// and the exit code.
func runAs(env Env, args ...string) (string, string, int) {
	var out, errb strings.Builder
	env.Stdout, env.Stderr = &out, &errb
	code := run(context.Background(), rootCommand(), []string{"gridnet"}, args, env)
	return out.String(), errb.String(), code
}

// testNodeConfig issues a node certificate into NAME.vault in dir and
// writes NAME.yaml with the given extra YAML; it returns the config path.
func testNodeConfig(t *testing.T, dir, name, ip, extra string) string {
	t.Helper()
	p := func(f string) string { return filepath.Join(dir, f) }
	if _, err := os.Stat(p("ca.vault")); err != nil {
		mustGridnet(t, nil, "vault", "keyfile", p("k"))
		mustGridnet(t, nil, "ca", "init", "--name", "ca", "--domain", "corp.example", "--vault", p("ca.vault"), "--vault-key-file", p("k"), "--out", p("ca.crt"))
	}
	mustGridnet(t, nil, "cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"), "--ca-cert", p("ca.crt"),
		"--name", name, "--out-vault", p(name+".vault"), "--out-vault-key-file", p("k"), "--ip", ip, "--out", p(name+".crt"))
	cfg := fmt.Sprintf("vault: {path: %s.vault, key_file: k}\nlisten: 0.0.0.0:%d\n%s", name, freeUDPPort(t), extra)
	if err := os.WriteFile(p(name+".yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p(name + ".yaml")
}

// TestNonRootNodeSocket: a node of a user other than root with no socket
// in its config listens under $XDG_RUNTIME_DIR, and status finds it with
// --config, with $GRIDNET_SOCKET and with no hint at all.
func TestNonRootNodeSocket(t *testing.T) {
	dir := t.TempDir()
	runtime := filepath.Join(t.TempDir(), "xdg")
	if err := os.Mkdir(runtime, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := testNodeConfig(t, dir, "solo", "100.64.0.7/10", "")
	env := userEnv(1000, map[string]string{"XDG_RUNTIME_DIR": runtime})
	startUp(t, env, cfg)
	want := filepath.Join(runtime, "gridnet", "gridnet.sock")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(want); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no control socket at %s", want)
		}
	}
	ways := map[string]struct {
		env  Env
		args []string
	}{
		"--config":       {env, []string{"status", "--config", cfg}},
		"GRIDNET_SOCKET": {userEnv(1000, map[string]string{SocketEnv: want}), []string{"status"}},
		"default":        {env, []string{"status"}},
	}
	for name, w := range ways {
		out, errOut, code := runAs(w.env, w.args...)
		if code != 0 || !strings.HasPrefix(out, "solo (corp.example)") {
			t.Errorf("%s: exit %d\n%s%s", name, code, out, errOut)
		}
	}
}

// TestSecondNodeOnSameSocketNeverJoins: a second `up` whose control
// socket is a running node's fails on the socket before it starts: it
// never logs "node up" and never sends a packet to its static peer.
func TestSecondNodeOnSameSocketNeverJoins(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "shared.sock")
	first := testNodeConfig(t, dir, "first", "100.64.0.1/10", "control: {socket: shared.sock}\n")
	startUp(t, userEnv(0, nil), first)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, code := runAs(userEnv(0, nil), "status", "--socket", sock); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first node's control API never answered")
		}
	}

	// The second node's seed is a UDP socket of the test: a node that
	// starts sends it an admission handshake at once.
	seed, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer seed.Close()
	second := testNodeConfig(t, dir, "second", "100.64.0.2/10",
		fmt.Sprintf("peers: [\"%s\"]\ncontrol: {socket: shared.sock}\nlog: {level: debug}\n", seed.LocalAddr()))
	_, errOut, code := runAs(userEnv(0, nil), "up", "--config", second)
	if code == 0 || !strings.Contains(errOut, "in use by another gridnet") {
		t.Fatalf("second up on the same socket: exit %d\n%s", code, errOut)
	}
	if strings.Contains(errOut, "node up") {
		t.Errorf("the second node started before it checked its socket:\n%s", errOut)
	}
	seed.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, from, err := seed.ReadFrom(make([]byte, 2048)); err == nil {
		t.Errorf("the second node sent %d bytes to its seed from %v before it failed", n, from)
	}
	// The first node still serves.
	if out, errOut, code := runAs(userEnv(0, nil), "status", "--socket", sock); code != 0 || !strings.HasPrefix(out, "first ") {
		t.Errorf("first node after the clash: exit %d\n%s%s", code, out, errOut)
	}
}

// TestSecondUpOnSameVaultRefused: while a node runs on a vault, a second
// `up` on it (another socket and port) fails before it starts, naming
// the first node's pid and control socket, and `up --test` reports the
// same; once the first node stops, the vault's node can start again.
func TestSecondUpOnSameVaultRefused(t *testing.T) {
	dir := t.TempDir()
	first := testNodeConfig(t, dir, "one", "100.64.0.1/10", "control: {socket: one.sock}\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	firstDone := make(chan int, 1)
	go func() {
		env := userEnv(0, nil)
		env.Stderr = io.Discard
		firstDone <- run(ctx, rootCommand(), []string{"gridnet"}, []string{"up", "--config", first}, env)
	}()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, code := runAs(userEnv(0, nil), "status", "--config", first); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first node's control API never answered")
		}
	}

	second := filepath.Join(dir, "again.yaml")
	cfg := fmt.Sprintf("vault: {path: one.vault, key_file: k}\nlisten: 0.0.0.0:%d\ncontrol: {socket: again.sock}\n", freeUDPPort(t))
	if err := os.WriteFile(second, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	wantHolder := fmt.Sprintf("is in use by process %d", os.Getpid())
	wantSocket := "control socket " + filepath.Join(dir, "one.sock")
	if _, errOut, code := runAs(userEnv(0, nil), "up", "--config", second, "--test"); code != 1 || !strings.Contains(errOut, wantHolder) || !strings.Contains(errOut, wantSocket) {
		t.Errorf("up --test on a running node's vault: exit %d\n%s", code, errOut)
	}

	secondCtx, stopSecond := context.WithCancel(context.Background())
	defer stopSecond()
	var errb strings.Builder
	secondDone := make(chan int, 1)
	go func() {
		env := userEnv(0, nil)
		env.Stdout, env.Stderr = io.Discard, &errb
		secondDone <- run(secondCtx, rootCommand(), []string{"gridnet"}, []string{"up", "--config", second}, env)
	}()
	select {
	case code := <-secondDone:
		msg := errb.String()
		if code == 0 || !strings.Contains(msg, wantHolder) || !strings.Contains(msg, wantSocket) || !strings.Contains(msg, "one node per vault") {
			t.Errorf("second up on the vault: exit %d\n%s", code, msg)
		}
		if strings.Contains(msg, "node up") {
			t.Errorf("the second node started:\n%s", msg)
		}
	case <-time.After(30 * time.Second):
		stopSecond()
		<-secondDone
		t.Fatal("a second node ran on the vault of a running node")
	}

	cancel()
	select {
	case code := <-firstDone:
		if code != 0 {
			t.Fatalf("first node exited %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first node did not stop within 10 s of cancel")
	}
	startUp(t, userEnv(0, nil), second)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, code := runAs(userEnv(0, nil), "status", "--config", second); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the vault's node did not start after the first one stopped")
		}
	}
}
