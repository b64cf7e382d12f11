package handshake

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/subtle"
	"crypto/x509"
	"fmt"
	"io"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/flynn/noise"
)

// Prologue names the protocol and its version; both sides mix it into the
// Noise transcript, so a peer speaking another version fails in Noise.
const Prologue = "gridnet admission v1"

// sigContext domain-separates transcript signatures from any other use of
// the identity key.
const sigContext = "gridnet admission v1 signature\x00"

const (
	roleResponder byte = 'R'
	roleInitiator byte = 'I'
)

// suiteFor returns the Noise cipher suite of one handshake: 25519 (the
// DH function matches WireGuard's keys), ChaChaPoly, BLAKE2s. Its DH
// function keeps the handshake's parsed keys (see x25519), so each
// handshake gets its own.
func suiteFor(static *ecdh.PrivateKey) noise.CipherSuite {
	return noise.NewCipherSuite(newX25519(static), noise.CipherChaChaPoly, noise.HashBLAKE2s)
}

// VerifyFunc verifies a peer's certificate DER (chain, validity, revocation,
// domain) and returns the identity it proves.
type VerifyFunc func(der []byte) (*cert.Identity, error)

// Credentials are what a node proves itself with.
type Credentials struct {
	// StaticPrivate is the node's X25519 WireGuard private key.
	StaticPrivate [32]byte
	// IdentityKey is the node's Ed25519 identity private key.
	IdentityKey ed25519.PrivateKey
	// Certificate is the node's own certificate DER.
	Certificate []byte
	// Random is the source of ephemeral keys; nil means crypto/rand. Only
	// tests and fuzzing set it, to replay handshakes deterministically.
	Random io.Reader

	// static is StaticPrivate parsed, with its public key (see Prepare).
	static *ecdh.PrivateKey
}

// Prepare parses StaticPrivate and computes its public key once, so that
// handshakes with these credentials (and copies of them) do not redo it.
// Handshakes work without it; call it again after changing StaticPrivate.
func (c *Credentials) Prepare() error {
	k, err := ecdh.X25519().NewPrivateKey(c.StaticPrivate[:])
	if err != nil {
		return fmt.Errorf("%w: static key: %w", ErrState, err)
	}
	c.static = k
	return nil
}

// Peer is the verified result of a handshake.
type Peer struct {
	// Identity is the peer's verified certificate identity.
	Identity *cert.Identity
	// Static is the peer's Noise static key (equal to Identity.WireGuardKey).
	Static [32]byte
}

// staticKey returns the parsed static key: the prepared one when it still
// matches StaticPrivate, else parsed now.
func (c *Credentials) staticKey() (*ecdh.PrivateKey, error) {
	if c.static != nil && subtle.ConstantTimeCompare(c.static.Bytes(), c.StaticPrivate[:]) == 1 {
		return c.static, nil
	}
	k, err := ecdh.X25519().NewPrivateKey(c.StaticPrivate[:])
	if err != nil {
		return nil, fmt.Errorf("%w: static key: %w", ErrState, err)
	}
	return k, nil
}

func newState(c *Credentials, initiator bool) (*noise.HandshakeState, error) {
	if len(c.IdentityKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: identity key missing", ErrState)
	}
	static, err := c.staticKey()
	if err != nil {
		return nil, err
	}
	priv := c.StaticPrivate
	kp := noise.DHKey{Private: priv[:], Public: static.PublicKey().Bytes()}
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:   suiteFor(static),
		Pattern:       noise.HandshakeXX,
		Initiator:     initiator,
		Prologue:      []byte(Prologue),
		Random:        c.Random,
		StaticKeypair: kp,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrState, err)
	}
	return hs, nil
}

func signInput(role byte, h []byte) []byte {
	b := make([]byte, 0, len(sigContext)+1+len(h))
	b = append(b, sigContext...)
	b = append(b, role)
	return append(b, h...)
}

