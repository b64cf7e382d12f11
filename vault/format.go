package vault

import (
	"bytes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/chacha20poly1305"
)

// On-disk constants. See the package documentation for the layout.
const (
	headerMagic      = "GNVAULT\x00"                                                                // first bytes of the header value: identifies a gridnet vault
	formatVersion    = 2                                                                            // header format version written by this build: records carry versions, a manifest lists them
	formatVersion1   = 1                                                                            // the previous format, upgraded on Open; other values are refused as ErrCorrupt
	recordVersion    = 2                                                                            // item record layout written by this build (carries the item version)
	recordVersion1   = 1                                                                            // record layout of format 1 vaults (no item version); refused in a format 2 vault
	kdfArgon2id      = 1                                                                            // header kdf byte: KEK = Argon2id(passphrase, salt)
	kdfRaw           = 2                                                                            // header kdf byte: KEK = the 32-byte raw key
	nonceSize        = chacha20poly1305.NonceSizeX                                                  // 24-byte random nonces: safe to pick at random forever
	tagSize          = chacha20poly1305.Overhead                                                    // Poly1305 tag
	wrappedKeySize   = KeySize + tagSize                                                            // sealed data key
	maxClassLen      = 32                                                                           // classes are short identifiers
	recordFixedSize1 = 1 + 1 + 8 + nonceSize + tagSize                                              // format 1 record bytes besides class and ciphertext
	recordFixedSize  = recordFixedSize1 + 8                                                         // record bytes besides class and ciphertext: format 1 plus the item version
	wrapADLabel      = "gridnet-vault data-key\x00"                                                 // domain separation for the key wrap
	itemADLabel      = "gridnet-vault item\x00"                                                     // domain separation for item records
	metaBucketName   = "gridnet-vault"                                                              // bucket holding the header and the manifest
	itemsBucketName  = "items"                                                                      // bucket holding sealed item records, keyed by name
	headerKeyName    = "header"                                                                     // key of the header inside metaBucketName
	manifestKeyName  = "manifest"                                                                   // key of the sealed manifest inside metaBucketName (format 2)
	headerArgonLen   = len(headerMagic) + 2 + 1 + 4 + 4 + 1 + saltSize + nonceSize + wrappedKeySize // header size, passphrase vault
	headerRawLen     = len(headerMagic) + 2 + 1 + nonceSize + wrappedKeySize                        // header size, key-file vault
)

// Item limits.
const (
	// MaxNameLen is the longest item name in bytes: names are short
	// identifiers (like file names); bbolt keys must stay below 32 KiB.
	MaxNameLen = 255
	// MaxValueSize is the largest item value (64 MiB): Put and Get hold the
	// plaintext and the ciphertext in memory at once, and bbolt rewrites a
	// value's pages wholesale on every change. Keys, certificates and state
	// are far smaller; large user files belong elsewhere.
	MaxValueSize = 64 << 20
)

// Class says what kind of secret an item is. Classes are short lower-case
// identifiers ([a-z0-9_-], at most 32 bytes); the constants below are the
// ones gridnet uses, but other packages may define more.
type Class string

// Item classes used by gridnet.
const (
	ClassKey   Class = "key"   // node and CA private keys
	ClassCert  Class = "cert"  // certificates
	ClassState Class = "state" // daemon state that must stay confidential
	ClassUser  Class = "user"  // files stored by the user
)

// ValidateName reports whether name is an acceptable item name: 1 to
// MaxNameLen bytes of valid UTF-8 without control characters (which
// excludes NUL). Names are stored in clear in the file.
func ValidateName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w: name must be 1 to %d bytes, got %d", ErrInvalidName, MaxNameLen, len(name))
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: name %q is not valid UTF-8", ErrInvalidName, name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("%w: name %q contains a control character", ErrInvalidName, name)
		}
	}
	return nil
}

// Validate reports whether c is a well-formed class.
func (c Class) Validate() error {
	if c == "" || len(c) > maxClassLen {
		return fmt.Errorf("%w: class must be 1 to %d bytes", ErrInvalidName, maxClassLen)
	}
	for i := 0; i < len(c); i++ {
		b := c[i]
		if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-' || b == '_') {
			return fmt.Errorf("%w: class %q may only contain [a-z0-9_-]", ErrInvalidName, string(c))
		}
	}
	return nil
}

// header is the decoded vault header (value of gridnet-vault/header).
type header struct {
	version uint16
	kdf     byte
	params  KDFParams // kdfArgon2id only
	salt    []byte    // kdfArgon2id only
	nonce   []byte
	wrapped []byte // data key sealed under the KEK
}

