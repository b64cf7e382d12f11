package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/aigrid/gridnet/overlay/cert"
)

// Listen listens on the node's overlay addresses, as net.Listen does on
// the host's. network is "tcp", "tcp4" or "tcp6"; address is "host:port",
// where host is empty or unspecified (every overlay address of the node,
// of the network's family for tcp4 and tcp6) or one of the node's overlay
// addresses, and port is a number or a service name; port 0 picks a free
// port. Connections pass the node's firewall like any other overlay
// traffic: an inbound rule must allow the port.
func (n *Node) Listen(network, address string) (net.Listener, error) {
	addrs, port, err := n.listenAddrs(network, "tcp", address)
	if err != nil {
		return nil, err
	}
	ln, err := n.stack.ListenTCPOn(addrs, port)
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, address, err)
	}
	return ln, nil
}

// ListenPacket opens a UDP socket on the node's overlay addresses, as
// net.ListenPacket does on the host's. network is "udp", "udp4" or
// "udp6"; address is as for Listen.
func (n *Node) ListenPacket(network, address string) (net.PacketConn, error) {
	addrs, port, err := n.listenAddrs(network, "udp", address)
	if err != nil {
		return nil, err
	}
	pc, err := n.stack.ListenUDPOn(addrs, port)
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, address, err)
	}
	return pc, nil
}

// listenAddrs parses a Listen or ListenPacket address for network, whose
// base ("tcp", "udp") is base: the node's addresses to listen on and the
// port.
func (n *Node) listenAddrs(network, base, address string) ([]netip.Addr, uint16, error) {
	fail := func(format string, args ...any) ([]netip.Addr, uint16, error) {
		return nil, 0, fmt.Errorf("listen %s %s: %s", network, address, fmt.Sprintf(format, args...))
	}
	family := strings.TrimPrefix(network, base)
	if !strings.HasPrefix(network, base) || (family != "" && family != "4" && family != "6") {
		return fail("unsupported network, want %s, %s4 or %s6", base, base, base)
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, 0, fmt.Errorf("listen %s %s: %w", network, address, err)
	}
	port, err := net.LookupPort(network, portStr)
	if err != nil {
		return nil, 0, fmt.Errorf("listen %s %s: %w", network, address, err)
	}
	own := n.Identity().Addresses
	var addrs []netip.Addr
	if host == "" || host == "0.0.0.0" || host == "::" {
		for _, p := range own {
			a := p.Addr().Unmap()
			if family == "" || (family == "4") == a.Is4() {
				addrs = append(addrs, a)
			}
		}
		if len(addrs) == 0 {
			return fail("the node has no IPv%s overlay address (it has %v)", family, own)
		}
		return addrs, uint16(port), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return fail("host must be empty or one of the node's overlay addresses %v", own)
	}
	a = a.Unmap()
	if family != "" && (family == "4") != a.Is4() {
		return fail("address family mismatch")
	}
	for _, p := range own {
		if p.Addr().Unmap() == a {
			return []netip.Addr{a}, uint16(port), nil
		}
	}
	return fail("%v is not one of the node's overlay addresses %v", a, own)
}

// ListenTLS is Listen with mutual TLS on top: TLS 1.3, the node's own
// certificate and identity key as the server's, and a client certificate
// required and verified as admission verifies a peer's: signed by a CA
// this node trusts, valid now, inside its CA's domain and networks, not
// revoked by the node's CRL, and holding the overlay address the
// connection comes from. Clients that are nodes use TLSClientConfig or
// DialTLS; a handler learns who connected with PeerIdentity.
func (n *Node) ListenTLS(network, address string) (net.Listener, error) {
	ln, err := n.Listen(network, address)
	if err != nil {
		return nil, err
	}
	return tls.NewListener(ln, n.tlsServerConfig()), nil
}

// tlsServerConfig is ListenTLS's server side. The client's certificate is
// checked per connection, against the connection's source address.
func (n *Node) tlsServerConfig() *tls.Config {
	base := &tls.Config{
		MinVersion:     tls.VersionTLS13,
		ClientAuth:     tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return n.tlsCertificate(), nil },
	}
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		from, err := netip.ParseAddrPort(hello.Conn.RemoteAddr().String())
		if err != nil {
			return nil, fmt.Errorf("tls: client address %v: %w", hello.Conn.RemoteAddr(), err)
		}
		c := base.Clone()
		c.GetConfigForClient = nil
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			return n.verifyTLSPeer(cs, func(id *cert.Identity) error {
				if !holdsAddr(id, from.Addr()) {
					return fmt.Errorf("client certificate of %s.%s does not hold the address %v it connects from", id.Name, id.Domain, from.Addr())
				}
				return nil
			})
		}
		return c, nil
	}
	return base
}

