package discovery

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
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
	// Version grows with every update; the highest version wins.
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
// owner's gossip address (invalid if absent).
func decodeRecord(b []byte) (Record, netip.AddrPort, error) {
	var r Record
	var gossip netip.AddrPort
	if len(b) > MaxRecordSize {
		return r, gossip, fmt.Errorf("record of %d bytes, limit %d: %w", len(b), MaxRecordSize, ErrTooLarge)
	}
	rd := &reader{b: b}
	if f := rd.byte(); rd.err == nil && f != recordFormat {
		return r, gossip, fmt.Errorf("record format %d: %w", f, ErrMalformed)
	}
	var haveName, haveVersion bool
	for tag, v, ok := rd.field(); ok; tag, v, ok = rd.field() {
		switch tag {
		case fieldName:
			if len(v) == 0 || len(v) > MaxNameLen || haveName {
				return r, gossip, fmt.Errorf("record name of %d bytes: %w", len(v), ErrMalformed)
			}
			r.Name, haveName = string(v), true
		case fieldVersion:
			if len(v) != 8 || haveVersion {
				return r, gossip, fmt.Errorf("record version of %d bytes: %w", len(v), ErrMalformed)
			}
			r.Version, haveVersion = binary.BigEndian.Uint64(v), true
		case fieldCertificate:
			r.Certificate = bytes.Clone(v)
		case fieldEndpoint:
			if len(r.Endpoints) == MaxEndpoints {
				return r, gossip, fmt.Errorf("record with over %d endpoints: %w", MaxEndpoints, ErrTooLarge)
			}
			var ep netip.AddrPort
			if err := ep.UnmarshalBinary(v); err != nil || !ep.IsValid() {
				return r, gossip, fmt.Errorf("record endpoint: %w", ErrMalformed)
			}
			r.Endpoints = append(r.Endpoints, ep)
		case fieldGossipAddr:
			if err := gossip.UnmarshalBinary(v); err != nil {
				return r, gossip, fmt.Errorf("record gossip address: %w", ErrMalformed)
			}
		default: // a newer field: skipped
		}
	}
	if rd.err != nil {
		return r, gossip, fmt.Errorf("record: %w", rd.err)
	}
	if !haveName || !haveVersion {
		return r, gossip, fmt.Errorf("record without name or version: %w", ErrMalformed)
	}
	return r, gossip, nil
}
