package discovery

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// stateFormat is the first byte of an encoded state (push/pull user data);
// as for records, unknown field tags are skipped.
const stateFormat = 1

// State field tags.
const (
	stateFrom   = 1 // the sender's node name
	stateRecord = 2 // one record entry (repeated)
	stateCRL    = 3 // the newest CRL the sender accepted
	stateLeave  = 4 // a leave notice the sender holds, as its leaver signed it (repeated)
)

// Leave notices in a state: a leave notice is gossiped, and gossip can miss
// a member (a dropped datagram, a partition); push/pull carries the notices
// of members still in the sender's table, so that a member that saw only
// memberlist's "gone" corrects "dead" to "left" at its next sync.
const (
	// maxStateLeaves caps the leave notices in one state: each costs the
	// receiver a certificate and a signature check.
	maxStateLeaves = 64
	// maxLeaveSize caps one encoded leave notice (type byte included):
	// a name, a version, a time and a signature need well under 512 bytes.
	maxLeaveSize = 512
)

// Gossip message types: the first byte of a user message.
const (
	msgRecord   = 1 // a record entry
	msgCRL      = 2 // CRL DER
	msgAnnounce = 3 // "I hold something new; pull it from me"
	msgLeave    = 4 // "I leave the fabric": name, record version, time, signature (leaveNotice)
	msgPull     = 5 // "send me these records" (see pullRequest), over a stream
	msgState    = 6 // the answer to a pull: a state holding the records asked for
)

// Pull request field tags.
const (
	pullFrom = 1 // the requester's node name
	pullAddr = 2 // the requester's gossip address: where the answer goes
	pullName = 3 // a record wanted (repeated)
)

// pullRequest asks a member for the records of the named members. It
// repairs records gossip did not deliver at the cost of those records
// alone, where a push/pull would exchange every record both ways.
type pullRequest struct {
	from  string
	addr  netip.AddrPort
	names []string
}

// encodePull encodes a pull request message (type byte included).
func encodePull(p pullRequest) []byte {
	b := []byte{msgPull}
	b = appendField(b, pullFrom, []byte(p.from))
	av, _ := p.addr.MarshalBinary()
	b = appendField(b, pullAddr, av)
	for _, n := range p.names {
		b = appendField(b, pullName, []byte(n))
	}
	return b
}

// decodePull decodes an untrusted pull request body (after the type byte).
// Names past MaxStateRecords are ignored; a request without sender, with
// an invalid address or with a bad name is refused.
func decodePull(b []byte) (pullRequest, error) {
	var p pullRequest
	rd := &reader{b: b}
	for tag, v, ok := rd.field(); ok; tag, v, ok = rd.field() {
		switch tag {
		case pullFrom:
			if len(v) == 0 || len(v) > MaxNameLen {
				return p, fmt.Errorf("pull sender name of %d bytes: %w", len(v), ErrMalformed)
			}
			p.from = string(v)
		case pullAddr:
			if err := p.addr.UnmarshalBinary(v); err != nil {
				return p, fmt.Errorf("pull address: %w", ErrMalformed)
			}
		case pullName:
			if len(v) == 0 || len(v) > MaxNameLen {
				return p, fmt.Errorf("pull name of %d bytes: %w", len(v), ErrMalformed)
			}
			if len(p.names) < MaxStateRecords {
				p.names = append(p.names, string(v))
			}
		}
	}
	if rd.err != nil {
		return p, fmt.Errorf("pull: %w", rd.err)
	}
	if p.from == "" || !p.addr.IsValid() || p.addr.Port() == 0 {
		return p, fmt.Errorf("pull incomplete: %w", ErrMalformed)
	}
	return p, nil
}

// Announce field tags and kinds.
const (
	annKind       = 1
	annName       = 2
	annVersion    = 3
	annDigest     = 4
	annHolder     = 5
	annHolderAddr = 6

	kindRecord = 1
	kindCRL    = 2
)

