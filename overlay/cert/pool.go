package cert

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Pool is a set of trusted gridnet CAs — one per governance domain, or more
// while a domain rotates its CA, and several domains for federation — with
// the newest CRL of each. It is safe for concurrent use: writers (AddCA,
// ApplyCRL) serialise on a mutex and publish an immutable snapshot; Verify,
// VerifyDER, IsRevoked, CAs and CRLNumber only load the snapshot and take
// no lock.
//
// Only single-level chains are supported: node certificates must be signed
// directly by a CA in the pool (gridnet CAs have MaxPathLen 0). The zero
// Pool is an empty pool ready for AddCA.
type Pool struct {
	mu    sync.Mutex // serialises writers
	state atomic.Pointer[poolState]
	// verified remembers which trusted CA's signature each recently
	// verified certificate carries, so that the same certificate seen
	// again (every handshake with a peer, every gossip record, every
	// revalidation) costs a hash instead of an Ed25519 verification, and,
	// once its other checks passed, the certificate parsed and decoded,
	// so that VerifyDER does not parse it again.
	verified atomic.Pointer[signatureCache]
}

// signatureCacheSize bounds the signature cache; when it is full it is
// dropped and starts again empty.
const signatureCacheSize = 8192

// signatureCache maps SHA-256(certificate DER) to what is known of those
// bytes (a *verifiedCert). An entry says "these exact bytes carry a valid
// signature by the CA with this fingerprint" and, when it holds the
// parsed certificate, "and they pass every check that depends on nothing
// but the bytes and that CA" (structure, key usage, domain, networks).
// The checks that can change (time, revocation, the CA still being
// trusted) run on every Verify.
type signatureCache struct {
	m sync.Map // [32]byte → *verifiedCert
	n atomic.Int32
}

// verifiedCert is a signature cache entry; it is never modified once
// stored (a later Store replaces it).
type verifiedCert struct {
	caFingerprint string
	// cert and id are set once the fixed checks passed: the parsed
	// certificate, and its decoded identity without the CA's fields
	// (handed out as copies).
	cert *x509.Certificate
	id   *Identity
}

// poolState is an immutable snapshot of a Pool.
type poolState struct {
	cas     []*trustedCA            // in insertion order
	byKeyID map[string][]*trustedCA // subject key identifier → CAs
	byFP    map[string]*trustedCA   // fingerprint → CA
}

// trustedCA is a CA in a snapshot with everything Verify needs
// precomputed. Values are never modified after publication; ApplyCRL
// replaces the value.
type trustedCA struct {
	caInfo
	name string
	crl  *crlState // nil until a CRL is applied
}

// crlState is the applied CRL of one CA.
type crlState struct {
	number     *big.Int
	nextUpdate time.Time
	revoked    map[string]struct{} // serialKey → present
}

