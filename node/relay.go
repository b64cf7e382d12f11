package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/policy"
	"github.com/aigrid/gridnet/stack/proxy"
	"github.com/aigrid/gridnet/stack/relay"
)

// ProxyOptions run local proxies into the overlay, so that programs on
// this host that know nothing of gridnet (curl, ssh, database clients)
// can reach overlay services by node name or overlay address. Nothing
// else is reachable through them: other destinations are refused.
type ProxyOptions struct {
	// SOCKS5 is the local address of the SOCKS5 proxy (RFC 1928:
	// CONNECT and UDP ASSOCIATE), e.g. 127.0.0.1:1080; "" for none.
	SOCKS5 string
	// HTTP is the local address of the HTTP proxy (CONNECT and
	// absolute-form http:// requests), e.g. 127.0.0.1:8080; "" for none.
	HTTP string
	// Users, if any, must authenticate to both proxies.
	Users []proxy.User
	// Limits bound each proxy listener: MaxConns, IdleTimeout,
	// ConnectTimeout.
	Limits relay.Limits
}

// ServeOptions expose a local service on the node's overlay address: a
// connection (or UDP session) from a peer to Port is carried to To on
// this host. The inbound firewall judges these flows as any other.
type ServeOptions struct {
	// Proto is "tcp" (the default) or "udp".
	Proto string
	// Port is the port on the overlay address.
	Port uint16
	// To is the local service, host:port.
	To string
	// Limits bound the entry; MaxConnsPerSource caps each peer.
	Limits relay.Limits
}

// ForwardOptions carry a local port to an overlay service: a connection
// (or UDP session) to Listen on this host is carried to To.
type ForwardOptions struct {
	// Proto is "tcp" (the default) or "udp".
	Proto string
	// Listen is the local address, host:port.
	Listen string
	// To is the overlay service: NAME:PORT, NAME.DOMAIN:PORT or an
	// overlay address and port.
	To string
	// Limits bound the entry.
	Limits relay.Limits
}

// admissionPoll is how often a dial to a node that gossip knows but that
// is not admitted yet looks again.
const admissionPoll = 50 * time.Millisecond

// relays are the node's proxies, serve and forward entries.
type relays struct {
	proxy  *proxy.Server
	groups []*relay.Group
	wg     sync.WaitGroup
	// addrs are the bound local addresses ("socks5", "http",
	// "forward[i]") and overlay ones ("serve[i]").
	addrs map[string]net.Addr
}

// startRelays binds every configured listener (an error stops the
// node's start) and serves them in the background.
func (n *Node) startRelays() error {
	o := n.opts
	r := &relays{addrs: map[string]net.Addr{}}
	n.relays = r
	log := n.log.With("component", "relay")
	if p := o.Proxy; p != nil && (p.SOCKS5 != "" || p.HTTP != "") {
		srv, err := proxy.New(proxy.Config{
			Dialer:   nodeDialer{n},
			Resolver: nodeResolver{n},
			Networks: n.overlayNetworks(),
			Users:    p.Users,
			Limits:   p.Limits,
			Logger:   log,
		})
		if err != nil {
			return err
		}
		r.proxy = srv
		for _, l := range []struct {
			kind, addr string
			serve      func(net.Listener) error
		}{{"socks5", p.SOCKS5, srv.ServeSOCKS5}, {"http", p.HTTP, srv.ServeHTTPProxy}} {
			if l.addr == "" {
				continue
			}
			ln, err := net.Listen("tcp", l.addr)
			if err != nil {
				return fmt.Errorf("%s proxy: %w", l.kind, err)
			}
			r.addrs[l.kind] = ln.Addr()
			r.run(log, l.kind+" proxy", func() error { return l.serve(ln) })
			if !isLoopback(ln.Addr()) && len(p.Users) == 0 {
				log.Warn("proxy listens beyond this host without users: anyone who reaches it reaches the overlay as this node", "proxy", l.kind, "listen", ln.Addr())
			}
			log.Info("proxy listening", "proxy", l.kind, "listen", ln.Addr())
		}
	}
	for i, s := range o.Serve {
		if err := n.startServe(r, log, i, s); err != nil {
			return fmt.Errorf("serve[%d] (port %d): %w", i, s.Port, err)
		}
	}
	for i, f := range o.Forward {
		if err := n.startForward(r, log, i, f); err != nil {
			return fmt.Errorf("forward[%d] (%s): %w", i, f.Listen, err)
		}
	}
	return nil
}

