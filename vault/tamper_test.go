package vault

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestSwappedRecords(t *testing.T) {
	v, path := newVault(t, PassphraseKey(testPass))
	v.Put("alice.key", ClassKey, []byte("alice secret"))
	v.Put("bobby.key", ClassKey, []byte("bobby secret"))
	v.Close()
	editBolt(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(itemsBucketName))
		a, c := bytes.Clone(b.Get([]byte("alice.key"))), bytes.Clone(b.Get([]byte("bobby.key")))
		if err := b.Put([]byte("alice.key"), c); err != nil {
			return err
		}
		return b.Put([]byte("bobby.key"), a)
	})
	v2 := reopen(t, path, PassphraseKey(testPass))
	for _, name := range []string{"alice.key", "bobby.key"} {
		if got, _, err := v2.Get(name); !errors.Is(err, ErrTampered) {
			t.Errorf("Get(%q) after swap = %q, %v; want ErrTampered", name, got, err)
		}
	}
	if err := v2.Check(); !errors.Is(err, ErrTampered) {
		t.Errorf("Check after swap = %v, want ErrTampered", err)
	}
}

func TestTamperedRecord(t *testing.T) {
	const name = "node.key"
	value := []byte("the node private key")
	recLen := recordFixedSize + len(ClassKey) + len(value)
	tests := []struct {
		what string
		edit func(rec []byte) []byte
	}{
		{"version", func(r []byte) []byte { r[0]++; return r }},
		{"class length", func(r []byte) []byte { r[1] = 200; return r }},
		{"class", func(r []byte) []byte { r[2] = 'c'; return r }},                                                    // "key" -> "cey"
		{"class to other valid", func(r []byte) []byte { return append(append([]byte{1, 4}, "cert"...), r[5:]...) }}, // relabel
		{"mtime", func(r []byte) []byte { r[2+3+7] ^= 1; return r }},
		{"nonce", func(r []byte) []byte { r[2+3+8] ^= 0x80; return r }},
		{"ciphertext", func(r []byte) []byte { r[2+3+8+nonceSize] ^= 1; return r }},
		{"tag", func(r []byte) []byte { r[len(r)-1] ^= 1; return r }},
		{"truncated", func(r []byte) []byte { return r[:len(r)-1] }},
		{"extended", func(r []byte) []byte { return append(r, 0) }},
		{"too short", func(r []byte) []byte { return r[:10] }},
		{"empty", func(r []byte) []byte { return []byte{} }},
	}
	for _, tt := range tests {
		t.Run(tt.what, func(t *testing.T) {
			v, path := newVault(t, PassphraseKey(testPass))
			v.Put(name, ClassKey, value)
			v.Put("other", ClassKey, []byte("untouched"))
			v.Close()
			editBolt(t, path, func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte(itemsBucketName))
				rec := bytes.Clone(b.Get([]byte(name)))
				if len(rec) != recLen {
					t.Fatalf("record is %d bytes, want %d", len(rec), recLen)
				}
				return b.Put([]byte(name), tt.edit(rec))
			})
			v2 := reopen(t, path, PassphraseKey(testPass))
			if got, _, err := v2.Get(name); !errors.Is(err, ErrTampered) {
				t.Fatalf("Get = %q, %v; want ErrTampered", got, err)
			}
			if got, _, err := v2.Get("other"); err != nil || string(got) != "untouched" {
				t.Fatalf("other item = %q, %v", got, err)
			}
			if err := v2.Check(); !errors.Is(err, ErrTampered) {
				t.Fatalf("Check = %v, want ErrTampered", err)
			}
		})
	}
}

