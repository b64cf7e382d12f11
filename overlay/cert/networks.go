package cert

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// MaxNetworks bounds the overlay networks one CA may permit.
const MaxNetworks = 32

// ErrNotIssuer is returned by CA.CheckIssued for a certificate that this CA
// did not sign.
var ErrNotIssuer = errors.New("certificate not issued by this CA")

// CAOption configures NewCA and NewCAFromKey.
type CAOption func(*caOptions)

// caOptions collects the CAOptions of one NewCA call.
type caOptions struct {
	networks []netip.Prefix
}

// WithNetworks restricts the CA to the given overlay networks: its
// certificate carries them as X.509 IP name constraints (permitted
// subtrees), Issue refuses node addresses outside them, and Pool.Verify
// refuses certificates of this CA with an address outside them. Networks
// must be valid prefixes without host bits (100.64.0.0/10, not
// 100.64.0.1/10), at most MaxNetworks, not IPv4-mapped IPv6, and must not
// overlap. As in X.509, a CA with only IPv4 networks permits no IPv6
// address, and the other way round. Without this option a CA permits any
// address, as CAs made before the option existed do.
func WithNetworks(networks ...netip.Prefix) CAOption {
	return func(o *caOptions) { o.networks = append(o.networks, networks...) }
}

// validateNetworks checks the networks of WithNetworks. Failures wrap
// ErrInvalidName.
func validateNetworks(networks []netip.Prefix) error {
	if len(networks) > MaxNetworks {
		return fmt.Errorf("%w: %d networks, at most %d", ErrInvalidName, len(networks), MaxNetworks)
	}
	for i, n := range networks {
		switch {
		case !n.IsValid():
			return fmt.Errorf("%w: network %v: invalid prefix", ErrInvalidName, n)
		case n.Addr().Is4In6():
			return fmt.Errorf("%w: network %v: IPv4-mapped IPv6 is not allowed, use the IPv4 form", ErrInvalidName, n)
		case n != n.Masked():
			return fmt.Errorf("%w: network %v has host bits set (did you mean %v?)", ErrInvalidName, n, n.Masked())
		}
		for _, m := range networks[:i] {
			if n.Overlaps(m) {
				return fmt.Errorf("%w: networks %v and %v overlap", ErrInvalidName, m, n)
			}
		}
	}
	return nil
}

// ipNets converts prefixes to the form x509.Certificate.PermittedIPRanges
// takes: 4-byte addresses and masks for IPv4, 16-byte for IPv6.
func ipNets(networks []netip.Prefix) []*net.IPNet {
	if len(networks) == 0 {
		return nil
	}
	out := make([]*net.IPNet, len(networks))
	for i, n := range networks {
		out[i] = &net.IPNet{IP: net.IP(n.Addr().AsSlice()), Mask: net.CIDRMask(n.Bits(), n.Addr().BitLen())}
	}
	return out
}

// prefixesOf converts parsed X.509 IP name constraints to prefixes with
// their host bits cleared (X.509 compares addresses under the mask, so
// 100.64.0.1/10 constrains like 100.64.0.0/10).
func prefixesOf(nets []*net.IPNet) ([]netip.Prefix, error) {
	if len(nets) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, len(nets))
	for i, n := range nets {
		if n == nil {
			return nil, fmt.Errorf("IP constraint %d is empty", i)
		}
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			return nil, fmt.Errorf("IP constraint %d has a %d-byte address", i, len(n.IP))
		}
		ones, bits := n.Mask.Size()
		if bits == 0 || bits != a.BitLen() {
			return nil, fmt.Errorf("IP constraint %v: mask %v does not fit the address", a, n.Mask)
		}
		out[i] = netip.PrefixFrom(a, ones).Masked()
	}
	return out, nil
}

// Networks returns the overlay networks the CA permits (its X.509 IP name
// constraints), or nil when it permits any address. The result is a copy.
func (ca *CA) Networks() []netip.Prefix {
	if ca == nil || ca.Cert == nil {
		return nil
	}
	n, err := prefixesOf(ca.Cert.PermittedIPRanges)
	if err != nil {
		return nil
	}
	return n
}

// CANetworks returns the overlay networks a CA certificate permits, nil
// for none (any address), without checking anything else about c — for
// display (`cert show`).
func CANetworks(c *x509.Certificate) ([]netip.Prefix, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil certificate", ErrMalformed)
	}
	n, err := prefixesOf(c.PermittedIPRanges)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return n, nil
}

// formatNetworks joins networks for messages.
func formatNetworks(networks []netip.Prefix) string {
	s := make([]string, len(networks))
	for i, n := range networks {
		s[i] = n.String()
	}
	return strings.Join(s, ", ")
}

