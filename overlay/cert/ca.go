package cert

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"time"
)

// Validity defaults and clock tolerance.
const (
	// DefaultCAValidity is used by NewCA when validity is 0. One year keeps
	// CA rotation a practised, routine operation rather than a once-a-decade
	// emergency; federation lets old and new CA overlap in a Pool.
	DefaultCAValidity = 365 * 24 * time.Hour
	// DefaultNodeValidity is used by Issue when the request's Validity is 0.
	// 90 days bounds the life of a stolen identity key even when a CRL
	// does not reach every node; renewal is automatic.
	DefaultNodeValidity = 90 * 24 * time.Hour
	// Backdate is subtracted from "now" for NotBefore of every certificate
	// gridnet issues, so a peer whose clock runs slightly behind the CA's
	// does not see a fresh certificate as not yet valid.
	Backdate = time.Minute
	// serialBits is the size of random certificate serial numbers: 128 bits
	// is well above the 64 bits of entropy CA/B requires and still fits the
	// 20-octet limit of RFC 5280 with its sign byte.
	serialBits = 128
	// keyIDLen is the length of Subject/Authority key identifiers: the
	// leftmost 160 bits of SHA-256 over the public key (RFC 7093, method 1).
	keyIDLen = 20
)

// ErrInvalidCA is returned when a certificate offered as a CA (to LoadCA,
// NewPool or Pool.AddCA) is not a well-formed gridnet CA, or a private key
// does not match its CA certificate.
var ErrInvalidCA = errors.New("not a valid gridnet CA")

// CA is a gridnet certificate authority for one governance domain: an
// Ed25519 key and its self-signed certificate, whose X.509 name constraints
// permit exactly the URI domain of the governance domain and, if the CA was
// made WithNetworks, only the overlay networks given there.
type CA struct {
	// Cert is the self-signed CA certificate.
	Cert *x509.Certificate
	// Key is the CA's Ed25519 signing key.
	Key ed25519.PrivateKey
}

// NewCA creates a CA with a fresh Ed25519 key. validity 0 means
// DefaultCAValidity; NotBefore is now-Backdate. WithNetworks restricts the
// overlay addresses its certificates may carry.
func NewCA(name, domain string, validity time.Duration, now time.Time, opts ...CAOption) (*CA, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	return NewCAFromKey(key, name, domain, validity, now, opts...)
}

// NewCAFromKey is NewCA with an existing key, for renewing a CA
// certificate without changing the key (certificates issued under the old
// CA certificate still chain to the new one, since both have the same key,
// subject and key identifier). Pass the old CA's networks (CA.Networks)
// with WithNetworks to keep its constraint.
func NewCAFromKey(key ed25519.PrivateKey, name, domain string, validity time.Duration, now time.Time, opts ...CAOption) (*CA, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("new CA: private key is %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	if err := ValidateCAName(name); err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	if err := ValidateDomain(domain); err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	if validity < 0 {
		return nil, fmt.Errorf("new CA: negative validity %v", validity)
	}
	var o caOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := validateNetworks(o.networks); err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	if validity == 0 {
		validity = DefaultCAValidity
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	pub := key.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber:                serial,
		Subject:                     pkix.Name{CommonName: name},
		NotBefore:                   now.Add(-Backdate),
		NotAfter:                    now.Add(validity),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  0,
		MaxPathLenZero:              true,
		SubjectKeyId:                keyID(pub),
		PermittedURIDomains:         []string{domain},
		PermittedIPRanges:           ipNets(o.networks),
		PermittedDNSDomainsCritical: true, // marks the whole NameConstraints extension critical
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("new CA: sign certificate: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA: parse own certificate: %w", err)
	}
	return &CA{Cert: c, Key: key}, nil
}

// LoadCA builds a CA from its PEM (or DER) certificate and private key,
// checking that the certificate is a gridnet CA and that key matches it.
func LoadCA(certPEM []byte, key ed25519.PrivateKey) (*CA, error) {
	c, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	info, err := inspectCA(c)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("load CA: %w: private key is %d bytes, want %d", ErrInvalidCA, len(key), ed25519.PrivateKeySize)
	}
	if !info.key.Equal(key.Public()) {
		return nil, fmt.Errorf("load CA: %w: private key does not match certificate %q", ErrInvalidCA, c.Subject.CommonName)
	}
	return &CA{Cert: c, Key: key}, nil
}

