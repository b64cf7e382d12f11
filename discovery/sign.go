package discovery

import (
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"time"
)

// Identity is what a verified certificate proves about its holder: the
// node name it was issued for, the Ed25519 identity key that signs the
// node's statements, and its overlay addresses.
type Identity struct {
	// Name is the node name the certificate was issued for.
	Name string
	// Key is the node's Ed25519 identity public key.
	Key ed25519.PublicKey
	// Addrs are the node's overlay addresses.
	Addrs []netip.Addr
}

// Signature contexts. Each kind of statement is signed under its own
// context string, so that a signature over one kind of statement never
// verifies as another.
const (
	recordContext = "gridnet discovery record v1\x00"
	leaveContext  = "gridnet discovery leave v1\x00"
)

// Clock bounds of signed statements.
const (
	// MaxClockSkew is how far ahead of the receiver's clock a signed
	// statement's time may be. Certificates already need clocks within a
	// minute or so (they are backdated by one); five minutes leaves room
	// for a drifting clock without letting a statement claim the future.
	MaxClockSkew = 5 * time.Minute
	// maxLeaveAge is how old a leave notice may be when it arrives:
	// gossip delivers it within seconds, so a notice ten minutes old is a
	// replay.
	maxLeaveAge = 10 * time.Minute
)

// signedBy returns an Ed25519 signature by key over context and body.
func signedBy(key ed25519.PrivateKey, context string, body []byte) []byte {
	msg := make([]byte, 0, len(context)+len(body))
	msg = append(append(msg, context...), body...)
	return ed25519.Sign(key, msg)
}

// verifySig checks an Ed25519 signature by pub over context and body.
func verifySig(pub ed25519.PublicKey, context string, body, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
		return false
	}
	msg := make([]byte, 0, len(context)+len(body))
	msg = append(append(msg, context...), body...)
	return ed25519.Verify(pub, msg, sig)
}

// checkTime checks a signed statement's time (Unix nanoseconds) against
// now: not more than MaxClockSkew ahead and, if maxAge is positive, not
// older than maxAge.
func checkTime(at int64, now time.Time, maxAge time.Duration) error {
	t := time.Unix(0, at)
	if t.After(now.Add(MaxClockSkew)) {
		return fmt.Errorf("time %v is %v ahead of this node's clock, limit %v: %w", t.UTC(), t.Sub(now).Round(time.Second), MaxClockSkew, ErrBadStatement)
	}
	if maxAge > 0 && now.Sub(t) > maxAge {
		return fmt.Errorf("time %v is %v old, limit %v: %w", t.UTC(), now.Sub(t).Round(time.Second), maxAge, ErrBadStatement)
	}
	return nil
}