// TestFlippedByteInFile flips one ciphertext byte in the raw file, below
// bbolt, and expects ErrTampered for that item only.
func TestFlippedByteInFile(t *testing.T) {
	v, path := newVault(t, PassphraseKey(testPass))
	v.Put("a", ClassUser, bytes.Repeat([]byte("A"), 100))
	v.Put("b", ClassUser, bytes.Repeat([]byte("B"), 100))
	var rec []byte
	v.view("test", func(tx *bolt.Tx) error {
		rec = bytes.Clone(tx.Bucket([]byte(itemsBucketName)).Get([]byte("a")))
		return nil
	})
	v.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// bbolt is copy-on-write: stale copies of the leaf may sit in free
	// pages, so flip the byte in every copy.
	ct := rec[len(rec)-tagSize-40 : len(rec)-tagSize]
	if bytes.Count(data, ct) == 0 {
		t.Fatal("ciphertext not found in file")
	}
	for off := 0; ; {
		i := bytes.Index(data[off:], ct)
		if i < 0 {
			break
		}
		data[off+i+7] ^= 0x20
		off += i + len(ct)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	v2 := reopen(t, path, PassphraseKey(testPass))
	if _, _, err := v2.Get("a"); !errors.Is(err, ErrTampered) {
		t.Fatalf("Get(a) = %v, want ErrTampered", err)
	}
	if got, _, err := v2.Get("b"); err != nil || len(got) != 100 {
		t.Fatalf("Get(b) = %d bytes, %v", len(got), err)
	}
}

func TestCorruptFiles(t *testing.T) {
	v, path := newVault(t, PassphraseKey(testPass))
	v.Put("x", ClassKey, bytes.Repeat([]byte("payload"), 2000)) // overflow pages
	v.Close()
	valid, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := os.Getpagesize()
	nonVault := filepath.Join(t.TempDir(), "other.db")
	db, err := bolt.Open(nonVault, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b, _ := tx.CreateBucket([]byte("settings"))
		return b.Put([]byte("k"), []byte("v"))
	})
	db.Close()
	nonVaultData, _ := os.ReadFile(nonVault)

	garbage := make([]byte, 64<<10)
	for i := range garbage {
		garbage[i] = byte(i*7919 + i>>8)
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"one byte", []byte{0}},
		{"text", []byte("this is not a vault\n")},
		{"zeros", make([]byte, 64<<10)},
		{"garbage", garbage},
		{"truncated to 100", valid[:100]},
		{"truncated to one page", valid[:ps]},
		{"truncated inside meta 1", valid[:ps+100]},
		{"truncated after metas", valid[:2*ps+100]},
		{"truncated mid file", valid[:4*ps+1]},
		{"non-vault bbolt", nonVaultData},
		{"meta pages zeroed", append(make([]byte, 2*ps), valid[2*ps:]...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "v.db")
			if err := os.WriteFile(p, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			v, err := Open(p, PassphraseKey(testPass), InsecureTestOptions())
			if !errors.Is(err, ErrCorrupt) {
				if v != nil {
					v.Close()
				}
				t.Fatalf("Open = %v, want ErrCorrupt", err)
			}
			after, _ := os.ReadFile(p)
			if !bytes.Equal(after, tt.data) {
				t.Fatal("Open modified a corrupt file")
			}
		})
	}
}

func TestBadHeader(t *testing.T) {
	tests := []struct {
		name string
		edit func(h []byte) []byte
		want error
	}{
		{"magic", func(h []byte) []byte { h[0] = 'X'; return h }, ErrCorrupt},
		{"future version", func(h []byte) []byte { binary.BigEndian.PutUint16(h[8:], formatVersion+1); return h }, ErrCorrupt},
		{"format 1 over format 2", func(h []byte) []byte { binary.BigEndian.PutUint16(h[8:], formatVersion1); return h }, ErrWrongKey},
		{"unknown kdf", func(h []byte) []byte { h[10] = 9; return h }, ErrCorrupt},
		{"short", func(h []byte) []byte { return h[:len(h)-1] }, ErrCorrupt},
		{"salt", func(h []byte) []byte { h[20] ^= 1; return h }, ErrWrongKey},
		{"wrapped key", func(h []byte) []byte { h[len(h)-1] ^= 1; return h }, ErrWrongKey},
		{"missing", nil, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, path := newVault(t, PassphraseKey(testPass))
			v.Close()
			editBolt(t, path, func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte(metaBucketName))
				if tt.edit == nil {
					return b.Delete([]byte(headerKeyName))
				}
				return b.Put([]byte(headerKeyName), tt.edit(bytes.Clone(b.Get([]byte(headerKeyName)))))
			})
			if _, err := Open(path, PassphraseKey(testPass), InsecureTestOptions()); !errors.Is(err, tt.want) {
				t.Fatalf("Open = %v, want %v", err, tt.want)
			}
		})
	}
}

