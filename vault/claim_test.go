package vault

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestClaimNamesTheHolder: while another process claims a vault, a second
// claim fails at once with an error naming the holder's pid, command and
// control socket; CheckClaim says the same and creates nothing; the vault
// itself still opens for other work; once the holder ends the claim is
// free again.
func TestClaimNamesTheHolder(t *testing.T) {
	path := newHelperVault(t, t.TempDir())
	if err := CheckClaim(path); err != nil {
		t.Fatalf("CheckClaim of an unclaimed vault: %v", err)
	}
	if _, err := os.Stat(path + ClaimSuffix); !os.IsNotExist(err) {
		t.Fatalf("CheckClaim created the claim file: %v", err)
	}
	cmd, out, stdin := startHelper(t, "claim", path)
	if !out.Scan() || out.Text() != "ready" {
		t.Fatalf("helper did not claim the vault: %q %v", out.Text(), out.Err())
	}
	pid := cmd.Process.Pid

	c, err := ClaimVault(path, Holder{PID: os.Getpid(), Socket: "/run/test/second.sock"}, -1)
	if err == nil {
		c.Release()
		t.Fatal("a second claim succeeded while the helper holds the vault")
	}
	check := func(what string, err error) {
		t.Helper()
		var ce *ClaimError
		if !errors.Is(err, ErrClaimed) || !errors.As(err, &ce) {
			t.Fatalf("%s = %v, want *ClaimError", what, err)
		}
		msg := err.Error()
		if ce.Holder.PID != pid || !strings.Contains(msg, "process "+strconv.Itoa(pid)) {
			t.Errorf("%s: %q does not name the helper's pid %d", what, msg, pid)
		}
		if ce.Command == "" || !strings.Contains(msg, ce.Command) {
			t.Errorf("%s: %q does not name the holder's command", what, msg)
		}
		if !strings.Contains(msg, "control socket /run/test/helper.sock") || !strings.Contains(msg, path) {
			t.Errorf("%s: %q does not name the vault and the holder's socket", what, msg)
		}
	}
	check("ClaimVault", err)
	check("CheckClaim", CheckClaim(path))

	// The claim keeps other nodes off, not other commands.
	v, err := Open(path, mustRawKey(t, 7), InsecureTestOptions())
	if err != nil {
		t.Fatalf("Open of a claimed vault: %v", err)
	}
	v.Close()

	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	if err := CheckClaim(path); err != nil {
		t.Fatalf("CheckClaim after the holder released: %v", err)
	}
	c, err = ClaimVault(path, Holder{PID: os.Getpid()}, -1)
	if err != nil {
		t.Fatalf("claim after the holder released: %v", err)
	}
	// Within one process a second claim is refused too (flock is per open
	// file), naming this process.
	if c2, err := ClaimVault(path, Holder{PID: os.Getpid()}, -1); err == nil {
		c2.Release()
		t.Error("a second claim in the same process succeeded")
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path + ClaimSuffix); err != nil || len(b) != 0 {
		t.Errorf("released claim file holds %q (%v), want it empty", b, err)
	}
}

