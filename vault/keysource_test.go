package vault

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadKeyFile(t *testing.T) {
	raw := bytes.Repeat([]byte{0x5a}, KeySize)
	raw[0], raw[31] = '\n', 0xff
	tests := []struct {
		name    string
		content []byte
		mode    os.FileMode
		wantErr error
	}{
		{"raw", raw, 0o600, nil},
		{"base64", []byte(base64.StdEncoding.EncodeToString(raw)), 0o600, nil},
		{"base64 newline", []byte(base64.StdEncoding.EncodeToString(raw) + "\n"), 0o400, nil},
		{"base64 crlf", []byte(base64.StdEncoding.EncodeToString(raw) + "\r\n"), 0o600, nil},
		{"base64 raw url", []byte(base64.RawURLEncoding.EncodeToString(raw) + "\n"), 0o600, nil},
		{"hex newline", []byte(hex.EncodeToString(raw) + "\n"), 0o640, nil},
		{"world readable", []byte(hex.EncodeToString(raw)), 0o644, ErrKeyFile},
		{"world writable", raw, 0o602, ErrKeyFile},
		{"too short", raw[:31], 0o600, ErrKeyFile},
		{"too long raw", append(bytes.Clone(raw), 0), 0o600, ErrKeyFile},
		{"two newlines", []byte(hex.EncodeToString(raw) + "\n\n"), 0o600, ErrKeyFile},
		{"bad hex", []byte(strings.Repeat("zz", KeySize)), 0o600, ErrKeyFile},
		{"short base64", []byte(base64.StdEncoding.EncodeToString(raw[:30])), 0o600, ErrKeyFile},
		{"empty", nil, 0o600, ErrKeyFile},
		{"huge", bytes.Repeat([]byte("a"), 10000), 0o600, ErrKeyFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "key")
			if err := os.WriteFile(p, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tt.mode); err != nil {
				t.Fatal(err)
			}
			k, err := ReadKeyFile(p)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ReadKeyFile = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || k.kind != kindRaw || !bytes.Equal(k.secret, raw) {
				t.Fatalf("ReadKeyFile = %v, %v", k.secret, err)
			}
		})
	}
	if _, err := ReadKeyFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing key file: %v", err)
	}
	if _, err := ReadKeyFile(t.TempDir()); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("directory as key file: %v", err)
	}
}

func TestGenerateKeyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "key")
	if err := GenerateKeyFile(p); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", st.Mode(), err)
	}
	data, _ := os.ReadFile(p)
	if len(data) != 45 || data[44] != '\n' {
		t.Fatalf("key file content %q: want 44 base64 chars and newline", data)
	}
	k1, err := ReadKeyFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := GenerateKeyFile(p); !errors.Is(err, ErrExists) {
		t.Fatalf("overwrite = %v, want ErrExists", err)
	}
	p2 := filepath.Join(t.TempDir(), "key2")
	GenerateKeyFile(p2)
	k2, _ := ReadKeyFile(p2)
	if bytes.Equal(k1.secret, k2.secret) {
		t.Fatal("two generated keys are equal")
	}
}

