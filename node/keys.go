package node

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"flag"
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
	// itemCAKey is the CA's Ed25519 private key (CA vault).
	itemCAKey = "gridnet/ca.key"
	// itemCACert is the CA's own certificate (CA vault) or the trusted CA
	// bundle (node vault), PEM.
	itemCACert = "gridnet/ca.crt"
	// itemIdentityKey is the node's Ed25519 identity private key.
	itemIdentityKey = "gridnet/identity.key"
	// itemWireGuardKey is the node's X25519 WireGuard private key.
	itemWireGuardKey = "gridnet/wireguard.key"
	// itemNodeName is the node name chosen at keygen.
	itemNodeName = "gridnet/node.name"
	// itemNodeCert is the node's certificate, PEM.
	itemNodeCert = "gridnet/node.crt"
)

// vaultKeyFlags are the flags that say where one vault's key comes from.
type vaultKeyFlags struct {
	keyFile string
}

func (v *vaultKeyFlags) register(fs *flag.FlagSet, prefix, what string) {
	fs.StringVar(&v.keyFile, prefix+"vault-key-file", "", "file with the 32-byte key of "+what+" (else $GRIDNET_VAULT_PASSPHRASE, $CREDENTIALS_DIRECTORY/gridnet-vault-key or a prompt)")
}

// keySource builds the source of the key for the vault at path from these
// flags in env.
func (v *vaultKeyFlags) keySource(path string, env Env) vault.KeySource {
	return vault.KeySource{
		Vault:      path,
		KeyFile:    v.keyFile,
		LookupEnv:  env.LookupEnv,
		Prompt:     env.Prompt,
		IsTerminal: env.StdinIsTerminal,
	}
}

// openVault opens an existing vault. The vault package's errors name the
// vault and what failed ("vault: open PATH: ...", "vault: key for PATH:
// ..."), so they are returned as they are.
func openVault(path string, keys vaultKeyFlags, env Env) (*vault.Vault, error) {
	if path == "" {
		return nil, usageError("--vault is required")
	}
	key, _, err := keys.keySource(path, env).Resolve(false)
	if err != nil {
		return nil, err
	}
	return openWithKey(path, key, env)
}

// openWithKey opens the vault at path with key. The upgrade of a format 1
// vault is logged to stderr; a vault whose items differ from its manifest
// is refused with a pointer to 'gridnet vault check'.
func openWithKey(path string, key vault.Key, env Env) (*vault.Vault, error) {
	v, err := vault.Open(path, key, &vault.Options{Logger: stderrLogger(env)})
	if errors.Is(err, vault.ErrIntegrity) {
		return nil, fmt.Errorf("%w\nThe vault was changed outside gridnet; 'gridnet vault check --vault %s' lists every problem and docs/VAULT.md explains the repair", err, path)
	}
	return v, err
}

// stderrLogger logs to env.Stderr in slog's text format (nowhere without
// one).
func stderrLogger(env Env) *slog.Logger {
	if env.Stderr == nil {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(env.Stderr, nil))
}

// openOrCreateVault opens the vault at path, creating it if it does not exist.
func openOrCreateVault(path string, keys vaultKeyFlags, env Env) (*vault.Vault, error) {
	if path == "" {
		return nil, usageError("a vault path is required")
	}
	_, statErr := os.Stat(path)
	create := errors.Is(statErr, os.ErrNotExist)
	key, _, err := keys.keySource(path, env).Resolve(create)
	if err != nil {
		return nil, err
	}
	if create {
		return vault.Create(path, key, nil)
	}
	return openWithKey(path, key, env)
}

// nodeKeys are a node's two private keys.
type nodeKeys struct {
	identity  ed25519.PrivateKey
	wireGuard [32]byte
}

// wireGuardPublic derives the X25519 public key.
func (k nodeKeys) wireGuardPublic() ([32]byte, error) {
	var pub [32]byte
	out, err := curve25519.X25519(k.wireGuard[:], curve25519.Basepoint)
	if err != nil {
		return pub, fmt.Errorf("derive WireGuard public key: %w", err)
	}
	copy(pub[:], out)
	return pub, nil
}

