package cert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestVerifyReasons(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	stranger := newTestCA(t, "Stranger CA", "corp.example")
	// An impostor CA with the trusted CA's name, domain and key identifier
	// but its own key.
	impostor := newTestCA(t, "Corp CA", "corp.example")
	impostor.Cert.SubjectKeyId = ca.Cert.SubjectKeyId

	good, _ := issue(t, ca, "good")
	revoked, _ := issue(t, ca, "revoked")
	strangerCert, _ := issue(t, stranger, "n1")
	impostorCert, _ := issue(t, impostor, "n1")

	pool := mustPool(t, ca.Cert)
	crl, err := ca.Revoke(nil, []*big.Int{revoked.SerialNumber}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := pool.ApplyCRL(crl, testNow); !ok || err != nil {
		t.Fatalf("ApplyCRL = %v, %v", ok, err)
	}

	k := newNodeKeys(t)
	variant := func(mutate func(*x509.Certificate)) []byte {
		return forge(t, ca, k, nodeTemplate(t, ca, "n1", k), mutate)
	}
	withExt := func(oid asn1.ObjectIdentifier, value []byte, critical bool) func(*x509.Certificate) {
		return func(c *x509.Certificate) {
			exts := slices.DeleteFunc(slices.Clone(c.ExtraExtensions), func(e pkix.Extension) bool { return e.Id.Equal(oid) })
			if value != nil {
				exts = append(exts, pkix.Extension{Id: oid, Value: value, Critical: critical})
			}
			c.ExtraExtensions = exts
		}
	}
	octets := func(n int) []byte {
		b, _ := asn1.Marshal(make([]byte, n))
		return b
	}

	tests := []struct {
		name string
		der  []byte
		now  time.Time
		want error
	}{
		{"valid", good.Raw, testNow, nil},
		{"valid at NotAfter", good.Raw, good.NotAfter, nil},
		{"unknown CA", strangerCert.Raw, testNow, ErrUnknownCA},
		{"impostor CA with same name and key id", impostorCert.Raw, testNow, ErrUnknownCA},
		{"signature byte flipped", flipLast(good.Raw), testNow, ErrUnknownCA},
		{"expired", good.Raw, good.NotAfter.Add(time.Second), ErrExpired},
		{"not yet valid", good.Raw, good.NotBefore.Add(-time.Second), ErrNotYetValid},
		{"revoked", revoked.Raw, testNow, ErrRevoked},
		{"other domain", variant(func(c *x509.Certificate) { c.URIs = []*url.URL{SPIFFEID("evil.example", "n1")} }), testNow, ErrOutsideDomain},
		{"subdomain", variant(func(c *x509.Certificate) { c.URIs = []*url.URL{SPIFFEID("sub.corp.example", "n1")} }), testNow, ErrOutsideDomain},
		{"no ClientAuth", variant(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }), testNow, ErrKeyUsage},
		{"no ServerAuth", variant(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }), testNow, ErrKeyUsage},
		{"no EKU", variant(func(c *x509.Certificate) { c.ExtKeyUsage = nil }), testNow, ErrKeyUsage},
		{"no DigitalSignature", variant(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyAgreement }), testNow, ErrKeyUsage},
		{"leaf is CA", variant(func(c *x509.Certificate) { c.IsCA = true; c.KeyUsage |= x509.KeyUsageCertSign }), testNow, ErrKeyUsage},
		{"leaf can sign CRLs", variant(func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign }), testNow, ErrKeyUsage},
		{"garbage DER", []byte("not a certificate"), testNow, ErrMalformed},
		{"empty DER", nil, testNow, ErrMalformed},
		{"truncated DER", good.Raw[:len(good.Raw)/2], testNow, ErrMalformed},
		{"WireGuard key 31 bytes", variant(withExt(OIDWireGuardKey, octets(31), false)), testNow, ErrMalformed},
		{"WireGuard key 33 bytes", variant(withExt(OIDWireGuardKey, octets(33), false)), testNow, ErrMalformed},
		{"WireGuard key missing", variant(withExt(OIDWireGuardKey, nil, false)), testNow, ErrMalformed},
		{"WireGuard key critical", variant(withExt(OIDWireGuardKey, octets(32), true)), testNow, ErrMalformed},
		{"prefix lengths missing", variant(withExt(OIDPrefixLengths, nil, false)), testNow, ErrMalformed},
		{"prefix length too long for IPv4", variant(withExt(OIDPrefixLengths, mustMarshal(t, []int{33, 48}), false)), testNow, ErrMalformed},
		{"prefix lengths count mismatch", variant(withExt(OIDPrefixLengths, mustMarshal(t, []int{10}), false)), testNow, ErrMalformed},
		{"attributes unsorted", variant(withExt(OIDAttributes, mustMarshal(t, []attributeDER{{"b", "1"}, {"a", "2"}}), false)), testNow, ErrMalformed},
		{"attributes bad key", variant(withExt(OIDAttributes, mustMarshal(t, []attributeDER{{"A", "1"}}), false)), testNow, ErrMalformed},
		{"unknown critical extension", variant(withExt(asn1.ObjectIdentifier{1, 2, 3, 4}, []byte{5, 0}, true)), testNow, ErrMalformed},
		{"missing URI", variant(func(c *x509.Certificate) { c.URIs = nil }), testNow, ErrMalformed},
		{"two URIs", variant(func(c *x509.Certificate) {
			c.URIs = append(c.URIs, SPIFFEID("corp.example", "n2"))
		}), testNow, ErrMalformed},
		{"https URI", variant(func(c *x509.Certificate) { c.URIs[0].Scheme = "https" }), testNow, ErrMalformed},
		{"URI with query", variant(func(c *x509.Certificate) { c.URIs[0].RawQuery = "x=1" }), testNow, ErrMalformed},
		{"CN differs from URI", variant(func(c *x509.Certificate) { c.Subject.CommonName = "n2" }), testNow, ErrMalformed},
		{"invalid CN", variant(func(c *x509.Certificate) {
			c.Subject.CommonName = "N1"
			c.URIs = []*url.URL{SPIFFEID("corp.example", "N1")}
		}), testNow, ErrMalformed},
		{"two CNs", variant(func(c *x509.Certificate) {
			c.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: oidCommonName, Value: "admin"}, {Type: oidCommonName, Value: "n1"}}
		}), testNow, ErrMalformed},
		{"invalid group", variant(func(c *x509.Certificate) { c.Subject.Organization = []string{"Bad Group"} }), testNow, ErrMalformed},
		{"duplicate group", variant(func(c *x509.Certificate) { c.Subject.Organization = []string{"a", "a"} }), testNow, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := pool.VerifyDER(tt.der, tt.now)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("VerifyDER: %v", err)
				}
				if id == nil || id.CAFingerprint != Fingerprint(ca.Cert.Raw) {
					t.Fatalf("identity %+v", id)
				}
				return
			}
			if id != nil {
				t.Errorf("got identity %+v with error", id)
			}
			requireExactly(t, err, tt.want)
		})
	}
}

