package vault

import (
	"crypto/rand"
	"path/filepath"
	"testing"
	"time"
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
