package cert

// gridnet X.509 extensions.
//
// gridnet puts the node facts that X.509 has no field for into three
// non-critical extensions under its own OID arc
//
//	1.3.6.1.4.1.59999.1   gridnet certificate extensions
//
// The arc is private-enterprise shaped but NOT registered with IANA
// (enterprise number 59999 is a placeholder chosen by gridnet); it is only
// meaningful inside gridnet deployments. The extensions are non-critical so
// that generic X.509 tools (openssl, browsers, Go's crypto/x509) can still
// parse and chain-verify gridnet certificates; gridnet itself treats a
// missing mandatory extension, a duplicate, or a bad encoding as
// ErrMalformed.
//
// 1.3.6.1.4.1.59999.1.1 — WireGuard public key (mandatory in node
// certificates and CSRs):
//
//	WireGuardKey ::= OCTET STRING (SIZE (32))   -- raw X25519 public key
//
// 1.3.6.1.4.1.59999.1.2 — attributes (optional; omitted when empty):
//
//	Attributes ::= SEQUENCE OF Attribute   -- strictly ascending by key
//	Attribute  ::= SEQUENCE {
//	    key    UTF8String,   -- see ValidateAttributeKey
//	    value  UTF8String }  -- see ValidateAttributeValue
//
// 1.3.6.1.4.1.59999.1.3 — overlay prefix lengths (present exactly when the
// certificate has IP address SANs, because an IP SAN carries no prefix):
//
//	PrefixLengths ::= SEQUENCE OF INTEGER (0..128)
//
// entry i is the prefix length of the i-th IP address SAN, in certificate
// order, and must fit the address family (≤32 for IPv4, ≤128 for IPv6).
//
// All decoders are strict DER: trailing bytes, wrong string types and
// out-of-range values are rejected.

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"unicode/utf8"
)

// OIDs of gridnet's extensions (see the file comment for their encodings).
// They are package variables only because Go cannot declare slice constants;
// treat them as read-only.
var (
	// OIDGridnet is the root of gridnet's (not IANA-registered) arc.
	OIDGridnet = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59999, 1}
	// OIDWireGuardKey identifies the WireGuard public key extension.
	OIDWireGuardKey = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59999, 1, 1}
	// OIDAttributes identifies the key/value attributes extension.
	OIDAttributes = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59999, 1, 2}
	// OIDPrefixLengths identifies the overlay prefix lengths extension.
	OIDPrefixLengths = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59999, 1, 3}
)

const (
	// wireGuardKeyLen is the size of an X25519 public key.
	wireGuardKeyLen = 32
	// maxPrefixBits is the largest prefix length of any address family.
	maxPrefixBits = 128
)

// errExtension is the cause wrapped by every extension decoding failure;
// callers wrap it again with ErrMalformed.
var errExtension = errors.New("bad gridnet extension")

// marshalWireGuardKey encodes a WireGuard public key extension.
func marshalWireGuardKey(k [32]byte) (pkix.Extension, error) {
	v, err := asn1.Marshal(k[:])
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encode WireGuard key: %w", err)
	}
	return pkix.Extension{Id: OIDWireGuardKey, Value: v}, nil
}

// unmarshalWireGuardKey decodes the value of a WireGuard key extension.
func unmarshalWireGuardKey(der []byte) ([32]byte, error) {
	var k [32]byte
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(der, &raw)
	if err != nil {
		return k, fmt.Errorf("%w: WireGuard key: %v", errExtension, err)
	}
	if len(rest) != 0 {
		return k, fmt.Errorf("%w: WireGuard key: trailing data", errExtension)
	}
	if raw.Class != asn1.ClassUniversal || raw.Tag != asn1.TagOctetString || raw.IsCompound {
		return k, fmt.Errorf("%w: WireGuard key: not an OCTET STRING", errExtension)
	}
	if len(raw.Bytes) != wireGuardKeyLen {
		return k, fmt.Errorf("%w: WireGuard key: %d bytes, want %d", errExtension, len(raw.Bytes), wireGuardKeyLen)
	}
	copy(k[:], raw.Bytes)
	return k, nil
}

// attributeDER is one Attribute on the wire (see file comment).
type attributeDER struct {
	Key   string `asn1:"utf8"`
	Value string `asn1:"utf8"`
}

// marshalAttributes encodes attributes sorted by key. The caller has
// validated keys and values.
func marshalAttributes(attrs map[string]string) (pkix.Extension, error) {
	keys := sortedKeys(attrs)
	seq := make([]attributeDER, len(keys))
	for i, k := range keys {
		seq[i] = attributeDER{Key: k, Value: attrs[k]}
	}
	v, err := asn1.Marshal(seq)
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encode attributes: %w", err)
	}
	return pkix.Extension{Id: OIDAttributes, Value: v}, nil
}

