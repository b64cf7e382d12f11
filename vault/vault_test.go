package vault

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var testPass = []byte("correct horse battery staple")

// newVault creates a vault with cheap KDF parameters in a fresh directory.
func newVault(t *testing.T, key Key) (*Vault, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vault.db")
	v, err := Create(path, key, InsecureTestOptions())
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	return v, path
}

func mustRawKey(t testing.TB, b byte) Key {
	t.Helper()
	k, err := RawKey(bytes.Repeat([]byte{b}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// editBolt modifies a closed vault file directly with bbolt.
func editBolt(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatalf("bolt update: %v", err)
	}
}

func reopen(t *testing.T, path string, key Key) *Vault {
	t.Helper()
	v, err := Open(path, key, InsecureTestOptions())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func TestRoundTrip(t *testing.T) {
	v, path := newVault(t, PassphraseKey(testPass))
	items := []struct {
		name  string
		class Class
		value []byte
	}{
		{"node.key", ClassKey, []byte("private key bytes")},
		{"ca.key", ClassKey, bytes.Repeat([]byte{0xAB}, 5000)},
		{"node.crt", ClassCert, []byte("-----BEGIN CERTIFICATE-----")},
		{"peers", ClassState, []byte{}},
		{"notes/todo.txt", ClassUser, []byte("buy milk")},
		{"unicodé ✓", ClassUser, bytes.Repeat([]byte("x"), 70000)},
	}
	for _, it := range items {
		if err := v.Put(it.name, it.class, it.value); err != nil {
			t.Fatalf("Put(%q): %v", it.name, err)
		}
	}
	check := func(v *Vault) {
		t.Helper()
		for _, it := range items {
			got, class, err := v.Get(it.name)
			if err != nil || class != it.class || !bytes.Equal(got, it.value) {
				t.Errorf("Get(%q) = %d bytes, %q, %v; want %d bytes, %q", it.name, len(got), class, err, len(it.value), it.class)
			}
		}
		list, err := v.List()
		if err != nil || len(list) != len(items) {
			t.Fatalf("List = %v, %v", list, err)
		}
		for i := 1; i < len(list); i++ {
			if list[i-1].Name >= list[i].Name {
				t.Errorf("List not sorted: %q >= %q", list[i-1].Name, list[i].Name)
			}
		}
		for _, info := range list {
			i := slices.IndexFunc(items, func(x struct {
				name  string
				class Class
				value []byte
			}) bool {
				return x.name == info.Name
			})
			if i < 0 || info.Class != items[i].class || info.Size != len(items[i].value) || time.Since(info.Modified) > time.Hour {
				t.Errorf("List entry %+v does not match", info)
			}
		}
		for class, want := range map[Class]int{ClassKey: 2, ClassCert: 1, ClassState: 1, ClassUser: 2, "other": 0} {
			l, err := v.ListClass(class)
			if err != nil || len(l) != want {
				t.Errorf("ListClass(%q) = %d items, %v; want %d", class, len(l), err, want)
			}
			for _, info := range l {
				if info.Class != class {
					t.Errorf("ListClass(%q) returned %+v", class, info)
				}
			}
		}
		if err := v.Check(); err != nil {
			t.Errorf("Check: %v", err)
		}
	}
	check(v)

	// Overwrite changes value and class.
	if err := v.Put("peers", ClassUser, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if got, c, err := v.Get("peers"); err != nil || string(got) != "new" || c != ClassUser {
		t.Fatalf("after overwrite Get = %q %q %v", got, c, err)
	}
	if err := v.Put("peers", ClassState, []byte{}); err != nil {
		t.Fatal(err)
	}

	// Persistence across close and reopen.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, _, err := v.Get("node.key"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close = %v, want ErrClosed", err)
	}
	v2 := reopen(t, path, PassphraseKey(testPass))
	if v2.Path() != path {
		t.Errorf("Path = %q", v2.Path())
	}
	check(v2)

	// Delete.
	if err := v2.Delete("node.key"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v2.Get("node.key"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get deleted = %v, want ErrNotFound", err)
	}
	if err := v2.Delete("node.key"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete missing = %v, want ErrNotFound", err)
	}
	if l, _ := v2.List(); len(l) != len(items)-1 {
		t.Fatalf("List after delete has %d items", len(l))
	}
}

func TestCreateExistsAndOpenMissing(t *testing.T) {
	_, path := newVault(t, PassphraseKey(testPass))
	if _, err := Create(path, PassphraseKey(testPass), InsecureTestOptions()); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over existing = %v, want ErrExists", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "nope.db"), PassphraseKey(testPass), InsecureTestOptions()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open missing = %v, want ErrNotFound", err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("vault mode = %v, %v; want 0600", st.Mode(), err)
	}
}

func TestInvalidInput(t *testing.T) {
	v, _ := newVault(t, PassphraseKey(testPass))
	tests := []struct {
		name  string
		class Class
		size  int
	}{
		{"", ClassKey, 1},
		{strings.Repeat("a", MaxNameLen+1), ClassKey, 1},
		{"nul\x00name", ClassKey, 1},
		{"tab\tname", ClassKey, 1},
		{"bad\xffutf8", ClassKey, 1},
		{"ok", "", 1},
		{"ok", "UPPER", 1},
		{"ok", Class(strings.Repeat("c", maxClassLen+1)), 1},
		{"ok", ClassUser, MaxValueSize + 1},
	}
	for _, tt := range tests {
		if err := v.Put(tt.name, tt.class, make([]byte, tt.size)); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Put(%q, %q, %d bytes) = %v, want ErrInvalidName", tt.name, tt.class, tt.size, err)
		}
	}
	if err := v.Put(strings.Repeat("a", MaxNameLen), ClassUser, nil); err != nil {
		t.Errorf("Put with max-length name: %v", err)
	}
	for _, k := range []Key{{}, PassphraseKey(nil)} {
		if _, err := Create(filepath.Join(t.TempDir(), "v"), k, InsecureTestOptions()); !errors.Is(err, ErrWrongKey) {
			t.Errorf("Create with %v = %v, want ErrWrongKey", k, err)
		}
	}
	if _, err := RawKey(make([]byte, 31)); err == nil {
		t.Error("RawKey accepted 31 bytes")
	}
}

func TestWrongKey(t *testing.T) {
	kf := filepath.Join(t.TempDir(), "key")
	if err := GenerateKeyFile(kf); err != nil {
		t.Fatal(err)
	}
	fileKey, err := ReadKeyFile(kf)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other")
	if err := GenerateKeyFile(other); err != nil {
		t.Fatal(err)
	}
	otherKey, _ := ReadKeyFile(other)
	tests := []struct {
		name      string
		create    Key
		open      Key
		wantError error
	}{
		{"wrong passphrase", PassphraseKey(testPass), PassphraseKey([]byte("Correct horse battery staple")), ErrWrongKey},
		{"wrong key file", fileKey, otherKey, ErrWrongKey},
		{"key file for passphrase vault", PassphraseKey(testPass), fileKey, ErrWrongKey},
		{"passphrase for key-file vault", fileKey, PassphraseKey(testPass), ErrWrongKey},
		{"right passphrase", PassphraseKey(testPass), PassphraseKey(testPass), nil},
		{"right key file", fileKey, fileKey, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, path := newVault(t, tt.create)
			if err := v.Put("x", ClassKey, []byte("y")); err != nil {
				t.Fatal(err)
			}
			v.Close()
			v2, err := Open(path, tt.open, InsecureTestOptions())
			if !errors.Is(err, tt.wantError) || (tt.wantError == nil) != (err == nil) {
				t.Fatalf("Open = %v, want %v", err, tt.wantError)
			}
			if v2 != nil {
				v2.Close()
			}
		})
	}
}

func TestRekey(t *testing.T) {
	kf := filepath.Join(t.TempDir(), "key")
	if err := GenerateKeyFile(kf); err != nil {
		t.Fatal(err)
	}
	fileKey, err := ReadKeyFile(kf)
	if err != nil {
		t.Fatal(err)
	}
	pass1, pass2 := PassphraseKey(testPass), PassphraseKey([]byte("second passphrase"))
	v, path := newVault(t, pass1)
	for i := range 20 {
		if err := v.Put(fmt.Sprintf("item%d", i), ClassState, []byte(fmt.Sprint("value", i))); err != nil {
			t.Fatal(err)
		}
	}
	v.Close()
	steps := []struct {
		name     string
		from, to Key
	}{
		{"passphrase to key file", pass1, fileKey},
		{"key file to passphrase", fileKey, pass2},
		{"passphrase to passphrase", pass2, pass1},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			v, err := Open(path, s.from, InsecureTestOptions())
			if err != nil {
				t.Fatalf("Open with current key: %v", err)
			}
			if err := v.Rekey(s.to, InsecureTestOptions()); err != nil {
				t.Fatalf("Rekey: %v", err)
			}
			// The open vault keeps working.
			if got, _, err := v.Get("item3"); err != nil || string(got) != "value3" {
				t.Fatalf("Get after Rekey = %q, %v", got, err)
			}
			v.Close()
			if _, err := Open(path, s.from, InsecureTestOptions()); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("old key after Rekey: Open = %v, want ErrWrongKey", err)
			}
			v2, err := Open(path, s.to, InsecureTestOptions())
			if err != nil {
				t.Fatalf("new key after Rekey: %v", err)
			}
			defer v2.Close()
			for i := range 20 {
				if got, _, err := v2.Get(fmt.Sprintf("item%d", i)); err != nil || string(got) != fmt.Sprint("value", i) {
					t.Fatalf("item%d after Rekey = %q, %v", i, got, err)
				}
			}
		})
	}
	// Rekey refuses weak parameters without the test switch.
	v2 := reopen(t, path, pass1)
	if err := v2.Rekey(pass2, &Options{KDF: InsecureTestKDFParams()}); !errors.Is(err, ErrKDFParams) {
		t.Fatalf("Rekey with weak params = %v, want ErrKDFParams", err)
	}
}

