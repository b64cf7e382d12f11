package vault

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package that belongs to one
// of these categories wraps the matching sentinel, so callers test with
// errors.Is; the wrapping error adds the path, item name or cause.
var (
	// ErrWrongKey means the key or passphrase does not unwrap the vault's
	// data key (or is of the wrong kind, e.g. a passphrase for a vault
	// protected by a key file). A tampered wrapped-key record is
	// indistinguishable from a wrong key and also yields ErrWrongKey.
	ErrWrongKey = errors.New("wrong vault key or passphrase")

	// ErrTampered means an item record failed authentication or is
	// malformed: its ciphertext, class, timestamp or name binding was
	// modified, or records were swapped between names.
	ErrTampered = errors.New("vault item failed authentication (tampered or corrupted)")

	// ErrIntegrity means the vault's items differ from its sealed
	// manifest: an item was rolled back to an older copy, deleted or
	// added outside the vault, or the manifest itself is gone. The
	// concrete errors are *IntegrityError values naming the item.
	ErrIntegrity = errors.New("vault contents do not match the manifest")

	// ErrCorrupt means the file is not a readable gridnet vault: truncated,
	// garbage, a bbolt file without the vault header, an inconsistent bbolt
	// page structure, or an unsupported format version.
	ErrCorrupt = errors.New("vault file is corrupt or not a gridnet vault")

	// ErrLocked means another process (or another Vault in this process)
	// holds the vault file's lock. The concrete error is a *LockError that
	// names the holder when it can be found.
	ErrLocked = errors.New("vault locked")

	// ErrNotFound means the vault file or the named item does not exist.
	ErrNotFound = errors.New("not found")

	// ErrExists means Create was asked to create a vault over an existing
	// file, or GenerateKeyFile to overwrite an existing key file.
	ErrExists = errors.New("already exists")

	// ErrKDFParams means Argon2id parameters are outside the accepted
	// bounds (see MinArgon*/MaxArgon*/FloorArgon*), whether requested for a
	// new vault or declared by an existing file.
	ErrKDFParams = errors.New("argon2id parameters out of bounds")

	// ErrClosed means the Vault has been closed.
	ErrClosed = errors.New("vault is closed")

	// ErrInvalidName means an item name, class or value violates the
	// documented limits (see MaxNameLen, MaxValueSize, ValidateName).
	ErrInvalidName = errors.New("invalid vault item")

	// ErrKeyFile means a key file is unusable: bad permissions, wrong size
	// or undecodable contents.
	ErrKeyFile = errors.New("unusable vault key file")

	// ErrNoKeySource means KeySource.Resolve found no key: no key file, no
	// GRIDNET_VAULT_PASSPHRASE, no systemd credential and no terminal.
	ErrNoKeySource = errors.New("no vault key available")
)

// LockError is returned (wrapping ErrLocked) when the vault file is locked
// by someone else. PID and Command describe the holder as found in
// /proc/locks and /proc/PID/comm; PID is 0 when the holder is unknown (for
// example on systems without /proc/locks or when the holder lives in
// another PID namespace).
type LockError struct {
	Path    string // vault file path
	PID     int    // holder process id, 0 if unknown
	Command string // holder's /proc/PID/comm, "" if unknown
	Self    bool   // the holder is this very process (a second Open of the same file)
}

// Error describes the lock holder, e.g.
// "vault /var/lib/gridnet/vault.db is locked by process 1234 (gridnetd)".
func (e *LockError) Error() string {
	switch {
	case e.PID == 0:
		return fmt.Sprintf("vault %s is locked by another process (holder unknown): %v", e.Path, ErrLocked)
	case e.Self:
		return fmt.Sprintf("vault %s is locked by this process (pid %d, already open elsewhere in it): %v", e.Path, e.PID, ErrLocked)
	case e.Command != "":
		return fmt.Sprintf("vault %s is locked by process %d (%s): %v", e.Path, e.PID, e.Command, ErrLocked)
	default:
		return fmt.Sprintf("vault %s is locked by process %d: %v", e.Path, e.PID, ErrLocked)
	}
}

// Unwrap makes errors.Is(err, ErrLocked) true.
func (e *LockError) Unwrap() error { return ErrLocked }
