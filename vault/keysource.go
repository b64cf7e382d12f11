package vault

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/term"
)

// Key sources.
const (
	// PassphraseEnv is the environment variable holding a vault passphrase
	// for non-interactive use. Prefer a key file or a systemd credential:
	// the environment of a process can be read by its owner and root.
	PassphraseEnv = "GRIDNET_VAULT_PASSPHRASE"
	// CredentialsDirEnv is set by systemd (LoadCredential=) to the
	// directory holding the service's credentials.
	CredentialsDirEnv = "CREDENTIALS_DIRECTORY"
	// CredentialName is the systemd credential read as a key file:
	// LoadCredential=gridnet-vault-key:/etc/gridnet/vault.key
	CredentialName = "gridnet-vault-key"
	// maxKeyFileSize bounds what ReadKeyFile reads: the longest accepted
	// encoding (64 hex digits, CRLF) is far below it.
	maxKeyFileSize = 1024
	// keyFileOtherPerms are permission bits that make ReadKeyFile refuse a
	// key file: anything for "other" users.
	keyFileOtherPerms = 0o007
)

// ReadKeyFile reads a raw key from path. The file holds the 32 key bytes
// either raw (exactly 32 bytes) or as standard/URL base64 (padded or not)
// or hex text, optionally followed by a newline (LF or CRLF). A file
// readable, writable or executable by "other" users is refused (wrapping
// ErrKeyFile) with a message telling how to fix it; group access is
// allowed so a service group can share a key. Errors wrap ErrKeyFile, or
// ErrNotFound when the file does not exist.
func ReadKeyFile(path string) (Key, error) {
	k, err := readKeyFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("vault: %w", err)
	}
	return k, nil
}

// readKeyFile is ReadKeyFile without the package prefix on its errors, for
// callers in this package that add their own context.
func readKeyFile(path string) (Key, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Key{}, fmt.Errorf("key file %s: %w", path, ErrNotFound)
		}
		return Key{}, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Key{}, fmt.Errorf("key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return Key{}, fmt.Errorf("key file %s is not a regular file: %w", path, ErrKeyFile)
	}
	if perm := st.Mode().Perm(); perm&keyFileOtherPerms != 0 {
		return Key{}, fmt.Errorf("key file %s has mode %04o, accessible to other users; run chmod 600 %s: %w", path, perm, path, ErrKeyFile)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	defer clear(data)
	raw, err := decodeKeyText(data)
	if err != nil {
		return Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	defer clear(raw)
	if len(raw) != KeySize {
		return Key{}, fmt.Errorf("key file %s: raw key must be %d bytes, got %d: %w", path, KeySize, len(raw), ErrKeyFile)
	}
	return Key{kind: kindRaw, secret: append([]byte(nil), raw...)}, nil
}

// decodeKeyText decodes key-file contents into KeySize bytes.
func decodeKeyText(data []byte) ([]byte, error) {
	if len(data) == KeySize {
		return bytes.Clone(data), nil
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("%w: file larger than %d bytes", ErrKeyFile, maxKeyFileSize)
	}
	text := bytes.TrimSuffix(bytes.TrimSuffix(data, []byte("\n")), []byte("\r"))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if enc.DecodedLen(len(text)) < KeySize || len(text) != enc.EncodedLen(KeySize) {
			continue
		}
		// Decode may write up to DecodedLen bytes (33 for 44 characters
		// of padded base64 without the padding): a KeySize buffer would
		// overflow and panic.
		out := make([]byte, enc.DecodedLen(len(text)))
		if n, err := enc.Decode(out, text); err == nil && n == KeySize {
			return out[:KeySize], nil
		}
		clear(out)
	}
	if len(text) == hex.EncodedLen(KeySize) {
		out := make([]byte, KeySize)
		if _, err := hex.Decode(out, text); err == nil {
			return out, nil
		}
		clear(out)
	}
	return nil, fmt.Errorf("%w: want %d raw bytes, or their base64 or hex encoding", ErrKeyFile, KeySize)
}

// GenerateKeyFile writes KeySize fresh random bytes, base64 encoded with a
// trailing newline, to a new file at path with mode 0600 (fsynced). It
// refuses to overwrite an existing file (ErrExists).
func GenerateKeyFile(path string) error {
	raw := make([]byte, KeySize)
	defer clear(raw)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("vault: generating key: %w", err)
	}
	text := make([]byte, base64.StdEncoding.EncodedLen(KeySize), base64.StdEncoding.EncodedLen(KeySize)+1)
	defer clear(text)
	base64.StdEncoding.Encode(text, raw)
	text = append(text, '\n')
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, fileMode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("vault: key file %s: %w", path, ErrExists)
		}
		return fmt.Errorf("vault: key file: %w", err)
	}
	err = f.Chmod(fileMode)
	if err == nil {
		_, err = f.Write(text)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("vault: writing key file %s: %w", path, err)
	}
	return nil
}

