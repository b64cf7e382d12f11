package handshake

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"

	"github.com/flynn/noise"
	"golang.org/x/crypto/chacha20poly1305"
)

// KindRefusal is a refusal: it tells the other side of a handshake why it
// was refused (a RefusalCode), in answer to any other kind. It comes in
// one of two forms:
//
//	sealed (RefusalSize bytes): header | AEAD(code)
//	busy   (BusyRefusalSize bytes): header (sender 0) | msg1's ephemeral key | code
//
// A sealed refusal is sent by a side that read a Noise-valid message of
// the other: the initiator after msg2, the responder after msg3. Its key is
//
//	HKDF-SHA256(secret = DH(e_initiator, e_responder), salt = h2,
//	            info = "gridnet admission v1 refusal" || 0x00 || role)
//
// where h2 is the Noise handshake hash right after msg2 (both sides hold
// it) and role is the refuser's ('I' or 'R'); ChaCha20-Poly1305 with a
// zero nonce and the frame header as associated data seals the one-byte
// code. Only the two holders of this handshake's ephemeral keys can make
// it: an off-path attacker cannot, and as msg2 binds the responder's
// ephemeral key to its static key, a refusal the initiator accepts comes
// from the responder it verified. The initiator's static key is never
// revealed by a refusal (it is not in msg2, and a refusal of msg2 carries
// none).
//
// A busy refusal answers a msg1 that the responder drops before any
// cryptography (per-source rate limit, full tables). It echoes msg1's
// ephemeral key, which only those who saw msg1 know, and may only carry
// RefusalRateLimited: its only effect is that the initiator backs off.
//
// Both forms are smaller than the message they answer (msg1, msg2 or msg3),
// so a refusal can never amplify traffic.
const KindRefusal byte = 4

// RefusalCode is the reason a node gives the other side of a handshake it
// refuses. It says only what is wrong with the refused side's own
// credentials or situation.
type RefusalCode byte

// Refusal codes. Codes unknown to the receiver read as RefusalOther.
const (
	// RefusalOther: refused for another reason (a malformed certificate,
	// one outside its CA's domain, one presenting the refuser's own key).
	RefusalOther RefusalCode = iota
	// RefusalUnknownCA: the certificate is not from a CA the refuser trusts.
	RefusalUnknownCA
	// RefusalRevoked: the certificate is in the refuser's CRL.
	RefusalRevoked
	// RefusalExpired: the certificate has expired (by the refuser's clock).
	RefusalExpired
	// RefusalNotYetValid: the certificate is not valid yet (by the
	// refuser's clock).
	RefusalNotYetValid
	// RefusalAddressConflict: another key holds an overlay address of the
	// certificate at the refuser.
	RefusalAddressConflict
	// RefusalWrongKey: the sender's keys do not match the certificate (the
	// WireGuard key is not the Noise static key, or the transcript
	// signature does not verify with the certificate's identity key).
	RefusalWrongKey
	// RefusalRateLimited: the refuser dropped the handshake under its
	// per-source limits; try again later.
	RefusalRateLimited
	numRefusalCodes
)

var refusalNames = [numRefusalCodes]string{
	"other", "unknown_ca", "revoked", "expired", "not_yet_valid",
	"address_conflict", "wrong_key", "rate_limited",
}

var refusalText = [numRefusalCodes]string{
	"the peer refused this node's certificate",
	"this node's certificate is not from a CA the peer trusts",
	"this node's certificate is revoked",
	"this node's certificate has expired (or the clocks disagree)",
	"this node's certificate is not valid yet (check the clocks)",
	"another node holds this node's overlay address at the peer",
	"this node's keys do not match its certificate",
	"the peer limits handshakes from this address; retrying later",
}

// String returns the code's name, e.g. "expired".
func (c RefusalCode) String() string {
	if c >= numRefusalCodes {
		return fmt.Sprintf("refusal(%d)", byte(c))
	}
	return refusalNames[c]
}

// Description explains the code to the refused node's user.
func (c RefusalCode) Description() string {
	if c >= numRefusalCodes {
		return refusalText[RefusalOther]
	}
	return refusalText[c]
}

// RefusalCodes lists every code, in wire order.
func RefusalCodes() []RefusalCode {
	out := make([]RefusalCode, numRefusalCodes)
	for i := range out {
		out[i] = RefusalCode(i)
	}
	return out
}

const (
	refusalCodeLen = 1
	// RefusalSize is the size of a sealed refusal: header, code, tag.
	RefusalSize = HeaderSize + refusalCodeLen + tagLen
	// BusyRefusalSize is the size of a busy refusal: header, msg1's
	// ephemeral key, code.
	BusyRefusalSize = HeaderSize + dhLen + refusalCodeLen

	refusalInfo = "gridnet admission v1 refusal\x00"
)

// BusyRefusal returns the busy refusal (RefusalRateLimited) of msg1, for
// a responder that drops msg1 without processing it.
func BusyRefusal(msg1 Message) ([]byte, error) {
	if msg1.Kind != KindInit || len(msg1.Noise) < dhLen {
		return nil, fmt.Errorf("%w: busy refusal needs msg1", ErrState)
	}
	out := appendHeader(make([]byte, 0, BusyRefusalSize), KindRefusal, 0, msg1.Sender)
	out = append(out, msg1.Noise[:dhLen]...)
	return append(out, byte(RefusalRateLimited)), nil
}

