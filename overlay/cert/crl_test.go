package cert

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"slices"
	"testing"
	"time"
)

// crlSerials returns the serials listed in crl, in order.
func crlSerials(crl *x509.RevocationList) []string {
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, e.SerialNumber.String())
	}
	return out
}

func TestRevokeExtends(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	steps := []struct {
		serials []int64
		want    []string
	}{
		{[]int64{10}, []string{"10"}},
		{[]int64{20, 30}, []string{"10", "20", "30"}},
		{[]int64{20}, []string{"10", "20", "30"}}, // already listed: not duplicated
		{nil, []string{"10", "20", "30"}},         // refresh only
	}
	var crl *x509.RevocationList
	for i, st := range steps {
		var serials []*big.Int
		for _, s := range st.serials {
			serials = append(serials, big.NewInt(s))
		}
		now := testNow.Add(time.Duration(i) * time.Hour)
		next, err := ca.Revoke(crl, serials, now)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if next.Number.Int64() != int64(i+1) {
			t.Errorf("step %d: CRL number %v, want %d", i, next.Number, i+1)
		}
		if got := crlSerials(next); !slices.Equal(got, st.want) {
			t.Errorf("step %d: serials %v, want %v", i, got, st.want)
		}
		if !next.ThisUpdate.Equal(now) || !next.NextUpdate.Equal(now.Add(CRLValidity)) {
			t.Errorf("step %d: dates %v..%v", i, next.ThisUpdate, next.NextUpdate)
		}
		if err := next.CheckSignatureFrom(ca.Cert); err != nil {
			t.Errorf("step %d: signature: %v", i, err)
		}
		if crl != nil && !next.RevokedCertificateEntries[0].RevocationTime.Equal(testNow) {
			t.Errorf("step %d: old entry's revocation time changed to %v", i, next.RevokedCertificateEntries[0].RevocationTime)
		}
		crl = next
	}

	other := newTestCA(t, "Other CA", "corp.example")
	if _, err := other.Revoke(crl, nil, testNow); !errors.Is(err, ErrBadSignature) {
		t.Errorf("extending another CA's CRL: %v, want ErrBadSignature", err)
	}
	for _, bad := range []*big.Int{nil, big.NewInt(0), big.NewInt(-5)} {
		if _, err := ca.Revoke(nil, []*big.Int{bad}, testNow); err == nil {
			t.Errorf("Revoke(%v) succeeded", bad)
		}
	}
}