// Domain returns the governance domain: the single permitted URI domain of
// the CA certificate ("" for a CA value not built by NewCA or LoadCA).
func (ca *CA) Domain() string {
	if ca == nil || ca.Cert == nil || len(ca.Cert.PermittedURIDomains) != 1 {
		return ""
	}
	return ca.Cert.PermittedURIDomains[0]
}

// Name returns the CA's common name.
func (ca *CA) Name() string {
	if ca == nil || ca.Cert == nil {
		return ""
	}
	return ca.Cert.Subject.CommonName
}

// check verifies that ca is usable for signing.
func (ca *CA) check() (caInfo, error) {
	if ca == nil || ca.Cert == nil {
		return caInfo{}, fmt.Errorf("%w: nil CA", ErrInvalidCA)
	}
	info, err := inspectCA(ca.Cert)
	if err != nil {
		return caInfo{}, err
	}
	if len(ca.Key) != ed25519.PrivateKeySize || !info.key.Equal(ca.Key.Public()) {
		return caInfo{}, fmt.Errorf("%w: private key does not match certificate %q", ErrInvalidCA, ca.Cert.Subject.CommonName)
	}
	return info, nil
}

// caInfo is what verification needs from a CA certificate, extracted once.
type caInfo struct {
	cert        *x509.Certificate
	key         ed25519.PublicKey
	domain      string
	fingerprint string
	// networks are the permitted IP ranges; nil means any address.
	networks []netip.Prefix
}

// inspectCA checks that c is a gridnet CA: a v3 CA certificate with an
// Ed25519 key, CertSign and CRLSign key usage, no unknown critical
// extension, a valid self-signature, exactly one permitted URI domain
// that is a valid gridnet domain, and IP name constraints (if any) that are
// permitted ranges only. It does not look at the validity period.
func inspectCA(c *x509.Certificate) (caInfo, error) {
	if c == nil {
		return caInfo{}, fmt.Errorf("%w: nil certificate", ErrInvalidCA)
	}
	fail := func(format string, args ...any) (caInfo, error) {
		return caInfo{}, fmt.Errorf("%w: %q: %s", ErrInvalidCA, c.Subject.CommonName, fmt.Sprintf(format, args...))
	}
	key, ok := c.PublicKey.(ed25519.PublicKey)
	if !ok || len(key) != ed25519.PublicKeySize {
		return fail("public key is %v, want Ed25519", c.PublicKeyAlgorithm)
	}
	if !c.BasicConstraintsValid || !c.IsCA {
		return fail("not a CA certificate")
	}
	const need = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	if c.KeyUsage&need != need {
		return fail("key usage lacks CertSign or CRLSign")
	}
	if len(c.UnhandledCriticalExtensions) > 0 {
		return fail("unknown critical extension %v", c.UnhandledCriticalExtensions[0])
	}
	if string(c.RawIssuer) != string(c.RawSubject) {
		return fail("not self-signed")
	}
	if c.SignatureAlgorithm != x509.PureEd25519 || !ed25519.Verify(key, c.RawTBSCertificate, c.Signature) {
		return fail("self-signature does not verify")
	}
	if len(c.PermittedURIDomains) != 1 {
		return fail("has %d permitted URI domains, want exactly 1", len(c.PermittedURIDomains))
	}
	domain := c.PermittedURIDomains[0]
	if err := ValidateDomain(domain); err != nil {
		return fail("%v", err)
	}
	if len(c.ExcludedIPRanges) > 0 {
		return fail("excluded IP ranges are not supported, only permitted ones")
	}
	networks, err := prefixesOf(c.PermittedIPRanges)
	if err != nil {
		return fail("%v", err)
	}
	return caInfo{cert: c, key: key, domain: domain, fingerprint: Fingerprint(c.Raw), networks: networks}, nil
}

// Fingerprint returns the lowercase hex SHA-256 of der, the form used for
// Identity.Fingerprint, Identity.CAFingerprint and Pool.CRLNumber.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// keyID derives a key identifier from an Ed25519 public key (RFC 7093,
// method 1: leftmost 160 bits of SHA-256 of the subjectPublicKey bits).
func keyID(pub ed25519.PublicKey) []byte {
	sum := sha256.Sum256(pub)
	return sum[:keyIDLen]
}

// randomSerial returns a positive random serial of serialBits bits.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), serialBits)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("random serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}