// TestClaimOfAKilledHolderIsFree: a claimant that is killed (no Release)
// leaves its pid in the claim file, but the kernel dropped its lock: the
// next claim succeeds at once and records the new holder.
func TestClaimOfAKilledHolderIsFree(t *testing.T) {
	path := newHelperVault(t, t.TempDir())
	cmd, out, _ := startHelper(t, "claim", path)
	if !out.Scan() || out.Text() != "ready" {
		t.Fatalf("helper did not claim the vault: %q %v", out.Text(), out.Err())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if b, _ := os.ReadFile(path + ClaimSuffix); !strings.Contains(string(b), "pid "+strconv.Itoa(cmd.Process.Pid)) {
		t.Fatalf("the killed holder's claim file holds %q, want its pid (the stale case)", b)
	}
	if err := CheckClaim(path); err != nil {
		t.Fatalf("CheckClaim after the holder was killed: %v", err)
	}
	c, err := ClaimVault(path, Holder{PID: os.Getpid(), Socket: "/run/test/new.sock"}, -1)
	if err != nil {
		t.Fatalf("claim after the holder was killed: %v", err)
	}
	defer c.Release()
	b, err := os.ReadFile(path + ClaimSuffix)
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseHolder(b)
	if err != nil || h.PID != os.Getpid() || h.Socket != "/run/test/new.sock" {
		t.Errorf("claim file %q = %+v, %v; want this process and its socket", b, h, err)
	}
}

func TestParseHolder(t *testing.T) {
	h, err := parseHolder([]byte("pid 42\nsocket /run/gridnet/gridnet.sock\nfuture thing\n"))
	if err != nil || h.PID != 42 || h.Socket != "/run/gridnet/gridnet.sock" {
		t.Errorf("parseHolder = %+v, %v", h, err)
	}
	for _, bad := range []string{"pid x\n", "pid -1\n", "pid\n", "socket \n", "socket a\x01b\n", strings.Repeat("x", maxClaimBytes+1)} {
		if _, err := parseHolder([]byte(bad)); err == nil {
			t.Errorf("parseHolder(%q) accepted", bad)
		}
	}
}

// FuzzParseHolder: any claim file contents parse or are refused without
// panicking, and what parses has a positive pid (or none) and a socket
// without control characters. Seeds are in testdata/fuzz/FuzzParseHolder.
func FuzzParseHolder(f *testing.F) {
	f.Add([]byte("pid 1234\nsocket /run/gridnet/gridnet.sock\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHolder(b)
		if err != nil {
			return
		}
		if h.PID < 0 || strings.ContainsFunc(h.Socket, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Fatalf("parseHolder(%q) = %+v", b, h)
		}
	})
}

// TestClaimFollowsSymlinks: a vault reached through a symlink meets the
// claim made through its real path (flock conflicts between two open
// files even in one process).
func TestClaimFollowsSymlinks(t *testing.T) {
	dir := t.TempDir()
	path := newHelperVault(t, dir)
	link := filepath.Join(dir, "link.vault")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	c, err := ClaimVault(path, Holder{PID: os.Getpid()}, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if c2, err := ClaimVault(link, Holder{PID: os.Getpid()}, -1); !errors.Is(err, ErrClaimed) {
		if c2 != nil {
			c2.Release()
		}
		t.Fatalf("a claim through a symlink to a claimed vault: %v, want ErrClaimed", err)
	}
	if err := CheckClaim(link); !errors.Is(err, ErrClaimed) {
		t.Fatalf("CheckClaim through the symlink: %v, want ErrClaimed", err)
	}
}

// TestClaimFileOfAnotherUser: a claim file this process may not open (one
// a run as root made, for a node that now runs as a service user) fails
// the claim with an error that names the file, its owner and the fix, and
// CheckClaim says the same. As root the claim runs in a helper process as
// uid 65534 (root opens any file); otherwise the file's mode denies it.
func TestClaimFileOfAnotherUser(t *testing.T) {
	// A directory every user may enter, with a copy of the test binary
	// that every user may run (go test's own directories are private).
	dir, err := os.MkdirTemp("", "claim-owner-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "vault.db")
	c, err := ClaimVault(path, Holder{PID: os.Getpid()}, -1)
	if err != nil {
		t.Fatal(err)
	}
	c.Release() // the claim file stays, owned by this process's user

	if os.Geteuid() != 0 {
		if err := os.Chmod(path+ClaimSuffix, 0); err != nil {
			t.Fatal(err)
		}
		for what, err := range map[string]error{"ClaimVault": claimErr(path), "CheckClaim": CheckClaim(path)} {
			if err == nil || !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), path+ClaimSuffix) ||
				!strings.Contains(err.Error(), "chmod 600") {
				t.Errorf("%s of a claim file with mode 0 = %v, want the file named and chmod 600 suggested", what, err)
			}
		}
		return
	}
	bin := filepath.Join(dir, "vault.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"claim", "check-claim"} {
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperPathEnv+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		msg := string(out)
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			// The copy could not be started as uid 65534 (a noexec
			// temporary directory, a user namespace without that uid).
			t.Skipf("cannot run the test binary as uid 65534 here: %v", err)
		}
		if exit == nil || exit.ExitCode() != 1 {
			t.Errorf("%s as uid 65534: exit %v, want 1 (a refused claim)\n%s", mode, err, msg)
		}
		for _, want := range []string{path + ClaimSuffix, "belongs to uid 0", "this process (uid 65534)", "chown 65534", "permission denied"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s as uid 65534 of a claim file root made: %q lacks %q", mode, msg, want)
			}
		}
	}
}

// claimErr is ClaimVault's error for path (nil if the claim succeeded,
// which it then releases).
func claimErr(path string) error {
	c, err := ClaimVault(path, Holder{PID: os.Getpid()}, -1)
	if err == nil {
		c.Release()
	}
	return err
}
