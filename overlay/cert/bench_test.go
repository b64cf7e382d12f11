package cert

import (
	"math/big"
	"testing"
)

// BenchmarkVerify measures Verify on an already parsed certificate, the
// per-handshake cost once the peer's certificate is decoded. first-sight:
// one Ed25519 signature check plus decoding gridnet's fields; seen-before:
// the signature comes from the pool's cache and every other check runs.
// The pool trusts two CAs and holds a CRL, as a federated node would.
func BenchmarkVerify(b *testing.B) {
	ca := newTestCA(b, "Corp CA", "corp.example")
	lab := newTestCA(b, "Lab CA", "lab.example")
	pool := mustPool(b, lab.Cert, ca.Cert)
	crl, err := ca.Revoke(nil, []*big.Int{big.NewInt(1), big.NewInt(2)}, testNow)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pool.ApplyCRL(crl, testNow); err != nil {
		b.Fatal(err)
	}
	c, _ := issue(b, ca, "web-1")
	b.Run("first-sight", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			pool.verified.Store(nil)
			if _, err := pool.Verify(c, testNow); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("seen-before", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pool.Verify(c, testNow); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkVerifyParallel is BenchmarkVerify from all Ps at once, showing
// that readers do not contend.
func BenchmarkVerifyParallel(b *testing.B) {
	ca := newTestCA(b, "Corp CA", "corp.example")
	pool := mustPool(b, ca.Cert)
	c, _ := issue(b, ca, "web-1")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := pool.Verify(c, testNow); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkVerifyDER includes X.509 parsing.
func BenchmarkVerifyDER(b *testing.B) {
	ca := newTestCA(b, "Corp CA", "corp.example")
	pool := mustPool(b, ca.Cert)
	c, _ := issue(b, ca, "web-1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := pool.VerifyDER(c.Raw, testNow); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIssue measures signing a typical node certificate.
func BenchmarkIssue(b *testing.B) {
	ca := newTestCA(b, "Corp CA", "corp.example")
	req := newNodeKeys(b).request("web-1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ca.Issue(req, testNow); err != nil {
			b.Fatal(err)
		}
	}
}
