package vault

import (
	"crypto/rand"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func benchSizes() []struct {
	name string
	size int
} {
	return []struct {
		name string
		size int
	}{{"1KiB", 1 << 10}, {"1MiB", 1 << 20}}
}

// BenchmarkPut measures one fsynced Put overwriting the same item.
func BenchmarkPut(b *testing.B) {
	for _, s := range benchSizes() {
		b.Run(s.name, func(b *testing.B) {
			v, err := Create(filepath.Join(b.TempDir(), "v.db"), mustRawKey(b, 1), InsecureTestOptions())
			if err != nil {
				b.Fatal(err)
			}
			defer v.Close()
			val := make([]byte, s.size)
			rand.Read(val)
			b.SetBytes(int64(s.size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := v.Put("item", ClassUser, val); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGet measures authenticated decryption of one item.
func BenchmarkGet(b *testing.B) {
	for _, s := range benchSizes() {
		b.Run(s.name, func(b *testing.B) {
			v, err := Create(filepath.Join(b.TempDir(), "v.db"), mustRawKey(b, 1), InsecureTestOptions())
			if err != nil {
				b.Fatal(err)
			}
			defer v.Close()
			val := make([]byte, s.size)
			rand.Read(val)
			if err := v.Put("item", ClassUser, val); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(s.size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, _, err := v.Get("item"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpenDefaultKDF measures Open of a passphrase vault with
// DefaultKDFParams (Argon2id t=3, m=128 MiB, p=4): the cost a user or
// daemon pays per start (warm: the runtime reuses the Argon2 memory
// between iterations; a fresh process pays ~0.25 s more to fault it in).
func BenchmarkOpenDefaultKDF(b *testing.B) {
	path := filepath.Join(b.TempDir(), "v.db")
	v, err := Create(path, PassphraseKey(testPass), nil)
	if err != nil {
		b.Fatal(err)
	}
	v.Close()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	n := 0
	for b.Loop() {
		v, err := Open(path, PassphraseKey(testPass), nil)
		if err != nil {
			b.Fatal(err)
		}
		v.Close()
		n++
	}
	b.ReportMetric(float64(time.Since(start).Milliseconds())/float64(n), "ms/open")
}

// fillVault stores n small items in one transaction (benchmark setup).
func fillVault(b *testing.B, v *Vault, n int) {
	err := v.write("fill", func(bk *bolt.Bucket, next *manifest) error {
		for i := range n {
			name := fmt.Sprintf("user/file-%06d.txt", i) // 20-byte names
			rec, err := sealRecord(v.aead, rand.Reader, name, ClassUser, time.Now(), next.generation, []byte("x"))
			if err != nil {
				return err
			}
			if err := bk.Put([]byte(name), rec); err != nil {
				return err
			}
			next.items[name] = next.generation
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPutManyItems measures one fsynced 1 KiB Put in a vault that
// already holds n items: the manifest (about 31 bytes per item here) is
// re-sealed and rewritten with every write.
func BenchmarkPutManyItems(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			v, err := Create(filepath.Join(b.TempDir(), "v.db"), mustRawKey(b, 1), InsecureTestOptions())
			if err != nil {
				b.Fatal(err)
			}
			defer v.Close()
			fillVault(b, v, n)
			val := make([]byte, 1<<10)
			rand.Read(val)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := v.Put("item", ClassUser, val); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpenManyItems measures Open (raw key: no Argon2id) of a vault
// of 10,000 items: the structure check, the manifest and the comparison of
// every item's clear version with it.
func BenchmarkOpenManyItems(b *testing.B) {
	path := filepath.Join(b.TempDir(), "v.db")
	v, err := Create(path, mustRawKey(b, 1), InsecureTestOptions())
	if err != nil {
		b.Fatal(err)
	}
	fillVault(b, v, 10000)
	v.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		v, err := Open(path, mustRawKey(b, 1), InsecureTestOptions())
		if err != nil {
			b.Fatal(err)
		}
		v.Close()
	}
}
