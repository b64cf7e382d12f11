package vault

import (
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/chacha20poly1305"
)

// fileMode is the permission of vault files: owner read/write only.
const fileMode = 0o600

// Options tune Create, Open and Rekey. A nil *Options means defaults.
type Options struct {
	// KDF are the Argon2id parameters for a new passphrase (Create and
	// Rekey); the zero value means DefaultKDFParams. Ignored for raw keys
	// and by Open, which uses the parameters stored in the file.
	KDF KDFParams

	// InsecureWeakKDF lowers the accepted minimum from MinArgon* to
	// FloorArgon* on Create, Rekey and Open, so tests can use
	// InsecureTestKDFParams. Upper bounds still apply. Tests only: a
	// production Open refuses such files with ErrKDFParams.
	InsecureWeakKDF bool

	// LockTimeout is how long to wait for another holder of the vault
	// file; 0 means DefaultLockTimeout, negative means do not wait.
	LockTimeout time.Duration

	// AllowIntegrityErrors makes Open succeed on a vault whose items do
	// not match its manifest (rolled back, missing or foreign items, or a
	// missing or damaged manifest), for inspection and repair: Check
	// reports every problem, Accept records the items as they are, and Get
	// still refuses an item that does not match. Without it Open fails
	// with ErrIntegrity. gridnet vault check sets it; nothing else should.
	AllowIntegrityErrors bool

	// Logger receives the line Open logs when it upgrades a format 1
	// vault. nil discards it.
	Logger *slog.Logger
}

func (o *Options) kdf() KDFParams {
	if o == nil || o.KDF == (KDFParams{}) {
		return DefaultKDFParams()
	}
	return o.KDF
}

func (o *Options) weak() bool { return o != nil && o.InsecureWeakKDF }

func (o *Options) allowIntegrityErrors() bool { return o != nil && o.AllowIntegrityErrors }

func (o *Options) logger() *slog.Logger {
	if o == nil || o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

func (o *Options) lockTimeout() time.Duration {
	if o == nil || o.LockTimeout == 0 {
		return DefaultLockTimeout
	}
	return o.LockTimeout
}

// ItemInfo is an item's metadata as listed by List. Name, Class, Modified
// and Version come from the record's clear-text prefix and are
// authenticated only when the item is read (Get or Check): a tampered
// prefix makes those fail with ErrTampered. Size is the plaintext length.
type ItemInfo struct {
	Name     string
	Class    Class
	Size     int
	Modified time.Time
	Version  uint64 // the vault generation that wrote the item (0: a format 1 record)
}

// Vault is an open vault. Its methods are safe for concurrent use. It holds
// the file's exclusive lock until Close.
type Vault struct {
	// mu guards the fields below. Reads hold it shared for their whole
	// transaction, writes exclusively until the commit is done and man
	// updated, so a reader never compares a record with a manifest of
	// another commit.
	mu      sync.RWMutex
	path    string
	db      *bolt.DB
	dataKey []byte
	aead    cipher.AEAD
	closed  bool
	man     *manifest // the manifest as committed
	manErr  error     // *IntegrityError when the file's manifest is missing or unusable (AllowIntegrityErrors)
}

// guard runs fn with faults turned into panics and recovers any panic
// (bbolt panics on some inconsistencies) as an ErrCorrupt error.
func guard(op string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: storage engine failure: %v", ErrCorrupt, op, r)
		}
	}()
	return fn()
}

