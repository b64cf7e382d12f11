package cert

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
)

// CSR is a verified PKCS#10 certificate request from a node: proof that the
// holder of IdentityKey asks for a certificate for Name and WireGuardKey.
// Values are produced by ParseCSR; IssueFromCSR re-verifies Raw.
type CSR struct {
	// Name is the requested node name (the request's CN).
	Name string
	// IdentityKey is the node's Ed25519 identity key, which signed the
	// request.
	IdentityKey ed25519.PublicKey
	// WireGuardKey is the node's X25519 public key from the gridnet
	// WireGuard key extension.
	WireGuardKey [32]byte
	// Raw is the request DER.
	Raw []byte
}

// CreateCSR builds a PKCS#10 request, signed by the node's identity key,
// for a certificate with CN name. The WireGuard public key travels in the
// gridnet WireGuard key extension inside the extensionRequest attribute.
// It returns DER; see EncodeCSRPEM.
func CreateCSR(name string, identity ed25519.PrivateKey, wgPublic [32]byte) ([]byte, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	if len(identity) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("create CSR %q: identity key is %d bytes, want %d", name, len(identity), ed25519.PrivateKeySize)
	}
	if wgPublic == ([32]byte{}) {
		return nil, fmt.Errorf("create CSR %q: WireGuard key is all zero", name)
	}
	wgExt, err := marshalWireGuardKey(wgPublic)
	if err != nil {
		return nil, fmt.Errorf("create CSR %q: %w", name, err)
	}
	tmpl := &x509.CertificateRequest{
		Subject:         pkix.Name{CommonName: name},
		ExtraExtensions: []pkix.Extension{wgExt},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, identity)
	if err != nil {
		return nil, fmt.Errorf("create CSR %q: %w", name, err)
	}
	return der, nil
}

// ParseCSR parses a DER request and verifies it: the self-signature must
// verify (ErrBadSignature otherwise), and the request must have an Ed25519
// key, a valid node name as CN, exactly one WireGuard key extension and no
// unknown critical extension (ErrMalformed otherwise). Other gridnet
// extensions in a request are ignored: addresses, groups and attributes
// are the CA's decision. Use ParseCSRPEM for PEM input.
func ParseCSR(der []byte) (*CSR, error) {
	r, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w: %v", ErrMalformed, err)
	}
	key, ok := r.PublicKey.(ed25519.PublicKey)
	if !ok || len(key) != ed25519.PublicKeySize || r.SignatureAlgorithm != x509.PureEd25519 {
		return nil, fmt.Errorf("parse CSR: %w: key %v signed with %v, want Ed25519", ErrMalformed, r.PublicKeyAlgorithm, r.SignatureAlgorithm)
	}
	if !ed25519.Verify(key, r.RawTBSCertificateRequest, r.Signature) {
		return nil, fmt.Errorf("parse CSR: %w: request self-signature does not verify", ErrBadSignature)
	}
	name := r.Subject.CommonName
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("parse CSR: %w: CN: %v", ErrMalformed, err)
	}
	for _, e := range r.Extensions {
		if e.Critical && !e.Id.Equal(OIDWireGuardKey) {
			return nil, fmt.Errorf("parse CSR %q: %w: unknown critical extension %v", name, ErrMalformed, e.Id)
		}
	}
	ext, err := findExtensions(r.Extensions)
	if err != nil {
		return nil, fmt.Errorf("parse CSR %q: %w: %v", name, ErrMalformed, err)
	}
	if ext.wireGuard == nil {
		return nil, fmt.Errorf("parse CSR %q: %w: no WireGuard key extension", name, ErrMalformed)
	}
	wg, err := unmarshalWireGuardKey(ext.wireGuard)
	if err != nil {
		return nil, fmt.Errorf("parse CSR %q: %w: %v", name, ErrMalformed, err)
	}
	if wg == ([32]byte{}) {
		return nil, fmt.Errorf("parse CSR %q: %w: WireGuard key is all zero", name, ErrMalformed)
	}
	return &CSR{Name: name, IdentityKey: key, WireGuardKey: wg, Raw: r.Raw}, nil
}