// setParams rewrites the Argon2id parameters stored in a closed vault.
func setParams(t *testing.T, path string, p KDFParams) {
	editBolt(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(metaBucketName))
		h, err := decodeHeader(b.Get([]byte(headerKeyName)))
		if err != nil {
			return err
		}
		h.params = p
		return b.Put([]byte(headerKeyName), h.encode())
	})
}

func TestKDFBounds(t *testing.T) {
	tests := []struct {
		name string
		p    KDFParams
		weak bool
		want error
	}{
		{"memory above max", KDFParams{Time: 1, MemoryKiB: MaxArgonMemoryKiB + 1, Threads: 1}, true, ErrKDFParams},
		{"memory 4 GiB", KDFParams{Time: 3, MemoryKiB: 4 << 20, Threads: 4}, true, ErrKDFParams},
		{"time above max", KDFParams{Time: MaxArgonTime + 1, MemoryKiB: 64, Threads: 1}, true, ErrKDFParams},
		{"time huge", KDFParams{Time: 1 << 31, MemoryKiB: 64, Threads: 1}, true, ErrKDFParams},
		{"threads above max", KDFParams{Time: 1, MemoryKiB: 1024, Threads: MaxArgonThreads + 1}, true, ErrKDFParams},
		{"work above max", KDFParams{Time: 5, MemoryKiB: MaxArgonMemoryKiB, Threads: 1}, true, ErrKDFParams},
		{"time zero", KDFParams{Time: 0, MemoryKiB: 64, Threads: 1}, true, ErrKDFParams},
		{"threads zero", KDFParams{Time: 1, MemoryKiB: 64, Threads: 0}, true, ErrKDFParams},
		{"memory below floor", KDFParams{Time: 1, MemoryKiB: FloorArgonMemory - 1, Threads: 1}, true, ErrKDFParams},
		{"memory below 8 KiB per lane", KDFParams{Time: 1, MemoryKiB: 64, Threads: 9}, true, ErrKDFParams},
		{"weak params without test switch", InsecureTestKDFParams(), false, ErrKDFParams},
		{"below production minimum", KDFParams{Time: 1, MemoryKiB: 64 << 10, Threads: 1}, false, ErrKDFParams},
		{"floor with test switch", InsecureTestKDFParams(), true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.p.Check(tt.weak); (err == nil) != (tt.want == nil) {
				t.Fatalf("Check = %v", err)
			}
			v, path := newVault(t, PassphraseKey(testPass))
			v.Close()
			setParams(t, path, tt.p)
			start := time.Now()
			v2, err := Open(path, PassphraseKey(testPass), &Options{InsecureWeakKDF: tt.weak})
			if !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Fatalf("Open = %v, want %v", err, tt.want)
			}
			if v2 != nil {
				v2.Close()
			}
			// Refused before any Argon2 work: the hostile parameters
			// ("time huge", "memory 4 GiB") would take minutes or exhaust
			// memory, so only a bug comes near this bound.
			if d := time.Since(start); d > 20*time.Second {
				t.Fatalf("refusal took %v", d)
			}
			if _, err := Create(path+".new", PassphraseKey(testPass), &Options{KDF: tt.p, InsecureWeakKDF: tt.weak}); tt.want == ErrKDFParams && !errors.Is(err, ErrKDFParams) {
				t.Fatalf("Create = %v, want ErrKDFParams", err)
			}
		})
	}
	if err := DefaultKDFParams().Check(false); err != nil {
		t.Fatalf("default params out of bounds: %v", err)
	}
	if err := (KDFParams{Time: MinArgonTime, MemoryKiB: MinArgonMemoryKiB, Threads: 1}).Check(false); err != nil {
		t.Fatalf("minimum params refused: %v", err)
	}
	if err := (KDFParams{Time: 4, MemoryKiB: MaxArgonMemoryKiB, Threads: MaxArgonThreads}).Check(false); err != nil {
		t.Fatalf("maximum params refused: %v", err)
	}
}
