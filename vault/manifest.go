package vault

import (
	"bytes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"slices"
)

// Manifest layout constants. See the package documentation.
const (
	manifestFormat    = 1                            // layout byte of the sealed manifest; other values are refused
	manifestADLabel   = "gridnet-vault manifest\x00" // domain separation for the manifest seal
	manifestPrefixLen = 1 + 8                        // clear prefix: layout byte, generation
	manifestEntryMin  = 2 + 1 + 8                    // smallest entry: name length, a 1-byte name, version
	manifestCountLen  = 4                            // entry count at the start of the plaintext
)

// manifest is the sealed list of the items a vault should hold, each with
// the version of its last write, and the vault's generation: a counter
// raised by every write. Versions are generations, so a name that is
// deleted and written again never reuses a version, and an old copy of any
// record carries a version the manifest no longer lists.
//
// Version 0 marks an item that is listed but was never authenticated: a
// format 1 record that failed authentication during the upgrade, or a
// damaged record adopted by Accept. Such an item is expected to be
// present, and reading it fails.
type manifest struct {
	generation uint64
	items      map[string]uint64
}

// newManifest returns an empty manifest at generation gen.
func newManifest(gen uint64) *manifest {
	return &manifest{generation: gen, items: map[string]uint64{}}
}

// clone returns a deep copy of m.
func (m *manifest) clone() *manifest {
	return &manifest{generation: m.generation, items: maps.Clone(m.items)}
}

// encodeBody serialises the entries: count u32, then for each name in
// byte order: name length u16, name, version u64 (big endian).
func (m *manifest) encodeBody() []byte {
	names := slices.Sorted(maps.Keys(m.items))
	n := manifestCountLen
	for _, name := range names {
		n += 2 + len(name) + 8
	}
	b := make([]byte, 0, n)
	b = binary.BigEndian.AppendUint32(b, uint32(len(names)))
	for _, name := range names {
		b = binary.BigEndian.AppendUint16(b, uint16(len(name)))
		b = append(b, name...)
		b = binary.BigEndian.AppendUint64(b, m.items[name])
	}
	return b
}

// decodeManifestBody parses the plaintext of a manifest at generation gen.
// It accepts only the canonical encoding: names valid and strictly
// ascending, no version above gen, no trailing bytes. Nothing is allocated
// beyond what the input's length allows. Errors are *manifestError
// (wrapping ErrTampered).
func decodeManifestBody(gen uint64, b []byte) (*manifest, error) {
	if len(b) < manifestCountLen {
		return nil, manifestErr("too short (%d bytes)", len(b))
	}
	count := binary.BigEndian.Uint32(b)
	rest := b[manifestCountLen:]
	if uint64(count) > uint64(len(rest)/manifestEntryMin) {
		return nil, manifestErr("claims %d items in %d bytes", count, len(rest))
	}
	m := &manifest{generation: gen, items: make(map[string]uint64, count)}
	var prev []byte
	for i := range count {
		if len(rest) < 2 {
			return nil, manifestErr("entry %d truncated", i)
		}
		nl := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+nl+8 {
			return nil, manifestErr("entry %d truncated", i)
		}
		name := rest[2 : 2+nl]
		if err := ValidateName(string(name)); err != nil {
			return nil, manifestErr("entry %d: %v", i, err)
		}
		if i > 0 && bytes.Compare(prev, name) >= 0 {
			return nil, manifestErr("entries out of order at %q", name)
		}
		version := binary.BigEndian.Uint64(rest[2+nl:])
		if version > gen {
			return nil, manifestErr("lists %q at version %d, above its generation %d", name, version, gen)
		}
		m.items[string(name)] = version
		prev = name
		rest = rest[2+nl+8:]
	}
	if len(rest) != 0 {
		return nil, manifestErr("%d bytes after the entries", len(rest))
	}
	return m, nil
}

// manifestAD is the associated data of a manifest seal: a label and the
// clear prefix (layout byte and generation).
func manifestAD(prefix []byte) []byte {
	return append([]byte(manifestADLabel), prefix...)
}

// sealManifest encrypts m under aead with a fresh random nonce. Layout:
// layout(1)=1 generation(8) nonce(24) ciphertext+tag; the plaintext is
// encodeBody's.
func sealManifest(aead cipher.AEAD, rnd io.Reader, m *manifest) ([]byte, error) {
	body := m.encodeBody()
	out := make([]byte, 0, manifestPrefixLen+nonceSize+len(body)+tagSize)
	out = append(out, manifestFormat)
	out = binary.BigEndian.AppendUint64(out, m.generation)
	out = out[:manifestPrefixLen+nonceSize]
	if _, err := io.ReadFull(rnd, out[manifestPrefixLen:]); err != nil {
		return nil, fmt.Errorf("reading random nonce: %w", err)
	}
	return aead.Seal(out, out[manifestPrefixLen:], body, manifestAD(out[:manifestPrefixLen])), nil
}