// prefix serialises the header up to (excluding) the nonce: the part
// bound as associated data of the key wrap.
func (h *header) prefix() []byte {
	b := make([]byte, 0, headerArgonLen)
	b = append(b, headerMagic...)
	b = binary.BigEndian.AppendUint16(b, h.version)
	b = append(b, h.kdf)
	if h.kdf == kdfArgon2id {
		b = binary.BigEndian.AppendUint32(b, h.params.Time)
		b = binary.BigEndian.AppendUint32(b, h.params.MemoryKiB)
		b = append(b, h.params.Threads)
		b = append(b, h.salt...)
	}
	return b
}

// encode serialises h.
func (h *header) encode() []byte {
	return append(append(h.prefix(), h.nonce...), h.wrapped...)
}

// decodeHeader parses a header value; all errors wrap ErrCorrupt.
func decodeHeader(b []byte) (*header, error) {
	if len(b) < len(headerMagic)+3 || string(b[:len(headerMagic)]) != headerMagic {
		return nil, fmt.Errorf("%w: bad vault header magic", ErrCorrupt)
	}
	h := &header{version: binary.BigEndian.Uint16(b[len(headerMagic):]), kdf: b[len(headerMagic)+2]}
	if h.version != formatVersion && h.version != formatVersion1 {
		return nil, fmt.Errorf("%w: unsupported vault format version %d (this build reads %d and %d)", ErrCorrupt, h.version, formatVersion1, formatVersion)
	}
	rest := b[len(headerMagic)+3:]
	switch h.kdf {
	case kdfArgon2id:
		if len(b) != headerArgonLen {
			return nil, fmt.Errorf("%w: vault header has %d bytes, want %d", ErrCorrupt, len(b), headerArgonLen)
		}
		h.params = KDFParams{Time: binary.BigEndian.Uint32(rest), MemoryKiB: binary.BigEndian.Uint32(rest[4:]), Threads: rest[8]}
		h.salt = bytes.Clone(rest[9 : 9+saltSize])
		rest = rest[9+saltSize:]
	case kdfRaw:
		if len(b) != headerRawLen {
			return nil, fmt.Errorf("%w: vault header has %d bytes, want %d", ErrCorrupt, len(b), headerRawLen)
		}
	default:
		return nil, fmt.Errorf("%w: unknown key derivation %d in vault header", ErrCorrupt, h.kdf)
	}
	h.nonce = bytes.Clone(rest[:nonceSize])
	h.wrapped = bytes.Clone(rest[nonceSize:])
	return h, nil
}

// newHeader builds a current-format header for key k (fresh salt and nonce
// from rnd), derives the KEK and wraps dataKey. params are used for
// passphrases only and must already be checked.
func newHeader(k Key, params KDFParams, dataKey []byte, rnd io.Reader) (*header, error) {
	if err := k.usable(); err != nil {
		return nil, err
	}
	h := &header{version: formatVersion, kdf: kdfRaw, nonce: make([]byte, nonceSize)}
	if k.kind == kindPassphrase {
		h.kdf, h.params, h.salt = kdfArgon2id, params, make([]byte, saltSize)
		if _, err := io.ReadFull(rnd, h.salt); err != nil {
			return nil, fmt.Errorf("reading random salt: %w", err)
		}
	}
	if _, err := io.ReadFull(rnd, h.nonce); err != nil {
		return nil, fmt.Errorf("reading random nonce: %w", err)
	}
	kek, err := k.kek(h)
	if err != nil {
		return nil, err
	}
	defer clear(kek)
	if err := h.wrap(kek, dataKey); err != nil {
		return nil, err
	}
	return h, nil
}

// wrap seals dataKey under kek into h.wrapped, with h's nonce and prefix.
func (h *header) wrap(kek, dataKey []byte) error {
	aead, err := chacha20poly1305.NewX(kek)
	if err != nil {
		return fmt.Errorf("key wrap cipher: %w", err)
	}
	h.wrapped = aead.Seal(nil, h.nonce, dataKey, h.wrapAD())
	return nil
}

// wrapAD is the associated data of the key wrap: a label plus every header
// byte before the nonce (magic, version, KDF kind, parameters, salt).
func (h *header) wrapAD() []byte {
	return append([]byte(wrapADLabel), h.prefix()...)
}

// unwrap derives the KEK from k and opens the data key. A failure wraps
// ErrWrongKey. It returns the data key and the KEK (which an upgrade needs
// to rewrap the data key under the new header); the caller must wipe both.
func (h *header) unwrap(k Key) (dataKey, kek []byte, err error) {
	kek, err = k.kek(h)
	if err != nil {
		return nil, nil, err
	}
	aead, err := chacha20poly1305.NewX(kek)
	if err != nil {
		clear(kek)
		return nil, nil, fmt.Errorf("key wrap cipher: %w", err)
	}
	dk, err := aead.Open(nil, h.nonce, h.wrapped, h.wrapAD())
	if err != nil || len(dk) != KeySize {
		clear(kek)
		return nil, nil, ErrWrongKey
	}
	return dk, kek, nil
}

