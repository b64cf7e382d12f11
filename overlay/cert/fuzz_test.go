package cert

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Fuzz targets. Seed corpora live in testdata/fuzz/<Target>/ (regenerate
// them with GRIDNET_WRITE_FUZZ_CORPUS=1 go test -run TestWriteFuzzCorpus).
// They are signed by fuzzCA, whose key is derived from a fixed seed, so a
// committed seed certificate chains to the CA the targets trust and the
// fuzzer starts from inputs that reach every verification step.

// fuzzSeed is the fixed Ed25519 seed of the fuzz CA; not a secret.
var fuzzSeed = bytes.Repeat([]byte{0x5a}, ed25519.SeedSize)

// fuzzCA returns the deterministic-key CA of the fuzz targets.
func fuzzCA(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCAFromKey(ed25519.NewKeyFromSeed(fuzzSeed), "Fuzz CA", "fuzz.example", 0, testNow.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// fuzzNetSeed is the fixed Ed25519 seed of the fuzz CA with networks.
var fuzzNetSeed = bytes.Repeat([]byte{0x6b}, ed25519.SeedSize)

// fuzzNetworks are the networks of fuzzNetCA.
var fuzzNetworks = []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48")}

// fuzzNetCA returns the deterministic-key CA of the fuzz targets that is
// restricted to fuzzNetworks.
func fuzzNetCA(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCAFromKey(ed25519.NewKeyFromSeed(fuzzNetSeed), "Fuzz Net CA", "net.fuzz.example", 0, testNow.Add(-24*time.Hour), WithNetworks(fuzzNetworks...))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// fuzzNodeKeys returns deterministic node keys for corpus generation.
func fuzzNodeKeys() nodeKeys {
	k := nodeKeys{identity: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x11}, ed25519.SeedSize))}
	for i := range k.wg {
		k.wg[i] = byte(0x80 + i)
	}
	return k
}

// fuzzSeeds returns named seed inputs for each target.
func fuzzSeeds(t testing.TB) map[string]map[string][]any {
	ca := fuzzCA(t)
	k := fuzzNodeKeys()
	c, err := ca.Issue(k.request("node-1"), testNow)
	if err != nil {
		t.Fatal(err)
	}
	outside := forge(t, ca, k, nodeTemplate(t, ca, "node-2", k), func(c *x509.Certificate) {
		c.URIs = []*url.URL{SPIFFEID("other.example", "node-2")}
	})
	netCA := fuzzNetCA(t)
	netValid, err := netCA.Issue(k.request("node-3"), testNow)
	if err != nil {
		t.Fatal(err)
	}
	netOutside := forge(t, netCA, k, nodeTemplate(t, netCA, "node-4", k), withAddresses(t, k, "100.64.0.9/10", "8.8.8.8/32"))
	csr, err := CreateCSR("node-1", k.identity, k.wg)
	if err != nil {
		t.Fatal(err)
	}
	crl1, err := ca.Revoke(nil, []*big.Int{c.SerialNumber}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	crl2, err := ca.Revoke(crl1, []*big.Int{big.NewInt(42)}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	wgExt, _ := marshalWireGuardKey(k.wg)
	attrExt, _ := marshalAttributes(map[string]string{"os": "linux", "tier": "gold"})
	bitsExt, _ := marshalPrefixLengths([]int{10, 48})
	return map[string]map[string][]any{
		"FuzzVerifyDER": {
			"valid":         {c.Raw},
			"outside":       {outside},
			"flipped":       {flipLast(c.Raw)},
			"ca":            {ca.Cert.Raw},
			"empty":         {[]byte{}},
			"tiny-sequence": {[]byte{0x30, 0x00}},
			"net-valid":     {netValid.Raw},
			"net-outside":   {netOutside},
		},
		"FuzzAddCA": {
			"networks": {netCA.Cert.Raw},
			"plain":    {ca.Cert.Raw},
			"flipped":  {flipLast(netCA.Cert.Raw)},
			"node":     {c.Raw},
		},
		"FuzzParseCSR": {
			"valid":   {csr},
			"flipped": {flipLast(csr)},
			"empty":   {[]byte{}},
		},
		"FuzzParseCRL": {
			"der":     {crl2.Raw},
			"pem":     {EncodeCRLPEM(crl1)},
			"flipped": {flipLast(crl2.Raw)},
			"garbage": {[]byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")},
		},
		"FuzzExtensions": {
			"wireguard":  {wgExt.Value, "os", "linux", 32},
			"attributes": {attrExt.Value, "posture:disk", "encrypted", 10},
			"prefixes":   {bitsExt.Value, "a", "", 128},
			"empty":      {[]byte{}, "", "", 0},
		},
	}
}

// addSeeds adds the generated seeds of target to f.
func addSeeds(f *testing.F, target string) {
	for _, args := range fuzzSeeds(f)[target] {
		f.Add(args...)
	}
}

// TestWriteFuzzCorpus regenerates testdata/fuzz when asked to.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("GRIDNET_WRITE_FUZZ_CORPUS") != "1" {
		t.Skip("set GRIDNET_WRITE_FUZZ_CORPUS=1 to rewrite testdata/fuzz")
	}
	for target, seeds := range fuzzSeeds(t) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, args := range seeds {
			var b bytes.Buffer
			b.WriteString("go test fuzz v1\n")
			for _, a := range args {
				switch v := a.(type) {
				case []byte:
					fmt.Fprintf(&b, "[]byte(%q)\n", v)
				case string:
					fmt.Fprintf(&b, "string(%q)\n", v)
				case int:
					fmt.Fprintf(&b, "int(%d)\n", v)
				default:
					t.Fatalf("unsupported seed type %T", a)
				}
			}
			if err := os.WriteFile(filepath.Join(dir, "seed-"+name), b.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// onlySentinels fails unless err wraps exactly one of allowed (and no
// other sentinel).
func onlySentinels(t *testing.T, err error, allowed ...error) {
	t.Helper()
	got := matchedSentinels(err)
	if len(got) != 1 || !slices.Contains(allowed, got[0]) {
		t.Fatalf("error %q matches %v, want exactly one of %v", err, got, allowed)
	}
}

func FuzzVerifyDER(f *testing.F) {
	addSeeds(f, "FuzzVerifyDER")
	ca := fuzzCA(f)
	netCA := fuzzNetCA(f)
	pool := mustPool(f, ca.Cert, netCA.Cert)
	crl, err := ca.Revoke(nil, []*big.Int{big.NewInt(42)}, testNow)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := pool.ApplyCRL(crl, testNow); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		id, err := pool.VerifyDER(der, testNow)
		if err != nil {
			if id != nil {
				t.Fatal("identity returned with error")
			}
			onlySentinels(t, err, sentinels...)
			return
		}
		switch id.CAFingerprint {
		case Fingerprint(ca.Cert.Raw):
			if id.Domain != "fuzz.example" {
				t.Fatalf("accepted identity %+v", id)
			}
		case Fingerprint(netCA.Cert.Raw):
			if id.Domain != "net.fuzz.example" {
				t.Fatalf("accepted identity %+v", id)
			}
			for _, p := range id.Addresses {
				if containing(fuzzNetworks, p.Addr()) == nil {
					t.Fatalf("accepted %v outside %v", p, fuzzNetworks)
				}
			}
		default:
			t.Fatalf("accepted identity %+v of an unknown CA", id)
		}
		if ValidateName(id.Name) != nil || len(id.IdentityKey) != ed25519.PublicKeySize || id.Serial.Sign() <= 0 {
			t.Fatalf("accepted identity %+v", id)
		}
		if !slices.IsSorted(id.Groups) {
			t.Fatalf("groups not sorted: %v", id.Groups)
		}
		if pool.IsRevoked(id) {
			t.Fatal("accepted a revoked certificate")
		}
	})
}

// FuzzAddCA feeds arbitrary DER to AddCA: whatever it accepts as a CA has
// well-formed networks, and a certificate the CA then issues verifies
// exactly when its address lies in them.
func FuzzAddCA(f *testing.F) {
	addSeeds(f, "FuzzAddCA")
	f.Fuzz(func(t *testing.T, der []byte) {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		pool := mustPool(t)
		if err := pool.AddCA(c); err != nil {
			if !errors.Is(err, ErrInvalidCA) {
				t.Fatalf("AddCA: %v", err)
			}
			return
		}
		networks, err := CANetworks(c)
		if err != nil {
			t.Fatalf("accepted CA whose networks do not decode: %v", err)
		}
		for _, n := range networks {
			if !n.IsValid() || n != n.Masked() {
				t.Fatalf("network %v", n)
			}
		}
		if !bytes.Equal(c.RawSubject, c.RawIssuer) || len(c.PermittedURIDomains) != 1 {
			t.Fatalf("accepted %q as a CA", c.Subject.CommonName)
		}
	})
}

func FuzzParseCSR(f *testing.F) {
	addSeeds(f, "FuzzParseCSR")
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := ParseCSR(der)
		if err != nil {
			onlySentinels(t, err, ErrMalformed, ErrBadSignature)
			return
		}
		if ValidateName(csr.Name) != nil || len(csr.IdentityKey) != ed25519.PublicKeySize || csr.WireGuardKey == ([32]byte{}) {
			t.Fatalf("accepted CSR %+v", csr)
		}
		if !bytes.Equal(csr.Raw, der) {
			t.Fatal("Raw differs from input")
		}
	})
}

func FuzzParseCRL(f *testing.F) {
	addSeeds(f, "FuzzParseCRL")
	ca := fuzzCA(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		crl, err := ParseCRLPEM(data)
		if err != nil {
			onlySentinels(t, err, ErrMalformed)
			return
		}
		pool := mustPool(t, ca.Cert)
		applied, err := pool.ApplyCRL(crl, testNow)
		if err != nil {
			if applied {
				t.Fatal("applied with error")
			}
			onlySentinels(t, err, ErrMalformed, ErrUnknownCA, ErrBadSignature, ErrNotYetValid)
			return
		}
		if !applied || pool.CRLNumber(Fingerprint(ca.Cert.Raw)).Cmp(crl.Number) != 0 {
			t.Fatalf("fresh pool did not apply CRL %v", crl.Number)
		}
		if again, err := pool.ApplyCRL(crl, testNow); again || err != nil {
			t.Fatalf("re-applying: %v, %v", again, err)
		}
	})
}