// KeySource finds the key for a vault without global state: the
// environment and the terminal are injected. Keys are never taken from the
// command line (they would show in ps and shell history).
type KeySource struct {
	// Vault is the path of the vault the key is for; Resolve's errors name
	// it ("vault: key for PATH: ..."). Optional.
	Vault string
	// KeyFile is a key file path given explicitly (e.g. by a flag); "" if none.
	KeyFile string
	// LookupEnv looks up environment variables (os.LookupEnv in production).
	LookupEnv func(string) (string, bool)
	// Prompt asks the user for a passphrase without echo (see
	// TerminalPrompt); nil disables prompting.
	Prompt func(prompt string) ([]byte, error)
	// IsTerminal says whether prompting is possible (stdin is a terminal).
	IsTerminal bool
}

// Resolve returns the key and a description of its origin, trying in order:
//  1. s.KeyFile, if set (an error reading it is returned, not skipped);
//  2. the GRIDNET_VAULT_PASSPHRASE environment variable, if non-empty;
//  3. $CREDENTIALS_DIRECTORY/gridnet-vault-key (a systemd credential,
//     read as a key file), if that file exists;
//  4. an interactive prompt, if s.IsTerminal and s.Prompt is set; with
//     confirm (creating a vault or setting a new passphrase) the passphrase
//     is asked twice and must match.
//
// Without any of them it returns an error wrapping ErrNoKeySource that
// names the options.
func (s KeySource) Resolve(confirm bool) (Key, string, error) {
	k, origin, err := s.resolve(confirm)
	if err != nil {
		if s.Vault != "" {
			return Key{}, "", fmt.Errorf("vault: key for %s: %w", s.Vault, err)
		}
		return Key{}, "", fmt.Errorf("vault: %w", err)
	}
	return k, origin, nil
}

// resolve is Resolve without the package prefix on its errors.
func (s KeySource) resolve(confirm bool) (Key, string, error) {
	lookup := s.LookupEnv
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	if s.KeyFile != "" {
		k, err := readKeyFile(s.KeyFile)
		if err != nil {
			return Key{}, "", err
		}
		return k, "key file " + s.KeyFile, nil
	}
	if p, ok := lookup(PassphraseEnv); ok && p != "" {
		return PassphraseKey([]byte(p)), "environment variable " + PassphraseEnv, nil
	}
	if dir, ok := lookup(CredentialsDirEnv); ok && dir != "" {
		path := filepath.Join(dir, CredentialName)
		k, err := readKeyFile(path)
		switch {
		case err == nil:
			return k, "systemd credential " + path, nil
		case !errors.Is(err, ErrNotFound):
			return Key{}, "", err
		}
	}
	if s.IsTerminal && s.Prompt != nil {
		k, err := s.prompt(confirm)
		if err != nil {
			return Key{}, "", err
		}
		return k, "interactive prompt", nil
	}
	return Key{}, "", fmt.Errorf("%w: give a key file, set %s, or provide the systemd credential %s (or run on a terminal to be prompted)",
		ErrNoKeySource, PassphraseEnv, CredentialName)
}

// prompt asks for a passphrase, twice when confirm is set.
func (s KeySource) prompt(confirm bool) (Key, error) {
	p, err := s.Prompt("Vault passphrase: ")
	if err != nil {
		return Key{}, fmt.Errorf("reading passphrase: %w", err)
	}
	defer clear(p)
	if len(p) == 0 {
		return Key{}, fmt.Errorf("empty passphrase: %w", ErrNoKeySource)
	}
	if confirm {
		again, err := s.Prompt("Repeat passphrase: ")
		if err != nil {
			return Key{}, fmt.Errorf("reading passphrase: %w", err)
		}
		defer clear(again)
		if !bytes.Equal(p, again) {
			return Key{}, errors.New("passphrases do not match")
		}
	}
	return PassphraseKey(p), nil
}

// TerminalPrompt returns a KeySource.Prompt that writes the prompt to out
// and reads a line from the terminal in without echo.
func TerminalPrompt(in *os.File, out io.Writer) func(prompt string) ([]byte, error) {
	return func(prompt string) ([]byte, error) {
		if _, err := io.WriteString(out, prompt); err != nil {
			return nil, err
		}
		p, err := term.ReadPassword(int(in.Fd()))
		_, _ = io.WriteString(out, "\n")
		return p, err
	}
}

// IsTerminal reports whether f is a terminal, for KeySource.IsTerminal.
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
