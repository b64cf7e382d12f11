package vault

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/chacha20poly1305"
)

// fuzzKeyByte fills the raw key of the fuzz seed vaults.
const fuzzKeyByte = 0x42

// writeCorpusEnv, when set to 1, makes TestWriteFuzzCorpus regenerate the
// committed seed files under testdata/fuzz.
const writeCorpusEnv = "GRIDNET_VAULT_WRITE_CORPUS"

// seedVault returns the bytes of a small valid vault under the fuzz key.
func seedVault(t testing.TB, big bool) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "seed.db")
	v, err := Create(path, mustRawKey(t, fuzzKeyByte), InsecureTestOptions())
	if err != nil {
		t.Fatal(err)
	}
	v.Put("node.key", ClassKey, []byte("seed secret"))
	if big {
		v.Put("big", ClassUser, bytes.Repeat([]byte("overflow"), 1200))
	}
	v.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// trimToHWM cuts a bbolt file after its high-water mark (pages past it are
// unused), keeping the committed seed small.
func trimToHWM(data []byte) []byte {
	ps := os.Getpagesize()
	var hwm uint64
	for i := 0; i < 2 && (i+1)*ps <= len(data); i++ {
		if m, ok := parseBoltMeta(data[i*ps:]); ok && m.hwm > hwm {
			hwm = m.hwm
		}
	}
	if n := hwm * uint64(ps); n > 0 && n < uint64(len(data)) {
		return data[:n]
	}
	return data
}

// seedRecord returns a sealed record for "node.key" under the fuzz key.
func seedRecord(t testing.TB) []byte {
	aead, _ := chacha20poly1305.NewX(bytes.Repeat([]byte{fuzzKeyByte}, KeySize))
	rec, err := sealRecord(aead, bytes.NewReader(make([]byte, nonceSize)), "node.key", ClassKey, time.Unix(1700000000, 0), 7, []byte("seed secret"))
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// seedRecord1 returns a format 1 record (no item version) for "node.key"
// under the fuzz key, as the format 1 code wrote them.
func seedRecord1(t testing.TB) []byte {
	aead, _ := chacha20poly1305.NewX(bytes.Repeat([]byte{fuzzKeyByte}, KeySize))
	rec := []byte{recordVersion1, byte(len(ClassKey))}
	rec = append(rec, ClassKey...)
	rec = binary.BigEndian.AppendUint64(rec, uint64(time.Unix(1700000000, 0).UnixNano()))
	adLen := len(rec)
	rec = append(rec, make([]byte, nonceSize)...)
	return aead.Seal(rec, rec[adLen:], []byte("seed secret"), itemAD("node.key", rec[:adLen]))
}

// seedManifest returns a sealed manifest under the fuzz key (zero nonce)
// and its body.
func seedManifest(t testing.TB) (sealed, body []byte) {
	aead, _ := chacha20poly1305.NewX(bytes.Repeat([]byte{fuzzKeyByte}, KeySize))
	m := &manifest{generation: 9, items: map[string]uint64{"gridnet/ca.key": 3, "notes": 9, "damaged": 0}}
	sealed, err := sealManifest(aead, bytes.NewReader(make([]byte, nonceSize)), m)
	if err != nil {
		t.Fatal(err)
	}
	return sealed, m.encodeBody()
}

// FuzzManifest feeds arbitrary bytes to the manifest decoders, as a
// plaintext body at generation gen and as a sealed manifest: no panic, no
// allocation beyond the input's size, errors wrap ErrTampered, and what
// decodes is canonical (it re-encodes, or re-seals with the same nonce, to
// the very input) and within its generation.
func FuzzManifest(f *testing.F) {
	sealed, body := seedManifest(f)
	f.Add(uint64(9), body)
	f.Add(uint64(9), sealed)
	f.Add(uint64(2), body) // versions above the generation
	f.Add(uint64(0), []byte{0, 0, 0, 0})
	f.Add(uint64(0), []byte{0xff, 0xff, 0xff, 0xff, 0, 1, 'a'})
	aead, _ := chacha20poly1305.NewX(bytes.Repeat([]byte{fuzzKeyByte}, KeySize))
	f.Fuzz(func(t *testing.T, gen uint64, data []byte) {
		m, err := decodeManifestBody(gen, data)
		if err != nil {
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("decodeManifestBody error is not ErrTampered: %v", err)
			}
		} else {
			if !bytes.Equal(m.encodeBody(), data) {
				t.Fatalf("decoded body does not re-encode to its input")
			}
			for name, v := range m.items {
				if v > gen || ValidateName(name) != nil {
					t.Fatalf("accepted entry %q at %d (generation %d)", name, v, gen)
				}
			}
		}
		m, err = openManifest(aead, data)
		if err != nil {
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("openManifest error is not ErrTampered: %v", err)
			}
			return
		}
		nonce := bytes.NewReader(data[manifestPrefixLen : manifestPrefixLen+nonceSize])
		again, err := sealManifest(aead, nonce, m)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("re-sealed manifest differs")
		}
	})
}