// run serves in the background until the relays close.
func (r *relays) run(log *slog.Logger, what string, serve func() error) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := serve(); err != nil {
			log.Error(what+" stopped", "err", err)
		}
	}()
}

func (r *relays) group(limits relay.Limits, log *slog.Logger) *relay.Group {
	g := relay.NewGroup(limits, log)
	r.groups = append(r.groups, g)
	return g
}

// close stops every listener and ends every relayed connection.
func (r *relays) close() {
	if r == nil {
		return
	}
	if r.proxy != nil {
		r.proxy.Close()
	}
	for _, g := range r.groups {
		g.Close()
	}
	r.wg.Wait()
}

func (n *Node) startServe(r *relays, log *slog.Logger, i int, s ServeOptions) error {
	if _, _, err := net.SplitHostPort(s.To); err != nil {
		return fmt.Errorf("to %q: %w", s.To, err)
	}
	log = log.With("serve", s.Port, "proto", protoOr(s.Proto), "to", s.To)
	g := r.group(s.Limits, log)
	dial := func(ctx context.Context, _ net.Addr) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, protoOr(s.Proto), s.To)
	}
	key := fmt.Sprintf("serve[%d]", i)
	switch protoOr(s.Proto) {
	case "tcp":
		ln, err := n.stack.ListenTCP(s.Port)
		if err != nil {
			return err
		}
		r.addrs[key] = ln.Addr()
		r.run(log, "serve", func() error { return relay.ServeTCP(g, ln, dial) })
	case "udp":
		pc, err := n.stack.ListenUDP(s.Port)
		if err != nil {
			return err
		}
		r.addrs[key] = pc.LocalAddr()
		r.run(log, "serve", func() error { return relay.ServeUDP(g, pc, dial) })
	default:
		return fmt.Errorf("proto %q: want tcp or udp", s.Proto)
	}
	log.Info("serving a local service on the overlay")
	return nil
}

func (n *Node) startForward(r *relays, log *slog.Logger, i int, f ForwardOptions) error {
	dst, err := n.forwardTarget(f.To)
	if err != nil {
		return err
	}
	log = log.With("forward", f.Listen, "proto", protoOr(f.Proto), "to", f.To)
	g := r.group(f.Limits, log)
	proto := protoOr(f.Proto)
	dial := func(ctx context.Context, _ net.Addr) (net.Conn, error) {
		ap, err := n.resolveTarget(ctx, dst)
		if err != nil {
			return nil, err
		}
		return nodeDialer{n}.DialContext(ctx, proto, ap)
	}
	key := fmt.Sprintf("forward[%d]", i)
	switch proto {
	case "tcp":
		ln, err := net.Listen("tcp", f.Listen)
		if err != nil {
			return err
		}
		r.addrs[key] = ln.Addr()
		r.run(log, "forward", func() error { return relay.ServeTCP(g, ln, dial) })
	case "udp":
		pc, err := net.ListenPacket("udp", f.Listen)
		if err != nil {
			return err
		}
		r.addrs[key] = pc.LocalAddr()
		r.run(log, "forward", func() error { return relay.ServeUDP(g, pc, dial) })
	default:
		return fmt.Errorf("proto %q: want tcp or udp", f.Proto)
	}
	log.Info("forwarding a local port to the overlay")
	return nil
}

