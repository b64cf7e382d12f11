//go:build linux

package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node/cli"
	"github.com/aigrid/gridnet/vault"
)

// The packaging files in docs/packaging are checked here: the systemd unit
// and its kernel-mode drop-in for their sandbox, the vault key credential
// and the socket; the container image definition for its stages, user
// and build command, which is run to show that it makes a static binary.

// unitFile is a systemd unit file: section -> key -> values in order.
type unitFile map[string]map[string][]string

// parseUnit reads a unit file or drop-in (comments, sections, Key=Value;
// no line continuations, which these files do not use).
func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.HasSuffix(line, `\`) {
				t.Fatalf("%s:%d: not a Key=Value line in a section: %q", path, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// one returns the single value of key in section, failing if it is
// missing or given more than once.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	vs := u[section][key]
	if len(vs) != 1 {
		t.Fatalf("[%s] %s= is set %d times, want once: %q", section, key, len(vs), vs)
	}
	return vs[0]
}

func TestSystemdUnit(t *testing.T) {
	base := parseUnit(t, filepath.Join("docs", "packaging", "gridnet.service"))
	kernel := parseUnit(t, filepath.Join("docs", "packaging", "gridnet.service.d", "kernel.conf"))

	want := map[string]string{
		"NoNewPrivileges":        "yes",
		"ProtectSystem":          "strict",
		"ProtectHome":            "yes",
		"PrivateTmp":             "yes",
		"PrivateDevices":         "yes",
		"ProtectKernelTunables":  "yes",
		"ProtectKernelModules":   "yes",
		"ProtectControlGroups":   "yes",
		"RestrictNamespaces":     "yes",
		"RestrictSUIDSGID":       "yes",
		"MemoryDenyWriteExecute": "yes",
		"SystemCallFilter":       "@system-service",
		"CapabilityBoundingSet":  "", // userspace mode: no capabilities at all
		"AmbientCapabilities":    "",
		"StateDirectory":         "gridnet",
		"RuntimeDirectory":       "gridnet",
	}
	for k, v := range want {
		if got := base.one(t, "Service", k); got != v {
			t.Errorf("gridnet.service: %s=%s, want %s", k, got, v)
		}
	}
	if u := base.one(t, "Service", "User"); u == "" || u == "root" || u == "0" {
		t.Errorf("gridnet.service runs as %q, want its own user", u)
	}
	if exec := base.one(t, "Service", "ExecStart"); !strings.Contains(exec, "gridnet up --config /etc/gridnet/") {
		t.Errorf("ExecStart=%s does not run gridnet up with a config in /etc/gridnet", exec)
	}
	// The key comes as the credential the vault package reads.
	if cred := base.one(t, "Service", "LoadCredential"); !strings.HasPrefix(cred, vault.CredentialName+":/") {
		t.Errorf("LoadCredential=%s, want %s:/PATH", cred, vault.CredentialName)
	}
	// Clients on the host find the socket the service uses.
	if env := base.one(t, "Service", "Environment"); env != cli.SocketEnv+"=/run/gridnet/gridnet.sock" {
		t.Errorf("Environment=%s, want the control socket in the RuntimeDirectory", env)
	}

	// Kernel mode adds CAP_NET_ADMIN and /dev/net/tun, and nothing else.
	if len(kernel) != 1 || kernel["Service"] == nil {
		t.Fatalf("kernel.conf sections %v, want only [Service]", kernel)
	}
	wantKernel := map[string]string{
		"AmbientCapabilities":   "CAP_NET_ADMIN",
		"CapabilityBoundingSet": "CAP_NET_ADMIN",
		"PrivateDevices":        "no",
		"DevicePolicy":          "closed",
		"DeviceAllow":           "/dev/net/tun rw",
	}
	for k, v := range wantKernel {
		if got := kernel.one(t, "Service", k); got != v {
			t.Errorf("kernel.conf: %s=%s, want %s", k, got, v)
		}
	}
	if keys := len(kernel["Service"]); keys != len(wantKernel) {
		t.Errorf("kernel.conf sets %d keys, want only %d: %v", keys, len(wantKernel), kernel["Service"])
	}
	if !strings.Contains(base.one(t, "Service", "RestrictAddressFamilies"), "AF_NETLINK") {
		t.Error("RestrictAddressFamilies lacks AF_NETLINK: kernel mode configures its TUN over netlink")
	}

	// systemd's own parser: any unknown key or bad value is a warning.
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: the unit was checked by this test's parser only")
	}
	dir := t.TempDir()
	unit, err := os.ReadFile(filepath.Join("docs", "packaging", "gridnet.service"))
	if err != nil {
		t.Fatal(err)
	}
	// verify wants ExecStart's program to exist.
	unit = []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/gridnet", "/bin/true"))
	if err := os.WriteFile(filepath.Join(dir, "gridnet.service"), unit, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "gridnet.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	dropIn, err := os.ReadFile(filepath.Join("docs", "packaging", "gridnet.service.d", "kernel.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gridnet.service.d", "kernel.conf"), dropIn, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", "--man=no", "./gridnet.service")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Fatalf("systemd-analyze verify (unit and kernel drop-in): %v\n%s", err, out)
	}
}

// dockerfileLine is one instruction of a Dockerfile.
type dockerfileLine struct {
	instr, args string
}

// parseDockerfile reads instructions, joining lines continued with "\".
func parseDockerfile(t *testing.T, path string) []dockerfileLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []dockerfileLine
	cur := ""
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur += strings.TrimSuffix(trimmed, `\`) + " "
			continue
		}
		cur += trimmed
		instr, args, _ := strings.Cut(cur, " ")
		out = append(out, dockerfileLine{strings.ToUpper(instr), strings.TrimSpace(args)})
		cur = ""
	}
	return out
}

func TestContainerImage(t *testing.T) {
	lines := parseDockerfile(t, filepath.Join("docs", "packaging", "Dockerfile"))
	var froms []string
	var final []dockerfileLine // the last stage's instructions
	buildCmd := ""
	for _, l := range lines {
		if l.instr == "FROM" {
			froms = append(froms, l.args)
			final = nil
			continue
		}
		final = append(final, l)
		if l.instr == "RUN" && strings.Contains(l.args, "go build") {
			buildCmd = l.args
		}
	}
	if len(froms) < 2 {
		t.Fatalf("FROM lines %q: want a multi-stage build", froms)
	}
	if base := froms[len(froms)-1]; !regexp.MustCompile(`^(gcr\.io/distroless/static\S*|scratch)$`).MatchString(base) {
		t.Errorf("runtime base %q: want a minimal static base (distroless/static or scratch)", base)
	}
	get := func(instr string) []string {
		var vs []string
		for _, l := range final {
			if l.instr == instr {
				vs = append(vs, l.args)
			}
		}
		return vs
	}
	if users := get("USER"); len(users) != 1 || regexp.MustCompile(`^(root|0)(:|$)`).MatchString(users[0]) {
		t.Errorf("runtime stage USER %q: want one non-root user", users)
	}
	if ep := get("ENTRYPOINT"); len(ep) != 1 || !strings.Contains(ep[0], "gridnet") {
		t.Errorf("ENTRYPOINT %q", ep)
	}
	if cmd := get("CMD"); len(cmd) != 1 || !strings.Contains(cmd[0], `"up", "--config"`) {
		t.Errorf("CMD %q: want up --config", cmd)
	}
	env := strings.Join(get("ENV"), " ")
	if !strings.Contains(env, cli.SocketEnv+"=/run/gridnet/") || !strings.Contains(env, vault.CredentialsDirEnv+"=") {
		t.Errorf("ENV %q: want the control socket and the credentials folder set", env)
	}
	if slices.ContainsFunc(final, func(l dockerfileLine) bool {
		return l.instr == "RUN" || strings.Contains(l.args, "--cap-add") || strings.Contains(l.args, "/dev/net/tun")
	}) {
		t.Error("the runtime stage runs commands or asks for kernel access: userspace mode needs neither")
	}

	// The build command works and makes a static binary, which is what
	// a base without libc (or iproute2) can run.
	if buildCmd == "" {
		t.Fatal("no RUN ... go build in the Dockerfile")
	}
	if testing.Short() {
		t.Skip("-short: not running the image's go build")
	}
	bin := buildImageBinary(t, buildCmd)
	if out, err := exec.Command(bin, "version").CombinedOutput(); err != nil {
		t.Fatalf("built binary: %v\n%s", err, out)
	}
}

// buildImageBinary runs the Dockerfile's go build command (buildCmd, its
// RUN line) with the output in a temporary folder, and checks that the
// binary is static: a base without libc runs nothing else.
func buildImageBinary(t *testing.T, buildCmd string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gridnet")
	script := strings.Replace(buildCmd, "-o /out/gridnet", "-o "+bin, 1)
	if script == buildCmd {
		t.Fatalf("build command %q does not write /out/gridnet", buildCmd)
	}
	if out, err := exec.Command("bash", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the image's binary is dynamically linked: a distroless/static base cannot run it")
		}
	}
	return bin
}

// TestContainerImageRuntime runs the image's runtime stage without a
// container engine: a root folder holding only what the Dockerfile puts
// there (the static binary, the state and socket folders owned by its
// user) and what distroless/static brings (/etc/passwd with the nonroot
// user, /tmp), entered with chroot as the Dockerfile's USER, with its ENV
// and its ENTRYPOINT and CMD. No shell, no iproute2, no capability: the
// node comes up in userspace mode, opens its vault with the key mounted as
// a credential under /run/secrets, and `gridnet status` run the way
// `docker exec` would finds it through GRIDNET_SOCKET.
func TestContainerImageRuntime(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: not building and running the image's binary")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to chroot into the emulated image and switch to its user (CI runs as root)")
	}
	chroot, err := exec.LookPath("chroot")
	if err != nil {
		t.Skip("needs coreutils' chroot")
	}
	var buildCmd, user string
	var env, entrypoint, command []string
	for _, l := range parseDockerfile(t, filepath.Join("docs", "packaging", "Dockerfile")) {
		switch {
		case l.instr == "FROM":
			env, user, entrypoint, command = nil, "", nil, nil
		case l.instr == "RUN" && strings.Contains(l.args, "go build"):
			buildCmd = l.args
		case l.instr == "ENV":
			env = append(env, strings.Fields(l.args)...)
		case l.instr == "USER":
			user = l.args
		case l.instr == "ENTRYPOINT":
			if err := json.Unmarshal([]byte(l.args), &entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %q: %v", l.args, err)
			}
		case l.instr == "CMD":
			if err := json.Unmarshal([]byte(l.args), &command); err != nil {
				t.Fatalf("CMD %q: %v", l.args, err)
			}
		}
	}
	uid, gid, ok := strings.Cut(user, ":")
	if !ok || len(entrypoint) == 0 || len(command) < 3 || command[len(command)-2] != "--config" {
		t.Fatalf("runtime stage: USER %q ENTRYPOINT %q CMD %q", user, entrypoint, command)
	}
	uidN, err1 := strconv.Atoi(uid)
	gidN, err2 := strconv.Atoi(gid)
	if err1 != nil || err2 != nil {
		t.Fatalf("USER %q: want numeric uid:gid", user)
	}
	bin := buildImageBinary(t, buildCmd)

	// The root folder as the image lays it out.
	root := t.TempDir()
	state, run := filepath.Join(root, "var/lib/gridnet"), filepath.Join(root, "run/gridnet")
	secrets := filepath.Join(root, "run/secrets")
	for _, d := range []string{"usr/local/bin", "etc/gridnet", "tmp", "var/lib/gridnet", "run/gridnet", "run/secrets"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(root, 0o755))
	must(os.Chmod(filepath.Join(root, "tmp"), 0o1777))
	for _, d := range []string{state, run} {
		must(os.Chown(d, uidN, gidN))
		must(os.Chmod(d, 0o700))
	}
	exe := filepath.Join(root, strings.TrimPrefix(entrypoint[0], "/"))
	raw, err := os.ReadFile(bin)
	must(err)
	must(os.WriteFile(exe, raw, 0o755))
	must(os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(fmt.Sprintf(
		"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", uidN, gidN)), 0o644))

	// A CA and the node's vault, made outside; the vault goes into the
	// state volume and its key is mounted as the credential.
	work := t.TempDir()
	key := filepath.Join(work, "vault.key")
	run1 := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("gridnet %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run1("vault", "keyfile", key)
	run1("ca", "init", "--name", "image-ca", "--domain", "image.gridnet", "--vault", filepath.Join(work, "ca.vault"),
		"--vault-key-file", key, "--out", filepath.Join(work, "ca.crt"))
	run1("cert", "issue", "--ca-vault", filepath.Join(work, "ca.vault"), "--ca-vault-key-file", key,
		"--ca-cert", filepath.Join(work, "ca.crt"), "--name", "box", "--ip", "100.64.0.9/10",
		"--out-vault", filepath.Join(state, "node.vault"), "--out-vault-key-file", key, "--out", filepath.Join(work, "box.crt"))
	credential := filepath.Join(secrets, "gridnet-vault-key")
	raw, err = os.ReadFile(key)
	must(err)
	must(os.WriteFile(credential, raw, 0o600))
	for _, f := range []string{credential, filepath.Join(state, "node.vault")} {
		must(os.Chown(f, uidN, gidN))
	}
	config := command[len(command)-1]
	must(os.WriteFile(filepath.Join(root, strings.TrimPrefix(config, "/")),
		[]byte("vault: {path: /var/lib/gridnet/node.vault}\nlisten: 0.0.0.0:0\n"), 0o644))

	// PATH as container engines set it; nothing on it but gridnet.
	imageEnv := append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	inImage := func(args ...string) *exec.Cmd {
		c := exec.Command(chroot, append([]string{"--userspec=" + user, root}, args...)...)
		c.Env = imageEnv
		return c
	}
	var logs lockedBuffer // written by exec's copier while the test reads it
	up := inImage(append(entrypoint, command...)...)
	up.Stdout, up.Stderr = &logs, &logs
	must(up.Start())
	done := make(chan error, 1)
	go func() { done <- up.Wait() }()
	defer func() {
		up.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("node in the image did not exit cleanly on SIGTERM: %v\n%s", err, logs.String())
			}
		case <-time.After(30 * time.Second):
			up.Process.Kill()
			<-done
			t.Errorf("node in the image did not stop within 30 s of SIGTERM\n%s", logs.String())
		}
	}()

	deadline := time.Now().Add(60 * time.Second)
	var last string
	for {
		out, err := inImage(entrypoint[0], "status", "--json").CombinedOutput()
		last = string(out)
		var st struct {
			Name string `json:"name"`
		}
		if err == nil && json.Unmarshal(out, &st) == nil && st.Name == "box" {
			break
		}
		select {
		case err := <-done:
			done <- nil // for the deferred stop: the exit is reported here
			t.Fatalf("node in the image exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("gridnet status in the image: %s\nnode logs:\n%s", last, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The node wrote its "node up" line before it answered status, but
	// the line reaches logs through a pipe and exec's copier: wait for it.
	for !strings.Contains(logs.String(), "tun=userspace") {
		if time.Now().After(deadline) {
			t.Errorf("node in the image did not come up in userspace mode:\n%s", logs.String())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lockedBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
