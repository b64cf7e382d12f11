// Package handshake implements gridnet's admission handshake: a Noise XX
// exchange (Noise_XX_25519_ChaChaPoly_BLAKE2s) whose static keys are the
// nodes' WireGuard X25519 keys and whose encrypted payloads carry each side's
// node certificate plus an Ed25519 signature by the certificate's identity
// key over the handshake transcript.
//
// # Wire format
//
// Every gridnet datagram shares the UDP port of the WireGuard device. A
// WireGuard message starts with a little-endian uint32 type in 1..4, so its
// first byte is 1..4 and the next three are zero. Gridnet datagrams start with
// [TypeGridnet] (0xF0), a byte WireGuard never sends:
//
//	offset size field
//	0      1    type      = TypeGridnet
//	1      1    kind      = KindInit (1) | KindResponse (2) | KindFinal (3) | KindRefusal (4) | KindCookie (5)
//	2      4    sender    little-endian uint32, the sender's session index (0 in a busy refusal and a cookie reply)
//	6      4    receiver  little-endian uint32, the receiver's session index (0 in msg1)
//	10     ...  noise     the Noise handshake message (a refusal's or cookie reply's body, see KindRefusal, KindCookie)
//
// Sizes are fixed or bounded before any cryptography runs: msg1 is exactly
// [Msg1Size] bytes (its Noise payload is zero padding, so that the responder
// never answers with more than about 1.7x the bytes it received: reflection
// amplification is bounded), or [Msg1CookieSize] with a cookie MAC attached
// after it (see KindCookie), msg2 and msg3 lie in [Msg2MinSize, MaxMessageSize]
// and [Msg3MinSize, MaxMessageSize], a refusal is exactly [RefusalSize]
// (sealed) or [BusyRefusalSize] (busy) bytes, a cookie reply exactly
// [CookieReplySize] bytes.
//
// # Messages
//
//	msg1 initiator -> responder  e                     payload: zero padding
//	msg2 responder -> initiator  e, ee, s, es          payload: cert-len(2, BE) | cert DER | sig(64)
//	msg3 initiator -> responder  s, se                 payload: cert-len(2, BE) | cert DER | sig(64)
//
// Either side may answer a message it refuses with a refusal that carries
// a RefusalCode ([KindRefusal] describes its two forms and when each is
// sent). A responder under load may answer msg1 with a cookie reply, and
// the initiator then repeats msg1 with the cookie's MAC ([KindCookie]).
//
// # What is signed
//
// Let h be the Noise handshake hash (HandshakeState.ChannelBinding) taken
// immediately before the sender writes its payload-carrying message; the
// receiver reads the same h immediately before reading it. The sender signs
//
//	"gridnet admission v1 signature" || 0x00 || role || h
//
// with its Ed25519 identity key, where role is 'R' for the responder (msg2)
// and 'I' for the initiator (msg3). For msg2, h already covers the initiator's
// fresh ephemeral key; for msg3 it covers both ephemeral keys and the
// responder's encrypted static key and payload. A signature is therefore only
// valid for this one session: a node holding another node's certificate DER
// cannot produce it without that node's identity key (ErrSignature), and a
// recorded signature from an earlier session does not verify against a new h.
// The role byte stops a responder signature from being reflected as an
// initiator signature. Independently, the certificate's WireGuard key must
// equal the Noise remote static key, which the Noise DH operations prove the
// peer holds (ErrKeyMismatch otherwise): a stolen certificate is useless
// without both of the victim's private keys.
//
// # Error contract
//
// Every failure returned by this package wraps exactly one of the sentinel
// errors below (ErrMalformed, ErrNoise, ErrCertificate, ErrKeyMismatch,
// ErrSignature, ErrState), so callers classify with errors.Is. ErrCertificate
// additionally wraps the verifier's own error (for example cert.ErrExpired),
// and ErrUnproven as well when the sender has not shown that it holds the
// keys the certificate names.
// After any error the Initiator or Responder must be discarded.
package handshake

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// TypeGridnet is the first byte of every gridnet datagram. WireGuard message
// types are little-endian uint32 values 1..4, so their first byte is 1..4;
// 0xF0 can never start a WireGuard message.
const TypeGridnet byte = 0xF0