func TestKeySourceResolve(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "flag.key")
	GenerateKeyFile(keyFile)
	credDir := filepath.Join(dir, "creds")
	os.Mkdir(credDir, 0o700)
	GenerateKeyFile(filepath.Join(credDir, CredentialName))
	emptyCredDir := t.TempDir()
	badCredDir := t.TempDir()
	os.WriteFile(filepath.Join(badCredDir, CredentialName), []byte("short"), 0o600)

	type env map[string]string
	tests := []struct {
		name     string
		keyFile  string
		env      env
		terminal bool
		answers  []string // prompt answers; nil Prompt if nil
		confirm  bool
		wantFrom string // prefix of the description; "" means an error
		wantErr  error
		wantPass string
		prompts  int
	}{
		{name: "key file wins over everything", keyFile: keyFile, env: env{PassphraseEnv: "p", CredentialsDirEnv: credDir}, terminal: true, answers: []string{"x"}, wantFrom: "key file " + keyFile},
		{name: "env before credential", env: env{PassphraseEnv: "envpass", CredentialsDirEnv: credDir}, terminal: true, answers: []string{"x"}, wantFrom: "environment variable", wantPass: "envpass"},
		{name: "empty env ignored", env: env{PassphraseEnv: "", CredentialsDirEnv: credDir}, wantFrom: "systemd credential"},
		{name: "credential before prompt", env: env{CredentialsDirEnv: credDir}, terminal: true, answers: []string{"x"}, wantFrom: "systemd credential " + filepath.Join(credDir, CredentialName)},
		{name: "credential dir without key falls through", env: env{CredentialsDirEnv: emptyCredDir}, terminal: true, answers: []string{"typed"}, wantFrom: "interactive prompt", wantPass: "typed", prompts: 1},
		{name: "bad credential is an error", env: env{CredentialsDirEnv: badCredDir}, terminal: true, answers: []string{"x"}, wantErr: ErrKeyFile},
		{name: "missing key file is an error", keyFile: filepath.Join(dir, "nope"), env: env{PassphraseEnv: "p"}, wantErr: ErrNotFound},
		{name: "prompt", terminal: true, answers: []string{"typed"}, wantFrom: "interactive prompt", wantPass: "typed", prompts: 1},
		{name: "prompt confirm", terminal: true, answers: []string{"typed", "typed"}, confirm: true, wantFrom: "interactive prompt", wantPass: "typed", prompts: 2},
		{name: "prompt confirm mismatch", terminal: true, answers: []string{"typed", "typo"}, confirm: true, prompts: 2},
		{name: "prompt empty", terminal: true, answers: []string{""}, wantErr: ErrNoKeySource, prompts: 1},
		{name: "no terminal", answers: []string{"x"}, wantErr: ErrNoKeySource},
		{name: "terminal without prompt func", terminal: true, wantErr: ErrNoKeySource},
		{name: "nothing", wantErr: ErrNoKeySource},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prompts := 0
			s := KeySource{
				KeyFile:    tt.keyFile,
				IsTerminal: tt.terminal,
				LookupEnv: func(k string) (string, bool) {
					v, ok := tt.env[k]
					return v, ok
				},
			}
			if tt.answers != nil {
				s.Prompt = func(string) ([]byte, error) {
					if prompts >= len(tt.answers) {
						t.Fatal("too many prompts")
					}
					prompts++
					return []byte(tt.answers[prompts-1]), nil
				}
			}
			k, from, err := s.Resolve(tt.confirm)
			if prompts != tt.prompts {
				t.Errorf("prompted %d times, want %d", prompts, tt.prompts)
			}
			if tt.wantFrom == "" {
				if err == nil {
					t.Fatalf("Resolve = %v from %q, want error", k, from)
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resolve error %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || !strings.HasPrefix(from, tt.wantFrom) {
				t.Fatalf("Resolve = %q, %v; want from %q", from, err, tt.wantFrom)
			}
			if tt.wantPass != "" && (!k.IsPassphrase() || string(k.secret) != tt.wantPass) {
				t.Fatalf("key = %v %q, want passphrase %q", k, k.secret, tt.wantPass)
			}
			if tt.wantPass == "" && k.IsPassphrase() {
				t.Fatalf("got a passphrase, want a key file key")
			}
		})
	}
	// The "no source" message names the three ways to provide a key.
	_, _, err := KeySource{}.Resolve(false)
	for _, want := range []string{"key file", PassphraseEnv, CredentialName} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("no-source error %q does not mention %q", err, want)
		}
	}
}

func TestTerminalPromptNotATerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	var out strings.Builder
	if _, err := TerminalPrompt(r, &out)("Vault passphrase: "); err == nil {
		t.Fatal("TerminalPrompt read from a pipe without error")
	}
	if !strings.HasPrefix(out.String(), "Vault passphrase: ") {
		t.Fatalf("prompt output %q", out.String())
	}
	if IsTerminal(r) {
		t.Fatal("IsTerminal(pipe) = true")
	}
}
