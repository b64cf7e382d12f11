package cert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func TestCSRRoundTrip(t *testing.T) {
	k := newNodeKeys(t)
	der, err := CreateCSR("web-1", k.identity, k.wg)
	if err != nil {
		t.Fatal(err)
	}
	for name, parse := range map[string]func() (*CSR, error){
		"DER":          func() (*CSR, error) { return ParseCSR(der) },
		"PEM":          func() (*CSR, error) { return ParseCSRPEM(EncodeCSRPEM(der)) },
		"PEM fallback": func() (*CSR, error) { return ParseCSRPEM(der) },
	} {
		csr, err := parse()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if csr.Name != "web-1" || !csr.IdentityKey.Equal(k.identity.Public()) || csr.WireGuardKey != k.wg || !bytes.Equal(csr.Raw, der) {
			t.Errorf("%s: got %+v", name, csr)
		}
	}
	for _, bad := range []struct {
		name string
		key  ed25519.PrivateKey
		wg   [32]byte
	}{{"Bad", k.identity, k.wg}, {"n", k.identity[:10], k.wg}, {"n", k.identity, [32]byte{}}} {
		if _, err := CreateCSR(bad.name, bad.key, bad.wg); err == nil {
			t.Errorf("CreateCSR(%q, %d-byte key, %x) succeeded", bad.name, len(bad.key), bad.wg[:4])
		}
	}
}

func TestParseCSRRejects(t *testing.T) {
	k := newNodeKeys(t)
	der, err := CreateCSR("web-1", k.identity, k.wg)
	if err != nil {
		t.Fatal(err)
	}
	// Flip a byte inside the WireGuard key value: still parses, signature
	// no longer matches.
	i := bytes.Index(der, k.wg[:])
	if i < 0 {
		t.Fatal("WireGuard key not found in CSR DER")
	}
	wgFlipped := slices.Clone(der)
	wgFlipped[i+5] ^= 0x80
	cnFlipped := slices.Clone(der)
	j := bytes.Index(der, []byte("web-1"))
	cnFlipped[j] = 'x'

	raw := func(key any, name string, exts []pkix.Extension) []byte {
		b, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: name}, ExtraExtensions: exts,
		}, key)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	wgExt, _ := marshalWireGuardKey(k.wg)
	critical := wgExt
	critical.Critical = true
	short := pkix.Extension{Id: OIDWireGuardKey, Value: mustMarshal(t, make([]byte, 16))}
	unknownCritical := pkix.Extension{Id: []int{1, 2, 3}, Critical: true, Value: []byte{5, 0}}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	tests := []struct {
		name string
		der  []byte
		want error
	}{
		{"signature flipped", flipLast(der), ErrBadSignature},
		{"WireGuard key flipped", wgFlipped, ErrBadSignature},
		{"CN changed", cnFlipped, ErrBadSignature},
		{"garbage", []byte{0x30, 0x03, 0x02, 0x01, 0x01}, ErrMalformed},
		{"empty", nil, ErrMalformed},
		{"no WireGuard extension", raw(k.identity, "web-1", nil), ErrMalformed},
		{"WireGuard key 16 bytes", raw(k.identity, "web-1", []pkix.Extension{short}), ErrMalformed},
		{"WireGuard extension critical", raw(k.identity, "web-1", []pkix.Extension{critical}), ErrMalformed},
		{"duplicate WireGuard extension", raw(k.identity, "web-1", []pkix.Extension{wgExt, wgExt}), ErrMalformed},
		{"unknown critical extension", raw(k.identity, "web-1", []pkix.Extension{wgExt, unknownCritical}), ErrMalformed},
		{"invalid name", raw(k.identity, "Web_1", []pkix.Extension{wgExt}), ErrMalformed},
		{"ECDSA key", raw(ec, "web-1", []pkix.Extension{wgExt}), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := ParseCSR(tt.der)
			if csr != nil {
				t.Errorf("got CSR %+v", csr)
			}
			requireExactly(t, err, tt.want)
		})
	}
}

func TestIssueFromCSR(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	k := newNodeKeys(t)
	der, err := CreateCSR("web-1", k.identity, k.wg)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ParseCSRPEM(EncodeCSRPEM(der))
	if err != nil {
		t.Fatal(err)
	}
	addrs := []netip.Prefix{netip.MustParsePrefix("100.64.0.9/10")}
	c, err := ca.IssueFromCSR(csr, addrs, []string{"web"}, map[string]string{"os": "linux"}, 0, testNow)
	if err != nil {
		t.Fatalf("IssueFromCSR: %v", err)
	}
	id, err := mustPool(t, ca.Cert).Verify(c, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "web-1" || id.WireGuardKey != k.wg || !id.IdentityKey.Equal(k.identity.Public()) ||
		!slices.Equal(id.Addresses, addrs) || !slices.Equal(id.Groups, []string{"web"}) || id.Attributes["os"] != "linux" {
		t.Errorf("identity %+v", id)
	}

	other := newNodeKeys(t)
	tests := []struct {
		name   string
		mutate func(*CSR)
		want   error
	}{
		{"name swapped", func(c *CSR) { c.Name = "admin" }, ErrBadSignature},
		{"identity key swapped", func(c *CSR) { c.IdentityKey = other.identity.Public().(ed25519.PublicKey) }, ErrBadSignature},
		{"WireGuard key swapped", func(c *CSR) { c.WireGuardKey = other.wg }, ErrBadSignature},
		{"raw tampered", func(c *CSR) { c.Raw = flipLast(c.Raw) }, ErrBadSignature},
		{"raw missing", func(c *CSR) { c.Raw = nil }, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := *csr
			tt.mutate(&bad)
			c, err := ca.IssueFromCSR(&bad, addrs, nil, nil, 0, testNow)
			if c != nil {
				t.Error("issued a certificate")
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := ca.IssueFromCSR(nil, nil, nil, nil, 0, testNow); !errors.Is(err, ErrMalformed) {
		t.Errorf("nil CSR: %v", err)
	}
}
