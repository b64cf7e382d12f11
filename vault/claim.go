package vault

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A claim says that one long-running program (a gridnet node) uses a
// vault, for as long as it runs, while it keeps the vault file itself
// closed most of the time: other commands may still open the vault for a
// moment (importing a renewed certificate, say), but a second node may
// not run on it. The claim is an exclusive flock on a small file beside
// the vault, PATH.claim, which holds the claimant's pid and control
// socket so that a refusal can name them. The kernel drops the flock when
// the process ends, however it ends, so a claim left by a killed node
// never blocks; the file stays (removing it would race with the next
// claimant) and its stale contents are ignored.

// ErrClaimed means another program runs on the vault. The concrete error
// is a *ClaimError naming the holder.
var ErrClaimed = errors.New("vault in use by a running node")

// Claim parameters.
const (
	// ClaimSuffix is added to the vault path to name the claim file.
	ClaimSuffix = ".claim"
	// maxClaimBytes bounds the read of a claim file: a real one is a
	// pid and a socket path.
	maxClaimBytes = 4096
)

// Holder is what a claim file says about its claimant.
type Holder struct {
	PID    int    // process id, 0 if unknown
	Socket string // its control socket, "" if unknown
}

// ClaimError is returned (wrapping ErrClaimed) when another program holds
// the vault's claim.
type ClaimError struct {
	Path    string // vault path
	Holder  Holder // who, as far as known
	Command string // the holder's /proc/PID/comm, "" if unknown
}

// Error names the vault and its holder, e.g. "vault node.vault is in use
// by process 1234 (gridnet), control socket /run/gridnet/gridnet.sock:
// vault in use by a running node".
func (e *ClaimError) Error() string {
	var who []string
	switch {
	case e.Holder.PID != 0 && e.Command != "":
		who = append(who, fmt.Sprintf("process %d (%s)", e.Holder.PID, e.Command))
	case e.Holder.PID != 0:
		who = append(who, fmt.Sprintf("process %d", e.Holder.PID))
	default:
		who = append(who, "another process (pid unknown)")
	}
	if e.Holder.Socket != "" {
		who = append(who, "control socket "+e.Holder.Socket)
	}
	return fmt.Sprintf("vault %s is in use by %s: %v", e.Path, strings.Join(who, ", "), ErrClaimed)
}

// Unwrap makes errors.Is(err, ErrClaimed) true.
func (e *ClaimError) Unwrap() error { return ErrClaimed }

// Claim is a held claim on a vault; Release ends it.
type Claim struct {
	f    *os.File
	path string
}

// ClaimVault claims the vault at path for this process, recording holder
// (this process's pid and control socket) in the claim file. It waits up
// to timeout for a claimant that is just ending (negative: do not wait)
// and then fails with a *ClaimError naming the holder. The vault file
// itself is not opened.
func ClaimVault(path string, holder Holder, timeout time.Duration) (*Claim, error) {
	name := claimFile(path)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, claimOpenError(path, name, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("vault %s: locking %s: %w", path, name, err)
		}
		if !time.Now().Add(lockPollInterval).Before(deadline) {
			defer f.Close()
			return nil, claimHolder(f, path)
		}
		time.Sleep(lockPollInterval)
	}
	if err := writeHolder(f, holder); err != nil {
		f.Close()
		return nil, fmt.Errorf("vault %s: write %s: %w", path, name, err)
	}
	return &Claim{f: f, path: path}, nil
}

// CheckClaim reports whether another process holds the claim of the vault
// at path, without claiming it or creating anything: nil when nobody does
// (or there is no claim file), a *ClaimError naming the holder otherwise.
func CheckClaim(path string) error {
	f, err := os.OpenFile(claimFile(path), os.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return claimOpenError(path, claimFile(path), err)
	}
	defer f.Close()
	// A shared lock conflicts only with a claimant's exclusive one.
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	switch {
	case err == nil:
		return nil // closing f drops the shared lock
	case errors.Is(err, unix.EWOULDBLOCK):
		return claimHolder(f, path)
	default:
		return fmt.Errorf("vault %s: checking its claim: %w", path, err)
	}
}