// Create creates a new vault at path protected by key. It fails with
// ErrExists if path exists. The file is created with mode 0600 and fsynced
// together with its directory.
func Create(path string, key Key, opts *Options) (v *Vault, err error) {
	if err := key.usable(); err != nil {
		return nil, fmt.Errorf("vault: create %s: %w", path, err)
	}
	params := opts.kdf()
	if key.kind == kindPassphrase {
		if err := params.Check(opts.weak()); err != nil {
			return nil, fmt.Errorf("vault: create %s: %w", path, err)
		}
	}
	dataKey := make([]byte, KeySize)
	if _, err := rand.Read(dataKey); err != nil {
		return nil, fmt.Errorf("vault: generating data key: %w", err)
	}
	// Derive before touching the disk: a failure leaves nothing behind.
	h, err := newHeader(key, params, dataKey, rand.Reader)
	if err != nil {
		clear(dataKey)
		return nil, fmt.Errorf("vault: create %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, fileMode)
	if err != nil {
		clear(dataKey)
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("vault: create %s: %w", path, ErrExists)
		}
		return nil, fmt.Errorf("vault: create: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	if err := f.Chmod(fileMode); err != nil {
		f.Close()
		clear(dataKey)
		return nil, fmt.Errorf("vault: create %s: %w", path, err)
	}
	if err := lockFile(f, path, opts.lockTimeout()); err != nil {
		f.Close()
		clear(dataKey)
		return nil, err
	}
	v, err = openBolt(path, f, dataKey, opts.lockTimeout())
	if err != nil {
		return nil, fmt.Errorf("vault: create %s: %w", path, err)
	}
	v.man = newManifest(0)
	sealed, err := sealManifest(v.aead, rand.Reader, v.man)
	if err != nil {
		v.Close()
		return nil, fmt.Errorf("vault: create %s: %w", path, err)
	}
	err = v.update("create", func(tx *bolt.Tx) error {
		mb, err := tx.CreateBucket([]byte(metaBucketName))
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucket([]byte(itemsBucketName)); err != nil {
			return err
		}
		if err := mb.Put([]byte(headerKeyName), h.encode()); err != nil {
			return err
		}
		return mb.Put([]byte(manifestKeyName), sealed)
	})
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		v.Close()
		return nil, fmt.Errorf("vault: create %s: %w", path, err)
	}
	return v, nil
}

// Open opens the existing vault at path with key. It takes the file's
// exclusive lock (waiting up to Options.LockTimeout), validates the whole
// bbolt page structure, checks the stored KDF parameters against the
// bounds and unwraps the data key, all before bbolt maps the file for
// writing. It then upgrades a format 1 vault to format 2 (one
// transaction, logged to Options.Logger) and compares the items with the
// manifest. Errors wrap ErrNotFound, ErrLocked, ErrCorrupt, ErrKDFParams,
// ErrWrongKey or ErrIntegrity (one *IntegrityError per item that differs
// from the manifest, unless Options.AllowIntegrityErrors is set).
func Open(path string, key Key, opts *Options) (*Vault, error) {
	if err := key.usable(); err != nil {
		return nil, fmt.Errorf("vault: open %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("vault: open %s: %w", path, ErrNotFound)
		}
		return nil, fmt.Errorf("vault: %w", err) // *PathError: "open PATH: ..."
	}
	if err := lockFile(f, path, opts.lockTimeout()); err != nil {
		f.Close()
		return nil, err
	}
	h, dataKey, kek, err := unlock(f, key, opts)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vault: open %s: %w", path, err)
	}
	defer clear(kek)
	v, err := openBolt(path, f, dataKey, opts.lockTimeout())
	if err != nil {
		return nil, fmt.Errorf("vault: open %s: %w", path, err)
	}
	if h.version == formatVersion1 {
		err = v.upgrade(h, kek, opts.logger())
	}
	if err == nil {
		err = v.loadManifest(opts.allowIntegrityErrors())
	}
	if err != nil {
		v.Close()
		return nil, fmt.Errorf("vault: open %s: %w", path, err)
	}
	return v, nil
}