// digestLen is the length of a CRL digest in announcements: a truncated
// SHA-256, enough to tell CRLs apart (collisions only cost a missed pull).
const digestLen = 16

// entry is a record plus the overlay address its owner gossips on, as
// the owner signed them.
type entry struct {
	rec    Record
	gossip netip.AddrPort
	// raw is the encoding the owner signed, signature included: relays
	// send it on unchanged.
	raw []byte
	// sig is the signature (nil if none) and raw[:signedLen] what it
	// covers.
	sig       []byte
	signedLen int
}

// state is the user data of a push/pull exchange.
type state struct {
	from      string
	entries   []entry
	leaves    [][]byte // encoded leave notices (msgLeave type byte included)
	crl       []byte
	truncated bool // more than MaxStateRecords entries were offered
}

// announce tells receivers that holder has a record version or CRL that
// did not fit in a gossip packet.
type announce struct {
	kind       byte
	name       string // record owner (kindRecord)
	version    uint64 // record version (kindRecord)
	digest     []byte // CRL digest (kindCRL)
	holder     string
	holderAddr netip.AddrPort
}

func crlDigest(der []byte) []byte {
	sum := sha256.Sum256(der)
	return sum[:digestLen]
}

// encodeState encodes s, dropping entries (from the end) that would take it
// over MaxStateSize; callers put the most important entries first.
func encodeState(s state) []byte {
	// A record with its certificate takes well under 1 KiB: size the
	// buffer once rather than grow it through every doubling.
	b := make([]byte, 0, min(MaxStateSize, 64+len(s.crl)+1024*min(len(s.entries), MaxStateRecords)))
	b = append(b, stateFormat)
	b = appendField(b, stateFrom, []byte(s.from))
	if len(s.crl) > 0 && len(s.crl) <= MaxCRLSize {
		b = appendField(b, stateCRL, s.crl)
	}
	for i, e := range s.entries {
		if i == MaxStateRecords {
			break
		}
		if len(e.raw) == 0 || len(e.raw) > MaxRecordSize {
			continue
		}
		if len(b)+len(e.raw)+2*binary.MaxVarintLen64 > MaxStateSize {
			break
		}
		b = appendField(b, stateRecord, e.raw)
	}
	for i, l := range s.leaves {
		if i == maxStateLeaves || len(b)+len(l)+2*binary.MaxVarintLen64 > MaxStateSize {
			break
		}
		if len(l) > 0 && len(l) <= maxLeaveSize {
			b = appendField(b, stateLeave, l)
		}
	}
	return b
}

// decodeState decodes an untrusted state. Entries past MaxStateRecords are
// ignored (truncated is set); a state over MaxStateSize, a bad record or a
// CRL over MaxCRLSize is refused as a whole.
func decodeState(b []byte) (state, error) {
	var s state
	if len(b) > MaxStateSize {
		return s, fmt.Errorf("state of %d bytes, limit %d: %w", len(b), MaxStateSize, ErrTooLarge)
	}
	rd := &reader{b: b}
	if f := rd.byte(); rd.err == nil && f != stateFormat {
		return s, fmt.Errorf("state format %d: %w", f, ErrMalformed)
	}
	for tag, v, ok := rd.field(); ok; tag, v, ok = rd.field() {
		switch tag {
		case stateFrom:
			if len(v) > MaxNameLen {
				return s, fmt.Errorf("state sender name of %d bytes: %w", len(v), ErrMalformed)
			}
			s.from = string(v)
		case stateCRL:
			if len(v) > MaxCRLSize {
				return s, fmt.Errorf("state CRL of %d bytes, limit %d: %w", len(v), MaxCRLSize, ErrTooLarge)
			}
			s.crl = bytes.Clone(v)
		case stateRecord:
			if len(s.entries) == MaxStateRecords {
				s.truncated = true
				continue
			}
			e, err := decodeEntry(v)
			if err != nil {
				return s, fmt.Errorf("state entry %d: %w", len(s.entries), err)
			}
			s.entries = append(s.entries, e)
		case stateLeave:
			if len(v) > maxLeaveSize {
				return s, fmt.Errorf("state leave notice of %d bytes, limit %d: %w", len(v), maxLeaveSize, ErrTooLarge)
			}
			if len(s.leaves) < maxStateLeaves {
				s.leaves = append(s.leaves, bytes.Clone(v))
			}
		}
	}
	if rd.err != nil {
		return s, fmt.Errorf("state: %w", rd.err)
	}
	return s, nil
}