// refusalAEAD derives the refusal key of one handshake for the refuser in
// role (see the package comment above).
func refusalAEAD(hs *noise.HandshakeState, h2 []byte, role byte) (cipherAEAD, error) {
	local, peer := hs.LocalEphemeral(), hs.PeerEphemeral()
	priv, err := ecdh.X25519().NewPrivateKey(local.Private)
	if err != nil {
		return nil, fmt.Errorf("%w: refusal key: %w", ErrState, err)
	}
	pub, err := ecdh.X25519().NewPublicKey(peer)
	if err != nil {
		return nil, fmt.Errorf("%w: refusal key: %w", ErrState, err)
	}
	ee, err := priv.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: refusal key: %w", ErrState, err)
	}
	key, err := hkdf.Key(sha256.New, ee, h2, refusalInfo+string(role), chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("%w: refusal key: %w", ErrState, err)
	}
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, fmt.Errorf("%w: refusal key: %w", ErrState, err)
	}
	return aead, nil
}

// cipherAEAD is the part of cipher.AEAD a refusal uses.
type cipherAEAD interface {
	Seal(dst, nonce, plaintext, additionalData []byte) []byte
	Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error)
	NonceSize() int
}

// sealRefusal builds a sealed refusal frame.
func sealRefusal(hs *noise.HandshakeState, h2 []byte, role byte, sender, receiver uint32, code RefusalCode) ([]byte, error) {
	aead, err := refusalAEAD(hs, h2, role)
	if err != nil {
		return nil, err
	}
	frame := appendHeader(make([]byte, 0, RefusalSize), KindRefusal, sender, receiver)
	nonce := make([]byte, aead.NonceSize())
	return aead.Seal(frame, nonce, []byte{byte(code)}, frame[:HeaderSize]), nil
}

// openRefusal checks a sealed refusal frame made by the peer in role.
func openRefusal(hs *noise.HandshakeState, h2 []byte, role byte, m Message) (RefusalCode, error) {
	aead, err := refusalAEAD(hs, h2, role)
	if err != nil {
		return 0, err
	}
	header := appendHeader(make([]byte, 0, HeaderSize), KindRefusal, m.Sender, m.Receiver)
	nonce := make([]byte, aead.NonceSize())
	pt, err := aead.Open(nil, nonce, m.Noise, header)
	if err != nil || len(pt) != refusalCodeLen {
		return 0, fmt.Errorf("%w: refusal does not authenticate", ErrNoise)
	}
	code := RefusalCode(pt[0])
	if code >= numRefusalCodes {
		code = RefusalOther
	}
	return code, nil
}

// Refusal seals a refusal of the responder with code, after
// ConsumeResponse read msg2 through Noise and refused it (or its peer).
// It fails with ErrState if msg2 did not pass Noise: a refusal then could
// not be authenticated and is not sent.
//
// A handshake makes at most one refusal (its key and nonce are used once):
// a second call fails with ErrState.
func (i *Initiator) Refusal(code RefusalCode) ([]byte, error) {
	if i.h2 == nil {
		return nil, fmt.Errorf("%w: no Noise-valid msg2 to refuse", ErrState)
	}
	if i.refused {
		return nil, fmt.Errorf("%w: refusal already made", ErrState)
	}
	i.refused = true
	return sealRefusal(i.hs, i.h2, roleInitiator, i.local, i.remote, code)
}

// OpenRefusal checks that m, a KindRefusal frame, refuses this handshake
// and returns its code: a busy refusal must echo this handshake's msg1,
// a sealed one (after msg2) must authenticate with this handshake's
// keys. Any other frame is an error (ErrMalformed, ErrState or ErrNoise),
// and the handshake stays usable.
func (i *Initiator) OpenRefusal(m Message) (RefusalCode, error) {
	if m.Kind != KindRefusal || m.Receiver != i.local {
		return 0, fmt.Errorf("%w: not a refusal of index %d", ErrState, i.local)
	}
	if m.Sender == 0 {
		e := i.hs.LocalEphemeral().Public
		if len(m.Noise) != dhLen+refusalCodeLen || subtle.ConstantTimeCompare(m.Noise[:dhLen], e) != 1 {
			return 0, fmt.Errorf("%w: busy refusal of another msg1", ErrNoise)
		}
		if code := RefusalCode(m.Noise[dhLen]); code != RefusalRateLimited {
			return 0, fmt.Errorf("%w: busy refusal with code %d", ErrMalformed, byte(code))
		}
		return RefusalRateLimited, nil
	}
	if i.h2 == nil || m.Sender != i.remote {
		return 0, fmt.Errorf("%w: sealed refusal before msg2 or from another index", ErrState)
	}
	return openRefusal(i.hs, i.h2, roleResponder, m)
}

// Refusal seals a refusal of the initiator with code: after ConsumeFinal
// refused msg3 (past Noise), or after the caller refused the verified
// initiator. It fails with ErrState after the first call, as
// Initiator.Refusal does.
func (r *Responder) Refusal(code RefusalCode) ([]byte, error) {
	if r.h2 == nil {
		return nil, fmt.Errorf("%w: no Noise-valid msg3 or verified initiator to refuse", ErrState)
	}
	if r.refused {
		return nil, fmt.Errorf("%w: refusal already made", ErrState)
	}
	r.refused = true
	return sealRefusal(r.hs, r.h2, roleResponder, r.local, r.remote, code)
}

// OpenRefusal checks that m is the initiator's sealed refusal of this
// handshake (it refused msg2) and returns its code.
func (r *Responder) OpenRefusal(m Message) (RefusalCode, error) {
	if m.Kind != KindRefusal || m.Receiver != r.local || m.Sender != r.remote {
		return 0, fmt.Errorf("%w: not a refusal of index %d", ErrState, r.local)
	}
	return openRefusal(r.hs, r.h2, roleInitiator, m)
}
