package discovery

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"
)

// Size limits. Everything decoded from the network is checked against them
// before anything is allocated for it.
const (
	// MaxRecordSize caps one encoded record. A node certificate is about
	// 700 bytes; 8 KiB leaves room for long chains and future fields while
	// keeping 4096 records within MaxStateSize.
	MaxRecordSize = 8 << 10
	// MaxNameLen caps a node name (a DNS label is 63 bytes, a full name 253;
	// 253 covers both).
	MaxNameLen = 253
	// MaxEndpoints caps the underlay endpoints in one record: a handful of
	// interfaces and NAT mappings; more is a sign of abuse.
	MaxEndpoints = 16
	// MaxStateRecords caps the records accepted from one state exchange
	// (push/pull or join); the rest is ignored. memberlist itself caps the
	// nodes of a push/pull at about a million; 4096 is the fabric size the
	// package is designed for.
	MaxStateRecords = 4096
	// MaxCRLSize caps a CRL. An X.509 CRL entry is about 40 bytes, so 1 MiB
	// holds about 25,000 revocations.
	MaxCRLSize = 1 << 20
	// MaxMembers caps the member table. A name enters it only with a
	// genuine record (a certificate the trusted CAs issued for that name)
	// or as the member a tunnel belongs to, so only a fabric that large
	// fills it; past it, new names are refused (and counted as refused
	// records). memberlist's own table holds only names that pass the
	// transport's rules, which ask for the same.
	MaxMembers = MaxStateRecords
	// MaxStateSize caps one encoded state (LocalState / MergeRemoteState).
	// It is well under memberlist's own 20 MiB push/pull limit; a state
	// that would be larger is trimmed when sent and refused when received.
	MaxStateSize = 8 << 20
)

// recordFormat is the first byte of an encoded record: the format version.
// A decoder refuses formats it does not know; within a format, unknown field
// tags are skipped, so new fields can be added without a new format.
const recordFormat = 1

// Field tags of an encoded record (tag, length, value; all uvarints but the
// value). Decoders skip tags they do not know, so fields can be added.
const (
	fieldName        = 1
	fieldVersion     = 2
	fieldCertificate = 3
	fieldEndpoint    = 4
	// fieldGossipAddr is not part of Record: it is the overlay ip:port the
	// record's owner gossips on, used to pull from or reconnect to it.
	fieldGossipAddr = 5
	// fieldSignature is the owner's Ed25519 signature over everything
	// before it (format byte included); it is the last field.
	fieldSignature = 6
)

var (
	// ErrTooLarge is wrapped by errors about input over a size limit.
	ErrTooLarge = errors.New("over size limit")
	// ErrMalformed is wrapped by errors about undecodable input.
	ErrMalformed = errors.New("malformed")
	// ErrBadStatement is wrapped by errors about a statement whose
	// signature, certificate or time does not hold.
	ErrBadStatement = errors.New("statement refused")
)

// Record is what a node tells the fabric about itself. It is spread by
// gossip and state exchange; receivers must verify Certificate before they
// trust anything in it (this package does not look inside it).
type Record struct {
	// Name is the node name (the certificate's CN), also its memberlist name.
	Name string
	// Certificate is the node certificate, DER.
	Certificate []byte
	// Endpoints are the underlay addresses where the node's WireGuard and
	// admission UDP port is reachable.
	Endpoints []netip.AddrPort
	// Version grows with every update; the highest version wins. It is
	// the owner's clock (Unix nanoseconds) when it signed the record, or
	// one more than the previous version if the clock is behind it, so a
	// restarted node's record beats its previous one; receivers refuse a
	// version more than MaxClockSkew ahead of their own clock.
	Version uint64
}

// Equal reports whether two records are identical.
func (r Record) Equal(o Record) bool {
	return r.Name == o.Name && r.Version == o.Version &&
		bytes.Equal(r.Certificate, o.Certificate) && slices.Equal(r.Endpoints, o.Endpoints)
}

// Clone returns a deep copy of r.
func (r Record) Clone() Record {
	r.Certificate = bytes.Clone(r.Certificate)
	r.Endpoints = slices.Clone(r.Endpoints)
	return r
}

// Validate checks r against the size limits.
func (r Record) Validate() error {
	_, err := encodeRecord(nil, r, netip.AddrPort{})
	return err
}