// TestNoPlaintextOnDisk stores recognisable secrets and scans every file
// in the vault's directory for them, in several encodings.
func TestNoPlaintextOnDisk(t *testing.T) {
	secret := []byte("GRIDNET-TOP-SECRET-MARKER-7f3a9c")
	big := bytes.Repeat(secret, 40000) // > 1 MiB, overflow pages
	v, path := newVault(t, PassphraseKey(testPass))
	if err := v.Put("marker", ClassKey, secret); err != nil {
		t.Fatal(err)
	}
	if err := v.Put("big", ClassUser, big); err != nil {
		t.Fatal(err)
	}
	v.Put("marker", ClassKey, append([]byte("v2-"), secret...))
	v.Delete("big")
	scan := func() {
		entries, err := os.ReadDir(filepath.Dir(path))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Name() != filepath.Base(path) {
				t.Errorf("unexpected file %s next to the vault", e.Name())
			}
			data, err := os.ReadFile(filepath.Join(filepath.Dir(path), e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			for _, needle := range [][]byte{secret, secret[:16], []byte(fmt.Sprintf("%x", secret[:12])), testPass} {
				if bytes.Contains(data, needle) {
					t.Errorf("%s contains %q in clear", e.Name(), needle)
				}
			}
		}
	}
	scan() // while open
	v.Close()
	scan()
}

func TestDoubleOpenInProcess(t *testing.T) {
	_, path := newVault(t, PassphraseKey(testPass))
	_, err := Open(path, PassphraseKey(testPass), &Options{InsecureWeakKDF: true, LockTimeout: -1})
	var le *LockError
	if !errors.Is(err, ErrLocked) || !errors.As(err, &le) {
		t.Fatalf("second Open = %v, want *LockError", err)
	}
	if le.PID != os.Getpid() || !le.Self || !strings.Contains(err.Error(), fmt.Sprint(os.Getpid())) {
		t.Fatalf("LockError = %+v (%v), want this process %d", le, err, os.Getpid())
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	v, path := newVault(t, PassphraseKey(testPass))
	v.Put("a", ClassKey, []byte("b"))
	v.Get("a")
	v.List()
	v.Check() // bbolt's Check runs a goroutine
	v.Close()
	v2 := reopen(t, path, PassphraseKey(testPass))
	v2.Close()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestKeyDoesNotPrintSecret(t *testing.T) {
	k := PassphraseKey([]byte("hunter2"))
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, k)} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "104 117") {
			t.Fatalf("formatted key leaks secret: %s", s)
		}
	}
	k.Destroy()
	if !bytes.Equal(k.secret, make([]byte, 7)) {
		t.Fatal("Destroy did not zero the secret")
	}
}

