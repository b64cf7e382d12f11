package vault

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzReadKeyFile: whatever a key file holds, reading it either gives a
// raw key of KeySize bytes (the file's own bytes when it holds exactly
// that many) or an error that wraps ErrKeyFile and names the file once.
// The seeds in testdata/fuzz/FuzzReadKeyFile are a raw, a base64, a hex
// and a bad key file.
func FuzzReadKeyFile(f *testing.F) {
	f.Add(bytes.Repeat([]byte{7}, KeySize))
	f.Add([]byte("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n"))
	f.Add([]byte(strings.Repeat("07", KeySize) + "\r\n"))
	f.Add([]byte("not a key\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := readKeyFile(path)
		if err != nil {
			if !errors.Is(err, ErrKeyFile) {
				t.Fatalf("error %v does not wrap ErrKeyFile", err)
			}
			if n := strings.Count(err.Error(), path); n != 1 {
				t.Fatalf("error names the file %d times: %v", n, err)
			}
			return
		}
		if k.kind != kindRaw || len(k.secret) != KeySize {
			t.Fatalf("key of kind %v with %d bytes", k.kind, len(k.secret))
		}
		if len(data) == KeySize && !bytes.Equal(k.secret, data) {
			t.Fatal("a 32-byte file is not its own raw key")
		}
	})
}
