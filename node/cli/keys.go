package cli

import (
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/vault"
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
	return identity.OpenVault(path, key, stderrLogger(env))
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
	return identity.OpenVault(path, key, stderrLogger(env))
}

// loadCA reads a CA key from its vault and checks it against the CA
// certificate file.
func loadCA(v *vault.Vault, caCertPath string) (*cert.CA, error) {
	keyBytes, _, err := v.Get(identity.ItemCAKey)
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