// Message kinds (second byte of a gridnet datagram).
const (
	// KindInit is msg1, initiator to responder.
	KindInit byte = 1
	// KindResponse is msg2, responder to initiator.
	KindResponse byte = 2
	// KindFinal is msg3, initiator to responder.
	KindFinal byte = 3
)

const (
	// HeaderSize is the gridnet frame header: type, kind, sender, receiver.
	HeaderSize = 1 + 1 + 4 + 4
	// MaxMessageSize bounds every gridnet datagram: a node certificate is
	// ~0.5-1 KiB, 2 KiB leaves room for attributes while bounding the work
	// and memory spent per packet.
	MaxMessageSize = 2048
	// Msg1Size is the exact size of msg1: padded so a spoofed msg1 cannot
	// make the responder reflect much more than it received.
	Msg1Size = 1200

	dhLen      = 32 // X25519 public key
	tagLen     = 16 // ChaCha20-Poly1305 tag
	sigLen     = 64 // Ed25519 signature
	certLenLen = 2  // big-endian certificate length prefix
	minPayload = certLenLen + 1 + sigLen

	// Msg2MinSize is the smallest well-formed msg2 (e, encrypted s, payload).
	Msg2MinSize = HeaderSize + dhLen + dhLen + tagLen + minPayload + tagLen
	// Msg3MinSize is the smallest well-formed msg3 (encrypted s, payload).
	Msg3MinSize = HeaderSize + dhLen + tagLen + minPayload + tagLen
	// MaxCertificateSize is the largest certificate DER that fits in msg2.
	MaxCertificateSize = MaxMessageSize - (Msg2MinSize - 1)
)

// Sentinel errors; see the package documentation for the contract.
var (
	// ErrMalformed: the frame or payload does not have the expected layout.
	ErrMalformed = errors.New("handshake: malformed message")
	// ErrNoise: Noise processing failed (authentication, bad key material).
	ErrNoise = errors.New("handshake: noise processing failed")
	// ErrCertificate: the peer's certificate did not verify.
	ErrCertificate = errors.New("handshake: certificate rejected")
	// ErrKeyMismatch: the certificate's WireGuard key is not the Noise static key.
	ErrKeyMismatch = errors.New("handshake: certificate WireGuard key does not match Noise static key")
	// ErrSignature: the transcript signature does not verify with the
	// certificate's identity key.
	ErrSignature = errors.New("handshake: transcript signature invalid")
	// ErrState: a method was called out of order.
	ErrState = errors.New("handshake: invalid state")
	// ErrUnproven marks an ErrCertificate whose sender did not prove it
	// holds the certificate's keys (it is not one of the classes above).
	ErrUnproven = errors.New("handshake: sender does not hold the certificate's keys")
)

// Message is a parsed gridnet frame. Noise and MAC alias the input buffer.
type Message struct {
	Kind     byte
	Sender   uint32
	Receiver uint32
	Noise    []byte
	// MAC is the cookie MAC attached to a msg1 (see KindCookie); nil for
	// a msg1 without one and for every other kind. It is not part of
	// the Noise message.
	MAC []byte
}

// IsGridnet reports whether a datagram is addressed to gridnet rather than to
// WireGuard (first byte TypeGridnet). It does no further validation.
func IsGridnet(b []byte) bool { return len(b) > 0 && b[0] == TypeGridnet }

