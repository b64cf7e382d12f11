package cert

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"time"
)

// SPIFFEScheme is the URI scheme of a node certificate's identity URI,
// spiffe://DOMAIN/NAME.
const SPIFFEScheme = "spiffe"

// IssueRequest describes a node certificate to issue.
type IssueRequest struct {
	// Name is the node name (CN and path of the spiffe URI); see
	// ValidateName.
	Name string
	// IdentityKey is the node's Ed25519 public key, the certificate's
	// subject public key.
	IdentityKey ed25519.PublicKey
	// WireGuardKey is the node's X25519 public key; all-zero is refused.
	WireGuardKey [32]byte
	// Addresses are the node's overlay addresses with the prefix length of
	// their overlay network (e.g. 100.64.0.2/10). May be empty.
	Addresses []netip.Prefix
	// Groups are the node's groups; sorted and de-duplicated on issue.
	Groups []string
	// Attributes are key=value claims; may be nil.
	Attributes map[string]string
	// Validity is the certificate lifetime; 0 means DefaultNodeValidity.
	// It is capped at the CA certificate's NotAfter.
	Validity time.Duration
}

// SPIFFEID returns the identity URI of node name in domain.
func SPIFFEID(domain, name string) *url.URL {
	return &url.URL{Scheme: SPIFFEScheme, Host: domain, Path: "/" + name}
}

// Issue signs a node certificate for req. Every field is validated; the
// certificate is valid from now-Backdate (but not before the CA) for
// req.Validity, capped at the CA's NotAfter. Issuing with a CA that is
// not valid at now fails. An address outside the CA's networks (see
// WithNetworks), or whose prefix is wider than the network holding it, is
// refused with ErrOutsideNetworks; an address that is not a host address
// of its own prefix (network or broadcast address, see checkHostAddress)
// with ErrInvalidName, whether or not the CA has networks.
func (ca *CA) Issue(req IssueRequest, now time.Time) (*x509.Certificate, error) {
	info, err := ca.check()
	if err != nil {
		return nil, fmt.Errorf("issue: %w", err)
	}
	fail := func(err error) (*x509.Certificate, error) {
		return nil, fmt.Errorf("issue %q: %w", req.Name, err)
	}
	if err := ValidateName(req.Name); err != nil {
		return fail(err)
	}
	if len(req.IdentityKey) != ed25519.PublicKeySize {
		return fail(fmt.Errorf("identity key is %d bytes, want %d", len(req.IdentityKey), ed25519.PublicKeySize))
	}
	if req.WireGuardKey == ([32]byte{}) {
		return fail(fmt.Errorf("WireGuard key is all zero"))
	}
	if err := validateAddresses(req.Addresses); err != nil {
		return fail(err)
	}
	if err := checkIssueAddresses(req.Addresses, info.networks); err != nil {
		return fail(err)
	}
	groups, err := normalizeGroups(req.Groups)
	if err != nil {
		return fail(err)
	}
	if err := validateAttributes(req.Attributes); err != nil {
		return fail(err)
	}
	validity := req.Validity
	switch {
	case validity < 0:
		return fail(fmt.Errorf("negative validity %v", validity))
	case validity == 0:
		validity = DefaultNodeValidity
	}

	caCert := info.cert
	if now.Before(caCert.NotBefore) {
		return fail(fmt.Errorf("CA %q not valid until %v", caCert.Subject.CommonName, caCert.NotBefore))
	}
	if !now.Before(caCert.NotAfter) {
		return fail(fmt.Errorf("CA %q expired at %v", caCert.Subject.CommonName, caCert.NotAfter))
	}
	notBefore := now.Add(-Backdate)
	if notBefore.Before(caCert.NotBefore) {
		notBefore = caCert.NotBefore
	}
	notAfter := now.Add(validity)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}

	exts, ips, err := nodeExtensions(req.WireGuardKey, req.Addresses, req.Attributes)
	if err != nil {
		return fail(err)
	}
	serial, err := randomSerial()
	if err != nil {
		return fail(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               nodeSubject(req.Name, groups),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          keyID(req.IdentityKey),
		AuthorityKeyId:        caCert.SubjectKeyId,
		URIs:                  []*url.URL{SPIFFEID(info.domain, req.Name)},
		IPAddresses:           ips,
		ExtraExtensions:       exts,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, req.IdentityKey, ca.Key)
	if err != nil {
		return fail(fmt.Errorf("sign: %w", err))
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return fail(fmt.Errorf("parse issued certificate: %w", err))
	}
	return c, nil
}

// Attribute type OIDs of the subject name (RFC 4519).
var (
	oidCommonName   = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidOrganization = asn1.ObjectIdentifier{2, 5, 4, 10}
)

