package vault

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Helper-process protocol: the test binary re-executes itself with
// helperEnv set to a mode; the vault path comes in helperPathEnv.
const (
	helperEnv     = "GRIDNET_VAULT_TEST_HELPER"
	helperPathEnv = "GRIDNET_VAULT_TEST_PATH"
	helperFsize   = 256 << 10 // RLIMIT_FSIZE for the EFBIG helper
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Getenv(helperPathEnv)))
	}
	os.Exit(m.Run())
}

// helperValue is the deterministic value the helpers store under name i:
// sizes vary from a few bytes to several pages to exercise overflow pages.
func helperValue(i int) []byte {
	sum := sha256.Sum256([]byte(strconv.Itoa(i)))
	n := 1 + (i*7919)%9000
	return bytes.Repeat(sum[:], n/len(sum)+1)[:n]
}

func helperName(i int) string { return fmt.Sprintf("item-%05d", i) }

func runHelper(mode, path string) int {
	key, _ := RawKey(bytes.Repeat([]byte{7}, KeySize))
	switch mode {
	case "hold":
		v, err := Open(path, key, InsecureTestOptions())
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin) // hold the vault until the parent closes stdin
		v.Close()
		return 0
	case "claim":
		c, err := ClaimVault(path, Holder{PID: os.Getpid(), Socket: "/run/test/helper.sock"}, -1)
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin) // hold the claim until the parent closes stdin
		c.Release()
		return 0
	case "check-claim":
		if err := CheckClaim(path); err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println("free")
		return 0
	case "crash", "fsize":
		if mode == "fsize" {
			signal.Ignore(syscall.SIGXFSZ) // get EFBIG from write instead of dying
			lim := syscall.Rlimit{Cur: helperFsize, Max: helperFsize}
			if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
				fmt.Println("error setrlimit", err)
				return 1
			}
		}
		v, err := Open(path, key, InsecureTestOptions())
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		for i := 0; i < 100000; i++ {
			if err := v.Put(helperName(i), ClassState, helperValue(i)); err != nil {
				fmt.Printf("puterr efbig=%v enospc=%v %v\n", errors.Is(err, syscall.EFBIG), errors.Is(err, syscall.ENOSPC), err)
				break
			}
			fmt.Println("ack", helperName(i))
		}
		v.Close()
		return 0
	}
	fmt.Println("error unknown helper mode", mode)
	return 2
}

// startHelper starts the test binary as a helper and returns its stdout.
func startHelper(t *testing.T, mode, path string) (*exec.Cmd, *bufio.Scanner, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperPathEnv+"="+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, bufio.NewScanner(out), stdin
}

// newHelperVault creates a vault for the helpers (raw key 7...7).
func newHelperVault(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "vault.db")
	v, err := Create(path, mustRawKey(t, 7), InsecureTestOptions())
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	return path
}

func TestLockedByOtherProcess(t *testing.T) {
	path := newHelperVault(t, t.TempDir())
	cmd, out, stdin := startHelper(t, "hold", path)
	if !out.Scan() || out.Text() != "ready" {
		t.Fatalf("helper did not get ready: %q %v", out.Text(), out.Err())
	}
	start := time.Now()
	v, err := Open(path, mustRawKey(t, 7), &Options{LockTimeout: 300 * time.Millisecond})
	if err == nil {
		v.Close()
		t.Fatal("Open succeeded while another process holds the vault")
	}
	var le *LockError
	if !errors.Is(err, ErrLocked) || !errors.As(err, &le) {
		t.Fatalf("Open = %v, want *LockError", err)
	}
	pid := cmd.Process.Pid
	if le.PID != pid || le.Self || !strings.Contains(err.Error(), "process "+strconv.Itoa(pid)) {
		t.Fatalf("LockError %+v (%q) does not name helper pid %d", le, err, pid)
	}
	if le.Command == "" || !strings.Contains(err.Error(), le.Command) {
		t.Errorf("LockError does not name the command: %q", err)
	}
	// At least the lock timeout (it waited), and returned at all (a bug
	// would wait for the holder, which never lets go).
	if d := time.Since(start); d < 250*time.Millisecond || d > 60*time.Second {
		t.Errorf("lock wait took %v, want about 300ms", d)
	}
	t.Logf("lock error: %v", err)
	// Once the holder exits the vault opens.
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	v, err = Open(path, mustRawKey(t, 7), InsecureTestOptions())
	if err != nil {
		t.Fatalf("Open after holder exited: %v", err)
	}
	v.Close()
}

// lineReader delivers a helper's stdout lines on a channel, closed at EOF,
// so the test can wait for them with a deadline.
func lineReader(out *bufio.Scanner) <-chan string {
	lines := make(chan string)
	go func() {
		defer close(lines)
		for out.Scan() {
			lines <- out.Text()
		}
	}()
	return lines
}

