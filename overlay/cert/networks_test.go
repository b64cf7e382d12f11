package cert

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// testNetworks are the networks of the constrained test CA: the overlay
// addresses of nodeKeys.request lie inside them.
var testNetworks = []netip.Prefix{
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("fd7a:115c:a1e0::/48"),
}

// newNetworksCA makes a CA valid around testNow restricted to networks.
func newNetworksCA(t testing.TB, name, domain string, networks ...netip.Prefix) *CA {
	t.Helper()
	ca, err := NewCA(name, domain, 0, testNow.Add(-24*time.Hour), WithNetworks(networks...))
	if err != nil {
		t.Fatalf("NewCA(%q, %v): %v", name, networks, err)
	}
	return ca
}

// withAddresses sets the IP SANs and the prefix lengths extension of a
// template to addrs, for forging certificates with other addresses.
func withAddresses(t testing.TB, k nodeKeys, addrs ...string) func(*x509.Certificate) {
	t.Helper()
	prefixes := make([]netip.Prefix, len(addrs))
	for i, a := range addrs {
		prefixes[i] = netip.MustParsePrefix(a)
	}
	exts, ips, err := nodeExtensions(k.wg, prefixes, nil)
	if err != nil {
		t.Fatal(err)
	}
	return func(c *x509.Certificate) {
		c.IPAddresses = ips
		c.ExtraExtensions = exts
	}
}

func TestNewCAWithNetworks(t *testing.T) {
	ca := newNetworksCA(t, "Corp CA", "corp.example", testNetworks...)
	// The constraint is in the certificate as X.509 IP name constraints,
	// beside the URI domain, in the 4-byte form for IPv4.
	want := []string{"100.64.0.0/10", "fd7a:115c:a1e0::/48"}
	var got []string
	for _, n := range ca.Cert.PermittedIPRanges {
		got = append(got, n.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("PermittedIPRanges = %v, want %v", got, want)
	}
	if len(ca.Cert.PermittedIPRanges[0].IP) != net.IPv4len {
		t.Errorf("IPv4 constraint encoded with %d bytes", len(ca.Cert.PermittedIPRanges[0].IP))
	}
	if !slices.Equal(ca.Cert.PermittedURIDomains, []string{"corp.example"}) || !ca.Cert.PermittedDNSDomainsCritical {
		t.Errorf("URI constraint %v, critical %v", ca.Cert.PermittedURIDomains, ca.Cert.PermittedDNSDomainsCritical)
	}
	if !slices.Equal(ca.Networks(), testNetworks) {
		t.Errorf("Networks() = %v", ca.Networks())
	}
	loaded, err := LoadCA(EncodeCertPEM(ca.Cert), ca.Key)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !slices.Equal(loaded.Networks(), testNetworks) {
		t.Errorf("loaded Networks() = %v", loaded.Networks())
	}
	if n, err := CANetworks(ca.Cert); err != nil || !slices.Equal(n, testNetworks) {
		t.Errorf("CANetworks = %v, %v", n, err)
	}
	// Renewal with the same key keeps the networks when asked to.
	renewed, err := NewCAFromKey(ca.Key, ca.Name(), ca.Domain(), 0, testNow, WithNetworks(ca.Networks()...))
	if err != nil || !slices.Equal(renewed.Networks(), testNetworks) {
		t.Errorf("renewed: %v, %v", renewed.Networks(), err)
	}
	if plain := newTestCA(t, "Plain CA", "corp.example"); plain.Networks() != nil || plain.Cert.PermittedIPRanges != nil {
		t.Errorf("CA without networks has %v", plain.Cert.PermittedIPRanges)
	}

	many := make([]netip.Prefix, MaxNetworks+1)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)
	}
	for _, tc := range []struct {
		name     string
		networks []netip.Prefix
		msg      string
	}{
		{"host bits set", []netip.Prefix{netip.MustParsePrefix("100.64.0.1/10")}, "did you mean 100.64.0.0/10"},
		{"overlap", []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("100.64.1.0/24")}, "overlap"},
		{"IPv4-mapped", []netip.Prefix{netip.MustParsePrefix("::ffff:100.64.0.0/106")}, "IPv4-mapped"},
		{"invalid", []netip.Prefix{{}}, "invalid prefix"},
		{"too many", many, "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewCA("CA", "corp.example", 0, testNow, WithNetworks(tc.networks...))
			if !errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("NewCA = %v, want ErrInvalidName mentioning %q", err, tc.msg)
			}
		})
	}
}