// nodeSubject builds the subject "O=g1, O=g2, …, CN=name": one
// single-valued RDN per group, in sorted order, then the CN. (Setting
// pkix.Name.Organization instead would put all groups into one multi-valued
// RDN, which DER then orders by encoding rather than by name.) Parsers
// see the same Organization and CommonName either way.
func nodeSubject(name string, groups []string) pkix.Name {
	rdns := make([]pkix.AttributeTypeAndValue, 0, len(groups)+1)
	for _, g := range groups {
		rdns = append(rdns, pkix.AttributeTypeAndValue{Type: oidOrganization, Value: g})
	}
	rdns = append(rdns, pkix.AttributeTypeAndValue{Type: oidCommonName, Value: name})
	return pkix.Name{ExtraNames: rdns}
}

// nodeExtensions builds gridnet's extensions and the IP SAN list for a
// node certificate. Inputs are already validated.
func nodeExtensions(wg [32]byte, addrs []netip.Prefix, attrs map[string]string) ([]pkix.Extension, []net.IP, error) {
	wgExt, err := marshalWireGuardKey(wg)
	if err != nil {
		return nil, nil, err
	}
	exts := []pkix.Extension{wgExt}
	var ips []net.IP
	if len(addrs) > 0 {
		ips = make([]net.IP, len(addrs))
		bits := make([]int, len(addrs))
		for i, p := range addrs {
			ips[i] = net.IP(p.Addr().AsSlice())
			bits[i] = p.Bits()
		}
		ext, err := marshalPrefixLengths(bits)
		if err != nil {
			return nil, nil, err
		}
		exts = append(exts, ext)
	}
	if len(attrs) > 0 {
		ext, err := marshalAttributes(attrs)
		if err != nil {
			return nil, nil, err
		}
		exts = append(exts, ext)
	}
	return exts, ips, nil
}

// IssueFromCSR issues a certificate for a parsed CSR. The CSR's raw DER is
// parsed and its signature verified again, and the result must match the
// CSR's fields, so a CSR value that was altered after ParseCSR (or never
// came from it) is refused with ErrBadSignature or ErrMalformed.
func (ca *CA) IssueFromCSR(csr *CSR, addrs []netip.Prefix, groups []string, attrs map[string]string, validity time.Duration, now time.Time) (*x509.Certificate, error) {
	if csr == nil {
		return nil, fmt.Errorf("issue from CSR: %w: nil CSR", ErrMalformed)
	}
	checked, err := ParseCSR(csr.Raw)
	if err != nil {
		return nil, fmt.Errorf("issue from CSR: %w", err)
	}
	if checked.Name != csr.Name || !checked.IdentityKey.Equal(csr.IdentityKey) || checked.WireGuardKey != csr.WireGuardKey {
		return nil, fmt.Errorf("issue from CSR %q: %w: fields differ from the signed request", csr.Name, ErrBadSignature)
	}
	return ca.Issue(IssueRequest{
		Name:         checked.Name,
		IdentityKey:  checked.IdentityKey,
		WireGuardKey: checked.WireGuardKey,
		Addresses:    addrs,
		Groups:       groups,
		Attributes:   attrs,
		Validity:     validity,
	}, now)
}

// Describe decodes every gridnet field of c without checking its
// signature, chain, validity period, key usage or revocation — for
// displaying a certificate (`cert show`), never for admitting a peer. The
// CA fingerprint is left empty (no CA is known here); CAName is the issuer
// CN. Structural problems are reported as ErrMalformed.
func Describe(c *x509.Certificate) (*Identity, error) {
	return decodeIdentity(c)
}