// unlock validates the locked file f and returns its header, data key and
// key-encryption key (both to be wiped by the caller).
func unlock(f *os.File, key Key, opts *Options) (*header, []byte, []byte, error) {
	raw, err := checkBoltFile(f)
	if err != nil {
		return nil, nil, nil, err
	}
	h, err := decodeHeader(raw)
	if err != nil {
		return nil, nil, nil, err
	}
	if h.kdf == kdfArgon2id {
		if err := h.params.Check(opts.weak()); err != nil {
			return nil, nil, nil, fmt.Errorf("stored key derivation refused: %w", err)
		}
	}
	dk, kek, err := h.unwrap(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return h, dk, kek, nil
}

// openBolt hands the already locked and validated file f to bbolt. On
// failure f is closed and dataKey wiped.
func openBolt(path string, f *os.File, dataKey []byte, timeout time.Duration) (*Vault, error) {
	aead, err := chacha20poly1305.NewX(dataKey)
	if err != nil {
		f.Close()
		clear(dataKey)
		return nil, err
	}
	var db *bolt.DB
	err = guard("open", func() error {
		var err error
		db, err = bolt.Open(path, fileMode, &bolt.Options{
			Timeout: max(timeout, lockPollInterval),
			// bbolt re-takes the flock we hold on the same open file
			// description, which succeeds at once.
			OpenFile: func(string, int, os.FileMode) (*os.File, error) { return f, nil },
		})
		return err
	})
	if err != nil {
		f.Close() // bbolt closed it already unless it panicked; double close is harmless
		clear(dataKey)
		if !errors.Is(err, ErrCorrupt) {
			err = fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		return nil, err
	}
	return &Vault{path: path, db: db, dataKey: dataKey, aead: aead}, nil
}

// syncDir fsyncs a directory so a new entry in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// Path returns the vault file's path.
func (v *Vault) Path() string { return v.path }

// view runs fn in a read transaction under the read lock.
func (v *Vault) view(op string, fn func(tx *bolt.Tx) error) error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.closed {
		return ErrClosed
	}
	return guard(op, func() error { return v.db.View(fn) })
}

// update runs fn in a write transaction (one fsynced commit) under the
// exclusive lock. Item writes go through write, which also keeps the
// manifest.
func (v *Vault) update(op string, fn func(tx *bolt.Tx) error) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return ErrClosed
	}
	return guard(op, func() error { return v.db.Update(fn) })
}

// write runs fn in one write transaction together with the manifest's
// update: fn gets the items bucket and a copy of the manifest at the next
// generation, changes both, and the copy is sealed and stored in the same
// transaction. Only after the commit does it become the Vault's manifest.
// An item, its manifest entry and the generation therefore change
// together or not at all, whatever happens to the process.
func (v *Vault) write(op string, fn func(b *bolt.Bucket, next *manifest) error) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return ErrClosed
	}
	if v.man.generation == math.MaxUint64 {
		// Unreachable by writing (2^64 commits); only Accept could start
		// near it, and it takes versions from authenticated records.
		return fmt.Errorf("%w: the generation counter is exhausted", ErrIntegrity)
	}
	next := v.man.clone()
	next.generation++
	err := guard(op, func() error {
		return v.db.Update(func(tx *bolt.Tx) error {
			b, err := items(tx)
			if err != nil {
				return err
			}
			if err := fn(b, next); err != nil {
				return err
			}
			mb := tx.Bucket([]byte(metaBucketName))
			if mb == nil {
				return fmt.Errorf("%w: header bucket missing", ErrCorrupt)
			}
			sealed, err := sealManifest(v.aead, rand.Reader, next)
			if err != nil {
				return err
			}
			return mb.Put([]byte(manifestKeyName), sealed)
		})
	})
	if err != nil {
		return err
	}
	v.man, v.manErr = next, nil
	return nil
}

// items returns the items bucket or an ErrCorrupt error.
func items(tx *bolt.Tx) (*bolt.Bucket, error) {
	b := tx.Bucket([]byte(itemsBucketName))
	if b == nil {
		return nil, fmt.Errorf("%w: items bucket missing", ErrCorrupt)
	}
	return b, nil
}

// Put stores value under name with the given class, replacing any existing
// item of that name, in one fsynced transaction. The value is sealed before
// it reaches bbolt, so no plaintext is ever written. If the disk is full
// the error wraps the cause (ENOSPC, EFBIG, EDQUOT) and earlier items are
// unaffected.
func (v *Vault) Put(name string, class Class, value []byte) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("vault: put: %w", err)
	}
	if err := class.Validate(); err != nil {
		return fmt.Errorf("vault: put %q: %w", name, err)
	}
	if len(value) > MaxValueSize {
		return fmt.Errorf("vault: put %q: %w: value of %d bytes exceeds %d", name, ErrInvalidName, len(value), MaxValueSize)
	}
	err := v.write("put", func(b *bolt.Bucket, next *manifest) error {
		// The version is the new generation, so the record is sealed
		// here, under the write lock.
		rec, err := sealRecord(v.aead, rand.Reader, name, class, time.Now(), next.generation, value)
		if err != nil {
			return err
		}
		next.items[name] = next.generation
		return b.Put([]byte(name), rec)
	})
	if err != nil {
		return fmt.Errorf("vault: put %q: %w", name, withErrno(err))
	}
	return nil
}