func TestIssueNetworks(t *testing.T) {
	ca := newNetworksCA(t, "Corp CA", "corp.example", testNetworks...)
	v4only := newNetworksCA(t, "V4 CA", "corp.example", netip.MustParsePrefix("100.64.0.0/10"))
	plain := newTestCA(t, "Plain CA", "corp.example")
	tests := []struct {
		name string
		ca   *CA
		addr string
		want error // nil: issued
		msg  string
	}{
		{"IPv4 inside", ca, "100.64.0.2/10", nil, ""},
		{"IPv4 narrower prefix inside", ca, "100.100.7.1/24", nil, ""},
		{"IPv4 last host", ca, "100.127.255.254/10", nil, ""},
		{"IPv6 inside", ca, "fd7a:115c:a1e0::2/48", nil, ""},
		{"IPv6 all-ones host", ca, "fd7a:115c:a1e0:ffff:ffff:ffff:ffff:ffff/48", nil, ""},
		{"IPv4 /31 lower", ca, "100.64.0.4/31", nil, ""},
		{"IPv4 /31 upper", ca, "100.64.0.5/31", nil, ""},
		{"IPv4 /32", ca, "100.64.9.0/32", nil, ""},
		{"IPv6 /127", ca, "fd7a:115c:a1e0::4/127", nil, ""},
		{"IPv6 /128", ca, "fd7a:115c:a1e0:1::/128", nil, ""},
		{"IPv4 outside", ca, "8.8.8.8/32", ErrOutsideNetworks, "8.8.8.8/32 is not in 100.64.0.0/10, fd7a:115c:a1e0::/48"},
		{"IPv4 just past the network", ca, "100.128.0.1/10", ErrOutsideNetworks, "not in"},
		{"IPv4 wider prefix", ca, "100.64.0.2/8", ErrOutsideNetworks, "wider than the CA's 100.64.0.0/10"},
		{"IPv6 outside", ca, "fd00::1/64", ErrOutsideNetworks, "not in"},
		{"IPv6 on an IPv4-only CA", v4only, "fd7a:115c:a1e0::2/48", ErrOutsideNetworks, "not in 100.64.0.0/10"},
		{"IPv4 network address", ca, "100.64.0.0/10", ErrInvalidName, "network address of 100.64.0.0/10"},
		{"IPv4 broadcast address", ca, "100.127.255.255/10", ErrInvalidName, "broadcast address of 100.64.0.0/10"},
		{"IPv4 network address of own /24", ca, "100.64.3.0/24", ErrInvalidName, "network address of 100.64.3.0/24"},
		{"IPv4 broadcast of own /30", ca, "100.64.0.7/30", ErrInvalidName, "broadcast address of 100.64.0.4/30"},
		{"IPv4 CA broadcast as /32", ca, "100.127.255.255/32", ErrInvalidName, "broadcast address of 100.64.0.0/10"},
		{"IPv4 CA network as /32", ca, "100.64.0.0/32", ErrInvalidName, "network address of 100.64.0.0/10"},
		{"IPv6 subnet-router anycast", ca, "fd7a:115c:a1e0::/48", ErrInvalidName, "Subnet-Router anycast"},
		// A CA made without networks permits any address, but still
		// refuses network and broadcast addresses of the node's prefix.
		{"no networks: any address", plain, "8.8.8.8/32", nil, ""},
		{"no networks: network address", plain, "100.64.0.0/10", ErrInvalidName, "network address"},
		{"no networks: broadcast address", plain, "100.127.255.255/10", ErrInvalidName, "broadcast address"},
		{"no networks: IPv6 anycast", plain, "fd00::/64", ErrInvalidName, "Subnet-Router anycast"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := newNodeKeys(t)
			req := k.request("n1")
			req.Addresses = []netip.Prefix{netip.MustParsePrefix(tt.addr)}
			c, err := tt.ca.Issue(req, testNow)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Issue: %v", err)
				}
				if _, err := mustPool(t, tt.ca.Cert).Verify(c, testNow); err != nil {
					t.Fatalf("issued certificate does not verify: %v", err)
				}
				return
			}
			if c != nil || !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Issue = %v, want %v mentioning %q", err, tt.want, tt.msg)
			}
		})
	}
	// Every address counts, not just the first.
	k := newNodeKeys(t)
	req := k.request("n1")
	req.Addresses = append(req.Addresses, netip.MustParsePrefix("10.0.0.1/8"))
	if _, err := ca.Issue(req, testNow); !errors.Is(err, ErrOutsideNetworks) {
		t.Errorf("third address outside: %v", err)
	}
}