func TestFindFlockHolder(t *testing.T) {
	locks := "1: POSIX  ADVISORY  WRITE 100 00:27:5 0 EOF\n" +
		"2: FLOCK  ADVISORY  WRITE 200 fd:01:5 0 EOF\n" +
		"3: -> FLOCK  ADVISORY  WRITE 300 00:27:5 0 EOF\n" +
		"4: FLOCK  ADVISORY  WRITE 400 00:27:5 0 EOF\n" +
		"5: FLOCK  ADVISORY  WRITE 500 00:28:9 0 EOF\n"
	tests := []struct {
		ino, maj, min uint64
		want          int
	}{
		{5, 0, 0x27, 400}, // exact device
		{9, 1, 1, 500},    // inode only, unambiguous
		{5, 9, 9, 0},      // inode only, ambiguous (200, 400)
		{7, 0, 0x27, 0},   // nobody
	}
	for _, tt := range tests {
		if got := findFlockHolder(locks, tt.ino, tt.maj, tt.min); got != tt.want {
			t.Errorf("findFlockHolder(ino %d, %x:%x) = %d, want %d", tt.ino, tt.maj, tt.min, got, tt.want)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	v, _ := newVault(t, PassphraseKey(testPass))
	done := make(chan error)
	for g := range 4 {
		go func() {
			var err error
			for i := 0; i < 25 && err == nil; i++ {
				name := fmt.Sprintf("g%d-%d", g, i)
				if err = v.Put(name, ClassState, []byte(name)); err != nil {
					break
				}
				var got []byte
				if got, _, err = v.Get(name); err == nil && string(got) != name {
					err = fmt.Errorf("Get(%q) = %q", name, got)
				}
				if err == nil {
					_, err = v.List()
				}
			}
			done <- err
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if l, err := v.List(); err != nil || len(l) != 100 {
		t.Fatalf("List = %d items, %v", len(l), err)
	}
}