// generateNodeKeys makes a fresh identity key and WireGuard key.
func generateNodeKeys() (nodeKeys, error) {
	var k nodeKeys
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return k, fmt.Errorf("generate identity key: %w", err)
	}
	k.identity = priv
	if _, err := rand.Read(k.wireGuard[:]); err != nil {
		return k, fmt.Errorf("generate WireGuard key: %w", err)
	}
	// Clamp as X25519 and WireGuard do.
	k.wireGuard[0] &= 248
	k.wireGuard[31] = (k.wireGuard[31] & 127) | 64
	return k, nil
}

// storeNodeKeys writes the node's keys and name into v. It refuses to
// overwrite keys a vault already holds: losing them loses the identity.
func storeNodeKeys(v *vault.Vault, name string, k nodeKeys) error {
	if _, _, err := v.Get(itemIdentityKey); err == nil {
		return fmt.Errorf("vault %s already holds node keys; use a new vault", v.Path())
	} else if !errors.Is(err, vault.ErrNotFound) {
		return fmt.Errorf("check existing keys: %w", err)
	}
	if err := v.Put(itemIdentityKey, vault.ClassKey, k.identity); err != nil {
		return fmt.Errorf("store identity key: %w", err)
	}
	if err := v.Put(itemWireGuardKey, vault.ClassKey, k.wireGuard[:]); err != nil {
		return fmt.Errorf("store WireGuard key: %w", err)
	}
	if err := v.Put(itemNodeName, vault.ClassState, []byte(name)); err != nil {
		return fmt.Errorf("store node name: %w", err)
	}
	return nil
}

// loadNodeKeys reads the node's keys from v.
func loadNodeKeys(v *vault.Vault) (nodeKeys, string, error) {
	var k nodeKeys
	id, _, err := v.Get(itemIdentityKey)
	if err != nil {
		return k, "", fmt.Errorf("read identity key (run 'gridnet keygen' first): %w", err)
	}
	if len(id) != ed25519.PrivateKeySize {
		return k, "", fmt.Errorf("identity key in vault has %d bytes, want %d", len(id), ed25519.PrivateKeySize)
	}
	k.identity = ed25519.PrivateKey(id)
	wg, _, err := v.Get(itemWireGuardKey)
	if err != nil {
		return k, "", fmt.Errorf("read WireGuard key: %w", err)
	}
	if len(wg) != 32 {
		return k, "", fmt.Errorf("WireGuard key in vault has %d bytes, want 32", len(wg))
	}
	copy(k.wireGuard[:], wg)
	name, _, err := v.Get(itemNodeName)
	if err != nil {
		return k, "", fmt.Errorf("read node name: %w", err)
	}
	return k, string(name), nil
}

// loadCA reads a CA key from its vault and checks it against the CA
// certificate file.
func loadCA(v *vault.Vault, caCertPath string) (*cert.CA, error) {
	keyBytes, _, err := v.Get(itemCAKey)
	if err != nil {
		return nil, fmt.Errorf("read CA key from %s: %w", v.Path(), err)
	}
	if len(keyBytes) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("CA key in vault has %d bytes, want %d", len(keyBytes), ed25519.PrivateKeySize)
	}
	pemBytes, err := os.ReadFile(caCertPath)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	ca, err := cert.LoadCA(pemBytes, ed25519.PrivateKey(keyBytes))
	if err != nil {
		return nil, fmt.Errorf("load CA %s: %w", caCertPath, err)
	}
	return ca, nil
}

// readCertFile reads the first certificate of a PEM or DER file.
func readCertFile(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	c, err := cert.ParseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return c, nil
}

// writeFileNew writes data to path with perm, refusing to replace an
// existing file unless force is set. The data goes to a temp file in the
// same directory first so a crash never leaves half a file.
func writeFileNew(path string, data []byte, perm os.FileMode, force bool) error {
	if !force {
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("%s exists (use --force to replace it)", path)
		}
	}
	return writeFileAtomic(path, data, perm)
}
