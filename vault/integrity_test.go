package vault

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// rawGet returns a copy of the raw value of key in bucket of a closed
// vault file, nil if absent.
func rawGet(t *testing.T, path, bucket, key string) []byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	defer db.Close()
	var out []byte
	db.View(func(tx *bolt.Tx) error {
		out = bytes.Clone(tx.Bucket([]byte(bucket)).Get([]byte(key)))
		return nil
	})
	return out
}

// rawPut stores value under key in bucket of a closed vault file, below
// the vault (as an attacker with write access to the file could).
func rawPut(t *testing.T, path, bucket, key string, value []byte) {
	t.Helper()
	editBolt(t, path, func(tx *bolt.Tx) error { return tx.Bucket([]byte(bucket)).Put([]byte(key), value) })
}

// rawDelete deletes key from bucket of a closed vault file.
func rawDelete(t *testing.T, path, bucket, key string) {
	t.Helper()
	editBolt(t, path, func(tx *bolt.Tx) error { return tx.Bucket([]byte(bucket)).Delete([]byte(key)) })
}

// integrityProblems returns the *IntegrityError values inside err.
func integrityProblems(err error) []*IntegrityError {
	var out []*IntegrityError
	var walk func(error)
	walk = func(e error) {
		if ie, ok := e.(*IntegrityError); ok {
			out = append(out, ie)
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			if x := u.Unwrap(); x != nil {
				walk(x)
			}
		}
	}
	walk(err)
	return out
}

// openAllowing opens path with AllowIntegrityErrors.
func openAllowing(t *testing.T, path string, key Key) *Vault {
	t.Helper()
	opts := InsecureTestOptions()
	opts.AllowIntegrityErrors = true
	v, err := Open(path, key, opts)
	if err != nil {
		t.Fatalf("Open with AllowIntegrityErrors: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// TestRollbackOfOneItem puts an older sealed copy of one item back with
// raw bbolt access: Open refuses the vault naming the item and both
// versions, Get refuses the item, the other items still read, and Check
// reports it.
func TestRollbackOfOneItem(t *testing.T) {
	key := PassphraseKey(testPass)
	v, path := newVault(t, key)
	mustPut(t, v, "gridnet/ca.key", ClassKey, "old CA key") // generation 1
	mustPut(t, v, "other", ClassUser, "untouched")          // 2
	v.Close()
	old := rawGet(t, path, itemsBucketName, "gridnet/ca.key")
	v = reopen(t, path, key)
	mustPut(t, v, "gridnet/ca.key", ClassKey, "new CA key") // 3
	v.Close()

	rawPut(t, path, itemsBucketName, "gridnet/ca.key", old)
	_, err := Open(path, key, InsecureTestOptions())
	want := "vault: open " + path + `: item "gridnet/ca.key" is version 1, the manifest says 3`
	if err == nil || err.Error() != want || !errors.Is(err, ErrIntegrity) {
		t.Fatalf("Open after rollback = %v\nwant %q wrapping ErrIntegrity", err, want)
	}
	ps := integrityProblems(err)
	if len(ps) != 1 || *ps[0] != (IntegrityError{Item: "gridnet/ca.key", Problem: ProblemVersion, Version: 1, Manifest: 3}) {
		t.Fatalf("problems = %+v", ps)
	}

	v2 := openAllowing(t, path, key)
	got, _, err := v2.Get("gridnet/ca.key")
	if want := `vault: get: item "gridnet/ca.key" is version 1, the manifest says 3`; !errors.Is(err, ErrIntegrity) || got != nil || err.Error() != want {
		t.Fatalf("Get of the rolled-back item = %q, %v; want %q", got, err, want)
	}
	if got, _, err := v2.Get("other"); err != nil || string(got) != "untouched" {
		t.Fatalf("Get(other) = %q, %v", got, err)
	}
	if err := v2.Check(); !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), `item "gridnet/ca.key" is version 1, the manifest says 3`) {
		t.Fatalf("Check = %v", err)
	}
}

func mustPut(t *testing.T, v *Vault, name string, class Class, value string) {
	t.Helper()
	if err := v.Put(name, class, []byte(value)); err != nil {
		t.Fatalf("Put(%q): %v", name, err)
	}
}

// TestDeletedItem deletes a record below the vault: Open says the item is
// missing, and Get reports ErrIntegrity, not ErrNotFound (a caller must
// not take a deleted key for one never stored and make a new one).
func TestDeletedItem(t *testing.T) {
	key := mustRawKey(t, 3)
	v, path := newVault(t, key)
	mustPut(t, v, "gridnet/identity.key", ClassKey, "identity")
	mustPut(t, v, "gridnet/node.crt", ClassCert, "cert")
	v.Close()
	rawDelete(t, path, itemsBucketName, "gridnet/identity.key")

	_, err := Open(path, key, InsecureTestOptions())
	if want := "vault: open " + path + `: item "gridnet/identity.key" is missing`; err == nil || err.Error() != want || !errors.Is(err, ErrIntegrity) {
		t.Fatalf("Open = %v, want %q", err, want)
	}
	v2 := openAllowing(t, path, key)
	_, _, err = v2.Get("gridnet/identity.key")
	if !errors.Is(err, ErrIntegrity) || errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of the deleted item = %v; want ErrIntegrity and not ErrNotFound", err)
	}
	if _, _, err := v2.Get("never-stored"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of an item never stored = %v, want ErrNotFound", err)
	}
}

