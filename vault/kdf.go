package vault

import (
	"crypto/subtle"
	"fmt"

	"golang.org/x/crypto/argon2"
)

// KeySize is the size in bytes of the data key, of a raw key and of the
// key-encryption key: XChaCha20-Poly1305 takes 256-bit keys.
const KeySize = 32

// saltSize is the Argon2id salt length; 16 bytes is RFC 9106's recommendation.
const saltSize = 16

// Default Argon2id parameters for new vaults. Measured on the reference
// machine (2 shared x86-64 cores, Go 1.26): Open in a fresh process (the
// normal case: a daemon or CLI opening its vault once) takes 0.39-0.44 s,
// much of it faulting in the 128 MiB; repeated opens in one process about
// 0.30 s (BenchmarkOpenDefaultKDF). For comparison a cold derivation took
// ~0.2 s at 64 MiB and ~0.85 s at 256 MiB (t=3); 128 MiB sits inside the
// 0.3-1 s target while still fitting small nodes. Threads are fixed at 4
// (RFC 9106's second recommended profile) rather than runtime.NumCPU so
// every machine writes the same parameters; on 2 cores 4 lanes cost the
// same wall time as 2.
const (
	DefaultArgonTime      = 3         // passes over memory
	DefaultArgonMemoryKiB = 128 << 10 // 128 MiB
	DefaultArgonThreads   = 4         // lanes
)

// Production lower bounds, enforced on Create, Rekey and Open unless
// Options.InsecureWeakKDF is set. They follow the OWASP minimum for Argon2id
// (m = 19 MiB, t = 2): anything cheaper makes offline guessing too easy.
const (
	MinArgonTime      = 2        // OWASP minimum passes at 19 MiB
	MinArgonMemoryKiB = 19 << 10 // OWASP minimum memory, 19 MiB
	MinArgonThreads   = 1        // Argon2 needs at least one lane
	MaxArgonTime      = 10       // with MaxArgonWork this caps an attacker-chosen open at a few seconds
	MaxArgonMemoryKiB = 1 << 20  // 1 GiB: more would let a hostile file exhaust a small node's RAM
	MaxArgonThreads   = 16       // more lanes buy nothing on the machines gridnet targets
	MaxArgonWork      = 4 << 20  // time*memoryKiB cap (4 GiB-passes, ~4-5 s here) so t and m cannot both be maximal
	FloorArgonTime    = 1        // absolute floor, honoured with InsecureWeakKDF (tests only)
	FloorArgonMemory  = 64       // KiB; absolute floor with InsecureWeakKDF; Argon2 also needs >= 8 KiB per lane
	argonKeyLen       = KeySize  // derived key-encryption key length
	minPassphraseLen  = 1        // empty passphrases are refused
	maxPassphraseLen  = 64 << 10 // refuses absurd inputs (e.g. a whole file piped to the prompt)
	floorKiBPerThread = 8        // Argon2 requirement: memory >= 8*lanes KiB
)

// KDFParams are the Argon2id cost parameters of a passphrase-protected vault.
// They are stored in the vault header and bounded on every use.
type KDFParams struct {
	Time      uint32 // number of passes
	MemoryKiB uint32 // memory in KiB
	Threads   uint8  // lanes
}

// DefaultKDFParams returns the Argon2id parameters used for new vaults when
// Options.KDF is zero.
func DefaultKDFParams() KDFParams {
	return KDFParams{Time: DefaultArgonTime, MemoryKiB: DefaultArgonMemoryKiB, Threads: DefaultArgonThreads}
}

// InsecureTestKDFParams returns the cheapest parameters accepted with
// Options.InsecureWeakKDF (about 50 µs per derivation). For tests only.
func InsecureTestKDFParams() KDFParams {
	return KDFParams{Time: FloorArgonTime, MemoryKiB: FloorArgonMemory, Threads: 1}
}

// InsecureTestOptions returns Options with InsecureTestKDFParams and
// InsecureWeakKDF set, so tests of this and other packages do not spend a
// second per Create/Open. Never use it for real vaults.
func InsecureTestOptions() *Options {
	return &Options{KDF: InsecureTestKDFParams(), InsecureWeakKDF: true}
}

// String formats p like "argon2id(t=3, m=131072 KiB, p=4)".
func (p KDFParams) String() string {
	return fmt.Sprintf("argon2id(t=%d, m=%d KiB, p=%d)", p.Time, p.MemoryKiB, p.Threads)
}