func encodeAnnounce(a announce) []byte {
	b := []byte{msgAnnounce}
	b = appendField(b, annKind, []byte{a.kind})
	b = appendField(b, annHolder, []byte(a.holder))
	hv, _ := a.holderAddr.MarshalBinary()
	b = appendField(b, annHolderAddr, hv)
	switch a.kind {
	case kindRecord:
		b = appendField(b, annName, []byte(a.name))
		b = appendField(b, annVersion, binary.BigEndian.AppendUint64(nil, a.version))
	case kindCRL:
		b = appendField(b, annDigest, a.digest)
	}
	return b
}

// decodeAnnounce decodes the body of an msgAnnounce (after the type byte).
func decodeAnnounce(b []byte) (announce, error) {
	a, err := decodeFields(b)
	if err != nil {
		return a, err
	}
	if a.holder == "" || !a.holderAddr.IsValid() ||
		(a.kind == kindRecord && a.name == "") || (a.kind == kindCRL && a.digest == nil) ||
		(a.kind != kindRecord && a.kind != kindCRL) {
		return a, fmt.Errorf("announce incomplete: %w", ErrMalformed)
	}
	return a, nil
}

// decodeFields decodes announce-style fields.
func decodeFields(b []byte) (announce, error) {
	var a announce
	rd := &reader{b: b}
	for tag, v, ok := rd.field(); ok; tag, v, ok = rd.field() {
		switch tag {
		case annKind:
			if len(v) != 1 {
				return a, fmt.Errorf("announce kind: %w", ErrMalformed)
			}
			a.kind = v[0]
		case annName:
			if len(v) > MaxNameLen {
				return a, fmt.Errorf("announce name: %w", ErrMalformed)
			}
			a.name = string(v)
		case annVersion:
			if len(v) != 8 {
				return a, fmt.Errorf("announce version: %w", ErrMalformed)
			}
			a.version = binary.BigEndian.Uint64(v)
		case annDigest:
			if len(v) != digestLen {
				return a, fmt.Errorf("announce digest: %w", ErrMalformed)
			}
			a.digest = bytes.Clone(v)
		case annHolder:
			if len(v) == 0 || len(v) > MaxNameLen {
				return a, fmt.Errorf("announce holder: %w", ErrMalformed)
			}
			a.holder = string(v)
		case annHolderAddr:
			if err := a.holderAddr.UnmarshalBinary(v); err != nil {
				return a, fmt.Errorf("announce holder address: %w", ErrMalformed)
			}
		}
	}
	if rd.err != nil {
		return a, fmt.Errorf("announce: %w", rd.err)
	}
	return a, nil
}

// metaFormat is the first byte of the memberlist node metadata: the format,
// followed by the 8-byte version of the node's current record. That digest
// (9 bytes, far under memberlist's 512) lets every member notice that it
// holds an older record than the owner advertises, and pull the new one.
const metaFormat = 1

func encodeMeta(version uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{metaFormat}, version)
}

func decodeMeta(b []byte) (uint64, bool) {
	if len(b) < 9 || b[0] != metaFormat {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[1:9]), true
}

// Leave notice field tags (after the announce-style name and version).
const (
	leaveTime = 7 // signing time, Unix nanoseconds (8 bytes)
	leaveSig  = 8 // Ed25519 signature over everything before it; last field
)