func protoOr(p string) string {
	if p == "" {
		return "tcp"
	}
	return p
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// forwardTarget parses a forward entry's "to": NAME:PORT, NAME.DOMAIN:PORT
// or an overlay address and port.
func (n *Node) forwardTarget(to string) (proxy.Destination, error) {
	host, portStr, err := net.SplitHostPort(to)
	if err != nil {
		return proxy.Destination{}, fmt.Errorf("to %q: want NAME:PORT or an overlay address and port: %w", to, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return proxy.Destination{}, fmt.Errorf("to %q: bad port", to)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if !n.inOverlay(a) {
			return proxy.Destination{}, fmt.Errorf("to %q: %v is not in the overlay (%v)", to, a, n.overlayNetworks())
		}
		return proxy.Destination{Addr: a.Unmap(), Port: uint16(port)}, nil
	}
	return proxy.Destination{Name: host, Port: uint16(port)}, nil
}

// resolveTarget turns a forward target into an overlay address and port;
// names are looked up at every connection (the node may appear later).
func (n *Node) resolveTarget(ctx context.Context, d proxy.Destination) (netip.AddrPort, error) {
	if d.Name == "" {
		return netip.AddrPortFrom(d.Addr, d.Port), nil
	}
	a, err := nodeResolver{n}.LookupName(ctx, d.Name)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, d.Port), nil
}

// overlayNetworks are the overlay prefixes of the node's addresses.
func (n *Node) overlayNetworks() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range n.Identity().Addresses {
		out = append(out, p.Masked())
	}
	return out
}