// mustMarshal DER-encodes v or fails.
func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerifyNonEd25519Leaf(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	k := newNodeKeys(t)
	tmpl := nodeTemplate(t, ca, "n1", k)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, ec.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	_, err = mustPool(t, ca.Cert).VerifyDER(der, testNow)
	requireExactly(t, err, ErrMalformed)
}

func TestVerifyCAValidity(t *testing.T) {
	// A renewed CA certificate (same key) lets us build a node certificate
	// that outlives the CA certificate in the pool.
	short, err := NewCA("Corp CA", "corp.example", 24*time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	long, err := NewCAFromKey(short.Key, "Corp CA", "corp.example", 30*24*time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := issue(t, long, "n1")
	pool := mustPool(t, short.Cert)
	if _, err := pool.Verify(c, testNow.Add(time.Hour)); err != nil {
		t.Fatalf("within both validities: %v", err)
	}
	_, err = pool.Verify(c, testNow.Add(48*time.Hour))
	requireExactly(t, err, ErrExpired)

	// The later CA certificate, not yet valid, in a pool of its own.
	future, err := NewCAFromKey(short.Key, "Corp CA", "corp.example", 0, testNow.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	_, err = mustPool(t, future.Cert).Verify(c, testNow)
	requireExactly(t, err, ErrNotYetValid)
}

func TestFederation(t *testing.T) {
	corp := newTestCA(t, "Corp CA", "corp.example")
	lab := newTestCA(t, "Lab CA", "lab.example")
	pool := mustPool(t, corp.Cert, lab.Cert)

	corpCert, _ := issue(t, corp, "n1")
	labCert, _ := issue(t, lab, "n1")
	for _, tc := range []struct {
		c              *x509.Certificate
		domain, caName string
		ca             *CA
	}{{corpCert, "corp.example", "Corp CA", corp}, {labCert, "lab.example", "Lab CA", lab}} {
		id, err := pool.Verify(tc.c, testNow)
		if err != nil {
			t.Fatalf("%s: %v", tc.domain, err)
		}
		if id.Domain != tc.domain || id.CAName != tc.caName || id.CAFingerprint != Fingerprint(tc.ca.Cert.Raw) {
			t.Errorf("%s: got domain %q CA %q", tc.domain, id.Domain, id.CAName)
		}
	}

	// corp's CA cannot speak for lab.example.
	k := newNodeKeys(t)
	crossed := forge(t, corp, k, nodeTemplate(t, corp, "n2", k), func(c *x509.Certificate) {
		c.URIs = []*url.URL{SPIFFEID("lab.example", "n2")}
	})
	_, err := pool.VerifyDER(crossed, testNow)
	requireExactly(t, err, ErrOutsideDomain)

	// A CRL of corp does not revoke lab's certificate with the same serial.
	twin := forge(t, lab, k, nodeTemplate(t, lab, "n3", k), func(c *x509.Certificate) { c.SerialNumber = corpCert.SerialNumber })
	crl, err := corp.Revoke(nil, []*big.Int{corpCert.SerialNumber}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.ApplyCRL(crl, testNow); err != nil {
		t.Fatal(err)
	}
	_, err = pool.Verify(corpCert, testNow)
	requireExactly(t, err, ErrRevoked)
	if _, err := pool.VerifyDER(twin, testNow); err != nil {
		t.Fatalf("lab cert with corp-revoked serial: %v", err)
	}
	if n := pool.CRLNumber(Fingerprint(lab.Cert.Raw)); n != nil {
		t.Errorf("lab CRL number %v, want nil", n)
	}
	if got := pool.CAs(); len(got) != 2 || got[0] != corp.Cert || got[1] != lab.Cert {
		t.Errorf("CAs() = %v", got)
	}
}

func TestPoolAddCA(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	node, _ := issue(t, ca, "n1")
	selfSign := func(mutate func(*x509.Certificate)) *x509.Certificate {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "X"},
			NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			PermittedURIDomains: []string{"corp.example"},
		}
		if mutate != nil {
			mutate(tmpl)
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	badSig, err := x509.ParseCertificate(flipLast(ca.Cert.Raw))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		c    *x509.Certificate
		ok   bool
	}{
		{"gridnet CA", ca.Cert, true},
		{"hand-made CA", selfSign(nil), true},
		{"nil", nil, false},
		{"node certificate", node, false},
		{"no name constraints", selfSign(func(c *x509.Certificate) { c.PermittedURIDomains = nil }), false},
		{"two domains", selfSign(func(c *x509.Certificate) { c.PermittedURIDomains = []string{"a.example", "b.example"} }), false},
		{"invalid domain", selfSign(func(c *x509.Certificate) { c.PermittedURIDomains = []string{".corp.example"} }), false},
		{"no CRLSign", selfSign(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageCertSign }), false},
		{"not CA", selfSign(func(c *x509.Certificate) { c.IsCA = false }), false},
		{"bad self-signature", badSig, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPool(t)
			err := p.AddCA(tt.c)
			if tt.ok != (err == nil) {
				t.Fatalf("AddCA = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidCA) {
				t.Fatalf("error %q does not wrap ErrInvalidCA", err)
			}
			if _, err := NewPool(tt.c); (err == nil) != tt.ok {
				t.Fatalf("NewPool = %v, want ok=%v", err, tt.ok)
			}
		})
	}
	p := mustPool(t, ca.Cert)
	if err := p.AddCA(ca.Cert); err != nil || len(p.CAs()) != 1 {
		t.Errorf("re-adding a CA: %v, %d CAs", err, len(p.CAs()))
	}
	var zero Pool
	if _, err := zero.Verify(node, testNow); !errors.Is(err, ErrUnknownCA) {
		t.Errorf("zero Pool Verify = %v", err)
	}
	if err := zero.AddCA(ca.Cert); err != nil {
		t.Fatal(err)
	}
	if _, err := zero.Verify(node, testNow); err != nil {
		t.Errorf("zero Pool after AddCA: %v", err)
	}
}

// TestPoolConcurrent exercises lock-free readers against writers; run with
// -race to make it meaningful.
func TestPoolConcurrent(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	pool := mustPool(t, ca.Cert)
	c, _ := issue(t, ca, "n1")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := pool.Verify(c, testNow); err != nil && !errors.Is(err, ErrRevoked) {
					t.Errorf("Verify: %v", err)
					return
				}
				_ = pool.CAs()
			}
		}()
	}
	var crl *x509.RevocationList
	for i := range 20 {
		var err error
		serials := []*big.Int{big.NewInt(int64(i + 1))}
		if i == 19 {
			serials = append(serials, c.SerialNumber)
		}
		if crl, err = ca.Revoke(crl, serials, testNow); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.ApplyCRL(crl, testNow); err != nil {
			t.Fatal(err)
		}
		if err := pool.AddCA(newTestCA(t, "Other", "other.example").Cert); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	_, err := pool.Verify(c, testNow)
	requireExactly(t, err, ErrRevoked)
}

