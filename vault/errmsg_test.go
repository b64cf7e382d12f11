package vault

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestErrorMessagesSayEachThingOnce: every error names the package and the
// operation once ("vault: open PATH: cause"); inner steps add only what
// is new. The sentinels stay reachable with errors.Is.
func TestErrorMessagesSayEachThingOnce(t *testing.T) {
	dir := t.TempDir()
	right := mustRawKey(t, 1)
	v, path := newVault(t, right)
	v.Close()
	missing := filepath.Join(dir, "missing.db")
	noKeyFile := filepath.Join(dir, "no.key")
	looseKey := filepath.Join(dir, "loose.key")
	if err := GenerateKeyFile(looseKey); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(looseKey, 0o644); err != nil {
		t.Fatal(err)
	}
	open := func(k Key) error {
		v, err := Open(path, k, InsecureTestOptions())
		if err == nil {
			v.Close()
		}
		return err
	}
	resolve := func(s KeySource) error { _, _, err := s.Resolve(false); return err }
	cases := []struct {
		name     string
		err      error
		want     string
		sentinel error
	}{
		{"wrong key", open(mustRawKey(t, 2)), "vault: open " + path + ": wrong vault key or passphrase", ErrWrongKey},
		{"passphrase for a key-file vault", open(PassphraseKey(testPass)),
			"vault: open " + path + ": vault is protected by a key file, but a passphrase was given: wrong vault key or passphrase", ErrWrongKey},
		{"unusable key", open(Key{}), "vault: open " + path + ": no key given: wrong vault key or passphrase", ErrWrongKey},
		{"missing vault", func() error { _, err := Open(missing, right, nil); return err }(),
			"vault: open " + missing + ": not found", ErrNotFound},
		{"missing key file", resolve(KeySource{Vault: path, KeyFile: noKeyFile}),
			"vault: key for " + path + ": key file " + noKeyFile + ": not found", ErrNotFound},
		{"key file readable by others", resolve(KeySource{Vault: path, KeyFile: looseKey}),
			"vault: key for " + path + ": key file " + looseKey + " has mode 0644, accessible to other users; run chmod 600 " + looseKey + ": unusable vault key file", ErrKeyFile},
		{"no key source", resolve(KeySource{Vault: path}),
			"vault: key for " + path + ": no vault key available: give a key file, set GRIDNET_VAULT_PASSPHRASE, or provide the systemd credential gridnet-vault-key (or run on a terminal to be prompted)", ErrNoKeySource},
		{"no key source, no vault named", resolve(KeySource{}),
			"vault: no vault key available: give a key file, set GRIDNET_VAULT_PASSPHRASE, or provide the systemd credential gridnet-vault-key (or run on a terminal to be prompted)", ErrNoKeySource},
		{"ReadKeyFile", func() error { _, err := ReadKeyFile(noKeyFile); return err }(),
			"vault: key file " + noKeyFile + ": not found", ErrNotFound},
	}
	for _, c := range cases {
		if c.err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if c.err.Error() != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, c.err, c.want)
		}
		if !errors.Is(c.err, c.sentinel) {
			t.Errorf("%s: %v does not wrap %v", c.name, c.err, c.sentinel)
		}
	}
}