// binding copies the current handshake hash (flynn/noise reuses its buffer).
func binding(hs *noise.HandshakeState) []byte {
	return bytes.Clone(hs.ChannelBinding())
}

// writeSigned writes the next Noise message with a payload of our
// certificate and a signature over the transcript hash as it is right now.
func writeSigned(hs *noise.HandshakeState, c *Credentials, role byte, frame []byte) ([]byte, error) {
	sig := ed25519.Sign(c.IdentityKey, signInput(role, binding(hs)))
	payload, err := encodePayload(c.Certificate, sig)
	if err != nil {
		return nil, err
	}
	out, _, _, err := hs.WriteMessage(frame, payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoise, err)
	}
	if len(out) > MaxMessageSize {
		return nil, fmt.Errorf("%w: own message of %d bytes exceeds %d", ErrMalformed, len(out), MaxMessageSize)
	}
	return out, nil
}

// readSigned reads a payload-carrying Noise message and checks, in order of
// cost, the payload layout, the certificate, the key binding and the
// transcript signature made by the peer in role. after is the handshake
// hash once the message passed Noise (nil if it did not).
func readSigned(hs *noise.HandshakeState, msg []byte, role byte, verify VerifyFunc) (peer *Peer, after []byte, err error) {
	h := binding(hs)
	payload, _, _, err := hs.ReadMessage(nil, msg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrNoise, err)
	}
	after = binding(hs)
	der, sig, err := decodePayload(payload)
	if err != nil {
		return nil, after, err
	}
	var static [32]byte
	if rs := hs.PeerStatic(); len(rs) == len(static) {
		copy(static[:], rs)
	} else {
		return nil, after, fmt.Errorf("%w: no remote static key", ErrNoise)
	}
	id, err := verify(der)
	if err != nil {
		if !provesKeys(der, static, sig, role, h) {
			return nil, after, fmt.Errorf("%w: %w (%w)", ErrCertificate, err, ErrUnproven)
		}
		return nil, after, fmt.Errorf("%w: %w", ErrCertificate, err)
	}
	if id == nil {
		return nil, after, fmt.Errorf("%w: verifier returned no identity", ErrCertificate)
	}
	if id.WireGuardKey != static {
		return nil, after, fmt.Errorf("%w (certificate %q)", ErrKeyMismatch, id.Name)
	}
	if len(id.IdentityKey) != ed25519.PublicKeySize || !ed25519.Verify(id.IdentityKey, signInput(role, h), sig) {
		return nil, after, fmt.Errorf("%w (certificate %q)", ErrSignature, id.Name)
	}
	return &Peer{Identity: id, Static: static}, after, nil
}

// provesKeys reports whether the sender of a certificate that did not
// verify at least holds its keys: the certificate, decoded without any
// check, names the Noise static key as its WireGuard key and its identity
// key made the transcript signature. Only then does a refusal say what is
// wrong with the certificate (revoked, expired, ...); to anyone else it
// says RefusalWrongKey, so nobody learns the state of a certificate that
// is not theirs.
func provesKeys(der []byte, static [32]byte, sig []byte, role byte, h []byte) bool {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return false
	}
	id, err := cert.Describe(c)
	if err != nil {
		return false
	}
	return id.WireGuardKey == static && len(id.IdentityKey) == ed25519.PublicKeySize &&
		ed25519.Verify(id.IdentityKey, signInput(role, h), sig)
}

// Initiator is the initiating side of one handshake. Not safe for concurrent
// use; discard it after any error.
type Initiator struct {
	hs      *noise.HandshakeState
	cred    Credentials
	msg1    []byte // the msg1 frame sent (see Msg1WithCookie)
	local   uint32
	remote  uint32 // the responder's index, from msg2
	h2      []byte // handshake hash after msg2 passed Noise (see Refusal)
	done    bool
	refused bool // a refusal was made (see Refusal)
}