// TestSignatureCacheKeepsEveryOtherCheck: a certificate verified once is
// still refused once revoked, expired, altered, or presented to a pool
// that does not trust its CA; and a full cache starts again.
func TestSignatureCacheKeepsEveryOtherCheck(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	pool := mustPool(t, ca.Cert)
	c, _ := issue(t, ca, "web-1")
	for range 2 { // the second time from the cache
		if _, err := pool.Verify(c, testNow); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	if n := pool.verified.Load().n.Load(); n != 1 {
		t.Fatalf("cache holds %d entries, want 1", n)
	}
	for range 2 { // and from the parsed certificate the cache keeps
		if _, err := pool.VerifyDER(c.Raw, testNow); err != nil {
			t.Fatalf("VerifyDER: %v", err)
		}
	}
	_, err := pool.VerifyDER(c.Raw, c.NotAfter.Add(time.Second))
	requireExactly(t, err, ErrExpired)
	_, err = pool.VerifyDER(c.Raw, c.NotBefore.Add(-time.Second))
	requireExactly(t, err, ErrNotYetValid)

	_, err = pool.Verify(c, c.NotAfter.Add(time.Second))
	requireExactly(t, err, ErrExpired)

	altered := flipLast(c.Raw)
	_, err = pool.VerifyDER(altered, testNow)
	if !errors.Is(err, ErrUnknownCA) && !errors.Is(err, ErrMalformed) {
		t.Fatalf("altered certificate: %v, want ErrUnknownCA or ErrMalformed", err)
	}

	other := mustPool(t, newTestCA(t, "Other CA", "corp.example").Cert)
	_, err = other.Verify(c, testNow)
	requireExactly(t, err, ErrUnknownCA)

	crl, err := ca.Revoke(nil, []*big.Int{c.SerialNumber}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.ApplyCRL(crl, testNow); err != nil {
		t.Fatal(err)
	}
	_, err = pool.Verify(c, testNow)
	requireExactly(t, err, ErrRevoked)
	_, err = pool.VerifyDER(c.Raw, testNow)
	requireExactly(t, err, ErrRevoked)

	full := pool.verified.Load()
	full.n.Store(signatureCacheSize)
	d, _ := issue(t, ca, "web-2")
	if _, err := pool.Verify(d, testNow); err != nil {
		t.Fatal(err)
	}
	if now := pool.verified.Load(); now == full || now.n.Load() != 1 {
		t.Fatal("a full signature cache was not replaced by a fresh one")
	}
}

// TestCachedIdentitiesAreCopies: the identity VerifyDER returns from its
// cache is the one a first verification returns, and a caller that
// changes it changes nothing another caller gets.
func TestCachedIdentitiesAreCopies(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	pool := mustPool(t, ca.Cert)
	c, _ := issue(t, ca, "web-1")
	der := slices.Clone(c.Raw)
	first, err := pool.VerifyDER(der, testNow)
	if err != nil {
		t.Fatal(err)
	}
	der[len(der)-1] ^= 0xff // the caller's buffer is reused: the cache kept its own copy
	want := first.clone()
	first.Name = "changed"
	first.Groups[0] = "changed"
	first.Addresses[0] = netip.MustParsePrefix("10.0.0.1/8")
	first.IdentityKey[0] ^= 0xff
	first.Raw[0] ^= 0xff
	first.Serial.SetInt64(-1)
	first.Attributes["changed"] = "yes"
	second, err := pool.VerifyDER(c.Raw, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(second.Raw, c.Raw) {
		t.Fatal("the cached certificate changed with the first caller's buffer")
	}
	if !reflect.DeepEqual(second, want) {
		t.Fatalf("second verification:\n%+v\nwant the first one as it was returned:\n%+v", second, want)
	}
	if second.CAName != "Corp CA" || second.CAFingerprint == "" {
		t.Fatalf("CA fields %q %q not filled from the cache", second.CAName, second.CAFingerprint)
	}
}