// claimOpenError is the error for a claim file name (of the vault at
// path) that could not be opened. A permission error most often means
// that a run as another user (root, say) made the file: it names the
// owner and what to do, since the claim file itself holds nothing.
func claimOpenError(path, name string, err error) error {
	if !errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("vault %s: claim file: %w", path, err)
	}
	me := os.Geteuid()
	var st unix.Stat_t
	switch {
	case unix.Lstat(name, &st) == nil && int(st.Uid) != me:
		return fmt.Errorf("vault %s: claim file %s belongs to uid %d and this process (uid %d) may not open it; "+
			"a gridnet run as that user made it: with no node running on this vault, remove the file "+
			"or give it to uid %d (chown %d %s): %w", path, name, st.Uid, me, me, me, name, err)
	case unix.Lstat(name, &st) == nil && st.Mode&0o600 != 0o600:
		return fmt.Errorf("vault %s: claim file %s has mode %04o, which does not let its owner read and write it "+
			"(chmod 600 %s): %w", path, name, st.Mode&0o7777, name, err)
	case unix.Lstat(name, &st) == nil:
		return fmt.Errorf("vault %s: claim file %s: %w", path, name, err)
	default:
		return fmt.Errorf("vault %s: claim file %s cannot be created: uid %d may not write in %s, "+
			"where the claim file goes beside the vault: %w", path, name, me, filepath.Dir(name), err)
	}
}

// Release ends the claim: the file's contents are cleared (a claim file
// names nobody while it is not held) and its lock dropped.
func (c *Claim) Release() error {
	if c == nil || c.f == nil {
		return nil
	}
	err := c.f.Truncate(0)
	if cerr := c.f.Close(); err == nil {
		err = cerr
	}
	c.f = nil
	if err != nil {
		return fmt.Errorf("vault %s: release claim: %w", c.path, err)
	}
	return nil
}

// claimHolder builds the ClaimError for the claim file f that another
// process holds: the pid from /proc/locks (authoritative when this process
// can see the holder's pid namespace) or else from the file, and the
// socket the file names when the file is the holder's.
func claimHolder(f *os.File, path string) *ClaimError {
	e := &ClaimError{Path: path}
	b, err := io.ReadAll(io.NewSectionReader(f, 0, maxClaimBytes))
	var recorded Holder
	if err == nil {
		recorded, _ = parseHolder(b) // a holder mid-write may leave half a file
	}
	locked := lockHolder(f, path)
	switch {
	case locked.PID != 0:
		e.Holder.PID, e.Command = locked.PID, locked.Command
		if recorded.PID == locked.PID {
			e.Holder.Socket = recorded.Socket
		}
	default:
		e.Holder = recorded
	}
	return e
}

// writeHolder replaces f's contents with h, one "key value" line each.
func writeHolder(f *os.File, h Holder) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pid %d\n", h.PID)
	if h.Socket != "" {
		fmt.Fprintf(&b, "socket %s\n", h.Socket)
	}
	_, err := f.WriteAt([]byte(b.String()), 0)
	return err
}

// parseHolder reads a claim file's contents: "pid N" and "socket PATH"
// lines; unknown keys are skipped (a later version may add some). It
// returns what it could read and an error for anything malformed.
func parseHolder(b []byte) (Holder, error) {
	var h Holder
	if len(b) > maxClaimBytes {
		return h, fmt.Errorf("claim file larger than %d bytes", maxClaimBytes)
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(make([]byte, 0, 512), maxClaimBytes)
	for n := 1; sc.Scan(); n++ {
		key, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			return h, fmt.Errorf("claim file line %d: want \"KEY VALUE\"", n)
		}
		switch key {
		case "pid":
			pid, err := strconv.Atoi(value)
			if err != nil || pid <= 0 {
				return h, fmt.Errorf("claim file line %d: bad pid %q", n, value)
			}
			h.PID = pid
		case "socket":
			if value == "" || strings.ContainsFunc(value, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				return h, fmt.Errorf("claim file line %d: bad socket path", n)
			}
			h.Socket = value
		}
	}
	return h, sc.Err()
}

// claimFile is the claim file of the vault at path: beside the vault's
// real file, so that every path to one vault (through a symlink, or
// another spelling) meets the same claim.
func claimFile(path string) string {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	return path + ClaimSuffix
}
