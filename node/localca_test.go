package node

import (
	"crypto/ed25519"
	"crypto/x509"
	"net/netip"
	"time"

	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/overlay/cert"
)

// localCA is a throwaway CA that makes ready-to-start node options on
// 127.0.0.1 for this package's tests; node/nodetest has the same for the
// tests of other packages, and node/cli's demo its own.
type localCA struct {
	CA  *cert.CA
	Now func() time.Time
}

// newLocalCA makes a CA for domain, valid from a day ago until a day from
// now, so that tests can also issue back-dated (expired) certificates.
func newLocalCA(name, domain string) (*localCA, error) {
	ca, err := cert.NewCA(name, domain, 48*time.Hour, time.Now().Add(-24*time.Hour))
	if err != nil {
		return nil, err
	}
	return &localCA{CA: ca, Now: time.Now}, nil
}

// NodeOptions makes keys for a node called name at overlay address addr
// (with prefix, e.g. 100.64.0.1/10), signs its certificate and returns
// options that listen on 127.0.0.1 with a random port and trust this CA.
func (l *localCA) NodeOptions(name string, addr netip.Prefix, groups []string, validity time.Duration) (Options, error) {
	keys, err := identity.GenerateKeys()
	if err != nil {
		return Options{}, err
	}
	pub, err := keys.WireGuardPublic()
	if err != nil {
		return Options{}, err
	}
	c, err := l.CA.Issue(cert.IssueRequest{
		Name: name, IdentityKey: keys.Identity.Public().(ed25519.PublicKey), WireGuardKey: pub,
		Addresses: []netip.Prefix{addr}, Groups: groups, Validity: validity,
	}, l.Now())
	if err != nil {
		return Options{}, err
	}
	return Options{
		IdentityKey:  keys.Identity,
		WireGuardKey: keys.WireGuard,
		Certificate:  c.Raw,
		CAs:          []*x509.Certificate{l.CA.Cert},
		Listen:       netip.MustParseAddrPort("127.0.0.1:0"),
	}, nil
}
