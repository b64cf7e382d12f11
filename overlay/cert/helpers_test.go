package cert

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/netip"
	"net/url"
	"testing"
	"time"
)

// testNow is the fixed clock of all tests (whole seconds, because X.509
// times have second precision).
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// sentinels lists every verification sentinel, to assert that an error
// matches exactly one of them.
var sentinels = []error{
	ErrMalformed, ErrUnknownCA, ErrExpired, ErrNotYetValid, ErrRevoked,
	ErrOutsideDomain, ErrKeyUsage, ErrBadSignature,
}

// matchedSentinels returns the sentinels err wraps.
func matchedSentinels(err error) []error {
	var out []error
	for _, s := range sentinels {
		if errors.Is(err, s) {
			out = append(out, s)
		}
	}
	return out
}

// requireExactly fails unless err wraps want and no other sentinel.
func requireExactly(t testing.TB, err, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want %v", want)
	}
	got := matchedSentinels(err)
	if len(got) != 1 || got[0] != want {
		t.Fatalf("error %q matches sentinels %v, want exactly [%v]", err, got, want)
	}
}

// newTestCA makes a CA valid around testNow.
func newTestCA(t testing.TB, name, domain string) *CA {
	t.Helper()
	ca, err := NewCA(name, domain, 0, testNow.Add(-24*time.Hour))
	if err != nil {
		t.Fatalf("NewCA(%q, %q): %v", name, domain, err)
	}
	return ca
}

// nodeKeys are a node's keys.
type nodeKeys struct {
	identity ed25519.PrivateKey
	wg       [32]byte
}

// newNodeKeys makes an identity key and a random (non-zero) WireGuard key.
// The WireGuard key does not need to be a valid X25519 point for
// certificate purposes; it is carried as opaque bytes.
func newNodeKeys(t testing.TB) nodeKeys {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var k nodeKeys
	k.identity = priv
	if _, err := rand.Read(k.wg[:]); err != nil {
		t.Fatal(err)
	}
	k.wg[0] |= 1
	return k
}

// request returns a typical IssueRequest for name with keys k.
func (k nodeKeys) request(name string) IssueRequest {
	return IssueRequest{
		Name:         name,
		IdentityKey:  k.identity.Public().(ed25519.PublicKey),
		WireGuardKey: k.wg,
		Addresses: []netip.Prefix{
			netip.MustParsePrefix("100.64.0.2/10"),
			netip.MustParsePrefix("fd7a:115c:a1e0::2/48"),
		},
		Groups:     []string{"web", "admins"},
		Attributes: map[string]string{"os": "linux", "posture:disk": "encrypted"},
	}
}

// issue issues a typical certificate for name under ca at testNow.
func issue(t testing.TB, ca *CA, name string) (*x509.Certificate, nodeKeys) {
	t.Helper()
	k := newNodeKeys(t)
	c, err := ca.Issue(k.request(name), testNow)
	if err != nil {
		t.Fatalf("Issue(%q): %v", name, err)
	}
	return c, k
}

// nodeTemplate returns the template Issue would use for a typical node
// certificate, for tests that forge variants of it.
func nodeTemplate(t testing.TB, ca *CA, name string, k nodeKeys) *x509.Certificate {
	t.Helper()
	req := k.request(name)
	exts, ips, err := nodeExtensions(req.WireGuardKey, req.Addresses, req.Attributes)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"admins", "web"}},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		SubjectKeyId:          keyID(req.IdentityKey),
		URIs:                  []*url.URL{SPIFFEID(ca.Domain(), name)},
		IPAddresses:           ips,
		ExtraExtensions:       exts,
	}
}

// forge signs tmpl (after mutate) with ca's key, bypassing Issue's checks.
func forge(t testing.TB, ca *CA, k nodeKeys, tmpl *x509.Certificate, mutate func(*x509.Certificate)) []byte {
	t.Helper()
	if mutate != nil {
		mutate(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, k.identity.Public(), ca.Key)
	if err != nil {
		t.Fatalf("forge: %v", err)
	}
	return der
}

// flipLast returns a copy of b with its last byte changed.
func flipLast(b []byte) []byte {
	out := append([]byte(nil), b...)
	out[len(out)-1] ^= 0x01
	return out
}

// mustPool builds a pool or fails.
func mustPool(t testing.TB, cas ...*x509.Certificate) *Pool {
	t.Helper()
	p, err := NewPool(cas...)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	return p
}
