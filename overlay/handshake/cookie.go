package handshake

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
)

// KindCookie is a cookie reply: a responder under load answers a msg1
// that carries no valid cookie MAC with a cookie instead of doing any
// Noise work, and the initiator sends the same msg1 again with the
// cookie's MAC attached. It is WireGuard's cookie mechanism (section 5.4.7
// of the WireGuard paper) applied to the admission handshake:
//
//	cookie reply (CookieReplySize bytes):
//	  header (sender 0, receiver = msg1's sender) | nonce(24) | XChaCha20-Poly1305(cookie)
//	msg1 with a cookie (Msg1CookieSize bytes):
//	  msg1 (Msg1Size bytes, unchanged) | MAC(16)
//
// The cookie is the responder's business (its package overlay makes it a
// MAC over the initiator's source address and port with a secret it
// rotates); on the wire it is 16 opaque bytes. The MAC attached to msg1 is
//
//	BLAKE2s-128(key = cookie, msg1)
//
// over the Msg1Size bytes of msg1, so the trailer proves that its sender
// received the cookie sent to its address, and is not part of the Noise
// message: the Noise transcript of a msg1 is the same with or without it.
//
// The cookie in a reply is sealed with XChaCha20-Poly1305 under
//
//	BLAKE2s-256("gridnet admission v1 cookie" || 0x00 || sender || e)
//
// where sender (4 bytes, little-endian) and e (32 bytes) are msg1's
// sender index and ephemeral key, with a random nonce and the reply's
// header as associated data. This plays the role of WireGuard's key from
// the responder's static key and msg1's MAC1 as associated data, which
// gridnet cannot copy (an initiator need not know the responder's key
// before msg2): only someone who saw this msg1 can make a reply the
// initiator accepts, so an off-path attacker cannot make an initiator use
// a wrong cookie. An on-path attacker can, but it can drop msg1 anyway.
//
// A cookie reply (66 bytes) is much smaller than the msg1 it answers (1200
// bytes), so answering spoofed msg1s cannot amplify traffic towards the
// spoofed address. A node that does not know KindCookie drops a reply as
// junk, and it never receives a msg1 with a cookie: an initiator attaches
// one only for the endpoint that sent it.
const KindCookie byte = 5

const (
	// CookieSize is the size of a cookie.
	CookieSize = 16
	// CookieMACSize is the size of the MAC a msg1 carries with a cookie.
	CookieMACSize = 16
	// Msg1CookieSize is the size of a msg1 with a cookie MAC attached.
	Msg1CookieSize = Msg1Size + CookieMACSize
	// cookieNonceLen is XChaCha20-Poly1305's nonce size.
	cookieNonceLen = chacha20poly1305.NonceSizeX
	// CookieReplySize is the size of a cookie reply: header, nonce, sealed
	// cookie with its tag.
	CookieReplySize = HeaderSize + cookieNonceLen + CookieSize + tagLen

	cookieKeyLabel = "gridnet admission v1 cookie\x00"
)

// Cookie is an opaque value a responder under load hands out, bound to the
// initiator's source address.
type Cookie [CookieSize]byte

// cookieKey derives the key that seals the cookie reply to the msg1 with
// the given sender index and ephemeral key.
func cookieKey(sender uint32, e []byte) [32]byte {
	b := make([]byte, 0, len(cookieKeyLabel)+4+dhLen)
	b = append(b, cookieKeyLabel...)
	b = binary.LittleEndian.AppendUint32(b, sender)
	b = append(b, e...)
	return blake2s.Sum256(b)
}

// CookieReply returns the cookie reply to msg1 carrying c. rnd supplies
// the nonce; nil means crypto/rand.
func CookieReply(msg1 Message, c Cookie, rnd io.Reader) ([]byte, error) {
	if msg1.Kind != KindInit || len(msg1.Noise) < dhLen {
		return nil, fmt.Errorf("%w: cookie reply needs msg1", ErrState)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	key := cookieKey(msg1.Sender, msg1.Noise[:dhLen])
	aead, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		return nil, fmt.Errorf("%w: cookie key: %w", ErrState, err)
	}
	out := appendHeader(make([]byte, 0, CookieReplySize), KindCookie, 0, msg1.Sender)
	out = out[:HeaderSize+cookieNonceLen]
	nonce := out[HeaderSize:]
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return nil, fmt.Errorf("%w: cookie nonce: %w", ErrState, err)
	}
	return aead.Seal(out, nonce, c[:], out[:HeaderSize]), nil
}

// openCookie opens a cookie reply m to the msg1 with the given sender
// index and ephemeral key.
func openCookie(sender uint32, e []byte, m Message) (Cookie, error) {
	var c Cookie
	if m.Kind != KindCookie || m.Sender != 0 || m.Receiver != sender || len(m.Noise) != CookieReplySize-HeaderSize {
		return c, fmt.Errorf("%w: not a cookie reply to index %d", ErrState, sender)
	}
	key := cookieKey(sender, e)
	aead, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		return c, fmt.Errorf("%w: cookie key: %w", ErrState, err)
	}
	header := appendHeader(make([]byte, 0, HeaderSize), KindCookie, 0, m.Receiver)
	pt, err := aead.Open(nil, m.Noise[:cookieNonceLen], m.Noise[cookieNonceLen:], header)
	if err != nil || len(pt) != CookieSize {
		return c, fmt.Errorf("%w: cookie reply does not authenticate", ErrNoise)
	}
	copy(c[:], pt)
	return c, nil
}

// CookieMAC returns the MAC of msg1 (its first Msg1Size bytes; shorter
// input is an error) under cookie c.
func CookieMAC(c Cookie, msg1 []byte) ([CookieMACSize]byte, error) {
	var mac [CookieMACSize]byte
	if len(msg1) < Msg1Size {
		return mac, fmt.Errorf("%w: msg1 of %d bytes", ErrMalformed, len(msg1))
	}
	h, err := blake2s.New128(c[:])
	if err != nil {
		return mac, fmt.Errorf("%w: cookie MAC: %w", ErrState, err)
	}
	h.Write(msg1[:Msg1Size])
	h.Sum(mac[:0])
	return mac, nil
}

// CheckCookieMAC reports whether pkt is a msg1 frame with a cookie MAC
// attached that is valid under c. It runs in constant time in the MAC.
func CheckCookieMAC(pkt []byte, c Cookie) bool {
	if len(pkt) != Msg1CookieSize || pkt[0] != TypeGridnet || pkt[1] != KindInit {
		return false
	}
	mac, err := CookieMAC(c, pkt)
	return err == nil && subtle.ConstantTimeCompare(mac[:], pkt[Msg1Size:]) == 1
}

// OpenCookie checks that m, a KindCookie frame, answers this handshake's
// msg1 and returns the cookie it carries. Any other frame is an error
// (ErrState or ErrNoise), and the handshake stays usable.
func (i *Initiator) OpenCookie(m Message) (Cookie, error) {
	return openCookie(i.local, i.hs.LocalEphemeral().Public, m)
}

// Msg1WithCookie returns this handshake's msg1 again, with the MAC under c
// attached (Msg1CookieSize bytes). The Noise state is untouched: the
// responder reads the same msg1.
func (i *Initiator) Msg1WithCookie(c Cookie) ([]byte, error) {
	if len(i.msg1) != Msg1Size {
		return nil, fmt.Errorf("%w: no msg1 to repeat", ErrState)
	}
	mac, err := CookieMAC(c, i.msg1)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, Msg1CookieSize)
	out = append(out, i.msg1...)
	return append(out, mac[:]...), nil
}