// TLSClientConfig is the TLS configuration for reaching a service that
// another node serves with ListenTLS: TLS 1.3, this node's certificate as
// the client certificate, and the server's certificate verified against
// this node's CAs and CRL (as admission verifies a peer's) and required to
// be serverName's. serverName is a node name (NAME in this node's domain,
// or NAME.DOMAIN) or one of that node's overlay addresses. The Web PKI's
// checks (host names in DNS SANs) are replaced by these.
func (n *Node) TLSClientConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// The standard verification is replaced by VerifyConnection,
		// which checks the certificate against the node's trust pool and
		// CRL.
		InsecureSkipVerify:   true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return n.tlsCertificate(), nil },
		VerifyConnection: func(cs tls.ConnectionState) error {
			return n.verifyTLSPeer(cs, func(id *cert.Identity) error {
				if !n.isNamed(id, serverName) {
					return fmt.Errorf("server certificate is for %s.%s at %v, not %q", id.Name, id.Domain, id.Addresses, serverName)
				}
				return nil
			})
		},
	}
}

// DialTLS connects over the overlay as Dial does and runs a TLS handshake
// with TLSClientConfig for the address's host (a node name or overlay
// address). network is "tcp", "tcp4" or "tcp6".
func (n *Node) DialTLS(ctx context.Context, network, address string) (*tls.Conn, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("dial tls %s: %w", address, err)
	}
	c, err := n.Dial(ctx, network, address)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, n.TLSClientConfig(host))
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("dial tls %s: %w", address, err)
	}
	return tc, nil
}

// PeerIdentity is the verified identity of the other side of a TLS
// connection made with ListenTLS, TLSClientConfig or DialTLS (for an HTTP
// handler, r.TLS). The certificate is verified again against the node's
// trust pool and CRL as they are now.
func (n *Node) PeerIdentity(cs *tls.ConnectionState) (*cert.Identity, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return nil, errors.New("peer identity: no TLS peer certificate")
	}
	id, err := n.pool.VerifyDER(cs.PeerCertificates[0].Raw, n.opts.Now())
	if err != nil {
		return nil, fmt.Errorf("peer identity: %w", err)
	}
	return id, nil
}

// tlsCertificate is the node's current certificate (renewals included)
// with its identity key.
func (n *Node) tlsCertificate() *tls.Certificate {
	return &tls.Certificate{Certificate: [][]byte{n.Identity().Raw}, PrivateKey: n.opts.IdentityKey}
}

// verifyTLSPeer verifies the TLS peer's certificate with the node's trust
// pool, then runs check on the identity. It runs as VerifyConnection,
// which TLS calls on every handshake, resumed ones included
// (VerifyPeerCertificate is skipped on resumption): a session ticket
// does not outlive a revocation or carry a certificate to another
// address.
func (n *Node) verifyTLSPeer(cs tls.ConnectionState, check func(*cert.Identity) error) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: no peer certificate")
	}
	id, err := n.pool.VerifyDER(cs.PeerCertificates[0].Raw, n.opts.Now())
	if err != nil {
		return fmt.Errorf("tls: peer certificate: %w", err)
	}
	return check(id)
}

// isNamed reports whether id is the node that name (NAME in this node's
// domain, NAME.DOMAIN, or an overlay address) names.
func (n *Node) isNamed(id *cert.Identity, name string) bool {
	if a, err := netip.ParseAddr(name); err == nil {
		return holdsAddr(id, a)
	}
	name = strings.TrimSuffix(name, ".")
	return (strings.EqualFold(name, id.Name) && id.Domain == n.Identity().Domain) || strings.EqualFold(name, id.Name+"."+id.Domain)
}

// holdsAddr reports whether a is one of id's overlay addresses.
func holdsAddr(id *cert.Identity, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range id.Addresses {
		if p.Addr().Unmap() == a {
			return true
		}
	}
	return false
}