// leaveNotice is a member's signed statement that it leaves the fabric.
// memberlist does not tell a graceful leave from a death to its
// EventDelegate (v0.7.0 passes a Node whose State is never updated), so
// the package gossips its own notice first. Only the leaver can make it:
// it is signed by the identity key of the certificate in the leaver's own
// record.
type leaveNotice struct {
	name    string
	version uint64 // the leaver's record version when it left
	at      int64  // signing time, Unix nanoseconds
	sig     []byte
	signed  []byte // the bytes the signature covers (body before the signature field)
}

// encodeLeave encodes a leave notice signed by key (type byte included).
func encodeLeave(key ed25519.PrivateKey, name string, version uint64, at time.Time) []byte {
	b := []byte{msgLeave}
	b = appendField(b, annName, []byte(name))
	b = appendField(b, annVersion, binary.BigEndian.AppendUint64(nil, version))
	b = appendField(b, leaveTime, binary.BigEndian.AppendUint64(nil, uint64(at.UnixNano())))
	return appendField(b, leaveSig, signedBy(key, leaveContext, b[1:]))
}

// decodeLeave decodes the body of a msgLeave (after the type byte). It
// checks the form only; verify checks the signature.
func decodeLeave(b []byte) (leaveNotice, error) {
	var n leaveNotice
	var haveVersion, haveTime bool
	rd := &reader{b: b}
	for {
		start := len(b) - len(rd.b)
		tag, v, ok := rd.field()
		if !ok {
			break
		}
		if n.sig != nil {
			return n, fmt.Errorf("leave notice: field %d after the signature: %w", tag, ErrMalformed)
		}
		switch tag {
		case annName:
			if len(v) == 0 || len(v) > MaxNameLen || n.name != "" {
				return n, fmt.Errorf("leave notice name of %d bytes: %w", len(v), ErrMalformed)
			}
			n.name = string(v)
		case annVersion:
			if len(v) != 8 || haveVersion {
				return n, fmt.Errorf("leave notice version of %d bytes: %w", len(v), ErrMalformed)
			}
			n.version, haveVersion = binary.BigEndian.Uint64(v), true
		case leaveTime:
			if len(v) != 8 || haveTime {
				return n, fmt.Errorf("leave notice time of %d bytes: %w", len(v), ErrMalformed)
			}
			n.at, haveTime = int64(binary.BigEndian.Uint64(v)), true
		case leaveSig:
			if len(v) != ed25519.SignatureSize {
				return n, fmt.Errorf("leave notice signature of %d bytes: %w", len(v), ErrMalformed)
			}
			n.sig, n.signed = bytes.Clone(v), b[:start:start]
		default: // a newer field, covered by the signature: skipped
		}
	}
	if rd.err != nil {
		return n, fmt.Errorf("leave notice: %w", rd.err)
	}
	if n.name == "" || !haveVersion || !haveTime || n.sig == nil {
		return n, fmt.Errorf("leave notice without name, version, time or signature: %w", ErrMalformed)
	}
	return n, nil
}

// verify checks that the notice is signed by the identity key id holds
// (the verified certificate of the leaver's own record), that id names
// the leaver, and that its time is plausible at now.
func (n leaveNotice) verify(id Identity, now time.Time) error {
	if id.Name != n.name {
		return fmt.Errorf("leave notice for %q checked against the certificate of %q: %w", n.name, id.Name, ErrBadStatement)
	}
	if !verifySig(id.Key, leaveContext, n.signed, n.sig) {
		return fmt.Errorf("leave notice for %q: signature does not verify with its certificate's key: %w", n.name, ErrBadStatement)
	}
	if err := checkTime(n.at, now, maxLeaveAge); err != nil {
		return fmt.Errorf("leave notice for %q: %w", n.name, err)
	}
	return nil
}