// TestForeignItem adds items the manifest does not list: a deleted item's
// old record put back, and a copy of another item's record under a new
// name.
func TestForeignItem(t *testing.T) {
	key := mustRawKey(t, 4)
	v, path := newVault(t, key)
	mustPut(t, v, "revoked.key", ClassKey, "should be gone")
	mustPut(t, v, "kept", ClassUser, "kept")
	v.Close()
	revoked := rawGet(t, path, itemsBucketName, "revoked.key")
	kept := rawGet(t, path, itemsBucketName, "kept")
	v = reopen(t, path, key)
	if err := v.Delete("revoked.key"); err != nil {
		t.Fatal(err)
	}
	v.Close()

	rawPut(t, path, itemsBucketName, "revoked.key", revoked)
	rawPut(t, path, itemsBucketName, "extra", kept)
	_, err := Open(path, key, InsecureTestOptions())
	want := "vault: open " + path + ": item \"extra\" is not in the manifest\nitem \"revoked.key\" is not in the manifest"
	if err == nil || err.Error() != want || !errors.Is(err, ErrIntegrity) {
		t.Fatalf("Open = %v\nwant %q", err, want)
	}
	v2 := openAllowing(t, path, key)
	if _, _, err := v2.Get("revoked.key"); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("Get of a restored deleted item = %v, want ErrIntegrity", err)
	}
}

// TestRecreatedItemOldCopy: versions come from the vault's generation, so
// an item deleted and written again does not restart at a version an old
// copy carries.
func TestRecreatedItemOldCopy(t *testing.T) {
	key := mustRawKey(t, 5)
	v, path := newVault(t, key)
	mustPut(t, v, "x", ClassUser, "first life") // version 1
	v.Close()
	old := rawGet(t, path, itemsBucketName, "x")
	v = reopen(t, path, key)
	if err := v.Delete("x"); err != nil { // generation 2
		t.Fatal(err)
	}
	mustPut(t, v, "x", ClassUser, "second life") // version 3
	v.Close()
	rawPut(t, path, itemsBucketName, "x", old)
	if _, err := Open(path, key, InsecureTestOptions()); err == nil || !strings.HasSuffix(err.Error(), `item "x" is version 1, the manifest says 3`) {
		t.Fatalf("Open = %v", err)
	}
}