// decodeIdentity extracts and validates gridnet's fields from c. Any
// failure is wrapped ErrMalformed.
func decodeIdentity(c *x509.Certificate) (*Identity, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil certificate", ErrMalformed)
	}
	bad := func(format string, args ...any) (*Identity, error) {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
	if len(c.UnhandledCriticalExtensions) > 0 {
		return bad("unknown critical extension %v", c.UnhandledCriticalExtensions[0])
	}
	idKey, ok := c.PublicKey.(ed25519.PublicKey)
	if !ok || len(idKey) != ed25519.PublicKeySize {
		return bad("public key is %v, want Ed25519", c.PublicKeyAlgorithm)
	}
	if c.SerialNumber == nil || c.SerialNumber.Sign() <= 0 {
		return bad("serial number must be positive")
	}
	cns := 0
	for _, atv := range c.Subject.Names {
		if atv.Type.Equal(oidCommonName) {
			cns++
		}
	}
	if cns != 1 {
		return bad("subject has %d CNs, want 1", cns)
	}
	name := c.Subject.CommonName
	if err := ValidateName(name); err != nil {
		return bad("CN: %v", err)
	}
	if len(c.URIs) != 1 {
		return bad("has %d URI SANs, want exactly one spiffe URI", len(c.URIs))
	}
	u := c.URIs[0]
	if u.Scheme != SPIFFEScheme || u.Opaque != "" || u.User != nil || u.RawQuery != "" ||
		u.Fragment != "" || u.RawPath != "" || u.Port() != "" || u.ForceQuery {
		return bad("URI SAN %q is not spiffe://DOMAIN/NAME", u.String())
	}
	if err := ValidateDomain(u.Host); err != nil {
		return bad("URI SAN %q: %v", u.String(), err)
	}
	if u.Path != "/"+name {
		return bad("URI SAN %q does not name CN %q", u.String(), name)
	}

	ext, err := findExtensions(c.Extensions)
	if err != nil {
		return bad("%v", err)
	}
	if ext.wireGuard == nil {
		return bad("no WireGuard key extension")
	}
	wg, err := unmarshalWireGuardKey(ext.wireGuard)
	if err != nil {
		return bad("%v", err)
	}

	var attrs map[string]string
	if ext.attributes != nil {
		if attrs, err = unmarshalAttributes(ext.attributes); err != nil {
			return bad("%v", err)
		}
		if len(attrs) == 0 {
			attrs = nil
		}
	}

	addrs, err := decodeAddresses(c.IPAddresses, ext.prefixLengths)
	if err != nil {
		return bad("%v", err)
	}

	groups, err := decodeGroups(c.Subject.Organization)
	if err != nil {
		return bad("%v", err)
	}

	return &Identity{
		Name:          name,
		Domain:        u.Host,
		Groups:        groups,
		Attributes:    attrs,
		Addresses:     addrs,
		WireGuardKey:  wg,
		IdentityKey:   idKey,
		NotBefore:     c.NotBefore,
		NotAfter:      c.NotAfter,
		Serial:        c.SerialNumber,
		Fingerprint:   Fingerprint(c.Raw),
		CAName:        c.Issuer.CommonName,
		CAFingerprint: "",
		Raw:           c.Raw,
	}, nil
}

// decodeAddresses pairs IP SANs with the prefix lengths extension.
func decodeAddresses(ips []net.IP, prefixExt []byte) ([]netip.Prefix, error) {
	if prefixExt == nil {
		if len(ips) > 0 {
			return nil, fmt.Errorf("%d IP SANs but no prefix lengths extension", len(ips))
		}
		return nil, nil
	}
	bits, err := unmarshalPrefixLengths(prefixExt)
	if err != nil {
		return nil, err
	}
	if len(bits) != len(ips) {
		return nil, fmt.Errorf("%d IP SANs but %d prefix lengths", len(ips), len(bits))
	}
	if len(ips) == 0 {
		return nil, nil
	}
	addrs := make([]netip.Prefix, len(ips))
	for i, ip := range ips {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return nil, fmt.Errorf("IP SAN %d has %d bytes", i, len(ip))
		}
		p := netip.PrefixFrom(a, bits[i])
		if !p.IsValid() {
			return nil, fmt.Errorf("prefix length %d too long for %v", bits[i], a)
		}
		addrs[i] = p
	}
	if err := validateAddresses(addrs); err != nil {
		return nil, err
	}
	return addrs, nil
}

// decodeGroups validates the O entries and returns them sorted (nil when
// there are none). Duplicates are malformed: Issue never writes them.
func decodeGroups(orgs []string) ([]string, error) {
	if len(orgs) == 0 {
		return nil, nil
	}
	groups, err := normalizeGroups(orgs)
	if err != nil {
		return nil, err
	}
	if len(groups) != len(orgs) {
		return nil, fmt.Errorf("duplicate group")
	}
	return groups, nil
}

// hasEKU reports whether list contains want.
func hasEKU(list []x509.ExtKeyUsage, want x509.ExtKeyUsage) bool {
	for _, e := range list {
		if e == want {
			return true
		}
	}
	return false
}

// checkKeyUsage requires a node (not CA) certificate usable for signing
// handshakes as both client and server. Failures wrap ErrKeyUsage.
func checkKeyUsage(c *x509.Certificate) error {
	switch {
	case c.IsCA:
		return fmt.Errorf("%w: leaf certificate is a CA", ErrKeyUsage)
	case c.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return fmt.Errorf("%w: key usage lacks DigitalSignature", ErrKeyUsage)
	case c.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return fmt.Errorf("%w: leaf key usage allows certificate or CRL signing", ErrKeyUsage)
	case !hasEKU(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth):
		return fmt.Errorf("%w: extended key usage lacks ClientAuth", ErrKeyUsage)
	case !hasEKU(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth):
		return fmt.Errorf("%w: extended key usage lacks ServerAuth", ErrKeyUsage)
	}
	return nil
}
