package control

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestControlSocketRefusesToReplaceAFile: a mistyped socket path must not
// delete what is there.
func TestControlSocketRefusesToReplaceAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "important")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ln, err := Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		if ln != nil {
			ln.Close()
		}
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, []byte("keep me")) {
		t.Fatal("the file was touched")
	}
}

// TestControlSocketDirectoryChecked: a control socket directory that
// other users may write to without the sticky bit is refused (they could
// replace the socket); one with the sticky bit, as /tmp, and one only this
// user writes are accepted.
func TestControlSocketDirectoryChecked(t *testing.T) {
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o700, true},
		{0o755, true},
		{0o777 | os.ModeSticky, true},
		{0o777, false},
		{0o770, false},
	} {
		dir := filepath.Join(t.TempDir(), "run")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, tc.mode); err != nil {
			t.Fatal(err)
		}
		ln, err := Listen(filepath.Join(dir, "gridnet.sock"))
		if ln != nil {
			ln.Close()
		}
		if (err == nil) != tc.ok {
			t.Errorf("directory mode %v: err %v, want accepted %v", tc.mode, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "replace the socket") {
			t.Errorf("directory mode %v: error %q does not say why", tc.mode, err)
		}
	}
}