// TestManifestRolledBack puts an older manifest back while the items stay
// new: the items written since are reported.
func TestManifestRolledBack(t *testing.T) {
	key := mustRawKey(t, 6)
	v, path := newVault(t, key)
	mustPut(t, v, "a", ClassUser, "a1") // 1
	v.Close()
	oldMan := rawGet(t, path, metaBucketName, manifestKeyName)
	v = reopen(t, path, key)
	mustPut(t, v, "a", ClassUser, "a2") // 2
	mustPut(t, v, "b", ClassUser, "b")  // 3
	v.Close()
	rawPut(t, path, metaBucketName, manifestKeyName, oldMan)
	_, err := Open(path, key, InsecureTestOptions())
	want := "vault: open " + path + ": item \"a\" is version 2, the manifest says 1\nitem \"b\" is not in the manifest"
	if err == nil || err.Error() != want {
		t.Fatalf("Open = %v\nwant %q", err, want)
	}
}

// TestManifestMissingOrDamaged: without a usable manifest nothing can be
// checked, so Open fails; AllowIntegrityErrors opens it, Check says why,
// and Accept writes a new manifest after which the vault opens normally
// and its generation is past every version seen.
func TestManifestMissingOrDamaged(t *testing.T) {
	cases := []struct {
		name string
		edit func(t *testing.T, path string)
		want string
	}{
		{"missing", func(t *testing.T, path string) { rawDelete(t, path, metaBucketName, manifestKeyName) },
			"the manifest is missing"},
		{"flipped byte", func(t *testing.T, path string) {
			m := rawGet(t, path, metaBucketName, manifestKeyName)
			m[len(m)-1] ^= 1
			rawPut(t, path, metaBucketName, manifestKeyName, m)
		}, "the manifest is unusable: authentication failed"},
		{"generation raised", func(t *testing.T, path string) {
			m := rawGet(t, path, metaBucketName, manifestKeyName)
			m[1] = 0xff
			rawPut(t, path, metaBucketName, manifestKeyName, m)
		}, "the manifest is unusable: authentication failed"},
		{"future layout", func(t *testing.T, path string) {
			m := rawGet(t, path, metaBucketName, manifestKeyName)
			m[0] = 9
			rawPut(t, path, metaBucketName, manifestKeyName, m)
		}, "the manifest is unusable: unknown layout 9"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key := mustRawKey(t, 7)
			v, path := newVault(t, key)
			mustPut(t, v, "a", ClassUser, "a")
			mustPut(t, v, "b", ClassUser, "b")
			mustPut(t, v, "a", ClassUser, "a again") // generation 3
			v.Close()
			c.edit(t, path)
			_, err := Open(path, key, InsecureTestOptions())
			if err == nil || err.Error() != "vault: open "+path+": "+c.want || !errors.Is(err, ErrIntegrity) {
				t.Fatalf("Open = %v\nwant %q", err, c.want)
			}
			v2 := openAllowing(t, path, key)
			if err := v2.Check(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Check = %v", err)
			}
			if _, _, err := v2.Get("a"); !errors.Is(err, ErrIntegrity) {
				t.Fatalf("Get without a manifest = %v, want ErrIntegrity", err)
			}
			if err := v2.Accept(); err != nil {
				t.Fatal(err)
			}
			if g := v2.Generation(); g != 4 {
				t.Fatalf("generation after Accept = %d, want 4 (past version 3)", g)
			}
			v2.Close()
			v3 := reopen(t, path, key)
			if err := v3.Check(); err != nil {
				t.Fatalf("Check after Accept: %v", err)
			}
			if got, _, err := v3.Get("a"); err != nil || string(got) != "a again" {
				t.Fatalf("Get(a) = %q, %v", got, err)
			}
		})
	}
}