// FuzzOpen feeds arbitrary bytes as a vault file: Open must not panic and
// must fail with one of the sentinels; an opened vault must serve List,
// Get, Check and a Put/Get round trip without panicking.
func FuzzOpen(f *testing.F) {
	valid := seedVault(f, true)
	f.Add(valid)
	f.Add(trimToHWM(valid))
	f.Add(valid[:len(valid)/2])
	f.Add([]byte{})
	if old, err := os.ReadFile(filepath.Join("testdata", "format1", "rawkey.vault")); err == nil {
		f.Add(old) // a format 1 vault: Open upgrades it
	}
	path := filepath.Join(f.TempDir(), "plain.db")
	if db, err := bolt.Open(path, 0o600, nil); err == nil {
		db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("x")); return err })
		db.Close()
		plain, _ := os.ReadFile(path)
		f.Add(plain)
	}
	key := mustRawKey(f, fuzzKeyByte)
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "v.db")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		v, err := Open(path, key, &Options{InsecureWeakKDF: true, LockTimeout: -1})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrWrongKey) && !errors.Is(err, ErrKDFParams) && !errors.Is(err, ErrIntegrity) {
				t.Fatalf("Open error is no sentinel: %v", err)
			}
			return
		}
		defer v.Close()
		list, err := v.List()
		if err != nil && !errors.Is(err, ErrTampered) {
			t.Fatalf("List: %v", err)
		}
		for _, it := range list {
			if _, _, err := v.Get(it.Name); err != nil && !errors.Is(err, ErrTampered) {
				t.Fatalf("Get(%q): %v", it.Name, err)
			}
		}
		_ = v.Check() // crash-only: any verdict on a fuzzed file is allowed
		if err := v.Put("fuzz-new-item", ClassState, []byte("v")); err != nil {
			t.Fatalf("Put on an accepted file: %v", err)
		}
		if got, _, err := v.Get("fuzz-new-item"); err != nil || string(got) != "v" {
			t.Fatalf("Get after Put = %q, %v", got, err)
		}
	})
}

// FuzzUnsealRecord feeds arbitrary records and names to the record parser
// and opener: no panic, errors wrap ErrTampered, and whatever opens is
// consistent with its parsed header.
func FuzzUnsealRecord(f *testing.F) {
	f.Add(seedRecord(f), "node.key")
	f.Add(seedRecord(f), "other")
	f.Add(seedRecord1(f), "node.key")
	f.Add([]byte{1, 3, 'k', 'e', 'y'}, "x")
	f.Add([]byte{}, "")
	aead, _ := chacha20poly1305.NewX(bytes.Repeat([]byte{fuzzKeyByte}, KeySize))
	f.Fuzz(func(t *testing.T, rec []byte, name string) {
		h, perr := parseRecordHeader(rec)
		pt, h2, err := openRecord(aead, name, rec)
		if err != nil {
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("openRecord error is not ErrTampered: %v", err)
			}
			return
		}
		if perr != nil || h != h2 || len(pt) != h.size || h.class.Validate() != nil {
			t.Fatalf("opened record inconsistent: %v %+v %+v %d", perr, h, h2, len(pt))
		}
		if h.format != recordVersion {
			return // format 1 records are only read (for the upgrade), never written
		}
		// Re-sealing with the same nonce reproduces the record exactly.
		nonce := bytes.NewReader(rec[h.adLen : h.adLen+nonceSize])
		again, err := sealRecord(aead, nonce, name, h.class, h.modified, h.version, pt)
		if err != nil || !bytes.Equal(again, rec) {
			t.Fatalf("re-sealed record differs")
		}
	})
}

func seedBody(t testing.TB) []byte   { _, b := seedManifest(t); return b }
func seedSealed(t testing.TB) []byte { s, _ := seedManifest(t); return s }

