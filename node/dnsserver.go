package node

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/aigrid/gridnet/node/dns"
	"github.com/aigrid/gridnet/node/internal/configfile"
)

// DefaultDNSPort is the port of the DNS responder on the overlay
// addresses.
const DefaultDNSPort = 53

// DNSOptions run the node's DNS responder on its overlay addresses (UDP
// and TCP): it answers A and AAAA for NAME.DOMAIN of this node, its
// admitted peers and the nodes gossip knows, for the domains of the
// trusted CAs, and refuses every other name; it never forwards.
type DNSOptions struct {
	// Port is the port on the overlay addresses; 0 means DefaultDNSPort.
	Port uint16
}

// dnsResponder is the running responder.
type dnsResponder struct {
	srv *dns.Server
	wg  sync.WaitGroup
}

// startDNS listens on the DNS port of every overlay address, UDP and TCP,
// through the node's stack: the netstack in userspace mode (peers reach
// it through their tunnels, and the inbound firewall judges every query),
// the host's stack in kernel mode (programs on this host reach it too).
func (n *Node) startDNS(o DNSOptions) error {
	port := o.Port
	if port == 0 {
		port = DefaultDNSPort
	}
	log := n.log.With("component", "dns")
	// Only the overlay may ask: in kernel mode the sockets are the host's,
	// reachable on the overlay addresses from any interface.
	overlay := n.stack.Addresses()
	inOverlay := func(a netip.Addr) bool {
		for _, p := range overlay {
			if p.Masked().Contains(a) {
				return true
			}
		}
		return false
	}
	srv, err := dns.New(dns.Config{Resolver: dnsResolver{n}, Logger: log, AllowSource: inOverlay})
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	pc, err := n.stack.ListenUDP(port)
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	ln, err := n.stack.ListenTCP(port)
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns: %w", err)
	}
	r := &dnsResponder{srv: srv}
	n.dns = r
	for _, serve := range []func() error{func() error { return srv.ServeUDP(pc) }, func() error { return srv.ServeTCP(ln) }} {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := serve(); err != nil {
				log.Error("dns responder stopped", "err", err)
			}
		}()
	}
	log.Info("dns responder listening", "port", port, "zones", dnsResolver{n}.Zones())
	return nil
}

// close stops the responder.
func (r *dnsResponder) close(log *slog.Logger) {
	if r == nil {
		return
	}
	if err := r.srv.Close(); err != nil {
		log.Warn("dns responder did not stop cleanly", "err", err)
	}
	r.wg.Wait()
}

// dnsResolver is the node as the responder's Resolver: the names are the
// proxies' (lookupNode), the zones the domains of the trusted CAs, so a
// name in a trusted domain that no node holds is NXDOMAIN and any other
// name is refused.
type dnsResolver struct{ n *Node }

// Zones returns the governance domains of the trusted CAs and this node's.
func (r dnsResolver) Zones() []string {
	zones := []string{r.n.Identity().Domain}
	for _, c := range r.n.pool.CAs() {
		if len(c.PermittedURIDomains) == 1 && !slices.Contains(zones, c.PermittedURIDomains[0]) {
			zones = append(zones, c.PermittedURIDomains[0])
		}
	}
	return zones
}

// LookupNode returns every overlay address of the node called name
// (NAME.DOMAIN only: a bare NAME is no DNS name of the overlay).
func (r dnsResolver) LookupNode(name string) ([]netip.Addr, bool) {
	if !strings.Contains(name, ".") {
		return nil, false
	}
	id, ok := r.n.lookupNode(name)
	if !ok {
		return nil, false
	}
	out := make([]netip.Addr, 0, len(id.Addresses))
	for _, p := range id.Addresses {
		out = append(out, p.Addr().Unmap())
	}
	return out, true
}

// validateDNS checks that the responder's port is free on the overlay
// addresses: not the gossip port, not a serve entry's.
func (c *Config) validateDNS() []error {
	if !c.DNS.Enabled {
		return nil
	}
	line := c.lines["dns.port"]
	if line == 0 {
		line = c.lines["dns"]
	}
	var problems []error
	if c.Gossip.Enabled && c.DNS.Port == c.Gossip.Port {
		problems = append(problems, &configfile.LineError{Line: line, Err: fmt.Errorf("dns.port: %d is the gossip port", c.DNS.Port)})
	}
	for i, s := range c.Serve {
		if s.Port == c.DNS.Port {
			problems = append(problems, &configfile.LineError{Line: line, Err: fmt.Errorf("dns.port: %s %d is serve[%d] too", s.Proto, s.Port, i)})
		}
	}
	return problems
}

// dnsOptions turns the dns section into Options; nil when it is off.
func dnsOptions(c DNSConfig) *DNSOptions {
	if !c.Enabled {
		return nil
	}
	return &DNSOptions{Port: c.Port}
}
