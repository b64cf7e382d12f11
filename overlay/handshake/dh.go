package handshake

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"io"

	"github.com/flynn/noise"
)

// x25519 is Noise's 25519 DH function (the same keys and bytes as
// noise.DH25519) that keeps the parsed keys of one handshake. x/crypto's
// curve25519.X25519, which noise.DH25519 calls, parses the private key with
// crypto/ecdh on every call, and parsing computes the public key: a second
// scalar multiplication per DH. Keeping the static and the ephemeral key
// parsed halves the handshake's X25519 work.
type x25519 struct {
	static, eph       *ecdh.PrivateKey
	staticRaw, ephRaw [32]byte
}

var _ noise.DHFunc = (*x25519)(nil)

// newX25519 returns the DH function of one handshake; static may be nil.
func newX25519(static *ecdh.PrivateKey) *x25519 {
	d := &x25519{static: static}
	if static != nil {
		copy(d.staticRaw[:], static.Bytes())
	}
	return d
}

// GenerateKeypair makes the ephemeral key from 32 bytes of rng, as
// noise.DH25519 does, and keeps it parsed for DH.
func (d *x25519) GenerateKeypair(rng io.Reader) (noise.DHKey, error) {
	if rng == nil {
		rng = rand.Reader
	}
	var priv [32]byte
	if _, err := io.ReadFull(rng, priv[:]); err != nil {
		return noise.DHKey{}, fmt.Errorf("ephemeral key: %w", err)
	}
	k, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil {
		return noise.DHKey{}, fmt.Errorf("ephemeral key: %w", err)
	}
	d.eph, d.ephRaw = k, priv
	return noise.DHKey{Private: priv[:], Public: k.PublicKey().Bytes()}, nil
}

// DH computes X25519(privkey, pubkey); an all-zero result (a low-order
// public key) is an error, as in curve25519.X25519.
func (d *x25519) DH(privkey, pubkey []byte) ([]byte, error) {
	var k *ecdh.PrivateKey
	switch {
	case d.eph != nil && subtle.ConstantTimeCompare(privkey, d.ephRaw[:]) == 1:
		k = d.eph
	case d.static != nil && subtle.ConstantTimeCompare(privkey, d.staticRaw[:]) == 1:
		k = d.static
	default:
		var err error
		if k, err = ecdh.X25519().NewPrivateKey(privkey); err != nil {
			return nil, fmt.Errorf("DH private key: %w", err)
		}
	}
	pub, err := ecdh.X25519().NewPublicKey(pubkey)
	if err != nil {
		return nil, fmt.Errorf("DH public key: %w", err)
	}
	out, err := k.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("DH: %w", err)
	}
	return out, nil
}

// DHLen is the length of a public key and of a DH result.
func (d *x25519) DHLen() int { return 32 }

// DHName is the Noise name of the function ("25519", as noise.DH25519).
func (d *x25519) DHName() string { return "25519" }