// TestAcceptRepairs: Accept takes the file as it is (the older copy of a
// rolled-back item, no deleted item, a foreign item), keeps a tampered
// item listed but unreadable, and the vault opens normally afterwards.
func TestAcceptRepairs(t *testing.T) {
	key := mustRawKey(t, 8)
	v, path := newVault(t, key)
	mustPut(t, v, "rolled", ClassUser, "old")
	mustPut(t, v, "deleted", ClassUser, "d")
	mustPut(t, v, "damaged", ClassUser, "will be damaged")
	v.Close()
	old := rawGet(t, path, itemsBucketName, "rolled")
	v = reopen(t, path, key)
	mustPut(t, v, "rolled", ClassUser, "new")
	v.Close()
	rawPut(t, path, itemsBucketName, "rolled", old)
	rawDelete(t, path, itemsBucketName, "deleted")
	dmg := rawGet(t, path, itemsBucketName, "damaged")
	dmg[len(dmg)-1] ^= 1
	rawPut(t, path, itemsBucketName, "damaged", dmg)
	rawPut(t, path, itemsBucketName, "bad\x01name", []byte("junk"))

	v2 := openAllowing(t, path, key)
	errs := v2.Audit()
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	want := []string{
		`item "bad\x01name" is not in the manifest`,
		`item "damaged": vault item failed authentication (tampered or corrupted): authentication failed`,
		`item "rolled" is version 1, the manifest says 4`,
		`item "deleted" is missing`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("Audit:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := v2.Accept(); err != nil {
		t.Fatal(err)
	}
	v2.Close()
	v3 := reopen(t, path, key)
	if got, _, err := v3.Get("rolled"); err != nil || string(got) != "old" {
		t.Fatalf("accepted rolled-back item = %q, %v", got, err)
	}
	if _, _, err := v3.Get("damaged"); !errors.Is(err, ErrTampered) {
		t.Fatalf("damaged item after Accept = %v, want ErrTampered", err)
	}
	if _, _, err := v3.Get("deleted"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted item after Accept = %v, want ErrNotFound", err)
	}
	if err := v3.Check(); !errors.Is(err, ErrTampered) || errors.Is(err, ErrIntegrity) {
		t.Fatalf("Check after Accept = %v; want only the damaged item", err)
	}
	list, _ := v3.List()
	for _, it := range list {
		if it.Name == "bad\x01name" {
			t.Fatal("Accept kept an entry Put could never have written")
		}
	}
	if err := v3.Delete("damaged"); err != nil {
		t.Fatal(err)
	}
	if err := v3.Check(); err != nil {
		t.Fatalf("Check after deleting the damaged item: %v", err)
	}
}

// TestWholeFileRollback documents the limit: a copy of the whole file put
// back is an earlier, self-consistent vault. It opens, checks clean and
// serves the old values; only its lower Generation tells, to a caller that
// recorded the later one elsewhere.
func TestWholeFileRollback(t *testing.T) {
	key := mustRawKey(t, 9)
	v, path := newVault(t, key)
	mustPut(t, v, "gridnet/node.crt", ClassCert, "old certificate")
	gOld := v.Generation()
	v.Close()
	copyOf, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v = reopen(t, path, key)
	mustPut(t, v, "gridnet/node.crt", ClassCert, "renewed certificate")
	mustPut(t, v, "added", ClassUser, "x")
	gNew := v.Generation()
	v.Close()
	if err := os.WriteFile(path, copyOf, 0o600); err != nil {
		t.Fatal(err)
	}
	v2 := reopen(t, path, key)
	if err := v2.Check(); err != nil {
		t.Fatalf("Check of a whole-file rollback = %v; it is an earlier consistent vault", err)
	}
	if got, _, err := v2.Get("gridnet/node.crt"); err != nil || string(got) != "old certificate" {
		t.Fatalf("Get = %q, %v", got, err)
	}
	if g := v2.Generation(); g != gOld || g >= gNew {
		t.Fatalf("generation after whole-file rollback = %d; want the old %d, below %d", g, gOld, gNew)
	}
}

// TestGenerationCounts: every committed write raises the generation by one
// and stores its record at that version; failed writes and reads do not.
func TestGenerationCounts(t *testing.T) {
	key := mustRawKey(t, 10)
	v, path := newVault(t, key)
	if g := v.Generation(); g != 0 {
		t.Fatalf("new vault generation = %d", g)
	}
	mustPut(t, v, "a", ClassUser, "1")
	mustPut(t, v, "b", ClassUser, "2")
	mustPut(t, v, "a", ClassUser, "3")
	if err := v.Delete("b"); err != nil {
		t.Fatal(err)
	}
	if err := v.Delete("b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete = %v", err)
	}
	if err := v.Put("", ClassUser, nil); err == nil {
		t.Fatal("Put with an empty name succeeded")
	}
	v.Get("a")
	if g := v.Generation(); g != 4 {
		t.Fatalf("generation = %d, want 4", g)
	}
	list, err := v.List()
	if err != nil || len(list) != 1 || list[0].Version != 3 {
		t.Fatalf("List = %+v, %v; want a at version 3", list, err)
	}
	v.Close()
	if g := reopen(t, path, key).Generation(); g != 4 {
		t.Fatalf("generation after reopen = %d", g)
	}
}