// withErrno recovers the errno of storage errors that bbolt formats with
// %s (notably "file resize error: file too large" when growing the file),
// so errors.Is(err, syscall.ENOSPC/EFBIG/...) works on them.
func withErrno(err error) error {
	for _, e := range []syscall.Errno{syscall.ENOSPC, syscall.EFBIG, syscall.EDQUOT, syscall.EIO, syscall.EROFS} {
		if errors.Is(err, e) {
			return err
		}
	}
	msg := err.Error()
	for _, e := range []syscall.Errno{syscall.ENOSPC, syscall.EFBIG, syscall.EDQUOT, syscall.EIO, syscall.EROFS} {
		if strings.HasSuffix(msg, e.Error()) {
			return fmt.Errorf("%w (%w)", err, e)
		}
	}
	return err
}

// Get returns the decrypted value and class of name. Errors wrap
// ErrNotFound (neither the file nor the manifest has the item),
// ErrTampered (the record fails authentication) or ErrIntegrity (an
// *IntegrityError: the record is not the version the manifest lists, the
// manifest lists an item the file lacks, or the reverse).
func (v *Vault) Get(name string) ([]byte, Class, error) {
	var val []byte
	var h recordHeader
	err := v.view("get", func(tx *bolt.Tx) error {
		b, err := items(tx)
		if err != nil {
			return err
		}
		rec := b.Get([]byte(name))
		_, listed := v.man.items[name]
		switch {
		case rec == nil && !listed:
			return ErrNotFound
		case rec == nil || !listed:
			return v.man.compareClear(name, rec)
		}
		val, h, err = openRecord(v.aead, name, rec)
		if err != nil {
			return err
		}
		if err := v.man.compareVersion(name, h); err != nil {
			clear(val)
			val = nil
			return err
		}
		return nil
	})
	var ie *IntegrityError
	switch {
	case errors.As(err, &ie):
		return nil, "", fmt.Errorf("vault: get: %w", err) // the problem names the item
	case err != nil:
		return nil, "", fmt.Errorf("vault: get %q: %w", name, err)
	}
	return val, h.class, nil
}

// List returns all items sorted by name, without decrypting them. Items
// whose record prefix is malformed are left out and reported in the error
// (wrapping ErrTampered), together with the well-formed ones, so one bad
// record never hides the others.
func (v *Vault) List() ([]ItemInfo, error) { return v.list(func(Class) bool { return true }) }

// ListClass is like List restricted to items of class c.
func (v *Vault) ListClass(c Class) ([]ItemInfo, error) {
	return v.list(func(x Class) bool { return x == c })
}