// openManifest authenticates, decrypts and parses a sealed manifest.
// Errors are *manifestError (wrapping ErrTampered).
func openManifest(aead cipher.AEAD, b []byte) (*manifest, error) {
	if len(b) < manifestPrefixLen+nonceSize+tagSize {
		return nil, manifestErr("too short (%d bytes)", len(b))
	}
	if b[0] != manifestFormat {
		return nil, manifestErr("unknown layout %d", b[0])
	}
	gen := binary.BigEndian.Uint64(b[1:])
	nonce := b[manifestPrefixLen : manifestPrefixLen+nonceSize]
	body, err := aead.Open(nil, nonce, b[manifestPrefixLen+nonceSize:], manifestAD(b[:manifestPrefixLen]))
	if err != nil {
		return nil, manifestErr("authentication failed")
	}
	return decodeManifestBody(gen, body)
}

// manifestError is why a manifest cannot be used. It wraps ErrTampered but
// does not repeat its text, which speaks of items.
type manifestError struct{ msg string }

func (e *manifestError) Error() string { return e.msg }
func (e *manifestError) Unwrap() error { return ErrTampered }

// manifestErr formats a *manifestError.
func manifestErr(format string, args ...any) error {
	return &manifestError{msg: fmt.Sprintf(format, args...)}
}

// Problem says how a vault's contents differ from its manifest.
type Problem int

// The ways a vault's contents can differ from its manifest.
const (
	// ProblemVersion: the item's record is not the version the manifest
	// lists: an older copy was put back (or, if newer, the manifest was).
	ProblemVersion Problem = iota + 1
	// ProblemMissing: the manifest lists the item, the file does not hold
	// it: it was deleted outside the vault.
	ProblemMissing
	// ProblemForeign: the file holds an item the manifest does not list:
	// it was added outside the vault (for example a deleted item's old
	// record put back).
	ProblemForeign
	// ProblemManifest: the manifest itself is missing or fails
	// authentication, so no item can be checked against it.
	ProblemManifest
)

// IntegrityError is one difference between a vault's contents and its
// manifest. It wraps ErrIntegrity.
type IntegrityError struct {
	Item     string  // the item concerned; "" for ProblemManifest
	Problem  Problem // what is wrong
	Version  uint64  // ProblemVersion: the version of the record found (0: a format 1 record)
	Manifest uint64  // ProblemVersion: the version the manifest lists
	Err      error   // ProblemManifest: why the manifest is unusable (nil: it is missing)

	legacy bool // ProblemVersion: the record found is in the format 1 layout
}

// Error describes the problem, e.g. `item "notes" is version 3, the
// manifest says 5`.
func (e *IntegrityError) Error() string {
	switch e.Problem {
	case ProblemVersion:
		if e.legacy {
			return fmt.Sprintf("item %q is a format 1 copy from before the upgrade, the manifest says version %d", e.Item, e.Manifest)
		}
		return fmt.Sprintf("item %q is version %d, the manifest says %d", e.Item, e.Version, e.Manifest)
	case ProblemMissing:
		return fmt.Sprintf("item %q is missing", e.Item)
	case ProblemForeign:
		return fmt.Sprintf("item %q is not in the manifest", e.Item)
	case ProblemManifest:
		if e.Err == nil {
			return "the manifest is missing"
		}
		return fmt.Sprintf("the manifest is unusable: %v", e.Err)
	}
	return fmt.Sprintf("item %q: %v", e.Item, ErrIntegrity)
}

// Unwrap makes errors.Is(err, ErrIntegrity) true.
func (e *IntegrityError) Unwrap() error { return ErrIntegrity }

// compareClear checks name's record rec (nil: absent) against m using only
// the record's clear prefix, as Open does. It returns nil or an
// *IntegrityError. A record whose prefix does not parse is left to Get and
// Check, which report it as tampered; so is an item listed at version 0.
func (m *manifest) compareClear(name string, rec []byte) error {
	want, listed := m.items[name]
	switch {
	case rec == nil && !listed:
		return nil
	case rec == nil:
		return &IntegrityError{Item: name, Problem: ProblemMissing}
	case !listed:
		return &IntegrityError{Item: name, Problem: ProblemForeign}
	case want == 0:
		return nil
	}
	h, err := parseRecordHeader(rec)
	if err != nil {
		return nil
	}
	return m.compareVersion(name, h)
}

// compareVersion checks the (authenticated or clear) header h of listed
// item name against its manifest version.
func (m *manifest) compareVersion(name string, h recordHeader) error {
	want := m.items[name]
	if h.format == recordVersion && h.version == want && want != 0 {
		return nil
	}
	return &IntegrityError{Item: name, Problem: ProblemVersion, Version: h.version, Manifest: want, legacy: h.format != recordVersion}
}