// TestVersionBoundToRecord: the version in a record's clear prefix is
// authenticated, so editing it to the manifest's value does not pass an
// older copy off as the current one.
func TestVersionBoundToRecord(t *testing.T) {
	key := mustRawKey(t, 11)
	v, path := newVault(t, key)
	mustPut(t, v, "k", ClassKey, "old")
	v.Close()
	old := rawGet(t, path, itemsBucketName, "k")
	v = reopen(t, path, key)
	mustPut(t, v, "k", ClassKey, "new") // version 2
	v.Close()
	h, err := parseRecordHeader(old)
	if err != nil || h.version != 1 {
		t.Fatalf("old record header %+v, %v", h, err)
	}
	old[h.adLen-1] = 2 // version 1 -> 2 in the clear prefix
	rawPut(t, path, itemsBucketName, "k", old)
	v2 := reopen(t, path, key)
	if got, _, err := v2.Get("k"); !errors.Is(err, ErrTampered) {
		t.Fatalf("Get of an old copy with its version edited = %q, %v; want ErrTampered", got, err)
	}
}

// TestReadersSeeOneCommit: a Get running while Puts of the same item
// commit never compares a record with the manifest of another commit (it
// would report a rollback that is not there).
func TestReadersSeeOneCommit(t *testing.T) {
	v, _ := newVault(t, mustRawKey(t, 12))
	mustPut(t, v, "hot", ClassState, "0")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errc := make(chan error, 4)
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, _, err := v.Get("hot"); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	for i := 1; i <= 200; i++ {
		if err := v.Put("hot", ClassState, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatalf("Get during Puts: %v", err)
	}
}

// format1Copy copies testdata/format1/name into a temporary file.
func format1Copy(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "format1", name))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// format1Key is the key of a vault in testdata/format1 (see its README).
func format1Key(t *testing.T, name string) Key {
	if name == "passphrase.vault" {
		return PassphraseKey([]byte("format 1 passphrase"))
	}
	return mustRawKey(t, fuzzKeyByte)
}

// format1Items are the items of the vaults in testdata/format1.
var format1Items = map[string]struct {
	class Class
	value string
}{
	"gridnet/identity.key": {ClassKey, "format 1 identity key"},
	"gridnet/node.crt":     {ClassCert, "-----BEGIN CERTIFICATE-----\nformat 1\n-----END CERTIFICATE-----\n"},
	"notes":                {ClassUser, "format 1 notes"},
	"big":                  {ClassUser, strings.Repeat("format 1 big item ", 500)},
}

