package cert

import (
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"maps"
	"slices"
	"testing"
)

func TestExtensionRoundTrip(t *testing.T) {
	var wg [32]byte
	for i := range wg {
		wg[i] = byte(i + 1)
	}
	ext, err := marshalWireGuardKey(wg)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := unmarshalWireGuardKey(ext.Value); err != nil || got != wg {
		t.Errorf("WireGuard key round trip: %x, %v", got, err)
	}
	if !ext.Id.Equal(OIDWireGuardKey) || ext.Critical || ext.Value[0] != asn1.TagOctetString || ext.Value[1] != 32 {
		t.Errorf("WireGuard extension %v % x", ext.Id, ext.Value[:2])
	}

	attrs := map[string]string{"z": "last", "a": "", "os.version": "Zürich 1.2"}
	ext, err = marshalAttributes(attrs)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := unmarshalAttributes(ext.Value); err != nil || !maps.Equal(got, attrs) {
		t.Errorf("attributes round trip: %v, %v", got, err)
	}
	var raw []struct{ Key, Value string }
	if _, err := asn1.Unmarshal(ext.Value, &raw); err != nil || raw[0].Key != "a" || raw[2].Key != "z" {
		t.Errorf("attributes not sorted on the wire: %v %v", raw, err)
	}

	bits := []int{0, 10, 32, 64, 128}
	ext, err = marshalPrefixLengths(bits)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := unmarshalPrefixLengths(ext.Value); err != nil || !slices.Equal(got, bits) {
		t.Errorf("prefix lengths round trip: %v, %v", got, err)
	}
}

func TestExtensionDecodeRejects(t *testing.T) {
	printable := func(k, v string) []byte { // PrintableString instead of UTF8String
		return mustMarshal(t, []struct {
			K string `asn1:"printable"`
			V string `asn1:"printable"`
		}{{k, v}})
	}
	ok32, _ := asn1.Marshal(make([]byte, 32))
	tests := []struct {
		name   string
		decode func([]byte) error
		in     []byte
	}{
		{"wg empty", decWG, nil},
		{"wg trailing", decWG, append(slices.Clone(ok32), 0)},
		{"wg not octets", decWG, mustMarshal(t, 5)},
		{"wg bit string", decWG, mustMarshal(t, asn1.BitString{Bytes: make([]byte, 32), BitLength: 256})},
		{"wg 0 bytes", decWG, mustMarshal(t, []byte{})},
		{"attrs not sequence", decAttrs, mustMarshal(t, 1)},
		{"attrs trailing", decAttrs, append(mustMarshal(t, []attributeDER{}), 0)},
		{"attrs printable", decAttrs, printable("a", "b")},
		{"attrs duplicate", decAttrs, mustMarshal(t, []attributeDER{{"a", "1"}, {"a", "2"}})},
		{"attrs unsorted", decAttrs, mustMarshal(t, []attributeDER{{"b", "1"}, {"a", "2"}})},
		{"attrs bad key", decAttrs, mustMarshal(t, []attributeDER{{"", "1"}})},
		{"attrs control value", decAttrs, mustMarshal(t, []attributeDER{{"a", "\x00"}})},
		{"attrs bad utf8", decAttrs, []byte{0x30, 0x08, 0x30, 0x06, 0x0c, 0x01, 'a', 0x0c, 0x01, 0xff}},
		{"attrs too many", decAttrs, mustMarshal(t, manyAttrs(MaxAttributes+1))},
		{"prefix negative", decBits, mustMarshal(t, []int{-1})},
		{"prefix 129", decBits, mustMarshal(t, []int{129})},
		{"prefix huge", decBits, []byte{0x30, 0x0b, 0x02, 0x09, 0x01, 0, 0, 0, 0, 0, 0, 0, 0}},
		{"prefix non-minimal", decBits, []byte{0x30, 0x04, 0x02, 0x02, 0x00, 0x05}},
		{"prefix trailing", decBits, append(mustMarshal(t, []int{1}), 0)},
		{"prefix too many", decBits, mustMarshal(t, make([]int, MaxAddresses+1))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.decode(tt.in); !errors.Is(err, errExtension) {
				t.Fatalf("decode(% x) = %v, want errExtension", tt.in, err)
			}
		})
	}
}

func decWG(b []byte) error    { _, err := unmarshalWireGuardKey(b); return err }
func decAttrs(b []byte) error { _, err := unmarshalAttributes(b); return err }
func decBits(b []byte) error  { _, err := unmarshalPrefixLengths(b); return err }

// manyAttrs returns n sorted, valid attributes.
func manyAttrs(n int) []attributeDER {
	out := make([]attributeDER, n)
	for i := range out {
		out[i] = attributeDER{Key: string(rune('a'+i/26)) + string(rune('a'+i%26)), Value: "v"}
	}
	return out
}

func TestCertPEM(t *testing.T) {
	corp := newTestCA(t, "Corp CA", "corp.example")
	lab := newTestCA(t, "Lab CA", "lab.example")
	keyPEM, err := EncodeKeyPEM(corp.Key)
	if err != nil {
		t.Fatal(err)
	}
	bundle := slices.Concat(EncodeCertPEM(corp.Cert), keyPEM, EncodeCertPEM(lab.Cert))

	certs, err := ParseCertsPEM(bundle)
	if err != nil || len(certs) != 2 || !certs[0].Equal(corp.Cert) || !certs[1].Equal(lab.Cert) {
		t.Fatalf("ParseCertsPEM = %d certs, %v", len(certs), err)
	}
	first, err := ParseCertPEM(bundle)
	if err != nil || !first.Equal(corp.Cert) {
		t.Fatalf("ParseCertPEM = %v", err)
	}
	if c, err := ParseCertPEM(lab.Cert.Raw); err != nil || !c.Equal(lab.Cert) {
		t.Fatalf("ParseCertPEM(DER) = %v", err)
	}
	if p, err := NewPool(certs...); err != nil || len(p.CAs()) != 2 {
		t.Fatalf("pool from bundle: %v", err)
	}
	for name, in := range map[string][]byte{
		"key only":    keyPEM,
		"garbage":     []byte("hello"),
		"bad PEM DER": pem.EncodeToMemory(&pem.Block{Type: PEMTypeCertificate, Bytes: []byte{1, 2, 3}}),
	} {
		if _, err := ParseCertsPEM(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	if _, err := ParseKeyPEM(EncodeCertPEM(corp.Cert)); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseKeyPEM(cert) = %v", err)
	}
}
