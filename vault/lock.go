package vault

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Lock parameters.
const (
	// DefaultLockTimeout is how long Open and Create wait for another
	// process to release the vault: long enough to ride out a CLI command
	// that is just finishing, short enough to report a running daemon
	// promptly.
	DefaultLockTimeout = time.Second
	lockPollInterval   = 50 * time.Millisecond // flock has no timeout; poll like bbolt does
	procLocksPath      = "/proc/locks"         // Linux list of held file locks
	maxProcLocksBytes  = 4 << 20               // bound the read of /proc/locks
)

// lockFile takes an exclusive flock on f, the same lock bbolt uses, waiting
// up to timeout (negative: do not wait). On timeout it returns a *LockError
// naming the holder.
func lockFile(f *os.File, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EWOULDBLOCK):
			return fmt.Errorf("vault: locking %s: %w", path, err)
		}
		if !time.Now().Add(lockPollInterval).Before(deadline) {
			return lockHolder(f, path)
		}
		time.Sleep(lockPollInterval)
	}
}

// lockHolder builds the LockError for f by looking up who holds a FLOCK on
// f's inode in /proc/locks.
func lockHolder(f *os.File, path string) *LockError {
	e := &LockError{Path: path}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return e
	}
	data, err := readBounded(procLocksPath, maxProcLocksBytes)
	if err != nil {
		return e
	}
	e.PID = findFlockHolder(string(data), st.Ino, uint64(unix.Major(st.Dev)), uint64(unix.Minor(st.Dev)))
	if e.PID > 0 {
		e.Self = e.PID == os.Getpid()
		if comm, err := readBounded("/proc/"+strconv.Itoa(e.PID)+"/comm", 256); err == nil {
			e.Command = strings.TrimSpace(string(comm))
		}
	}
	return e
}

// findFlockHolder parses /proc/locks content and returns the pid holding a
// FLOCK on the given inode, preferring an exact device match and falling
// back to an inode-only match when it is unambiguous (overlay file systems
// may report the underlying device). It returns 0 when nothing matches.
// Lines look like "1: FLOCK  ADVISORY  WRITE 7624 00:27:2 0 EOF"; blocked
// waiters carry "->" after the ordinal and are skipped.
func findFlockHolder(locks string, ino, major, minor uint64) int {
	exact, loose := 0, 0
	looseAmbiguous := false
	sc := bufio.NewScanner(strings.NewReader(locks))
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[1] == "->" || fs[1] != "FLOCK" {
			continue
		}
		pid, err := strconv.Atoi(fs[4])
		if err != nil || pid <= 0 {
			continue
		}
		parts := strings.Split(fs[5], ":")
		if len(parts) != 3 {
			continue
		}
		lino, err1 := strconv.ParseUint(parts[2], 10, 64)
		lmaj, err2 := strconv.ParseUint(parts[0], 16, 32)
		lmin, err3 := strconv.ParseUint(parts[1], 16, 32)
		if err1 != nil || err2 != nil || err3 != nil || lino != ino {
			continue
		}
		if lmaj == major && lmin == minor {
			exact = pid
		}
		if loose != 0 && loose != pid {
			looseAmbiguous = true
		}
		loose = pid
	}
	if exact != 0 {
		return exact
	}
	if !looseAmbiguous {
		return loose
	}
	return 0
}

// readBounded reads at most limit bytes of a (typically /proc) file.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}