func TestApplyCRL(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	stranger := newTestCA(t, "Stranger CA", "corp.example")
	fp := Fingerprint(ca.Cert.Raw)
	c1, _ := issue(t, ca, "n1")
	c2, _ := issue(t, ca, "n2")

	crl1, err := ca.Revoke(nil, []*big.Int{c1.SerialNumber}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	crl2, err := ca.Revoke(crl1, []*big.Int{c2.SerialNumber}, testNow.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	strangerCRL, err := stranger.Revoke(nil, []*big.Int{c2.SerialNumber}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	// A CRL naming the trusted CA as issuer (same subject and key id) but
	// signed by another key.
	fakeIssuer := *ca.Cert
	_, fakeKey, _ := ed25519.GenerateKey(rand.Reader)
	fakeIssuer.PublicKey = fakeKey.Public()
	forgedDER, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(99), ThisUpdate: testNow, NextUpdate: testNow.Add(time.Hour),
	}, &fakeIssuer, fakeKey)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := x509.ParseRevocationList(forgedDER)
	if err != nil {
		t.Fatal(err)
	}
	flipped, err := x509.ParseRevocationList(flipLast(crl2.Raw))
	if err != nil {
		t.Fatal(err)
	}
	future, err := ca.Revoke(crl2, nil, testNow.Add(CRLClockSkew+time.Minute))
	if err != nil {
		t.Fatal(err)
	}

	pool := mustPool(t, ca.Cert)
	id2, err := pool.Verify(c2, testNow)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name        string
		crl         *x509.RevocationList
		wantApplied bool
		wantErr     error
		wantNumber  int64 // after the step; 0 = none
	}{
		{"first", crl1, true, nil, 1},
		{"same again", crl1, false, nil, 1},
		{"untrusted CA", strangerCRL, false, ErrUnknownCA, 1},
		{"forged with trusted issuer name", forged, false, ErrBadSignature, 1},
		{"signature flipped", flipped, false, ErrBadSignature, 1},
		{"nil", nil, false, ErrMalformed, 1},
		{"from the future", future, false, ErrNotYetValid, 1},
		{"newer", crl2, true, nil, 2},
		{"older", crl1, false, nil, 2},
	}
	for _, st := range steps {
		applied, err := pool.ApplyCRL(st.crl, testNow)
		if applied != st.wantApplied {
			t.Errorf("%s: applied = %v, want %v", st.name, applied, st.wantApplied)
		}
		if st.wantErr == nil && err != nil {
			t.Errorf("%s: %v", st.name, err)
		}
		if st.wantErr != nil {
			if err == nil || len(matchedSentinels(err)) != 1 || !errors.Is(err, st.wantErr) {
				t.Errorf("%s: error %v, want exactly %v", st.name, err, st.wantErr)
			}
		}
		if n := pool.CRLNumber(fp); n == nil || n.Int64() != st.wantNumber {
			t.Errorf("%s: CRLNumber = %v, want %d", st.name, n, st.wantNumber)
		}
	}
	if !pool.CRLNextUpdate(fp).Equal(crl2.NextUpdate) {
		t.Errorf("CRLNextUpdate = %v, want %v", pool.CRLNextUpdate(fp), crl2.NextUpdate)
	}
	// Both serials revoked (old entry kept); the admitted peer is now revoked.
	for _, c := range []*x509.Certificate{c1, c2} {
		_, err := pool.Verify(c, testNow)
		requireExactly(t, err, ErrRevoked)
	}
	if !pool.IsRevoked(id2) {
		t.Error("IsRevoked(admitted n2) = false after CRL 2")
	}
	c3, _ := issue(t, ca, "n3")
	id3, err := pool.Verify(c3, testNow)
	if err != nil || pool.IsRevoked(id3) {
		t.Errorf("n3: %v, revoked %v", err, pool.IsRevoked(id3))
	}
	if pool.IsRevoked(nil) || pool.IsRevoked(&Identity{Serial: c1.SerialNumber, CAFingerprint: "unknown"}) {
		t.Error("IsRevoked true for nil or unknown CA")
	}
	if n := pool.CRLNumber("unknown"); n != nil {
		t.Errorf("CRLNumber(unknown) = %v", n)
	}
	pool.CRLNumber(fp).SetInt64(100) // must be a copy
	if pool.CRLNumber(fp).Int64() != 2 {
		t.Error("CRLNumber returned internal state")
	}
}

// TestApplyCRLRenewedCA checks that a CRL applies to every trusted
// certificate of a renewed CA key.
func TestApplyCRLRenewedCA(t *testing.T) {
	old := newTestCA(t, "Corp CA", "corp.example")
	renewed, err := NewCAFromKey(old.Key, "Corp CA", "corp.example", 0, testNow)
	if err != nil {
		t.Fatal(err)
	}
	pool := mustPool(t, old.Cert, renewed.Cert)
	c, _ := issue(t, renewed, "n1")
	crl, err := renewed.Revoke(nil, []*big.Int{c.SerialNumber}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := pool.ApplyCRL(crl, testNow); !ok || err != nil {
		t.Fatalf("ApplyCRL = %v, %v", ok, err)
	}
	for _, ca := range []*CA{old, renewed} {
		if n := pool.CRLNumber(Fingerprint(ca.Cert.Raw)); n == nil || n.Int64() != 1 {
			t.Errorf("CRL number for %x = %v", ca.Cert.SerialNumber, n)
		}
	}
	_, err = pool.Verify(c, testNow)
	requireExactly(t, err, ErrRevoked)
}

func TestCRLPEM(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	crl, err := ca.Revoke(nil, []*big.Int{big.NewInt(7)}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string][]byte{"PEM": EncodeCRLPEM(crl), "DER": crl.Raw} {
		got, err := ParseCRLPEM(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if string(got.Raw) != string(crl.Raw) {
			t.Errorf("%s: round trip differs", name)
		}
	}
	for name, in := range map[string][]byte{
		"garbage":         []byte("garbage"),
		"certificate PEM": EncodeCertPEM(ca.Cert),
	} {
		if _, err := ParseCRLPEM(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}