// readAcks collects "ack NAME" lines until n acks, a non-ack line, EOF or
// the deadline; it returns the acknowledged names and the last other line.
func readAcks(t *testing.T, lines <-chan string, n int, deadline time.Duration) ([]string, string) {
	t.Helper()
	var acks []string
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	for len(acks) < n {
		select {
		case l, ok := <-lines:
			if !ok {
				return acks, ""
			}
			name, isAck := strings.CutPrefix(l, "ack ")
			if !isAck {
				return acks, l
			}
			acks = append(acks, name)
		case <-timer.C:
			t.Fatalf("only %d acks within %v", len(acks), deadline)
		}
	}
	return acks, ""
}

// verifyAcked reopens the vault and checks every acknowledged item and the
// file's consistency (bbolt's tx.Check plus authentication of all items).
func verifyAcked(t *testing.T, path string, acks []string) {
	t.Helper()
	v, err := Open(path, mustRawKey(t, 7), InsecureTestOptions())
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer v.Close()
	for i, name := range acks {
		if name != helperName(i) {
			t.Fatalf("ack %d is %q", i, name)
		}
		got, class, err := v.Get(name)
		if err != nil || class != ClassState || !bytes.Equal(got, helperValue(i)) {
			t.Fatalf("acknowledged item %s lost or damaged: %d bytes, %q, %v", name, len(got), class, err)
		}
	}
	if err := v.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
	list, err := v.List()
	if err != nil || len(list) < len(acks) {
		t.Fatalf("List = %d items, %v; want >= %d", len(list), err, len(acks))
	}
}

// TestCrashSafety SIGKILLs a process in the middle of a stream of Puts and
// checks that every Put it acknowledged survived, and the file is sound.
func TestCrashSafety(t *testing.T) {
	const killAfter = 200
	path := newHelperVault(t, t.TempDir())
	cmd, out, _ := startHelper(t, "crash", path)
	lines := lineReader(out)
	acks, other := readAcks(t, lines, killAfter, 60*time.Second)
	if other != "" {
		t.Fatalf("helper: %s", other)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Lines the helper wrote between our last read and the kill are
	// acknowledged too: drain to EOF before Wait closes the pipe.
	for l := range lines {
		if name, ok := strings.CutPrefix(l, "ack "); ok {
			acks = append(acks, name)
		}
	}
	cmd.Wait()
	t.Logf("killed helper after %d acknowledged puts", len(acks))
	verifyAcked(t, path, acks)
}

// TestDiskFull fills the disk under a vault and checks that the failing
// Put reports the cause and that earlier items survive. As root it mounts
// a 1 MiB tmpfs (ENOSPC); everywhere it also runs a helper process with
// RLIMIT_FSIZE (EFBIG, SIGXFSZ ignored), so the test needs no privileges.
func TestDiskFull(t *testing.T) {
	t.Run("tmpfs-ENOSPC", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("mounting tmpfs needs root; the RLIMIT_FSIZE variant covers this")
		}
		dir := t.TempDir()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
			t.Skipf("cannot mount tmpfs: %v: %s", err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", dir, err, out)
			}
		})
		path := newHelperVault(t, dir)
		v, err := Open(path, mustRawKey(t, 7), InsecureTestOptions())
		if err != nil {
			t.Fatal(err)
		}
		var acks []string
		var putErr error
		for i := 0; i < 2000 && putErr == nil; i++ {
			if putErr = v.Put(helperName(i), ClassState, helperValue(i)); putErr == nil {
				acks = append(acks, helperName(i))
			}
		}
		if !errors.Is(putErr, syscall.ENOSPC) {
			t.Fatalf("Put on full disk = %v, want ENOSPC", putErr)
		}
		t.Logf("%d puts before: %v", len(acks), putErr)
		// The open vault still serves reads.
		if got, _, err := v.Get(acks[0]); err != nil || !bytes.Equal(got, helperValue(0)) {
			t.Fatalf("Get after ENOSPC: %v", err)
		}
		v.Close()
		verifyAcked(t, path, acks)
	})
	t.Run("rlimit-EFBIG", func(t *testing.T) {
		path := newHelperVault(t, t.TempDir())
		cmd, out, _ := startHelper(t, "fsize", path)
		acks, last := readAcks(t, lineReader(out), 100000, 60*time.Second)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper: %v (last line %q)", err, last)
		}
		if !strings.HasPrefix(last, "puterr efbig=true") {
			t.Fatalf("helper's failing Put: %q, want an error wrapping EFBIG", last)
		}
		if len(acks) == 0 {
			t.Fatal("no Put succeeded before the limit")
		}
		t.Logf("%d puts before: %s", len(acks), last)
		if st, err := os.Stat(path); err != nil || st.Size() > helperFsize {
			t.Fatalf("vault size %v exceeds the limit", st.Size())
		}
		verifyAcked(t, path, acks)
	})
}