// NewInitiator starts a handshake with local session index localIndex
// (non-zero, chosen by the caller) and returns the msg1 frame to send.
func NewInitiator(cred Credentials, localIndex uint32) (*Initiator, []byte, error) {
	if localIndex == 0 {
		return nil, nil, fmt.Errorf("%w: zero local index", ErrState)
	}
	hs, err := newState(&cred, true)
	if err != nil {
		return nil, nil, err
	}
	frame := appendHeader(make([]byte, 0, Msg1Size), KindInit, localIndex, 0)
	pad := make([]byte, Msg1Size-HeaderSize-dhLen)
	out, _, _, err := hs.WriteMessage(frame, pad)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrNoise, err)
	}
	return &Initiator{hs: hs, cred: cred, local: localIndex, msg1: bytes.Clone(out)}, out, nil
}

// LocalIndex is the initiator's session index (msg2's receiver field).
func (i *Initiator) LocalIndex() uint32 { return i.local }

// ConsumeResponse processes msg2. On success it returns the msg3 frame to
// send and the verified responder. The caller must admit the responder only
// after this returns without error.
func (i *Initiator) ConsumeResponse(m Message, verify VerifyFunc) ([]byte, *Peer, error) {
	if i.done || m.Kind != KindResponse || m.Receiver != i.local {
		return nil, nil, fmt.Errorf("%w: unexpected message kind %d for index %d", ErrState, m.Kind, m.Receiver)
	}
	i.done = true
	peer, after, err := readSigned(i.hs, m.Noise, roleResponder, verify)
	if after != nil {
		i.h2, i.remote = after, m.Sender
	}
	if err != nil {
		return nil, nil, err
	}
	frame := appendHeader(make([]byte, 0, MaxMessageSize), KindFinal, i.local, m.Sender)
	out, err := writeSigned(i.hs, &i.cred, roleInitiator, frame)
	if err != nil {
		return nil, nil, err
	}
	return out, peer, nil
}

// Responder is the responding side of one handshake. Not safe for
// concurrent use; discard it after any error.
type Responder struct {
	hs      *noise.HandshakeState
	local   uint32
	remote  uint32
	h2      []byte // handshake hash after msg2 (see Refusal)
	done    bool
	refused bool // a refusal was made (see Refusal)
}

// NewResponder processes msg1 and returns the state to keep (half-open)
// and the msg2 frame to send. localIndex must be non-zero.
func NewResponder(cred Credentials, m Message, localIndex uint32) (*Responder, []byte, error) {
	if localIndex == 0 || m.Kind != KindInit {
		return nil, nil, fmt.Errorf("%w: responder needs msg1 and a non-zero index", ErrState)
	}
	hs, err := newState(&cred, false)
	if err != nil {
		return nil, nil, err
	}
	if _, _, _, err := hs.ReadMessage(nil, m.Noise); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrNoise, err)
	}
	frame := appendHeader(make([]byte, 0, MaxMessageSize), KindResponse, localIndex, m.Sender)
	out, err := writeSigned(hs, &cred, roleResponder, frame)
	if err != nil {
		return nil, nil, err
	}
	return &Responder{hs: hs, local: localIndex, remote: m.Sender, h2: binding(hs)}, out, nil
}

// LocalIndex is the responder's session index (msg3's receiver field).
func (r *Responder) LocalIndex() uint32 { return r.local }

// ConsumeFinal processes msg3 and returns the verified initiator. The caller
// must admit the initiator only after this returns without error.
func (r *Responder) ConsumeFinal(m Message, verify VerifyFunc) (*Peer, error) {
	if r.done || m.Kind != KindFinal || m.Receiver != r.local || m.Sender != r.remote {
		return nil, fmt.Errorf("%w: unexpected message kind %d for index %d", ErrState, m.Kind, m.Receiver)
	}
	r.done = true
	peer, _, err := readSigned(r.hs, m.Noise, roleInitiator, verify)
	return peer, err
}