func FuzzExtensions(f *testing.F) {
	addSeeds(f, "FuzzExtensions")
	f.Fuzz(func(t *testing.T, data []byte, key, value string, bits int) {
		// Arbitrary bytes: decoders must not panic, must fail with
		// errExtension, and whatever they accept must survive
		// marshal → unmarshal unchanged.
		if wg, err := unmarshalWireGuardKey(data); err != nil {
			if !errors.Is(err, errExtension) {
				t.Fatalf("WireGuard: %v", err)
			}
		} else {
			ext, err := marshalWireGuardKey(wg)
			if err != nil || !bytes.Equal(ext.Value, data) {
				t.Fatalf("WireGuard re-encoding differs: % x vs % x (%v)", ext.Value, data, err)
			}
		}
		if attrs, err := unmarshalAttributes(data); err != nil {
			if !errors.Is(err, errExtension) {
				t.Fatalf("attributes: %v", err)
			}
		} else {
			ext, err := marshalAttributes(attrs)
			if err != nil {
				t.Fatal(err)
			}
			back, err := unmarshalAttributes(ext.Value)
			if err != nil || !maps.Equal(back, attrs) {
				t.Fatalf("attributes round trip: %v -> %v (%v)", attrs, back, err)
			}
		}
		if seq, err := unmarshalPrefixLengths(data); err != nil {
			if !errors.Is(err, errExtension) {
				t.Fatalf("prefix lengths: %v", err)
			}
		} else {
			ext, err := marshalPrefixLengths(seq)
			if err != nil || !bytes.Equal(ext.Value, data) {
				t.Fatalf("prefix lengths re-encoding differs: % x vs % x (%v)", ext.Value, data, err)
			}
		}

		// Structured values: valid input round-trips exactly.
		attrs := map[string]string{key: value}
		if validateAttributes(attrs) == nil {
			ext, err := marshalAttributes(attrs)
			if err != nil {
				t.Fatal(err)
			}
			back, err := unmarshalAttributes(ext.Value)
			if err != nil || !maps.Equal(back, attrs) {
				t.Fatalf("attributes %q=%q round trip: %v (%v)", key, value, back, err)
			}
		}
		if bits >= 0 && bits <= maxPrefixBits {
			in := []int{bits, maxPrefixBits - bits}
			ext, err := marshalPrefixLengths(in)
			if err != nil {
				t.Fatal(err)
			}
			back, err := unmarshalPrefixLengths(ext.Value)
			if err != nil || !slices.Equal(back, in) {
				t.Fatalf("prefix lengths %v round trip: %v (%v)", in, back, err)
			}
		}
	})
}