// outsideNetworks returns the first address of addrs that no network
// contains; ok is false when every address is inside one (or when there
// are no networks, which means no constraint).
func outsideNetworks(addrs, networks []netip.Prefix) (netip.Prefix, bool) {
	if len(networks) == 0 {
		return netip.Prefix{}, false
	}
	for _, p := range addrs {
		if containing(networks, p.Addr()) == nil {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// containing returns the network that holds a, or nil.
func containing(networks []netip.Prefix, a netip.Addr) *netip.Prefix {
	for i := range networks {
		if networks[i].Contains(a) {
			return &networks[i]
		}
	}
	return nil
}

// checkIssueAddresses applies the CA's networks and the host-address rule
// to the addresses of a certificate about to be issued:
//
//   - with networks, each address must lie inside one of them
//     (ErrOutsideNetworks), and its prefix must not be wider than that
//     network: the prefix names the overlay network the node is in, and a
//     CA cannot put a node into a network larger than its own;
//   - an address must be a host address of its own prefix and, with
//     networks, of the CA network holding it (see checkHostAddress;
//     ErrInvalidName): 100.127.255.255/32 is one host to its holder but
//     the broadcast address to every node configured with 100.64.0.0/10.
func checkIssueAddresses(addrs, networks []netip.Prefix) error {
	for _, p := range addrs {
		if len(networks) > 0 {
			n := containing(networks, p.Addr())
			if n == nil {
				return fmt.Errorf("%w: %v is not in %s", ErrOutsideNetworks, p, formatNetworks(networks))
			}
			if p.Bits() < n.Bits() {
				return fmt.Errorf("%w: %v claims the network %v, wider than the CA's %v", ErrOutsideNetworks, p, p.Masked(), *n)
			}
			if err := checkHostAddress(netip.PrefixFrom(p.Addr(), n.Bits())); err != nil {
				return err
			}
		}
		if err := checkHostAddress(p); err != nil {
			return err
		}
	}
	return nil
}

// checkHostAddress refuses an address that is not a host address of its
// own prefix. IPv4: the network address (host bits all zero) and the
// broadcast address (host bits all one) of prefixes up to /30; a /31 has
// two host addresses and no broadcast (RFC 3021), a /32 is the one host.
// IPv6 has no broadcast: refused is the Subnet-Router anycast address
// (host bits all zero, RFC 4291 2.6.1) of prefixes up to /126; a /127
// (RFC 6164) and a /128 are all hosts. Failures wrap ErrInvalidName.
func checkHostAddress(p netip.Prefix) error {
	a := p.Addr()
	if a.BitLen()-p.Bits() < 2 {
		return nil
	}
	if a == p.Masked().Addr() {
		if a.Is4() {
			return fmt.Errorf("%w: %v is the network address of %v, not a node address", ErrInvalidName, p, p.Masked())
		}
		return fmt.Errorf("%w: %v is the Subnet-Router anycast address of %v, not a node address", ErrInvalidName, p, p.Masked())
	}
	if a.Is4() && a == lastAddr(p) {
		return fmt.Errorf("%w: %v is the broadcast address of %v, not a node address", ErrInvalidName, p, p.Masked())
	}
	return nil
}

// lastAddr returns the address of p with every host bit set.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := range b {
		hostBits := min(max((i+1)*8-p.Bits(), 0), 8)
		b[i] |= byte(1<<hostBits - 1)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// CheckIssued reports whether c was issued by this CA: c must name this
// CA's subject as its issuer, carry this CA's key identifier as its
// authority key identifier (when it has one), and its signature must
// verify with this CA's key. A CA certificate renewed with the same key and
// name counts as the same CA. A failure wraps ErrNotIssuer and names both
// issuers. Use it before revoking: a serial in this CA's CRL means nothing
// for a certificate another CA issued.
func (ca *CA) CheckIssued(c *x509.Certificate) error {
	info, err := ca.check()
	if err != nil {
		return fmt.Errorf("check issuer: %w", err)
	}
	if c == nil {
		return fmt.Errorf("check issuer: %w: nil certificate", ErrMalformed)
	}
	keyIDText := func(id []byte) string {
		if len(id) == 0 {
			return "none"
		}
		return hex.EncodeToString(id)
	}
	if string(c.RawIssuer) != string(info.cert.RawSubject) ||
		(len(c.AuthorityKeyId) > 0 && string(c.AuthorityKeyId) != string(info.cert.SubjectKeyId)) {
		return fmt.Errorf("%w: %q (serial %x) was issued by CA %q (key id %s), not by this CA %q (key id %s)",
			ErrNotIssuer, c.Subject.CommonName, c.SerialNumber, c.Issuer.CommonName, keyIDText(c.AuthorityKeyId),
			info.cert.Subject.CommonName, keyIDText(info.cert.SubjectKeyId))
	}
	if c.SignatureAlgorithm != x509.PureEd25519 || !ed25519.Verify(info.key, c.RawTBSCertificate, c.Signature) {
		return fmt.Errorf("%w: %q (serial %x) names this CA %q as its issuer, but its signature does not verify with this CA's key",
			ErrNotIssuer, c.Subject.CommonName, c.SerialNumber, info.cert.Subject.CommonName)
	}
	return nil
}