// recordHeader is the clear-text prefix of an item record.
type recordHeader struct {
	format   byte // recordVersion or recordVersion1
	class    Class
	modified time.Time
	version  uint64 // item version (the vault generation that wrote it); 0 in format 1 records
	size     int    // plaintext length
	adLen    int    // length of the record prefix bound as AD (before the nonce)
}

// itemAD builds the associated data for name's record whose clear prefix is
// prefix: label, 2-byte name length, name, prefix. The length prefix makes
// the encoding injective, so no (name, prefix) pair can collide. The
// prefix holds the record layout byte, class, mtime and (format 2) the item
// version, so all of them are bound to the ciphertext.
func itemAD(name string, prefix []byte) []byte {
	ad := make([]byte, 0, len(itemADLabel)+2+len(name)+len(prefix))
	ad = append(ad, itemADLabel...)
	ad = binary.BigEndian.AppendUint16(ad, uint16(len(name)))
	ad = append(ad, name...)
	return append(ad, prefix...)
}

// sealRecord encrypts value for name under aead with a fresh random nonce,
// as item version version. Layout: layout(1)=2 classLen(1) class mtime(8,
// unix ns) version(8) nonce(24) ciphertext+tag, integers big endian.
func sealRecord(aead cipher.AEAD, rnd io.Reader, name string, class Class, mtime time.Time, version uint64, value []byte) ([]byte, error) {
	rec := make([]byte, 0, recordFixedSize+len(class)+len(value))
	rec = append(rec, recordVersion, byte(len(class)))
	rec = append(rec, class...)
	rec = binary.BigEndian.AppendUint64(rec, uint64(mtime.UnixNano()))
	rec = binary.BigEndian.AppendUint64(rec, version)
	adLen := len(rec)
	rec = rec[:adLen+nonceSize]
	if _, err := io.ReadFull(rnd, rec[adLen:]); err != nil {
		return nil, fmt.Errorf("reading random nonce: %w", err)
	}
	return aead.Seal(rec, rec[adLen:], value, itemAD(name, rec[:adLen])), nil
}

// parseRecordHeader decodes the clear prefix of rec (either layout)
// without authenticating it. Errors wrap ErrTampered.
func parseRecordHeader(rec []byte) (recordHeader, error) {
	var h recordHeader
	if len(rec) < 2 {
		return h, fmt.Errorf("%w: record too short (%d bytes)", ErrTampered, len(rec))
	}
	fixed := recordFixedSize
	switch rec[0] {
	case recordVersion:
	case recordVersion1:
		fixed = recordFixedSize1
	default:
		return h, fmt.Errorf("%w: unknown record version %d", ErrTampered, rec[0])
	}
	if len(rec) < fixed {
		return h, fmt.Errorf("%w: record too short (%d bytes)", ErrTampered, len(rec))
	}
	h.format = rec[0]
	cl := int(rec[1])
	if len(rec) < fixed+cl {
		return h, fmt.Errorf("%w: record too short for its class", ErrTampered)
	}
	h.class = Class(rec[2 : 2+cl])
	if err := h.class.Validate(); err != nil {
		return h, fmt.Errorf("%w: bad class in record", ErrTampered)
	}
	h.modified = time.Unix(0, int64(binary.BigEndian.Uint64(rec[2+cl:])))
	h.adLen = 2 + cl + 8
	if h.format == recordVersion {
		h.version = binary.BigEndian.Uint64(rec[h.adLen:])
		h.adLen += 8
	}
	h.size = len(rec) - h.adLen - nonceSize - tagSize
	return h, nil
}

// openRecord authenticates and decrypts name's record, of either layout.
// Errors wrap ErrTampered. Whether the layout and version are acceptable
// is for the caller to judge against the manifest.
func openRecord(aead cipher.AEAD, name string, rec []byte) ([]byte, recordHeader, error) {
	h, err := parseRecordHeader(rec)
	if err != nil {
		return nil, h, err
	}
	nonce := rec[h.adLen : h.adLen+nonceSize]
	pt, err := aead.Open(make([]byte, 0, h.size), nonce, rec[h.adLen+nonceSize:], itemAD(name, rec[:h.adLen]))
	if err != nil {
		return nil, h, fmt.Errorf("%w: authentication failed", ErrTampered)
	}
	return pt, h, nil
}