// TestUpgradeFormat1 opens vaults written by the format 1 code: Open
// upgrades them once with a log line, every item keeps its value, class
// and time, the file is format 2 with a manifest, and the old records no
// longer pass.
func TestUpgradeFormat1(t *testing.T) {
	for _, name := range []string{"rawkey.vault", "passphrase.vault"} {
		t.Run(name, func(t *testing.T) {
			path := format1Copy(t, name)
			key := format1Key(t, name)
			oldNotes := rawGet(t, path, itemsBucketName, "notes")
			oldHeader := rawGet(t, path, metaBucketName, headerKeyName)
			var before []ItemInfo
			{
				// The clear prefixes, read without the vault.
				db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				db.View(func(tx *bolt.Tx) error {
					return tx.Bucket([]byte(itemsBucketName)).ForEach(func(k, rec []byte) error {
						h, err := parseRecordHeader(rec)
						if err != nil || h.format != recordVersion1 {
							t.Fatalf("testdata record %q: %+v, %v", k, h, err)
						}
						before = append(before, ItemInfo{Name: string(k), Class: h.class, Modified: h.modified, Size: h.size})
						return nil
					})
				})
				db.Close()
			}

			var logBuf bytes.Buffer
			opts := InsecureTestOptions()
			opts.Logger = slog.New(slog.NewTextHandler(&logBuf, nil))
			v, err := Open(path, key, opts)
			if err != nil {
				t.Fatalf("Open of a format 1 vault: %v", err)
			}
			if got := logBuf.String(); !strings.Contains(got, "vault upgraded from format 1 to format 2") || !strings.Contains(got, "items=4") || !strings.Contains(got, "unreadable_items=0") {
				t.Fatalf("upgrade log: %q", got)
			}
			for item, want := range format1Items {
				got, class, err := v.Get(item)
				if err != nil || string(got) != want.value || class != want.class {
					t.Errorf("Get(%q) = %q, %q, %v", item, got, class, err)
				}
			}
			if _, _, err := v.Get("removed"); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get(removed) = %v, want ErrNotFound", err)
			}
			list, err := v.List()
			if err != nil || len(list) != len(before) {
				t.Fatalf("List = %v, %v", list, err)
			}
			for i := range list {
				b := before[i]
				b.Version = 1
				if list[i] != b {
					t.Errorf("item after upgrade %+v, before %+v", list[i], b)
				}
			}
			if g := v.Generation(); g != 1 {
				t.Errorf("generation after upgrade = %d, want 1", g)
			}
			if err := v.Check(); err != nil {
				t.Fatalf("Check after upgrade: %v", err)
			}
			v.Close()
			h, err := decodeHeader(rawGet(t, path, metaBucketName, headerKeyName))
			if err != nil || h.version != formatVersion {
				t.Fatalf("header after upgrade: %+v, %v", h, err)
			}

			// A second Open does not upgrade again.
			logBuf.Reset()
			v, err = Open(path, key, opts)
			if err != nil {
				t.Fatal(err)
			}
			mustPut(t, v, "notes", ClassUser, "after the upgrade")
			v.Close()
			if logBuf.Len() != 0 {
				t.Fatalf("second Open logged %q", logBuf.String())
			}

			// The pre-upgrade record of an item is an older copy.
			rawPut(t, path, itemsBucketName, "notes", oldNotes)
			_, err = Open(path, key, opts)
			if want := `item "notes" is a format 1 copy from before the upgrade, the manifest says version 2`; err == nil || !strings.HasSuffix(err.Error(), want) || !errors.Is(err, ErrIntegrity) {
				t.Fatalf("Open with a format 1 record put back = %v\nwant ...%q", err, want)
			}
			// The pre-upgrade header over the upgraded file.
			rawPut(t, path, metaBucketName, headerKeyName, oldHeader)
			_, err = Open(path, key, opts)
			if want := "the header says format 1 but the file holds a format 2 manifest: the header was put back from a copy made before the upgrade"; err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrIntegrity) {
				t.Fatalf("Open with the format 1 header put back = %v", err)
			}
		})
	}
}