// TestFuzzCorpusReachesVerification keeps the committed seeds useful: the
// valid seed certificate must verify against the fuzz CA, so the fuzzer
// explores past the signature check.
func TestFuzzCorpusReachesVerification(t *testing.T) {
	der := readSeed(t, "FuzzVerifyDER", "seed-valid")
	if _, err := mustPool(t, fuzzCA(t).Cert).VerifyDER(der, testNow); err != nil {
		t.Fatalf("seed-valid does not verify: %v", err)
	}
	outside := readSeed(t, "FuzzVerifyDER", "seed-outside")
	_, err := mustPool(t, fuzzCA(t).Cert).VerifyDER(outside, testNow)
	requireExactly(t, err, ErrOutsideDomain)
	if _, err := mustPool(t, fuzzNetCA(t).Cert).VerifyDER(readSeed(t, "FuzzVerifyDER", "seed-net-valid"), testNow); err != nil {
		t.Fatalf("seed-net-valid does not verify: %v", err)
	}
	_, err = mustPool(t, fuzzNetCA(t).Cert).VerifyDER(readSeed(t, "FuzzVerifyDER", "seed-net-outside"), testNow)
	if !errors.Is(err, ErrOutsideNetworks) {
		t.Fatalf("seed-net-outside: %v, want ErrOutsideNetworks", err)
	}
	if err := mustPool(t).AddCA(mustParseCert(t, readSeed(t, "FuzzAddCA", "seed-networks"))); err != nil {
		t.Fatalf("FuzzAddCA seed-networks: %v", err)
	}
	if _, err := ParseCSR(readSeed(t, "FuzzParseCSR", "seed-valid")); err != nil {
		t.Fatalf("CSR seed: %v", err)
	}
	crl, err := ParseCRLPEM(readSeed(t, "FuzzParseCRL", "seed-der"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := mustPool(t, fuzzCA(t).Cert).ApplyCRL(crl, testNow); !ok || err != nil {
		t.Fatalf("CRL seed: %v, %v", ok, err)
	}
}

// mustParseCert parses DER or fails.
func mustParseCert(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readSeed returns the []byte argument of a one-argument corpus file.
func readSeed(t *testing.T, target, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, name))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
		t.Fatalf("%s/%s: unexpected corpus format", target, name)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		t.Fatal(err)
	}
	return []byte(s)
}