func (n *Node) inOverlay(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range n.overlayNetworks() {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// isSelf reports whether a is one of the node's own overlay addresses.
func (n *Node) isSelf(a netip.Addr) bool {
	for _, p := range n.Identity().Addresses {
		if p.Addr().Unmap() == a.Unmap() {
			return true
		}
	}
	return false
}

// nodeDialer is the node's stack as the proxies' Dialer: before a
// connection is tried it checks that a node holds the address (waiting,
// within the context, for one that gossip knows to be admitted) and that
// this node's outbound firewall allows the flow, so that a refusal is
// immediate and says why rather than a connection that never answers.
// The firewall still judges every packet.
type nodeDialer struct{ n *Node }

var _ proxy.PacketDialer = nodeDialer{}

// DialContext connects to ap over the overlay.
func (d nodeDialer) DialContext(ctx context.Context, network string, ap netip.AddrPort) (net.Conn, error) {
	if err := d.n.checkFlow(ctx, network, ap); err != nil {
		return nil, err
	}
	return d.n.stack.DialContext(ctx, network, ap.String())
}

// ListenPacket opens a UDP socket on a free port of the node's overlay
// address; it sends only to admitted nodes.
func (d nodeDialer) ListenPacket(context.Context) (net.PacketConn, error) {
	pc, err := d.n.stack.ListenUDP(0)
	if err != nil {
		return nil, err
	}
	return &admittedOnly{PacketConn: pc, n: d.n}, nil
}

// admittedOnly is an overlay UDP socket that refuses to send to an
// address no admitted node holds.
type admittedOnly struct {
	net.PacketConn
	n *Node
}

func (a *admittedOnly) WriteTo(b []byte, to net.Addr) (int, error) {
	ua, ok := to.(*net.UDPAddr)
	if !ok {
		return 0, fmt.Errorf("send to %v: not a UDP address", to)
	}
	addr := ua.AddrPort().Addr().Unmap()
	if _, ok := a.n.ov.IdentityByAddr(addr); !ok && !a.n.isSelf(addr) {
		return 0, fmt.Errorf("send to %v: %w: no admitted node has this address", to, proxy.ErrUnreachable)
	}
	return a.PacketConn.WriteTo(b, to)
}

// checkFlow is nodeDialer's check before a connection.
func (n *Node) checkFlow(ctx context.Context, network string, ap netip.AddrPort) error {
	addr := ap.Addr().Unmap()
	if !n.inOverlay(addr) {
		return fmt.Errorf("%w: %v is not in the overlay (%v)", proxy.ErrNotAllowed, addr, n.overlayNetworks())
	}
	if n.isSelf(addr) {
		return nil
	}
	id, ok := n.ov.IdentityByAddr(addr)
	for !ok {
		name := n.gossipName(addr)
		if name == "" {
			return fmt.Errorf("%w: no admitted node has the address %v", proxy.ErrUnreachable, addr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s (%v) is known by gossip but not admitted yet: %w", proxy.ErrUnreachable, name, addr, ctx.Err())
		case <-time.After(admissionPoll):
		}
		id, ok = n.ov.IdentityByAddr(addr)
	}
	proto := policy.ProtoTCP
	if strings.HasPrefix(network, "udp") {
		proto = policy.ProtoUDP
	}
	dec := n.fw.Check(policy.Query{Direction: policy.Outbound, Peer: peerInfo(id), Addr: addr, Proto: proto, Port: ap.Port()})
	if !dec.Allowed {
		return fmt.Errorf("%w: this node's outbound firewall refuses %s port %d of %s: %s", proxy.ErrNotAllowed, proto, ap.Port(), id.Name, dec.Reason)
	}
	return nil
}

// gossipName returns the name of a gossip member whose verified
// certificate holds addr, or "".
func (n *Node) gossipName(addr netip.Addr) string {
	for _, id := range n.gossipIdentities() {
		for _, p := range id.Addresses {
			if p.Addr().Unmap() == addr {
				return id.Name
			}
		}
	}
	return ""
}

// gossipIdentities are the verified identities of the gossip members
// (none without gossip). A record whose certificate does not verify is
// left out: it names nobody.
func (n *Node) gossipIdentities() []*cert.Identity {
	if n.gossip == nil {
		return nil
	}
	var out []*cert.Identity
	now := n.opts.Now()
	for _, m := range n.gossip.d.Members() {
		if len(m.Record.Certificate) == 0 {
			continue
		}
		id, err := n.pool.VerifyDER(m.Record.Certificate, now)
		if err != nil {
			continue
		}
		out = append(out, id)
	}
	return out
}

// nodeResolver resolves node names for the proxies and forward entries:
// NAME is a node of this node's domain, NAME.DOMAIN a node of DOMAIN
// (several domains federate); any case, with or without a final dot. It
// looks at this node, the admitted peers, then the gossip members.
type nodeResolver struct{ n *Node }

// LookupName returns the first overlay address of the node called name.
func (r nodeResolver) LookupName(_ context.Context, name string) (netip.Addr, error) {
	name = strings.TrimSuffix(name, ".")
	if id, ok := r.n.lookupNode(name); ok {
		return id.Addresses[0].Addr().Unmap(), nil
	}
	self := r.n.Identity()
	if !strings.Contains(name, ".") {
		return netip.Addr{}, fmt.Errorf("%w: no node named %q in %s (admitted or known by gossip)", proxy.ErrUnknownName, name, self.Domain)
	}
	return netip.Addr{}, fmt.Errorf("%w: no node named %q (write NAME or NAME.DOMAIN of an admitted node or one known by gossip; this node is %s.%s)", proxy.ErrUnknownName, name, self.Name, self.Domain)
}

// lookupNode returns the identity of the node called name (NAME in this
// node's domain or NAME.DOMAIN, any case, no final dot) that has an
// overlay address: this node, an admitted peer or a gossip member whose
// certificate verifies, in that order.
func (n *Node) lookupNode(name string) (*cert.Identity, bool) {
	self := n.Identity()
	match := func(id *cert.Identity) bool {
		if len(id.Addresses) == 0 {
			return false
		}
		return (strings.EqualFold(name, id.Name) && id.Domain == self.Domain) || strings.EqualFold(name, id.Name+"."+id.Domain)
	}
	if match(self) {
		return self, true
	}
	for _, id := range n.ov.Admitted() {
		if match(id) {
			return id, true
		}
	}
	for _, id := range n.gossipIdentities() {
		if match(id) {
			return id, true
		}
	}
	return nil, false
}

// errNoRelay is returned by RelayAddr for an unknown key.
var errNoRelay = errors.New("no such listener")

// relayAddr returns the bound address of a proxy ("socks5", "http"), a
// forward entry ("forward[i]") or a serve entry ("serve[i]").
func (n *Node) relayAddr(key string) (net.Addr, error) {
	if n.relays == nil {
		return nil, errNoRelay
	}
	a, ok := n.relays.addrs[key]
	if !ok {
		return nil, fmt.Errorf("%s: %w", key, errNoRelay)
	}
	return a, nil
}