// TestUpgradeKeepsDamagedItem: an item that fails authentication in a
// format 1 vault does not stop the upgrade; it stays unreadable
// (ErrTampered), the others are upgraded, and the vault opens normally.
func TestUpgradeKeepsDamagedItem(t *testing.T) {
	path := format1Copy(t, "rawkey.vault")
	key := format1Key(t, "rawkey.vault")
	rec := rawGet(t, path, itemsBucketName, "notes")
	authentic := bytes.Clone(rec)
	rec[len(rec)-1] ^= 1
	rawPut(t, path, itemsBucketName, "notes", rec)
	var logBuf bytes.Buffer
	opts := InsecureTestOptions()
	opts.Logger = slog.New(slog.NewTextHandler(&logBuf, nil))
	v, err := Open(path, key, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logBuf.String(), "unreadable_items=1") {
		t.Fatalf("log %q", logBuf.String())
	}
	if _, _, err := v.Get("notes"); !errors.Is(err, ErrTampered) {
		t.Fatalf("Get(notes) = %v, want ErrTampered", err)
	}
	if got, _, err := v.Get("gridnet/identity.key"); err != nil || string(got) != "format 1 identity key" {
		t.Fatalf("Get(identity) = %q, %v", got, err)
	}
	err = v.Check()
	if !errors.Is(err, ErrTampered) || errors.Is(err, ErrIntegrity) {
		t.Fatalf("Check = %v; want the damaged item as tampered only", err)
	}
	v.Close()
	// The item is listed at version 0; an authentic old copy put in its
	// place is still an older copy.
	damaged := rawGet(t, path, itemsBucketName, "notes")
	rawPut(t, path, itemsBucketName, "notes", authentic)
	if _, err := Open(path, key, opts); err == nil || !strings.HasSuffix(err.Error(), `item "notes" is a format 1 copy from before the upgrade, the manifest says version 0`) {
		t.Fatalf("Open with an authentic copy over an unreadable item = %v", err)
	}
	rawPut(t, path, itemsBucketName, "notes", damaged)
	v = reopen(t, path, key)
	mustPut(t, v, "notes", ClassUser, "rewritten")
	if err := v.Check(); err != nil {
		t.Fatalf("Check after rewriting the damaged item: %v", err)
	}
}

// TestUpgradeIsOneTransaction: an upgrade that fails part way (here on a
// format 2 record sorted after the others, which it refuses as a sign of a
// rolled-back header) leaves every record as it was: the re-sealing of
// the items before it is not committed.
func TestUpgradeIsOneTransaction(t *testing.T) {
	key := format1Key(t, "rawkey.vault")
	// The data key of the testdata vault, from an upgraded copy.
	v := reopen(t, format1Copy(t, "rawkey.vault"), key)
	zzz, err := sealRecord(v.aead, bytes.NewReader(make([]byte, nonceSize)), "zzz", ClassUser, time.Unix(1, 0), 1, []byte("v"))
	v.Close()
	if err != nil {
		t.Fatal(err)
	}
	path := format1Copy(t, "rawkey.vault")
	rawPut(t, path, itemsBucketName, "zzz", zzz)
	before := map[string][]byte{}
	for item := range format1Items {
		before[item] = rawGet(t, path, itemsBucketName, item)
	}
	header := rawGet(t, path, metaBucketName, headerKeyName)
	_, err = Open(path, key, InsecureTestOptions())
	if want := `the header says format 1 but item "zzz" is a format 2 record`; err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrIntegrity) {
		t.Fatalf("Open = %v, want ...%q", err, want)
	}
	for item, rec := range before {
		if !bytes.Equal(rawGet(t, path, itemsBucketName, item), rec) {
			t.Errorf("item %q changed by a failed upgrade", item)
		}
	}
	if !bytes.Equal(rawGet(t, path, metaBucketName, headerKeyName), header) || rawGet(t, path, metaBucketName, manifestKeyName) != nil {
		t.Error("header or manifest changed by a failed upgrade")
	}
}