// MarshalBinary encodes r in the versioned binary record format.
func (r Record) MarshalBinary() ([]byte, error) {
	return encodeRecord(nil, r, netip.AddrPort{})
}

// UnmarshalBinary decodes a record made by MarshalBinary.
func (r *Record) UnmarshalBinary(b []byte) error {
	rec, _, err := decodeRecord(b)
	if err != nil {
		return err
	}
	*r = rec
	return nil
}

func appendField(b []byte, tag uint64, v []byte) []byte {
	b = binary.AppendUvarint(b, tag)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// encodeRecord appends the encoding of r (and of the owner's gossip
// address, if valid) to b.
func encodeRecord(b []byte, r Record, gossip netip.AddrPort) ([]byte, error) {
	if r.Name == "" {
		return nil, fmt.Errorf("record: empty name: %w", ErrMalformed)
	}
	if len(r.Name) > MaxNameLen {
		return nil, fmt.Errorf("record %q: name of %d bytes: %w", r.Name[:16], len(r.Name), ErrTooLarge)
	}
	if len(r.Endpoints) > MaxEndpoints {
		return nil, fmt.Errorf("record %q: %d endpoints: %w", r.Name, len(r.Endpoints), ErrTooLarge)
	}
	start := len(b)
	b = append(b, recordFormat)
	b = appendField(b, fieldName, []byte(r.Name))
	b = appendField(b, fieldVersion, binary.BigEndian.AppendUint64(nil, r.Version))
	b = appendField(b, fieldCertificate, r.Certificate)
	for _, ep := range r.Endpoints {
		v, err := ep.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("record %q: endpoint: %w", r.Name, err)
		}
		b = appendField(b, fieldEndpoint, v)
	}
	if gossip.IsValid() {
		v, _ := gossip.MarshalBinary()
		b = appendField(b, fieldGossipAddr, v)
	}
	if n := len(b) - start; n > MaxRecordSize {
		return nil, fmt.Errorf("record %q: %d bytes encoded, limit %d: %w", r.Name, n, MaxRecordSize, ErrTooLarge)
	}
	return b, nil
}

// reader is a bounds-checked cursor over untrusted bytes.
type reader struct {
	b   []byte
	err error
}

func (rd *reader) uvarint() uint64 {
	if rd.err != nil {
		return 0
	}
	v, n := binary.Uvarint(rd.b)
	if n <= 0 {
		rd.err = fmt.Errorf("bad varint: %w", ErrMalformed)
		return 0
	}
	rd.b = rd.b[n:]
	return v
}

func (rd *reader) bytes(n uint64) []byte {
	if rd.err != nil {
		return nil
	}
	if n > uint64(len(rd.b)) {
		rd.err = fmt.Errorf("length %d past end (%d left): %w", n, len(rd.b), ErrMalformed)
		return nil
	}
	v := rd.b[:n:n]
	rd.b = rd.b[n:]
	return v
}

// field reads the next tagged field; ok is false at the end of the bytes
// or on an error (then in rd.err).
func (rd *reader) field() (tag uint64, v []byte, ok bool) {
	if rd.err != nil || len(rd.b) == 0 {
		return 0, nil, false
	}
	tag = rd.uvarint()
	v = rd.bytes(rd.uvarint())
	return tag, v, rd.err == nil
}

