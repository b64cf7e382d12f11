package handshake

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"testing"

	"github.com/flynn/noise"
)

// x25519 must give the same keys and shared secrets as noise.DH25519 for
// the same random bytes, whichever key (ephemeral, static or neither) it
// has kept, and refuse a low-order public key as it does.
func TestX25519MatchesNoiseDH25519(t *testing.T) {
	seed := make([]byte, 64)
	rand.Read(seed)
	want1, err := noise.DH25519.GenerateKeypair(bytes.NewReader(seed))
	if err != nil {
		t.Fatal(err)
	}
	want2, _ := noise.DH25519.GenerateKeypair(bytes.NewReader(seed[32:]))
	static, err := ecdh.X25519().NewPrivateKey(want2.Private)
	if err != nil {
		t.Fatal(err)
	}
	d := newX25519(static)
	got1, err := d.GenerateKeypair(bytes.NewReader(seed))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got1.Private, want1.Private) || !bytes.Equal(got1.Public, want1.Public) {
		t.Fatal("ephemeral key pair differs from noise.DH25519's")
	}
	other, _ := noise.DH25519.GenerateKeypair(rand.Reader)
	for _, priv := range [][]byte{want1.Private, want2.Private, other.Private} {
		want, err := noise.DH25519.DH(priv, other.Public)
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.DH(priv, other.Public)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("DH differs from noise.DH25519: %x vs %x (%v)", got, want, err)
		}
	}
	lowOrder := make([]byte, 32) // the all-zero point
	if _, err := d.DH(want1.Private, lowOrder); err == nil {
		t.Error("DH with a low-order public key succeeded")
	}
	if d.DHLen() != noise.DH25519.DHLen() || d.DHName() != noise.DH25519.DHName() {
		t.Error("DHLen or DHName differs from noise.DH25519's")
	}
}