func TestVerifyNetworks(t *testing.T) {
	ca := newNetworksCA(t, "Corp CA", "corp.example", testNetworks...)
	plain := newTestCA(t, "Lab CA", "lab.example")
	pool := mustPool(t, ca.Cert, plain.Cert)

	good, _ := issue(t, ca, "good")
	if _, err := pool.Verify(good, testNow); err != nil {
		t.Fatalf("in-range certificate: %v", err)
	}

	// Certificates signed with the constrained CA's key directly, past
	// Issue's checks: Pool.Verify is gridnet's own check (not
	// x509.Certificate.Verify), so it must enforce the constraint itself.
	k := newNodeKeys(t)
	forged := func(ca *CA, addrs ...string) []byte {
		return forge(t, ca, k, nodeTemplate(t, ca, "n1", k), withAddresses(t, k, addrs...))
	}
	for _, tc := range []struct {
		name  string
		der   []byte
		bad   string // address named in the error; "" means accepted
		inner bool
	}{
		{"IPv4 outside", forged(ca, "8.8.8.8/32"), "8.8.8.8", false},
		{"second address outside", forged(ca, "100.64.0.2/10", "192.168.1.1/24"), "192.168.1.1", false},
		{"IPv6 outside", forged(ca, "100.64.0.2/10", "2001:db8::1/64"), "2001:db8::1", false},
		{"IPv4 just below", forged(ca, "100.63.255.255/10"), "100.63.255.255", false},
		// Host-address rules are the issuer's: verification enforces the
		// X.509 constraint only, as openssl and crypto/x509 do.
		{"network address inside", forged(ca, "100.64.0.0/10"), "", true},
		{"wider prefix inside", forged(ca, "100.64.0.2/8"), "", true},
		// The CA without networks permits any address.
		{"unconstrained CA", forged(plain, "8.8.8.8/32"), "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := pool.VerifyDER(tc.der, testNow)
			if tc.bad == "" {
				if err != nil {
					t.Fatalf("VerifyDER: %v", err)
				}
				return
			}
			if id != nil {
				t.Errorf("identity %+v with error", id)
			}
			requireExactly(t, err, ErrOutsideDomain)
			if !errors.Is(err, ErrOutsideNetworks) {
				t.Fatalf("error %q does not wrap ErrOutsideNetworks", err)
			}
			for _, want := range []string{tc.bad + " is not in 100.64.0.0/10, fd7a:115c:a1e0::/48", `CA "Corp CA"`} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}

	// crypto/x509 agrees about the forged certificate: the constraint is
	// real X.509, not a gridnet convention.
	c, err := x509.ParseCertificate(forged(ca, "8.8.8.8/32"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	_, err = c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: testNow, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	var invalid x509.CertificateInvalidError
	if !errors.As(err, &invalid) || invalid.Reason != x509.CANotAuthorizedForThisName {
		t.Errorf("crypto/x509 Verify = %v, want a name constraint violation", err)
	}
}

// TestCAWithoutNetworks checks a CA certificate made before CAs could have
// networks (testdata/ca-without-networks.pem is the fuzz CA as the code
// before that change wrote it; its key is fuzzSeed): no restriction at
// verification, but issuing still refuses network and broadcast addresses.
func TestCAWithoutNetworks(t *testing.T) {
	pemBytes, err := os.ReadFile("testdata/ca-without-networks.pem")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(pemBytes, ed25519.NewKeyFromSeed(fuzzSeed))
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if ca.Networks() != nil {
		t.Fatalf("Networks() = %v, want nil", ca.Networks())
	}
	pool := mustPool(t, ca.Cert)
	if _, err := pool.VerifyDER(readSeed(t, "FuzzVerifyDER", "seed-valid"), testNow); err != nil {
		t.Fatalf("certificate issued before the change: %v", err)
	}
	k := newNodeKeys(t)
	if _, err := pool.VerifyDER(forge(t, ca, k, nodeTemplate(t, ca, "n1", k), withAddresses(t, k, "8.8.8.8/32")), testNow); err != nil {
		t.Errorf("any address under a CA without networks: %v", err)
	}
	req := k.request("n1")
	req.Addresses = []netip.Prefix{netip.MustParsePrefix("8.8.8.8/32")}
	if _, err := ca.Issue(req, testNow); err != nil {
		t.Errorf("issue 8.8.8.8/32: %v", err)
	}
	for _, a := range []string{"100.64.0.0/10", "100.127.255.255/10"} {
		req.Addresses = []netip.Prefix{netip.MustParsePrefix(a)}
		if _, err := ca.Issue(req, testNow); !errors.Is(err, ErrInvalidName) {
			t.Errorf("issue %s: %v, want ErrInvalidName", a, err)
		}
	}
}

func TestPoolRefusesExcludedIPRanges(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	base := newTestCA(t, "Corp CA", "corp.example")
	tmpl := *base.Cert
	tmpl.ExcludedIPRanges = []*net.IPNet{{IP: net.IPv4(10, 0, 0, 0).To4(), Mask: net.CIDRMask(8, 32)}}
	tmpl.SubjectKeyId = keyID(pub)
	tmpl.PublicKey = pub
	der, err := x509.CreateCertificate(nil, &tmpl, &tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := mustPool(t).AddCA(c); !errors.Is(err, ErrInvalidCA) || !strings.Contains(err.Error(), "excluded IP ranges") {
		t.Errorf("AddCA with excluded IP ranges = %v, want ErrInvalidCA", err)
	}
}

func TestCheckIssued(t *testing.T) {
	corp := newTestCA(t, "corp-ca", "corp.example")
	partner := newTestCA(t, "partner-ca", "partner.example")
	// Same name, domain and key identifier as corp, another key.
	impostor := newTestCA(t, "corp-ca", "corp.example")
	impostor.Cert.SubjectKeyId = corp.Cert.SubjectKeyId

	own, _ := issue(t, corp, "web1")
	if err := corp.CheckIssued(own); err != nil {
		t.Fatalf("own certificate: %v", err)
	}
	renewed, err := NewCAFromKey(corp.Key, corp.Name(), corp.Domain(), 0, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if err := renewed.CheckIssued(own); err != nil {
		t.Errorf("renewed CA (same key and name): %v", err)
	}

	foreign, _ := issue(t, partner, "web1")
	err = corp.CheckIssued(foreign)
	if !errors.Is(err, ErrNotIssuer) {
		t.Fatalf("foreign certificate: %v, want ErrNotIssuer", err)
	}
	for _, want := range []string{`CA "partner-ca"`, `this CA "corp-ca"`, hex.EncodeToString(partner.Cert.SubjectKeyId), hex.EncodeToString(corp.Cert.SubjectKeyId)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}

	fake, _ := issue(t, impostor, "web1")
	if err := corp.CheckIssued(fake); !errors.Is(err, ErrNotIssuer) || !strings.Contains(err.Error(), "signature does not verify") {
		t.Errorf("same name and key id, other key: %v", err)
	}
	flipped, err := x509.ParseCertificate(flipLast(own.Raw))
	if err != nil {
		t.Fatal(err)
	}
	if err := corp.CheckIssued(flipped); !errors.Is(err, ErrNotIssuer) {
		t.Errorf("flipped signature: %v", err)
	}
	if err := corp.CheckIssued(nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("nil: %v", err)
	}
}