func (rd *reader) byte() byte {
	v := rd.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

// decodeRecord decodes one record (copying everything it keeps) and the
// owner's gossip address (invalid if absent). A signature, if present, is
// not checked.
func decodeRecord(b []byte) (Record, netip.AddrPort, error) {
	e, err := decodeEntry(b)
	return e.rec, e.gossip, err
}

// decodeEntry decodes one encoded record: the record, the owner's gossip
// address, and the signature with the bytes it covers. It keeps a copy
// of b (raw), which is what a relay sends on unchanged; the certificate
// shares that copy.
func decodeEntry(b []byte) (entry, error) {
	var e entry
	if len(b) > MaxRecordSize {
		return e, fmt.Errorf("record of %d bytes, limit %d: %w", len(b), MaxRecordSize, ErrTooLarge)
	}
	b = bytes.Clone(b)
	rd := &reader{b: b}
	if f := rd.byte(); rd.err == nil && f != recordFormat {
		return e, fmt.Errorf("record format %d: %w", f, ErrMalformed)
	}
	r := &e.rec
	var haveName, haveVersion bool
	for {
		start := len(b) - len(rd.b)
		tag, v, ok := rd.field()
		if !ok {
			break
		}
		if e.sig != nil {
			return e, fmt.Errorf("record field %d after the signature: %w", tag, ErrMalformed)
		}
		switch tag {
		case fieldName:
			if len(v) == 0 || len(v) > MaxNameLen || haveName {
				return e, fmt.Errorf("record name of %d bytes: %w", len(v), ErrMalformed)
			}
			r.Name, haveName = string(v), true
		case fieldVersion:
			if len(v) != 8 || haveVersion {
				return e, fmt.Errorf("record version of %d bytes: %w", len(v), ErrMalformed)
			}
			r.Version, haveVersion = binary.BigEndian.Uint64(v), true
		case fieldCertificate:
			r.Certificate = v
		case fieldEndpoint:
			if len(r.Endpoints) == MaxEndpoints {
				return e, fmt.Errorf("record with over %d endpoints: %w", MaxEndpoints, ErrTooLarge)
			}
			var ep netip.AddrPort
			if err := ep.UnmarshalBinary(v); err != nil || !ep.IsValid() {
				return e, fmt.Errorf("record endpoint: %w", ErrMalformed)
			}
			r.Endpoints = append(r.Endpoints, ep)
		case fieldGossipAddr:
			if err := e.gossip.UnmarshalBinary(v); err != nil {
				return e, fmt.Errorf("record gossip address: %w", ErrMalformed)
			}
		case fieldSignature:
			if len(v) != ed25519.SignatureSize {
				return e, fmt.Errorf("record signature of %d bytes: %w", len(v), ErrMalformed)
			}
			e.sig, e.signedLen = v, start
		default: // a newer field, covered by the signature: skipped
		}
	}
	if rd.err != nil {
		return e, fmt.Errorf("record: %w", rd.err)
	}
	if !haveName || !haveVersion {
		return e, fmt.Errorf("record without name or version: %w", ErrMalformed)
	}
	e.raw = b
	return e, nil
}

// signEntry encodes r with the owner's gossip address and signs it with
// the owner's identity key.
func signEntry(key ed25519.PrivateKey, r Record, gossip netip.AddrPort) (entry, error) {
	body, err := encodeRecord(nil, r, gossip)
	if err != nil {
		return entry{}, err
	}
	raw := appendField(body, fieldSignature, signedBy(key, recordContext, body))
	if len(raw) > MaxRecordSize {
		return entry{}, fmt.Errorf("record %q: %d bytes signed, limit %d: %w", r.Name, len(raw), MaxRecordSize, ErrTooLarge)
	}
	return entry{rec: r.Clone(), gossip: gossip, raw: raw, sig: raw[len(body)+2:], signedLen: len(body)}, nil
}

// verify checks e against the verified identity of the certificate in
// its record: the certificate names the record's owner, the owner's
// identity key signed the record, the owner's gossip address is one of
// its overlay addresses, and the version (the owner's clock when it
// signed) is not more than MaxClockSkew ahead of now.
func (e entry) verify(id Identity, now time.Time) error {
	if id.Name != e.rec.Name {
		return fmt.Errorf("record for %q carries the certificate of %q: %w", e.rec.Name, id.Name, ErrBadStatement)
	}
	if e.sig == nil {
		return fmt.Errorf("record for %q is not signed: %w", e.rec.Name, ErrBadStatement)
	}
	if !verifySig(id.Key, recordContext, e.raw[:e.signedLen], e.sig) {
		return fmt.Errorf("record for %q: signature does not verify with its certificate's key: %w", e.rec.Name, ErrBadStatement)
	}
	if e.gossip.IsValid() && !slices.Contains(id.Addrs, e.gossip.Addr()) {
		return fmt.Errorf("record for %q: gossip address %v is not one of its certificate's addresses: %w", e.rec.Name, e.gossip, ErrBadStatement)
	}
	if e.rec.Version > math.MaxInt64 {
		return fmt.Errorf("record for %q: version %d past any clock: %w", e.rec.Name, e.rec.Version, ErrBadStatement)
	}
	if err := checkTime(int64(e.rec.Version), now, 0); err != nil {
		return fmt.Errorf("record for %q: version: %w", e.rec.Name, err)
	}
	return nil
}