// unmarshalAttributes decodes an attributes extension value, requiring
// UTF8String keys and values, valid keys and values, and strictly ascending
// keys (which also rules out duplicates).
func unmarshalAttributes(der []byte) (map[string]string, error) {
	var seq []struct{ Key, Value asn1.RawValue }
	rest, err := asn1.Unmarshal(der, &seq)
	if err != nil {
		return nil, fmt.Errorf("%w: attributes: %v", errExtension, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: attributes: trailing data", errExtension)
	}
	if len(seq) > MaxAttributes {
		return nil, fmt.Errorf("%w: attributes: %d entries, at most %d", errExtension, len(seq), MaxAttributes)
	}
	out := make(map[string]string, len(seq))
	prev := ""
	for i, a := range seq {
		k, err := utf8String(a.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: attribute %d key: %v", errExtension, i, err)
		}
		v, err := utf8String(a.Value)
		if err != nil {
			return nil, fmt.Errorf("%w: attribute %d value: %v", errExtension, i, err)
		}
		if err := ValidateAttributeKey(k); err != nil {
			return nil, fmt.Errorf("%w: %v", errExtension, err)
		}
		if err := ValidateAttributeValue(v); err != nil {
			return nil, fmt.Errorf("%w: attribute %q: %v", errExtension, k, err)
		}
		if i > 0 && k <= prev {
			return nil, fmt.Errorf("%w: attributes not strictly sorted at %q", errExtension, k)
		}
		prev = k
		out[k] = v
	}
	return out, nil
}

// utf8String returns the contents of a primitive universal UTF8String.
func utf8String(rv asn1.RawValue) (string, error) {
	if rv.Class != asn1.ClassUniversal || rv.Tag != asn1.TagUTF8String || rv.IsCompound {
		return "", errors.New("not a UTF8String")
	}
	if !utf8.Valid(rv.Bytes) {
		return "", errors.New("invalid UTF-8")
	}
	return string(rv.Bytes), nil
}

// marshalPrefixLengths encodes the prefix lengths parallel to the IP SANs.
func marshalPrefixLengths(bits []int) (pkix.Extension, error) {
	v, err := asn1.Marshal(bits)
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encode prefix lengths: %w", err)
	}
	return pkix.Extension{Id: OIDPrefixLengths, Value: v}, nil
}

// unmarshalPrefixLengths decodes a prefix lengths extension value. Each
// entry is range-checked against maxPrefixBits here; the per-family bound
// is checked against the matching IP SAN by the caller.
func unmarshalPrefixLengths(der []byte) ([]int, error) {
	var seq []int
	rest, err := asn1.Unmarshal(der, &seq)
	if err != nil {
		return nil, fmt.Errorf("%w: prefix lengths: %v", errExtension, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: prefix lengths: trailing data", errExtension)
	}
	if len(seq) > MaxAddresses {
		return nil, fmt.Errorf("%w: prefix lengths: %d entries, at most %d", errExtension, len(seq), MaxAddresses)
	}
	for i, b := range seq {
		if b < 0 || b > maxPrefixBits {
			return nil, fmt.Errorf("%w: prefix length %d out of range: %d", errExtension, i, b)
		}
	}
	return seq, nil
}

// gridnetExtensions holds the raw values of gridnet's extensions found in a
// certificate or CSR; a nil slice means absent.
type gridnetExtensions struct {
	wireGuard, attributes, prefixLengths []byte
}

// findExtensions picks gridnet's extensions out of exts, refusing
// duplicates and critical gridnet extensions (they are defined
// non-critical). Other extensions are ignored here; the caller deals with
// unknown critical ones.
func findExtensions(exts []pkix.Extension) (gridnetExtensions, error) {
	var g gridnetExtensions
	for _, e := range exts {
		var slot *[]byte
		switch {
		case e.Id.Equal(OIDWireGuardKey):
			slot = &g.wireGuard
		case e.Id.Equal(OIDAttributes):
			slot = &g.attributes
		case e.Id.Equal(OIDPrefixLengths):
			slot = &g.prefixLengths
		default:
			continue
		}
		if *slot != nil {
			return g, fmt.Errorf("%w: duplicate extension %v", errExtension, e.Id)
		}
		if e.Critical {
			return g, fmt.Errorf("%w: extension %v marked critical", errExtension, e.Id)
		}
		if e.Value == nil {
			// Keep "present but empty" distinct from "absent".
			*slot = []byte{}
		} else {
			*slot = e.Value
		}
	}
	return g, nil
}
