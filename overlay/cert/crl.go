package cert

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math/big"
	"slices"
	"time"
)

// CRL timing.
const (
	// CRLValidity is the span from ThisUpdate to NextUpdate of every CRL
	// Revoke signs. A week lets a CA be offline for routine maintenance
	// while still telling relying parties how old a CRL may get before they
	// should look for a newer one. gridnet spreads CRLs by gossip and
	// orders them by CRL number, so NextUpdate is advisory.
	CRLValidity = 7 * 24 * time.Hour
	// CRLClockSkew is how far in the future a CRL's ThisUpdate may be for
	// Pool.ApplyCRL to accept it; beyond that the CRL is refused as not
	// yet valid and will be accepted when it arrives again later.
	CRLClockSkew = 5 * time.Minute
)

// Revoke signs a new CRL that lists every entry of prev (which may be nil
// for the first CRL) plus serials, each revoked at now unless already
// listed. Its CRL number is prev's number plus one (1 for the first CRL),
// ThisUpdate is now and NextUpdate now+CRLValidity. prev must have been
// signed by this CA (ErrBadSignature otherwise). An empty serials list
// just re-signs prev with a new number and dates.
func (ca *CA) Revoke(prev *x509.RevocationList, serials []*big.Int, now time.Time) (*x509.RevocationList, error) {
	info, err := ca.check()
	if err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	number := big.NewInt(1)
	var entries []x509.RevocationListEntry
	listed := make(map[string]struct{})
	if prev != nil {
		if err := checkCRLSignature(prev, info.key); err != nil {
			return nil, fmt.Errorf("revoke: previous CRL: %w", err)
		}
		if prev.Number == nil || prev.Number.Sign() < 0 {
			return nil, fmt.Errorf("revoke: previous CRL: %w: no valid CRL number", ErrMalformed)
		}
		number.Add(prev.Number, number)
		for _, e := range prev.RevokedCertificateEntries {
			if e.SerialNumber == nil {
				continue
			}
			k := serialKey(e.SerialNumber)
			if _, dup := listed[k]; dup {
				continue
			}
			listed[k] = struct{}{}
			entries = append(entries, x509.RevocationListEntry{
				SerialNumber:   e.SerialNumber,
				RevocationTime: e.RevocationTime,
				ReasonCode:     e.ReasonCode,
			})
		}
	}
	for _, s := range serials {
		if s == nil || s.Sign() <= 0 {
			return nil, fmt.Errorf("revoke: serial %v: must be positive", s)
		}
		k := serialKey(s)
		if _, dup := listed[k]; dup {
			continue
		}
		listed[k] = struct{}{}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: new(big.Int).Set(s), RevocationTime: now})
	}
	tmpl := &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now,
		NextUpdate:                now.Add(CRLValidity),
		RevokedCertificateEntries: slices.Clip(entries),
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, info.cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("revoke: sign CRL %v: %w", number, err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("revoke: parse own CRL: %w", err)
	}
	return crl, nil
}

// checkCRLSignature verifies crl's Ed25519 signature with key, wrapping
// ErrBadSignature on failure.
func checkCRLSignature(crl *x509.RevocationList, key ed25519.PublicKey) error {
	if crl.SignatureAlgorithm != x509.PureEd25519 {
		return fmt.Errorf("%w: CRL signed with %v, want Ed25519", ErrBadSignature, crl.SignatureAlgorithm)
	}
	if !ed25519.Verify(key, crl.RawTBSRevocationList, crl.Signature) {
		return fmt.Errorf("%w: CRL signature does not verify", ErrBadSignature)
	}
	return nil
}

// serialKey is a map key for a serial number. Serials are positive by the
// time they get here, so the magnitude bytes identify them.
func serialKey(s *big.Int) string {
	if s.Sign() < 0 {
		return "-" + string(s.Bytes())
	}
	return string(s.Bytes())
}
