package identity

import (
	"crypto/ed25519"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/vault"
)

// TestKeysStoreLoadMatch: keys stored in a vault load back the same, a
// second set is refused, and a certificate matches only the keys it was
// issued for.
func TestKeysStoreLoadMatch(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "k")
	if err := vault.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	key, err := vault.ReadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Create(filepath.Join(dir, "v"), key, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	k, err := GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	if err := StoreKeys(v, "web", k); err != nil {
		t.Fatal(err)
	}
	other, err := GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	if err := StoreKeys(v, "web", other); err == nil || !strings.Contains(err.Error(), "already holds node keys") {
		t.Errorf("a second set of keys: %v", err)
	}
	back, name, err := LoadKeys(v)
	if err != nil || name != "web" || !back.Identity.Equal(k.Identity) || back.WireGuard != k.WireGuard {
		t.Fatalf("LoadKeys: %q, %v", name, err)
	}

	ca, err := cert.NewCA("ca", "corp.example", time.Hour, time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.WireGuardPublic()
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Issue(cert.IssueRequest{Name: "web", IdentityKey: k.Identity.Public().(ed25519.PublicKey), WireGuardKey: pub,
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/10")}, Validity: time.Hour}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	id, err := cert.Describe(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Match(id); err != nil {
		t.Errorf("the certificate's own keys: %v", err)
	}
	if err := other.Match(id); err == nil || !strings.Contains(err.Error(), "another identity key") {
		t.Errorf("other keys: %v", err)
	}
	if err := (Keys{Identity: k.Identity, WireGuard: other.WireGuard}).Match(id); err == nil || !strings.Contains(err.Error(), "another WireGuard key") {
		t.Errorf("another WireGuard key: %v", err)
	}
}

// TestReadCRLMissingFile: a CRL file that does not exist yet is no CRL.
func TestReadCRLMissingFile(t *testing.T) {
	crl, err := ReadCRL(filepath.Join(t.TempDir(), "crl.pem"))
	if crl != nil || err != nil {
		t.Errorf("ReadCRL of a missing file: %v, %v", crl, err)
	}
}
