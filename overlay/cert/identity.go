// Package cert issues and verifies gridnet node identities: X.509
// certificates signed by an Ed25519 CA for one governance domain, PKCS#10
// requests that carry a node's WireGuard key, and X.509 CRLs.
//
// A node certificate binds, under one CA signature: the node's Ed25519
// identity key (the subject public key), its name (CN), its domain (URI SAN
// spiffe://DOMAIN/NAME), its overlay addresses (IP SANs, prefix lengths in an
// extension), its groups (O entries), optional key=value attributes and its
// X25519 WireGuard public key (both in non-critical extensions, see
// extensions.go). Verification returns an Identity or one of the sentinel
// errors below, wrapped with detail.
//
// # Roles
//
//   - A CA (NewCA, LoadCA) is an Ed25519 key with a self-signed certificate:
//     CN = CA name, CA:TRUE with path length 0, key usage CertSign+CRLSign,
//     and a critical NameConstraints extension that permits the URI domain
//     DOMAIN and, for a CA made WithNetworks, only the given overlay
//     networks as IP ranges. Default lifetime DefaultCAValidity (1 year).
//   - A node makes its Ed25519 identity key and X25519 WireGuard key
//     itself and sends a CSR (CreateCSR); the CA checks it (ParseCSR) and
//     issues (IssueFromCSR, or Issue directly). Node certificates: CN =
//     name, one O per group (sorted), URI SAN spiffe://DOMAIN/NAME, IP SANs
//     = overlay addresses, key usage DigitalSignature, extended key usage
//     ClientAuth+ServerAuth, random 128-bit serial, key identifiers, valid
//     from now-Backdate for DefaultNodeValidity (90 days) unless asked
//     otherwise, never beyond the CA's NotAfter.
//   - The CA revokes with Revoke, which extends the previous X.509 v2 CRL
//     and increments its CRL number; CheckIssued tells whether a
//     certificate is the CA's own to revoke.
//   - Relying nodes keep a Pool of trusted CAs (several for federation
//     between domains) with the newest CRL of each and call Verify.
//
// Only Ed25519 is used for signatures; certificates chain directly to a CA
// (no intermediates). Library functions never read the clock: every
// time-dependent call takes now.
package cert

import (
	"crypto/ed25519"
	"errors"
	"maps"
	"math/big"
	"net/netip"
	"slices"
	"time"
)

// Identity is what a verified node certificate proves about its holder.
// Pool.Verify produces verified values; Describe fills the same fields
// from an unverified certificate for display only.
type Identity struct {
	// Name is the node name (the certificate's CN).
	Name string
	// Domain is the governance domain (host part of the spiffe:// URI SAN).
	Domain string
	// Groups are the node's groups, sorted.
	Groups []string
	// Attributes are key=value posture claims signed by the CA.
	Attributes map[string]string
	// Addresses are the node's overlay addresses; the prefix length says
	// which overlay network the address belongs to (e.g. 100.64.0.2/10).
	Addresses []netip.Prefix
	// WireGuardKey is the node's X25519 WireGuard public key.
	WireGuardKey [32]byte
	// IdentityKey is the node's Ed25519 identity public key.
	IdentityKey ed25519.PublicKey
	// NotBefore and NotAfter bound the certificate's validity.
	NotBefore, NotAfter time.Time
	// Serial is the certificate serial number (what a CRL names).
	Serial *big.Int
	// Fingerprint is the lowercase hex SHA-256 of the certificate DER.
	Fingerprint string
	// CAName is the issuing CA's common name.
	CAName string
	// CAFingerprint is the lowercase hex SHA-256 of the issuing CA's DER.
	CAFingerprint string
	// Raw is the certificate DER.
	Raw []byte
}

// clone returns a copy of id that shares nothing mutable with it: each
// Verify hands out an Identity its caller may change.
func (id *Identity) clone() *Identity {
	c := *id
	c.Groups = slices.Clone(id.Groups)
	c.Attributes = maps.Clone(id.Attributes)
	c.Addresses = slices.Clone(id.Addresses)
	c.IdentityKey = slices.Clone(id.IdentityKey)
	c.Raw = slices.Clone(id.Raw)
	if id.Serial != nil {
		c.Serial = new(big.Int).Set(id.Serial)
	}
	return &c
}

// Sentinel verification failures. Verify wraps exactly one of them with
// detail, so callers test with errors.Is (ErrOutsideNetworks counts as
// the ErrOutsideDomain it refines).
var (
	ErrMalformed     = errors.New("malformed certificate")
	ErrUnknownCA     = errors.New("certificate not signed by a trusted CA")
	ErrExpired       = errors.New("certificate expired")
	ErrNotYetValid   = errors.New("certificate not yet valid")
	ErrRevoked       = errors.New("certificate revoked")
	ErrOutsideDomain = errors.New("certificate outside its CA's domain")
	// ErrOutsideNetworks is an overlay address outside the networks its
	// CA permits (the CA's X.509 IP name constraints). It is a refinement
	// of ErrOutsideDomain, which it wraps: both are the CA's name
	// constraints, so errors.Is(err, ErrOutsideDomain) holds for it too.
	ErrOutsideNetworks error = &refinedError{msg: "certificate address outside its CA's networks", parent: ErrOutsideDomain}
	ErrKeyUsage              = errors.New("certificate has wrong key usage")
	ErrBadSignature          = errors.New("bad signature")
)

// refinedError is a sentinel that is a special case of another: its own
// message, and errors.Is matches the parent too.
type refinedError struct {
	msg    string
	parent error
}

// Error returns the sentinel's message.
func (e *refinedError) Error() string { return e.msg }

// Unwrap returns the more general sentinel.
func (e *refinedError) Unwrap() error { return e.parent }