// NewPool returns a pool trusting cas; each must be a valid gridnet CA (see
// AddCA). A pool with no CAs trusts nothing until AddCA.
func NewPool(cas ...*x509.Certificate) (*Pool, error) {
	p := &Pool{}
	p.state.Store(&poolState{byKeyID: map[string][]*trustedCA{}, byFP: map[string]*trustedCA{}})
	for _, c := range cas {
		if err := p.AddCA(c); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// AddCA adds a trusted CA. c must be a self-signed v3 CA certificate with
// an Ed25519 key, CertSign and CRLSign key usage, exactly one permitted
// URI domain and no excluded IP ranges (ErrInvalidCA otherwise); its
// permitted IP ranges, if any, are enforced by Verify. Adding a CA already in the pool is
// a no-op. The CA's validity period is not checked here; Verify does.
func (p *Pool) AddCA(c *x509.Certificate) error {
	info, err := inspectCA(c)
	if err != nil {
		return fmt.Errorf("add CA: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.load()
	if _, ok := old.byFP[info.fingerprint]; ok {
		return nil
	}
	cas := append(old.cas[:len(old.cas):len(old.cas)], &trustedCA{caInfo: info, name: c.Subject.CommonName})
	p.state.Store(buildState(cas))
	return nil
}

// load returns the current snapshot, tolerating a zero Pool.
func (p *Pool) load() *poolState {
	if s := p.state.Load(); s != nil {
		return s
	}
	return &poolState{}
}

// buildState indexes cas into a new snapshot.
func buildState(cas []*trustedCA) *poolState {
	s := &poolState{
		cas:     cas,
		byKeyID: make(map[string][]*trustedCA, len(cas)),
		byFP:    make(map[string]*trustedCA, len(cas)),
	}
	for _, ca := range cas {
		kid := string(ca.cert.SubjectKeyId)
		s.byKeyID[kid] = append(s.byKeyID[kid], ca)
		s.byFP[ca.fingerprint] = ca
	}
	return s
}

// CAs returns the trusted CA certificates in the order they were added.
func (p *Pool) CAs() []*x509.Certificate {
	s := p.load()
	out := make([]*x509.Certificate, len(s.cas))
	for i, ca := range s.cas {
		out[i] = ca.cert
	}
	return out
}

// candidates returns the trusted CAs that may have issued an object with
// the given authority key identifier and raw issuer name: CAs with that
// key identifier, or, if none, CAs whose subject is rawIssuer.
func (s *poolState) candidates(akid, rawIssuer []byte) []*trustedCA {
	if len(akid) > 0 {
		var out []*trustedCA
		for _, ca := range s.byKeyID[string(akid)] {
			if string(ca.cert.RawSubject) == string(rawIssuer) {
				out = append(out, ca)
			}
		}
		if out != nil {
			return out
		}
	}
	var out []*trustedCA
	for _, ca := range s.cas {
		if string(ca.cert.RawSubject) == string(rawIssuer) {
			out = append(out, ca)
		}
	}
	return out
}

// ApplyCRL installs crl for the trusted CA that signed it, if its CRL
// number is greater than that of the CRL currently held for that CA. It
// reports whether the pool changed. A CRL that is not newer is not an
// error: (false, nil), since gossip delivers old CRLs routinely.
//
// Errors: ErrMalformed for a nil CRL or one without a CRL number;
// ErrUnknownCA when no trusted CA has the CRL's issuer name and key
// identifier; ErrBadSignature when such CAs exist but none of their keys
// verifies the signature; ErrNotYetValid when ThisUpdate is more than
// CRLClockSkew after now. When several CA certificates share the signing
// key (a renewed CA), the CRL is applied to each of them.
func (p *Pool) ApplyCRL(crl *x509.RevocationList, now time.Time) (bool, error) {
	if crl == nil {
		return false, fmt.Errorf("apply CRL: %w: nil CRL", ErrMalformed)
	}
	if crl.Number == nil || crl.Number.Sign() < 0 {
		return false, fmt.Errorf("apply CRL: %w: no valid CRL number", ErrMalformed)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.load()
	cands := old.candidates(crl.AuthorityKeyId, crl.RawIssuer)
	if len(cands) == 0 {
		return false, fmt.Errorf("apply CRL %v from %q: %w", crl.Number, crl.Issuer.CommonName, ErrUnknownCA)
	}
	var signers []*trustedCA
	var sigErr error
	for _, ca := range cands {
		if err := checkCRLSignature(crl, ca.key); err != nil {
			sigErr = err
			continue
		}
		signers = append(signers, ca)
	}
	if len(signers) == 0 {
		return false, fmt.Errorf("apply CRL %v from %q: %w", crl.Number, crl.Issuer.CommonName, sigErr)
	}
	if crl.ThisUpdate.After(now.Add(CRLClockSkew)) {
		return false, fmt.Errorf("apply CRL %v from %q: %w: issued at %v, now is %v", crl.Number, crl.Issuer.CommonName, ErrNotYetValid, crl.ThisUpdate, now)
	}

	var state *crlState // built lazily, shared by all signers
	replaced := make(map[*trustedCA]*trustedCA)
	for _, ca := range signers {
		if ca.crl != nil && crl.Number.Cmp(ca.crl.number) <= 0 {
			continue
		}
		if state == nil {
			state = newCRLState(crl)
		}
		next := *ca
		next.crl = state
		replaced[ca] = &next
	}
	if len(replaced) == 0 {
		return false, nil
	}
	cas := make([]*trustedCA, len(old.cas))
	for i, ca := range old.cas {
		if r, ok := replaced[ca]; ok {
			cas[i] = r
		} else {
			cas[i] = ca
		}
	}
	p.state.Store(buildState(cas))
	return true, nil
}

// newCRLState indexes the serials of crl.
func newCRLState(crl *x509.RevocationList) *crlState {
	st := &crlState{
		number:     new(big.Int).Set(crl.Number),
		nextUpdate: crl.NextUpdate,
		revoked:    make(map[string]struct{}, len(crl.RevokedCertificateEntries)),
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber != nil {
			st.revoked[serialKey(e.SerialNumber)] = struct{}{}
		}
	}
	return st
}

// CRLNumber returns the number of the CRL applied for the CA with the given
// fingerprint (see Fingerprint), or nil if none was applied or the CA is
// not in the pool. The result is a copy.
func (p *Pool) CRLNumber(caFingerprint string) *big.Int {
	ca := p.load().byFP[caFingerprint]
	if ca == nil || ca.crl == nil {
		return nil
	}
	return new(big.Int).Set(ca.crl.number)
}

// CRLNextUpdate returns the NextUpdate of the CRL applied for the CA with
// the given fingerprint, or the zero time if none. Callers may use it to
// decide when to fetch a newer CRL.
func (p *Pool) CRLNextUpdate(caFingerprint string) time.Time {
	ca := p.load().byFP[caFingerprint]
	if ca == nil || ca.crl == nil {
		return time.Time{}
	}
	return ca.crl.nextUpdate
}

// IsRevoked reports whether the certificate behind id is listed in the
// newest CRL applied for its CA (matched by id.CAFingerprint). Use it to
// re-check admitted peers after ApplyCRL. A nil id, or one whose CA is no
// longer trusted, is reported as not revoked: that is not a revocation.
func (p *Pool) IsRevoked(id *Identity) bool {
	if id == nil || id.Serial == nil {
		return false
	}
	ca := p.load().byFP[id.CAFingerprint]
	return ca != nil && ca.revoked(id.Serial)
}

// revoked reports whether serial is in the CA's applied CRL.
func (ca *trustedCA) revoked(serial *big.Int) bool {
	if ca.crl == nil {
		return false
	}
	_, ok := ca.crl.revoked[serialKey(serial)]
	return ok
}

// VerifyDER parses der and verifies it like Verify. Parse failures are
// ErrMalformed. Bytes already verified are not parsed again: what does
// not depend on time, revocation or the pool's CAs is taken from the
// signature cache.
func (p *Pool) VerifyDER(der []byte, now time.Time) (*Identity, error) {
	s := p.load()
	key := sha256.Sum256(der)
	if e, ca := p.lookup(s, key); e != nil && e.cert != nil {
		return finish(ca, e.cert, e.id.clone(), now)
	}
	// The cache keeps the parsed certificate, whose fields point into the
	// bytes parsed: they must not be the caller's, which may change.
	c, err := x509.ParseCertificate(bytes.Clone(der))
	if err != nil {
		return nil, fmt.Errorf("verify: %w: %v", ErrMalformed, err)
	}
	return p.verify(s, key, c, true, now)
}

// Verify checks that c is a valid gridnet node certificate at now and
// returns the identity it proves. A failure wraps exactly one sentinel;
// checks run in this order, and the first failing one decides:
//
//  1. issuer: signed (Ed25519) by a CA in the pool, found by authority key
//     identifier and issuer name — ErrUnknownCA otherwise, including a
//     forged or corrupted signature (the certificate is then simply not
//     signed by any trusted CA);
//  2. structure: gridnet's fields decode (see Describe), no unknown
//     critical extension — ErrMalformed;
//  3. key usage: not a CA, DigitalSignature, no CertSign/CRLSign, ClientAuth
//     and ServerAuth extended key usage — ErrKeyUsage;
//  4. domain: the spiffe URI host equals the CA's permitted URI domain
//     exactly (subdomains are not accepted, unlike crypto/x509's DNS-style
//     matching) — ErrOutsideDomain; and, if the CA permits only some IP
//     ranges (X.509 IP name constraints, see WithNetworks), every overlay
//     address lies in one of them — ErrOutsideNetworks, which refines
//     ErrOutsideDomain. A CA without IP constraints permits any address.
//  5. time: the certificate, then its CA, must be valid at now —
//     ErrNotYetValid or ErrExpired (an expired CA makes its certificates
//     ErrExpired: the CA is known, its time is over);
//  6. revocation: serial not in the CA's applied CRL — ErrRevoked.
func (p *Pool) Verify(c *x509.Certificate, now time.Time) (*Identity, error) {
	if c == nil {
		return nil, fmt.Errorf("verify: %w: nil certificate", ErrMalformed)
	}
	return p.verify(p.load(), sha256.Sum256(c.Raw), c, false, now)
}

// verify is Verify on snapshot s, for c whose DER hashes to key; owned
// says that nothing but the pool holds c and its bytes, so the cache may
// keep it parsed (VerifyDER). A certificate the caller parsed (Verify,
// used by one-shot commands) leaves only its signature in the cache.
func (p *Pool) verify(s *poolState, key [32]byte, c *x509.Certificate, owned bool, now time.Time) (*Identity, error) {
	e, ca := p.lookup(s, key)
	if e != nil && e.cert != nil {
		return finish(ca, c, e.id.clone(), now)
	}
	if ca == nil {
		if ca = s.issuer(c); ca == nil {
			return nil, fmt.Errorf("verify %q: %w: issuer %q", c.Subject.CommonName, ErrUnknownCA, c.Issuer.CommonName)
		}
		p.remember(key, &verifiedCert{caFingerprint: ca.fingerprint})
	}
	id, err := decodeIdentity(c)
	if err != nil {
		return nil, fmt.Errorf("verify %q: %w", c.Subject.CommonName, err)
	}
	if err := checkKeyUsage(c); err != nil {
		return nil, fmt.Errorf("verify %q: %w", id.Name, err)
	}
	if id.Domain != ca.domain {
		return nil, fmt.Errorf("verify %q: %w: domain %q, CA %q is for %q", id.Name, ErrOutsideDomain, id.Domain, ca.name, ca.domain)
	}
	if p, out := outsideNetworks(id.Addresses, ca.networks); out {
		return nil, fmt.Errorf("verify %q: %w: %v is not in %s, the networks of CA %q", id.Name, ErrOutsideNetworks, p.Addr(), formatNetworks(ca.networks), ca.name)
	}
	if owned {
		p.remember(key, &verifiedCert{caFingerprint: ca.fingerprint, cert: c, id: id.clone()})
		id.Raw = slices.Clone(id.Raw) // c's bytes stay the cache's own
	}
	return finish(ca, c, id, now)
}

// finish runs the checks that can change after the fixed ones passed:
// time (the certificate's, then its CA's) and revocation; it fills in the
// CA's fields of id.
func finish(ca *trustedCA, c *x509.Certificate, id *Identity, now time.Time) (*Identity, error) {
	if err := checkTime("certificate", c, now); err != nil {
		return nil, fmt.Errorf("verify %q: %w", id.Name, err)
	}
	if err := checkTime("CA "+ca.name, ca.cert, now); err != nil {
		return nil, fmt.Errorf("verify %q: %w", id.Name, err)
	}
	if ca.revoked(c.SerialNumber) {
		return nil, fmt.Errorf("verify %q: %w: serial %x in CRL %v of CA %q", id.Name, ErrRevoked, c.SerialNumber, ca.crl.number, ca.name)
	}
	id.CAName = ca.name
	id.CAFingerprint = ca.fingerprint
	return id, nil
}

// lookup returns the signature cache's entry for key and the CA it names,
// while that CA is in s; nil, nil otherwise.
func (p *Pool) lookup(s *poolState, key [32]byte) (*verifiedCert, *trustedCA) {
	cache := p.verified.Load()
	if cache == nil {
		return nil, nil
	}
	v, ok := cache.m.Load(key)
	if !ok {
		return nil, nil
	}
	e := v.(*verifiedCert)
	ca := s.byFP[e.caFingerprint]
	if ca == nil {
		return nil, nil
	}
	return e, ca
}

// remember stores e for key in the signature cache, starting a fresh
// cache when it is full.
func (p *Pool) remember(key [32]byte, e *verifiedCert) {
	cache := p.verified.Load()
	if cache == nil || cache.n.Load() >= signatureCacheSize {
		fresh := &signatureCache{}
		if !p.verified.CompareAndSwap(cache, fresh) {
			return
		}
		cache = fresh
	}
	if _, loaded := cache.m.Swap(key, e); !loaded {
		cache.n.Add(1)
	}
}

// issuer returns the trusted CA whose key verifies c's signature, or nil.
// It follows the same candidate rule as candidates without allocating.
func (s *poolState) issuer(c *x509.Certificate) *trustedCA {
	if c.SignatureAlgorithm != x509.PureEd25519 {
		return nil
	}
	matched := false
	if len(c.AuthorityKeyId) > 0 {
		for _, ca := range s.byKeyID[string(c.AuthorityKeyId)] {
			if string(ca.cert.RawSubject) != string(c.RawIssuer) {
				continue
			}
			matched = true
			if ed25519.Verify(ca.key, c.RawTBSCertificate, c.Signature) {
				return ca
			}
		}
	}
	if matched {
		return nil
	}
	for _, ca := range s.cas {
		if string(ca.cert.RawSubject) == string(c.RawIssuer) && ed25519.Verify(ca.key, c.RawTBSCertificate, c.Signature) {
			return ca
		}
	}
	return nil
}

// checkTime checks now against c's validity period.
func checkTime(what string, c *x509.Certificate, now time.Time) error {
	if now.Before(c.NotBefore) {
		return fmt.Errorf("%w: %s valid from %v, now is %v", ErrNotYetValid, what, c.NotBefore, now)
	}
	if now.After(c.NotAfter) {
		return fmt.Errorf("%w: %s expired at %v, now is %v", ErrExpired, what, c.NotAfter, now)
	}
	return nil
}