// CheckSize validates the type, kind and size of a frame without parsing
// it further; it is the cheap first filter on the packet path.
func CheckSize(b []byte) error {
	if len(b) < HeaderSize || b[0] != TypeGridnet {
		return fmt.Errorf("%w: short frame or wrong type", ErrMalformed)
	}
	n := len(b)
	switch b[1] {
	case KindInit:
		if n != Msg1Size && n != Msg1CookieSize {
			return fmt.Errorf("%w: msg1 of %d bytes, want %d or %d", ErrMalformed, n, Msg1Size, Msg1CookieSize)
		}
	case KindResponse:
		if n < Msg2MinSize || n > MaxMessageSize {
			return fmt.Errorf("%w: msg2 of %d bytes", ErrMalformed, n)
		}
	case KindFinal:
		if n < Msg3MinSize || n > MaxMessageSize {
			return fmt.Errorf("%w: msg3 of %d bytes", ErrMalformed, n)
		}
	case KindRefusal:
		if n != RefusalSize && n != BusyRefusalSize {
			return fmt.Errorf("%w: refusal of %d bytes", ErrMalformed, n)
		}
	case KindCookie:
		if n != CookieReplySize {
			return fmt.Errorf("%w: cookie reply of %d bytes", ErrMalformed, n)
		}
	default:
		return fmt.Errorf("%w: unknown kind %d", ErrMalformed, b[1])
	}
	return nil
}

// ParseMessage validates and parses a gridnet frame. The returned Noise slice
// aliases b.
func ParseMessage(b []byte) (Message, error) {
	if err := CheckSize(b); err != nil {
		return Message{}, err
	}
	m := Message{
		Kind:     b[1],
		Sender:   binary.LittleEndian.Uint32(b[2:6]),
		Receiver: binary.LittleEndian.Uint32(b[6:10]),
		Noise:    b[HeaderSize:],
	}
	if m.Kind == KindInit && len(b) == Msg1CookieSize {
		m.Noise, m.MAC = b[HeaderSize:Msg1Size], b[Msg1Size:]
	}
	// Only a busy refusal and a cookie reply have no sender index: their
	// sender keeps no state.
	stateless := m.Kind == KindRefusal && len(b) == BusyRefusalSize || m.Kind == KindCookie
	if stateless != (m.Sender == 0) {
		return Message{}, fmt.Errorf("%w: sender index must be zero exactly in a busy refusal and a cookie reply", ErrMalformed)
	}
	if (m.Kind == KindInit) != (m.Receiver == 0) {
		return Message{}, fmt.Errorf("%w: receiver index must be zero exactly in msg1", ErrMalformed)
	}
	return m, nil
}

// appendHeader appends a frame header to dst.
func appendHeader(dst []byte, kind byte, sender, receiver uint32) []byte {
	dst = append(dst, TypeGridnet, kind)
	dst = binary.LittleEndian.AppendUint32(dst, sender)
	return binary.LittleEndian.AppendUint32(dst, receiver)
}

// encodePayload builds cert-len | cert | sig.
func encodePayload(der, sig []byte) ([]byte, error) {
	if len(der) == 0 || len(der) > MaxCertificateSize {
		return nil, fmt.Errorf("%w: own certificate of %d bytes (max %d)", ErrMalformed, len(der), MaxCertificateSize)
	}
	p := make([]byte, 0, certLenLen+len(der)+len(sig))
	p = binary.BigEndian.AppendUint16(p, uint16(len(der)))
	p = append(p, der...)
	return append(p, sig...), nil
}

// decodePayload splits cert-len | cert | sig, rejecting trailing bytes.
func decodePayload(p []byte) (der, sig []byte, err error) {
	if len(p) < minPayload {
		return nil, nil, fmt.Errorf("%w: payload of %d bytes", ErrMalformed, len(p))
	}
	n := int(binary.BigEndian.Uint16(p))
	if n == 0 || certLenLen+n+sigLen != len(p) {
		return nil, nil, fmt.Errorf("%w: certificate length %d in payload of %d bytes", ErrMalformed, n, len(p))
	}
	return p[certLenLen : certLenLen+n], p[certLenLen+n:], nil
}
