// Package identity keeps what makes up a gridnet node's or CA's identity
// on disk: the names of gridnet's items in a vault, the node's two private
// keys, opening a vault with gridnet's hint for one changed outside it, and
// reading the certificate, CA bundle and CRL files a node is configured
// with. Package node reads a node's identity with it when it starts; the
// command line (node/cli) also writes one (keygen, cert, ca) and checks it
// (up --test).
package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/crypto/curve25519"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/vault"
)

// Names of the items gridnet keeps in a vault. They are part of the vault
// layout that users see with `gridnet vault ls`.
const (
	// ItemCAKey is the CA's Ed25519 private key (CA vault).
	ItemCAKey = "gridnet/ca.key"
	// ItemCACert is the CA's own certificate (CA vault) or the trusted CA
	// bundle (node vault), PEM.
	ItemCACert = "gridnet/ca.crt"
	// ItemIdentityKey is the node's Ed25519 identity private key.
	ItemIdentityKey = "gridnet/identity.key"
	// ItemWireGuardKey is the node's X25519 WireGuard private key.
	ItemWireGuardKey = "gridnet/wireguard.key"
	// ItemNodeName is the node name chosen at keygen.
	ItemNodeName = "gridnet/node.name"
	// ItemNodeCert is the node's certificate, PEM.
	ItemNodeCert = "gridnet/node.crt"
)

// Keys are a node's two private keys.
type Keys struct {
	// Identity signs the node's certificate request and its handshakes.
	Identity ed25519.PrivateKey
	// WireGuard is the node's X25519 WireGuard (and Noise static) key.
	WireGuard [32]byte
}

// WireGuardPublic derives the X25519 public key.
func (k Keys) WireGuardPublic() ([32]byte, error) {
	var pub [32]byte
	out, err := curve25519.X25519(k.WireGuard[:], curve25519.Basepoint)
	if err != nil {
		return pub, fmt.Errorf("derive WireGuard public key: %w", err)
	}
	copy(pub[:], out)
	return pub, nil
}

// Match reports whether id, a node's verified certificate identity, is
// for these keys.
func (k Keys) Match(id *cert.Identity) error {
	if !k.Identity.Public().(ed25519.PublicKey).Equal(id.IdentityKey) {
		return errors.New("own certificate is for another identity key")
	}
	pub, err := k.WireGuardPublic()
	if err != nil {
		return err
	}
	if pub != id.WireGuardKey {
		return errors.New("own certificate carries another WireGuard key")
	}
	return nil
}

// GenerateKeys makes a fresh identity key and WireGuard key.
func GenerateKeys() (Keys, error) {
	var k Keys
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return k, fmt.Errorf("generate identity key: %w", err)
	}
	k.Identity = priv
	if _, err := rand.Read(k.WireGuard[:]); err != nil {
		return k, fmt.Errorf("generate WireGuard key: %w", err)
	}
	// Clamp as X25519 and WireGuard do.
	k.WireGuard[0] &= 248
	k.WireGuard[31] = (k.WireGuard[31] & 127) | 64
	return k, nil
}

// StoreKeys writes the node's keys and name into v. It refuses to
// overwrite keys a vault already holds: losing them loses the identity.
func StoreKeys(v *vault.Vault, name string, k Keys) error {
	if _, _, err := v.Get(ItemIdentityKey); err == nil {
		return fmt.Errorf("vault %s already holds node keys; use a new vault", v.Path())
	} else if !errors.Is(err, vault.ErrNotFound) {
		return fmt.Errorf("check existing keys: %w", err)
	}
	if err := v.Put(ItemIdentityKey, vault.ClassKey, k.Identity); err != nil {
		return fmt.Errorf("store identity key: %w", err)
	}
	if err := v.Put(ItemWireGuardKey, vault.ClassKey, k.WireGuard[:]); err != nil {
		return fmt.Errorf("store WireGuard key: %w", err)
	}
	if err := v.Put(ItemNodeName, vault.ClassState, []byte(name)); err != nil {
		return fmt.Errorf("store node name: %w", err)
	}
	return nil
}

// LoadKeys reads the node's keys and name from v.
func LoadKeys(v *vault.Vault) (Keys, string, error) {
	var k Keys
	id, _, err := v.Get(ItemIdentityKey)
	if err != nil {
		return k, "", fmt.Errorf("read identity key (run 'gridnet keygen' first): %w", err)
	}
	if len(id) != ed25519.PrivateKeySize {
		return k, "", fmt.Errorf("identity key in vault has %d bytes, want %d", len(id), ed25519.PrivateKeySize)
	}
	k.Identity = ed25519.PrivateKey(id)
	wg, _, err := v.Get(ItemWireGuardKey)
	if err != nil {
		return k, "", fmt.Errorf("read WireGuard key: %w", err)
	}
	if len(wg) != 32 {
		return k, "", fmt.Errorf("WireGuard key in vault has %d bytes, want 32", len(wg))
	}
	copy(k.WireGuard[:], wg)
	name, _, err := v.Get(ItemNodeName)
	if err != nil {
		return k, "", fmt.Errorf("read node name: %w", err)
	}
	return k, string(name), nil
}

// OpenVault opens the vault at path with key; log gets the vault's notices
// (the upgrade of a format 1 vault). A vault whose items differ from its
// manifest is refused with a pointer to 'gridnet vault check'. The vault
// package's errors name the vault and what failed ("vault: open PATH:
// ..."), so they are returned as they are.
func OpenVault(path string, key vault.Key, log *slog.Logger) (*vault.Vault, error) {
	v, err := vault.Open(path, key, &vault.Options{Logger: log})
	if errors.Is(err, vault.ErrIntegrity) {
		return nil, fmt.Errorf("%w\nThe vault was changed outside gridnet; 'gridnet vault check --vault %s' lists every problem and docs/VAULT.md explains the repair", err, path)
	}
	return v, err
}

// ReadCRL reads a CRL file; a missing file is no CRL yet (nil, nil).
func ReadCRL(path string) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("CRL: %w", err)
	}
	crl, err := cert.ParseCRLPEM(b)
	if err != nil {
		return nil, fmt.Errorf("CRL %s: %w", path, err)
	}
	return crl, nil
}

// ReadFileOrItem reads the file at path, or, when path is "", the vault
// item that item reads.
func ReadFileOrItem(path string, item func() ([]byte, error)) ([]byte, error) {
	if path != "" {
		return os.ReadFile(path)
	}
	return item()
}