// Check reports whether p is within bounds: [Min, Max] normally, or
// [Floor, Max] when allowWeak (Options.InsecureWeakKDF) is set. The upper
// bounds always apply, so a hostile vault file cannot make Open spend
// unbounded memory or time. The error wraps ErrKDFParams.
func (p KDFParams) Check(allowWeak bool) error {
	minT, minM := uint32(MinArgonTime), uint32(MinArgonMemoryKiB)
	if allowWeak {
		minT, minM = FloorArgonTime, FloorArgonMemory
	}
	switch {
	case p.Time < minT || p.Time > MaxArgonTime:
		return fmt.Errorf("%w: %v: time must be in [%d, %d]", ErrKDFParams, p, minT, MaxArgonTime)
	case p.MemoryKiB < minM || p.MemoryKiB > MaxArgonMemoryKiB:
		return fmt.Errorf("%w: %v: memory must be in [%d, %d] KiB", ErrKDFParams, p, minM, MaxArgonMemoryKiB)
	case p.Threads < MinArgonThreads || p.Threads > MaxArgonThreads:
		return fmt.Errorf("%w: %v: threads must be in [%d, %d]", ErrKDFParams, p, MinArgonThreads, MaxArgonThreads)
	case uint64(p.MemoryKiB) < floorKiBPerThread*uint64(p.Threads):
		return fmt.Errorf("%w: %v: memory must be at least %d KiB per thread", ErrKDFParams, p, floorKiBPerThread)
	case uint64(p.Time)*uint64(p.MemoryKiB) > MaxArgonWork:
		return fmt.Errorf("%w: %v: time*memory exceeds %d KiB-passes", ErrKDFParams, p, MaxArgonWork)
	}
	return nil
}

// keyKind tells how a Key turns into a key-encryption key.
type keyKind uint8

const (
	kindNone       keyKind = iota // zero Key: invalid
	kindPassphrase                // Argon2id(passphrase, salt)
	kindRaw                       // 32 bytes used directly as KEK
)

// Key is the secret that opens a vault: a passphrase (stretched with
// Argon2id) or 32 raw bytes (from a key file). Copies of a Key share the
// secret; Destroy zeroes it for all of them. Key never prints its secret.
type Key struct {
	kind   keyKind
	secret []byte
}

// PassphraseKey returns a Key for passphrase p. p is copied; the caller may
// zero its own copy afterwards.
func PassphraseKey(p []byte) Key {
	return Key{kind: kindPassphrase, secret: append([]byte(nil), p...)}
}

// RawKey returns a Key for exactly KeySize raw bytes, copied from b.
func RawKey(b []byte) (Key, error) {
	if len(b) != KeySize {
		return Key{}, fmt.Errorf("vault: raw key must be %d bytes, got %d: %w", KeySize, len(b), ErrKeyFile)
	}
	return Key{kind: kindRaw, secret: append([]byte(nil), b...)}, nil
}

// IsPassphrase reports whether k is a passphrase (as opposed to a raw key).
func (k Key) IsPassphrase() bool { return k.kind == kindPassphrase }

// Destroy overwrites the secret with zeros (best effort: the Go runtime may
// have copied it). The Key is unusable afterwards.
func (k Key) Destroy() { clear(k.secret) }

// String describes the kind of key without revealing it.
func (k Key) String() string {
	switch k.kind {
	case kindPassphrase:
		return "vault.Key(passphrase)"
	case kindRaw:
		return "vault.Key(raw)"
	}
	return "vault.Key(none)"
}

// GoString is like String so %#v does not print the secret either.
func (k Key) GoString() string { return k.String() }

// usable checks that k can be used to create or open a vault.
func (k Key) usable() error {
	switch k.kind {
	case kindPassphrase:
		if len(k.secret) < minPassphraseLen {
			return fmt.Errorf("empty passphrase: %w", ErrWrongKey)
		}
		if len(k.secret) > maxPassphraseLen {
			return fmt.Errorf("passphrase longer than %d bytes: %w", maxPassphraseLen, ErrWrongKey)
		}
	case kindRaw:
		if len(k.secret) != KeySize || subtle.ConstantTimeCompare(k.secret, make([]byte, KeySize)) == 1 {
			return fmt.Errorf("raw key is empty or destroyed: %w", ErrWrongKey)
		}
	default:
		return fmt.Errorf("no key given: %w", ErrWrongKey)
	}
	return nil
}

// kek derives the key-encryption key for header h. Parameter bounds must
// have been checked by the caller. The result must be wiped by the caller.
func (k Key) kek(h *header) ([]byte, error) {
	if err := k.usable(); err != nil {
		return nil, err
	}
	switch {
	case h.kdf == kdfArgon2id && k.kind == kindPassphrase:
		p := h.params
		return argon2.IDKey(k.secret, h.salt, p.Time, p.MemoryKiB, p.Threads, argonKeyLen), nil
	case h.kdf == kdfRaw && k.kind == kindRaw:
		return append([]byte(nil), k.secret...), nil
	case h.kdf == kdfRaw:
		return nil, fmt.Errorf("vault is protected by a key file, but a passphrase was given: %w", ErrWrongKey)
	default:
		return nil, fmt.Errorf("vault is protected by a passphrase, but a raw key was given: %w", ErrWrongKey)
	}
}
