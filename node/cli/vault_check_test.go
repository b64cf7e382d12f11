package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// rawVaultEdit changes a closed vault file below the vault, as someone
// with write access to the file could.
func rawVaultEdit(t *testing.T, path string, fn func(items *bolt.Bucket) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket([]byte("items"))) }); err != nil {
		t.Fatal(err)
	}
}

// rawVaultRecord returns a copy of name's sealed record in a closed vault.
func rawVaultRecord(t *testing.T, path, name string) []byte {
	t.Helper()
	var rec []byte
	rawVaultEdit(t, path, func(b *bolt.Bucket) error { rec = bytes.Clone(b.Get([]byte(name))); return nil })
	if rec == nil {
		t.Fatalf("no record %q", name)
	}
	return rec
}

// TestVaultCheckCommand covers `gridnet vault check`: its report of a
// sound vault, of a rolled-back, a deleted and an added item, --accept,
// --min-generation, and its exit codes; and that the other commands
// refuse a vault that fails the check.
func TestVaultCheckCommand(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	path := p("v.vault")
	mustGridnet(t, nil, "vault", "keyfile", p("k"))
	keyArgs := []string{"--vault", path, "--vault-key-file", p("k")}
	vaultCmd := func(args ...string) (string, string, int) {
		return gridnet(t, nil, "", append(append([]string{"vault"}, args...), keyArgs...)...)
	}
	if err := os.WriteFile(p("in"), []byte("old notes"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, item := range []string{"notes", "gridnet/identity.key", "revoked.key"} {
		if _, errOut, code := vaultCmd("put", item, "--in", p("in")); code != 0 {
			t.Fatalf("put %s: %s", item, errOut)
		}
	}
	oldNotes := rawVaultRecord(t, path, "notes")         // version 1
	oldRevoked := rawVaultRecord(t, path, "revoked.key") // version 3
	if _, errOut, code := vaultCmd("rm", "revoked.key"); code != 0 {
		t.Fatal(errOut)
	}
	if err := os.WriteFile(p("in"), []byte("new notes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := vaultCmd("put", "notes", "--in", p("in")); code != 0 { // version 5
		t.Fatal(errOut)
	}

	out, errOut, code := vaultCmd("check")
	if want := "vault " + path + ": 2 items, generation 5: every item authenticates and matches the manifest\n"; code != 0 || out != want || errOut != "" {
		t.Fatalf("check of a sound vault: exit %d\nstdout %q\nstderr %q\nwant stdout %q", code, out, errOut, want)
	}
	if _, errOut, code := vaultCmd("check", "--min-generation", "5"); code != 0 {
		t.Fatalf("--min-generation equal to the generation: exit %d: %s", code, errOut)
	}
	_, errOut, code = vaultCmd("check", "--min-generation", "6")
	if want := "gridnet vault check: vault " + path + " fails the check (1 problem):\n  generation 5 is below --min-generation 6: the whole file was put back from an older copy, or it is another vault\n"; code != 1 || errOut != want {
		t.Fatalf("--min-generation above: exit %d\nstderr %q\nwant   %q", code, errOut, want)
	}

	// An older copy of notes put back, identity deleted, the revoked key's
	// record restored.
	rawVaultEdit(t, path, func(b *bolt.Bucket) error {
		if err := b.Put([]byte("notes"), oldNotes); err != nil {
			return err
		}
		if err := b.Put([]byte("revoked.key"), oldRevoked); err != nil {
			return err
		}
		return b.Delete([]byte("gridnet/identity.key"))
	})
	_, errOut, code = vaultCmd("check")
	want := "gridnet vault check: vault " + path + " fails the check (3 problems):\n" +
		"  item \"notes\" is version 1, the manifest says 5\n" +
		"  item \"revoked.key\" is not in the manifest\n" +
		"  item \"gridnet/identity.key\" is missing\n"
	if code != 1 || errOut != want {
		t.Fatalf("check of a tampered vault: exit %d\nstderr %q\nwant   %q", code, errOut, want)
	}
	// The other commands refuse it, naming the problems and the way out.
	out, errOut, code = vaultCmd("get", "notes")
	if code != 1 || out != "" || !strings.Contains(errOut, `item "notes" is version 1, the manifest says 5`) ||
		!strings.Contains(errOut, "'gridnet vault check --vault "+path+"' lists every problem") {
		t.Fatalf("get from a tampered vault: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	// --accept records the file as it is; the vault opens again.
	out, errOut, code = vaultCmd("check", "--accept")
	if code != 0 ||
		!strings.HasPrefix(errOut, "vault "+path+": found 3 problems:\n  item \"notes\" is version 1, the manifest says 5\n") ||
		out != "vault "+path+": the manifest now lists the items as they are (generation 6)\n"+
			"vault "+path+": 2 items, generation 6: every item authenticates and matches the manifest\n" {
		t.Fatalf("check --accept: exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	if out := mustGridnet(t, nil, append([]string{"vault", "get", "notes"}, keyArgs...)...); out != "old notes" {
		t.Fatalf("accepted notes = %q", out)
	}

	// Exit 2: nothing was checked.
	if _, errOut, code := gridnet(t, nil, "", "vault", "check", "--vault", path); code != 2 || !strings.Contains(errOut, "no vault key available") {
		t.Errorf("no key: exit %d, %q", code, errOut)
	}
	mustGridnet(t, nil, "vault", "keyfile", p("other"))
	if _, errOut, code := gridnet(t, nil, "", "vault", "check", "--vault", path, "--vault-key-file", p("other")); code != 2 || !strings.Contains(errOut, "wrong vault key") {
		t.Errorf("wrong key: exit %d, %q", code, errOut)
	}
	if _, errOut, code := gridnet(t, nil, "", "vault", "check", "--vault", p("none"), "--vault-key-file", p("k")); code != 2 || !strings.Contains(errOut, "not found") {
		t.Errorf("missing file: exit %d, %q", code, errOut)
	}
	if _, _, code := gridnet(t, nil, "", "vault", "check"); code != 2 {
		t.Errorf("no --vault: exit %d", code)
	}
	// Exit 1: a file that is not a vault fails the check.
	if err := os.WriteFile(p("garbage"), bytes.Repeat([]byte("x"), 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := gridnet(t, nil, "", "vault", "check", "--vault", p("garbage"), "--vault-key-file", p("k")); code != 1 || !strings.Contains(errOut, "corrupt") {
		t.Errorf("garbage file: exit %d, %q", code, errOut)
	}
}

// TestVaultCheckTamperedItem: an item that fails authentication is a
// failed check, and --accept does not make it readable.
func TestVaultCheckTamperedItem(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "v.vault")
	key := filepath.Join(dir, "k")
	mustGridnet(t, nil, "vault", "keyfile", key)
	if _, errOut, code := gridnet(t, nil, "value", "vault", "put", "--vault", path, "--vault-key-file", key, "x"); code != 0 {
		t.Fatal(errOut)
	}
	rawVaultEdit(t, path, func(b *bolt.Bucket) error {
		rec := bytes.Clone(b.Get([]byte("x")))
		rec[len(rec)-1] ^= 1
		return b.Put([]byte("x"), rec)
	})
	for _, extra := range [][]string{nil, {"--accept"}} {
		args := append([]string{"vault", "check", "--vault", path, "--vault-key-file", key}, extra...)
		_, errOut, code := gridnet(t, nil, "", args...)
		if code != 1 || !strings.Contains(errOut, `item "x": vault item failed authentication`) {
			t.Errorf("check %v of a tampered item: exit %d, %q", extra, code, errOut)
		}
	}
}

// TestVaultUpgradeFromCommandLine opens a vault written by the format 1
// code: the first command upgrades it and says so on stderr.
func TestVaultUpgradeFromCommandLine(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join("..", "..", "vault", "testdata", "format1", "rawkey.vault"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "old.vault")
	key := filepath.Join(dir, "k")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, bytes.Repeat([]byte{0x42}, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := gridnet(t, nil, "", "vault", "get", "--vault", path, "--vault-key-file", key, "notes")
	if code != 0 || out != "format 1 notes" || !strings.Contains(errOut, "vault upgraded from format 1 to format 2") || !strings.Contains(errOut, "items=4") {
		t.Fatalf("get from a format 1 vault: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = gridnet(t, nil, "", "vault", "check", "--vault", path, "--vault-key-file", key)
	if code != 0 || errOut != "" || !strings.Contains(out, "4 items, generation 1: every item authenticates") {
		t.Fatalf("check after the upgrade: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