// TestWriteFuzzCorpus regenerates testdata/fuzz seed files when
// GRIDNET_VAULT_WRITE_CORPUS=1; otherwise it checks they exist.
func TestWriteFuzzCorpus(t *testing.T) {
	seeds := map[string][]any{
		"FuzzOpen/valid-vault":            {trimToHWM(seedVault(t, false))},
		"FuzzOpen/garbage":                {[]byte("GNVAULT\x00 this is not a bbolt file at all")},
		"FuzzOpen/empty":                  {[]byte{}},
		"FuzzUnsealRecord/valid-record":   {seedRecord(t), "node.key"},
		"FuzzUnsealRecord/swapped-name":   {seedRecord(t), "ca.key"},
		"FuzzUnsealRecord/short-record":   {[]byte{1, 200, 'k'}, "n"},
		"FuzzUnsealRecord/future-version": {append([]byte{recordVersion + 1}, seedRecord(t)[1:]...), "node.key"},
		"FuzzUnsealRecord/format1-record": {seedRecord1(t), "node.key"},
		"FuzzUnsealRecord/format1-as-2":   {append([]byte{recordVersion}, seedRecord1(t)[1:]...), "node.key"},
		"FuzzManifest/valid-body":         {uint64(9), seedBody(t)},
		"FuzzManifest/valid-sealed":       {uint64(9), seedSealed(t)},
		"FuzzManifest/above-generation":   {uint64(2), seedBody(t)},
		"FuzzManifest/huge-count":         {uint64(0), []byte{0xff, 0xff, 0xff, 0xff, 0, 1, 'a'}},
		"FuzzManifest/out-of-order":       {uint64(5), []byte("\x00\x00\x00\x02\x00\x01b\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01a\x00\x00\x00\x00\x00\x00\x00\x01")},
	}
	for name, args := range seeds {
		path := filepath.Join("testdata", "fuzz", name)
		if os.Getenv(writeCorpusEnv) != "1" {
			if _, err := os.Stat(path); err != nil {
				t.Errorf("seed corpus file missing: %v (regenerate with %s=1)", err, writeCorpusEnv)
			}
			continue
		}
		var buf bytes.Buffer
		buf.WriteString("go test fuzz v1\n")
		for _, a := range args {
			switch a := a.(type) {
			case []byte:
				fmt.Fprintf(&buf, "[]byte(%q)\n", a)
			case string:
				fmt.Fprintf(&buf, "string(%q)\n", a)
			case uint64:
				fmt.Fprintf(&buf, "uint64(%d)\n", a)
			}
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOpenMutatedStructure flips, one at a time, every byte of every page
// header and element array of a valid vault (the bytes bbolt trusts for
// navigation) and checks that Open either fails with a sentinel or yields
// a vault that works, never a panic or hang.
func TestOpenMutatedStructure(t *testing.T) {
	valid := trimToHWM(seedVault(t, true))
	ps := os.Getpagesize()
	key := mustRawKey(t, fuzzKeyByte)
	dir := t.TempDir()
	var offsets []int
	for p := 0; p+boltPageHeaderSize <= len(valid); {
		count := int(binary.NativeEndian.Uint16(valid[p+10:]))
		n := boltPageHeaderSize + count*boltElemSize
		if valid[p+8] == boltFreelistFlag || p < 2*ps {
			n = boltPageHeaderSize + boltMetaSize // freelist ids or meta
		}
		for i := 0; i < min(n, ps) && p+i < len(valid); i++ {
			offsets = append(offsets, p+i)
		}
		p += (int(binary.NativeEndian.Uint32(valid[p+12:])) + 1) * ps // skip overflow pages
	}
	opened := 0
	for _, off := range offsets {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			data := bytes.Clone(valid)
			data[off] ^= x
			path := filepath.Join(dir, fmt.Sprintf("m%d-%d.db", off, x))
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			v, err := Open(path, key, &Options{InsecureWeakKDF: true, LockTimeout: -1})
			if err != nil {
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrWrongKey) && !errors.Is(err, ErrKDFParams) && !errors.Is(err, ErrIntegrity) {
					t.Fatalf("offset %d ^%#x: Open error is no sentinel: %v", off, x, err)
				}
				os.Remove(path)
				continue
			}
			opened++
			v.List()
			v.Check()
			if err := v.Put("new", ClassState, []byte("v")); err != nil {
				t.Errorf("offset %d ^%#x: Put on accepted file: %v", off, x, err)
			}
			v.Close()
			os.Remove(path)
		}
	}
	t.Logf("%d mutations, %d still opened", 3*len(offsets), opened)
}