func (v *Vault) list(keep func(Class) bool) ([]ItemInfo, error) {
	var out []ItemInfo
	var bad []error
	err := v.view("list", func(tx *bolt.Tx) error {
		b, err := items(tx)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, rec []byte) error {
			if rec == nil {
				bad = append(bad, fmt.Errorf("%w: %q is a bucket, not an item", ErrTampered, k))
				return nil
			}
			h, err := parseRecordHeader(rec)
			if err != nil {
				bad = append(bad, fmt.Errorf("item %q: %w", k, err))
				return nil
			}
			if keep(h.class) {
				out = append(out, ItemInfo{Name: string(k), Class: h.class, Size: h.size, Modified: h.modified, Version: h.version})
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("vault: list: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	if len(bad) > 0 {
		return out, fmt.Errorf("vault: list: %w", errors.Join(bad...))
	}
	return out, nil
}

// Delete removes name from the file and the manifest in one transaction.
// It returns an error wrapping ErrNotFound if neither holds it. bbolt may
// keep the old sealed record in a free page until it is reused; it stays
// encrypted, and the manifest no longer accepts it.
func (v *Vault) Delete(name string) error {
	err := v.write("delete", func(b *bolt.Bucket, next *manifest) error {
		_, listed := next.items[name]
		if b.Get([]byte(name)) == nil && !listed {
			return ErrNotFound
		}
		delete(next.items, name)
		return b.Delete([]byte(name))
	})
	if err != nil {
		return fmt.Errorf("vault: delete %q: %w", name, withErrno(err))
	}
	return nil
}

// Rekey re-wraps the data key under newKey (with opts.KDF for a
// passphrase) and replaces the header in one bbolt transaction: either the
// old key or the new one opens the vault, never neither. Items are not
// re-encrypted. Afterwards the old key no longer opens the file; note that
// bbolt may keep the previous header in a free page until it is reused, so
// someone holding both the old key and an old copy of the file could still
// recover the data key (rotate items into a new vault for that threat).
func (v *Vault) Rekey(newKey Key, opts *Options) error {
	if err := newKey.usable(); err != nil {
		return fmt.Errorf("vault: rekey: %w", err)
	}
	params := opts.kdf()
	if newKey.kind == kindPassphrase {
		if err := params.Check(opts.weak()); err != nil {
			return fmt.Errorf("vault: rekey: %w", err)
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return fmt.Errorf("vault: rekey: %w", ErrClosed)
	}
	h, err := newHeader(newKey, params, v.dataKey, rand.Reader)
	if err != nil {
		return fmt.Errorf("vault: rekey: %w", err)
	}
	err = guard("rekey", func() error {
		return v.db.Update(func(tx *bolt.Tx) error {
			mb := tx.Bucket([]byte(metaBucketName))
			if mb == nil {
				return fmt.Errorf("%w: header bucket missing", ErrCorrupt)
			}
			return mb.Put([]byte(headerKeyName), h.encode())
		})
	})
	if err != nil {
		return fmt.Errorf("vault: rekey: %w", withErrno(err))
	}
	return nil
}

// Check runs bbolt's consistency check over the whole file, authenticates
// every item and compares it with the manifest. It returns nil or an error
// joining everything Audit finds.
func (v *Vault) Check() error {
	if errs := v.Audit(); len(errs) > 0 {
		return fmt.Errorf("vault: check %s: %w", v.path, errors.Join(errs...))
	}
	return nil
}

// Audit is Check returning one error per problem, in this order: bbolt
// inconsistencies (ErrCorrupt), an unusable manifest, then per item in
// name order one that fails authentication (ErrTampered, "item NAME:
// ..."), one at another version than the manifest lists or not listed at
// all, and finally the items the manifest lists but the file lacks (the
// last three are *IntegrityError, wrapping ErrIntegrity). nil means the
// vault is sound.
func (v *Vault) Audit() []error {
	var errs []error
	err := v.view("check", func(tx *bolt.Tx) error {
		for cerr := range tx.Check() {
			errs = append(errs, fmt.Errorf("%w: %v", ErrCorrupt, cerr))
		}
		if v.manErr != nil {
			errs = append(errs, v.manErr)
		}
		b, err := items(tx)
		if err != nil {
			return err
		}
		err = b.ForEach(func(k, rec []byte) error {
			name := string(k)
			if _, listed := v.man.items[name]; !listed {
				errs = append(errs, &IntegrityError{Item: name, Problem: ProblemForeign})
				return nil
			}
			pt, h, err := openRecord(v.aead, name, rec)
			clear(pt)
			if err != nil {
				errs = append(errs, fmt.Errorf("item %q: %w", k, err))
				return nil
			}
			if err := v.man.compareVersion(name, h); err != nil {
				errs = append(errs, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		errs = append(errs, v.missing(b)...)
		return nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("vault: check %s: %w", v.path, err))
	}
	return errs
}

// Close releases the file and its lock and wipes the data key (best
// effort: the cipher keeps its own copy until garbage collected). Closing
// twice is a no-op.
func (v *Vault) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	clear(v.dataKey)
	v.aead = nil
	if err := v.db.Close(); err != nil {
		return fmt.Errorf("vault: close %s: %w", v.path, err)
	}
	return nil
}
