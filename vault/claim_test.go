package vault

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
