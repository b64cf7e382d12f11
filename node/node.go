package node

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aigrid/gridnet/discovery"
	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/node/internal/testhooks"
	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/policy"
	"github.com/aigrid/gridnet/stack"
	"github.com/aigrid/gridnet/vault"
)

// Options configure one node. OptionsFromConfig fills them from a Config
// and the node's vault, as `gridnet up` does; OptionsFromVault fills the
// identity from a vault; Go programs that embed gridnet (like tsnet) and
// the in-process tests may also fill them directly.
type Options struct {
	// IdentityKey is the node's Ed25519 identity private key.
	IdentityKey ed25519.PrivateKey
	// WireGuardKey is the node's X25519 WireGuard private key.
	WireGuardKey [32]byte
	// Certificate is the node certificate, DER.
	Certificate []byte
	// CAs are the trusted CA certificates.
	CAs []*x509.Certificate
	// CRLs are applied to the trust pool at start (each only if newer).
	CRLs []*x509.RevocationList
	// Listen is the underlay UDP address. Only its port is used: the
	// socket listens on every address, IPv4 and IPv6; port 0 picks one.
	Listen netip.AddrPort
	// Peers are static peers or seeds by underlay address.
	Peers []netip.AddrPort
	// TunMode is userspace (the default) or kernel.
	TunMode TunMode
	// TunName names the kernel TUN device.
	TunName string
	// MTU of the overlay interface; 0 means stack.DefaultMTU.
	MTU int
	// HandshakeRate and HandshakeBurst set the per-source-address limit on
	// admission handshakes (0: the overlay's defaults, 20/s burst 5). Many
	// nodes on one address (in-process fabrics on 127.0.0.1) need more.
	HandshakeRate  float64
	HandshakeBurst int
	// HalfOpenPerSource caps unfinished handshakes per source address (0:
	// the overlay's default, 8).
	HalfOpenPerSource int
	// Gossip turns on discovery (memberlist over the overlay); nil means
	// the node reaches only its static peers.
	Gossip *GossipOptions
	// Firewall is the rule set judging every packet at the virtual
	// interface; nil means policy.DefaultConfig: inbound denied, outbound
	// allowed.
	Firewall *policy.Config
	// Proxy runs local SOCKS5 and HTTP proxies into the overlay; nil:
	// none.
	Proxy *ProxyOptions
	// Serve exposes local services on the node's overlay address.
	Serve []ServeOptions
	// Forward carries local ports to overlay services.
	Forward []ForwardOptions
	// DNS runs the DNS responder on the node's overlay addresses; nil:
	// none.
	DNS *DNSOptions
	// Metrics serves Prometheus metrics over HTTP; nil: none.
	Metrics *MetricsOptions
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// TestHooks is test support: package node/nodetest sets it (its type
	// is internal to this module, so other programs leave it nil).
	TestHooks *testhooks.Hooks

	// vaultOpen is how long opening the node's vault took, set by
	// OptionsFromConfig and OptionsFromVault for the metrics.
	vaultOpen time.Duration
}

// Node is a running gridnet node: its virtual interface, its WireGuard
// device with admitted peers, and its trust pool.
type Node struct {
	opts   Options
	log    *slog.Logger
	pool   *cert.Pool
	stack  *stack.Stack
	ov     *overlay.Overlay
	fw     *policy.Firewall
	events *eventLog
	gossip *gossip
	// probing is the running gossip, for the overlay's probes of
	// suspected peers (they run on the overlay's goroutines).
	probing atomic.Pointer[gossip]
	relays  *relays
	dns     *dnsResponder
	// metrics is the Prometheus endpoint; nil when off.
	metrics *nodeMetrics
	// vaultOpen is how long opening the vault took, in nanoseconds (0:
	// the node has no vault).
	vaultOpen atomic.Int64
	// claim holds the vault for a node StartFromConfig started (nil
	// otherwise: `up` holds its own); released after the node is down.
	claim  *vault.Claim
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start verifies the node's own certificate, brings up the virtual
// interface and the WireGuard device, and starts admitting its static peers.
func Start(ctx context.Context, opts Options) (*Node, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.TunMode == "" {
		opts.TunMode = TunUserspace
	}
	pool, err := cert.NewPool(opts.CAs...)
	if err != nil {
		return nil, fmt.Errorf("trust pool: %w", err)
	}
	for _, crl := range opts.CRLs {
		if _, err := pool.ApplyCRL(crl, opts.Now()); err != nil {
			return nil, fmt.Errorf("apply CRL: %w", err)
		}
	}
	id, err := checkOwnCertificate(pool, opts)
	if err != nil {
		return nil, err
	}
	n := &Node{opts: opts, log: opts.Logger.With("node", id.Name), pool: pool}
	n.setVaultOpenDuration(opts.vaultOpen)

	mode := stack.Userspace
	if opts.TunMode == TunKernel {
		mode = stack.Kernel
	}
	var tuning stack.Tuning
	if opts.TestHooks != nil {
		tuning = opts.TestHooks.StackTuning
	}
	n.stack, err = stack.New(stack.Config{
		Mode:      mode,
		Addresses: id.Addresses,
		MTU:       opts.MTU,
		TUNName:   opts.TunName,
		Logger:    n.log,
		Tuning:    tuning,
	})
	if err != nil {
		return nil, fmt.Errorf("virtual interface: %w", err)
	}
	fwCfg := opts.Firewall
	if fwCfg == nil {
		fwCfg = policy.DefaultConfig()
	}
	var builtins []policy.BuiltinRule
	if opts.Gossip != nil {
		port := opts.Gossip.Port
		if port == 0 {
			port = discovery.DefaultPort
		}
		// Gossip between admitted members passes whatever the user's rules
		// say (it is still subject to flood control).
		builtins = []policy.BuiltinRule{{Name: "gossip-udp", Proto: policy.ProtoUDP, Port: port}, {Name: "gossip-tcp", Proto: policy.ProtoTCP, Port: port}}
	}
	n.fw, err = policy.New(fwCfg, policy.Options{Logger: n.log.With("component", "firewall"), Self: peerInfo(id), Builtins: builtins})
	if err != nil {
		n.stack.Close()
		return nil, fmt.Errorf("firewall: %w", err)
	}
	n.events = newEventLog(n.fw)
	if !opts.unfiltered() {
		n.stack.SetHooks(stack.Hooks{
			Inbound:  stack.FilterFunc(func(pkt []byte) stack.Verdict { return verdict(n.fw.Inbound(pkt)) }),
			Outbound: stack.FilterFunc(func(pkt []byte) stack.Verdict { return verdict(n.fw.Outbound(pkt)) }),
		})
	}
	n.ov, err = overlay.New(overlay.Config{
		OnAdmit:  func(id *cert.Identity) { n.fw.SetPeer(peerInfo(id)) },
		OnRemove: func(id *cert.Identity) { n.fw.RemovePeer(id.Domain, id.Name) },
		Probe: func(id *cert.Identity) bool {
			g := n.probing.Load()
			return g != nil && g.probe(id)
		},
		Logger:            n.log,
		WireGuardKey:      opts.WireGuardKey,
		IdentityKey:       opts.IdentityKey,
		Certificate:       opts.Certificate,
		Verifier:          verifierFor(pool, opts, id),
		ListenPort:        opts.Listen.Port(),
		HandshakeRate:     opts.HandshakeRate,
		HandshakeBurst:    opts.HandshakeBurst,
		HalfOpenPerSource: opts.HalfOpenPerSource,
		TUN:               n.stack.Device(),
		Now:               opts.Now,
	})
	if err != nil {
		n.stack.Close()
		n.events.close()
		n.fw.Close()
		return nil, fmt.Errorf("overlay: %w", err)
	}
	for _, p := range opts.Peers {
		n.ov.AddStaticPeer(p)
	}
	if !opts.unfiltered() {
		pctx, cancel := context.WithCancel(context.Background())
		n.cancel = cancel
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.runPushback(pctx) }()
	}
	if opts.Gossip != nil {
		if n.gossip, err = startGossip(n, *opts.Gossip); err != nil {
			n.Close()
			return nil, err
		}
	}
	if err := n.startRelays(); err != nil {
		n.Close()
		return nil, err
	}
	if opts.DNS != nil {
		if err := n.startDNS(*opts.DNS); err != nil {
			n.Close()
			return nil, err
		}
	}
	if err := n.startMetrics(); err != nil {
		n.Close()
		return nil, err
	}
	if h := opts.TestHooks; h != nil {
		h.Crash = func() error { return n.shutdown(false) }
		h.OverlayStats = n.ov.Stats
		h.WireGuardConfig = n.ov.WireGuardConfig
	}
	n.log.Info("node up", "domain", id.Domain, "addresses", id.Addresses, "underlay_port", n.ov.Port(), "tun", opts.TunMode)
	return n, nil
}

// checkOwnCertificate verifies the node's own certificate and that it is
// for the node's keys: a node must not start with an identity its peers
// will refuse.
func checkOwnCertificate(pool *cert.Pool, opts Options) (*cert.Identity, error) {
	id, err := pool.VerifyDER(opts.Certificate, opts.Now())
	if err != nil && opts.skipSelfCheck() {
		c, perr := x509.ParseCertificate(opts.Certificate)
		if perr != nil {
			return nil, fmt.Errorf("own certificate: %w", perr)
		}
		id, err = cert.Describe(c)
	}
	if err != nil {
		return nil, fmt.Errorf("own certificate: %w", err)
	}
	if opts.skipSelfCheck() {
		return id, nil
	}
	if err := (identity.Keys{Identity: opts.IdentityKey, WireGuard: opts.WireGuardKey}).Match(id); err != nil {
		return nil, err
	}
	return id, nil
}

// Identity is the node's own verified identity (the renewed one after
// RenewCertificate).
func (n *Node) Identity() *cert.Identity { return n.ov.Identity() }

// Addr is the node's first overlay address.
func (n *Node) Addr() netip.Addr { return n.Identity().Addresses[0].Addr() }

// RenewCertificate installs a new certificate for the node's keys. It must
// verify and keep the node's name and overlay addresses (the interface is
// not renumbered); new handshakes present it, existing sessions continue.
func (n *Node) RenewCertificate(der []byte) error {
	old := n.Identity()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	next, err := cert.Describe(c)
	if err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	if next.Name != old.Name || !slices.Equal(next.Addresses, old.Addresses) {
		return fmt.Errorf("renew certificate: it is for %q at %v, the node is %q at %v; restart the node to change them",
			next.Name, next.Addresses, old.Name, old.Addresses)
	}
	if err := n.ov.SetCertificate(der); err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	if n.gossip != nil {
		self := n.gossip.d.Self()
		self.Certificate, self.Version = der, 0
		if err := n.gossip.d.UpdateSelf(self); err != nil {
			return fmt.Errorf("spread renewed certificate: %w", err)
		}
	}
	n.log.Info("certificate renewed", "fingerprint", n.Identity().Fingerprint, "not_after", n.Identity().NotAfter)
	return nil
}

// UnderlayPort is the UDP port WireGuard and admission listen on.
func (n *Node) UnderlayPort() uint16 { return n.ov.Port() }

// Admit runs the admission handshake with the node at endpoint now and
// returns its verified identity.
func (n *Node) Admit(ctx context.Context, endpoint netip.AddrPort) (*cert.Identity, error) {
	return n.ov.Admit(ctx, endpoint)
}

// AddPeer keeps admitting the node at endpoint in the background.
func (n *Node) AddPeer(endpoint netip.AddrPort) { n.ov.AddStaticPeer(endpoint) }

// Dial connects over the overlay ("tcp" or "udp"; address is an overlay
// address or a peer name, with port).
func (n *Node) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	addr, err := n.Resolve(host)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	return n.stack.DialContext(ctx, network, net.JoinHostPort(addr.String(), port))
}

// Resolve turns a node name or an overlay address into an overlay address.
// Names resolve as the proxies and the DNS responder resolve them: this
// node, its admitted peers and the nodes gossip knows (certificates
// verified), by NAME within this node's own domain or by NAME.DOMAIN, in
// any letter case.
func (n *Node) Resolve(target string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(target); err == nil {
		return a.Unmap(), nil
	}
	if id, ok := n.lookupNode(target); ok {
		return id.Addresses[0].Addr(), nil
	}
	return netip.Addr{}, fmt.Errorf("no node named %q among this node, its admitted peers and the nodes gossip knows", target)
}

// Ping sends one ICMP echo over the overlay and returns the round trip.
func (n *Node) Ping(ctx context.Context, target string) (time.Duration, error) {
	addr, err := n.Resolve(target)
	if err != nil {
		return 0, err
	}
	return n.stack.Ping(ctx, addr, pingPayload)
}

// pingPayload is the ICMP echo payload size, as ping(8) uses by default.
const pingPayload = 56

// ApplyCRL installs crl if it is validly signed and newer than the one the
// node holds, and cuts off every admitted peer it revokes.
func (n *Node) ApplyCRL(crl *x509.RevocationList) (bool, error) {
	applied, err := n.pool.ApplyCRL(crl, n.opts.Now())
	if err != nil || !applied {
		return applied, err
	}
	removed := n.ov.Revalidate(n.opts.Now())
	if len(removed) > 0 {
		n.log.Warn("revoked peers removed", "peers", removed)
	}
	return true, nil
}

// Peers lists the admitted peers.
func (n *Node) Peers() []overlay.PeerStatus { return n.ov.Peers() }

// Firewall is the node's packet filter (stats, peers' trust, Check).
func (n *Node) Firewall() *policy.Firewall { return n.fw }

// ReloadFirewall swaps in a new rule set: established flows the new rules
// still allow survive, the others are cut. On error the old rules stay.
func (n *Node) ReloadFirewall(cfg *policy.Config) error {
	if err := n.fw.Reload(cfg); err != nil {
		return fmt.Errorf("firewall reload: %w", err)
	}
	n.log.Info("firewall rules reloaded", "inbound", len(cfg.Inbound), "outbound", len(cfg.Outbound))
	return nil
}

// peerInfo is what the firewall may match of a verified identity.
func peerInfo(id *cert.Identity) policy.PeerInfo {
	info := policy.PeerInfo{
		Name: id.Name, Domain: id.Domain, CAName: id.CAName, CAFingerprint: id.CAFingerprint,
		Groups: id.Groups, Attributes: id.Attributes, NotBefore: id.NotBefore, NotAfter: id.NotAfter,
	}
	for _, p := range id.Addresses {
		info.Addresses = append(info.Addresses, p.Addr().Unmap())
	}
	return info
}

// verdict maps a firewall verdict to the stack's.
func verdict(v policy.Verdict) stack.Verdict {
	if v == policy.Accept {
		return stack.Accept
	}
	return stack.Drop
}

// Counters are the virtual interface's packet counters.
func (n *Node) Counters() stack.Counters { return n.stack.Counters() }

// unfiltered reports whether the Unfiltered test hook is on.
func (o *Options) unfiltered() bool { return o.TestHooks != nil && o.TestHooks.Unfiltered }

// skipSelfCheck reports whether the SkipSelfCheck test hook is on.
func (o *Options) skipSelfCheck() bool { return o.TestHooks != nil && o.TestHooks.SkipSelfCheck }

// Close shuts the node down: peers, WireGuard device, virtual interface.
func (n *Node) Close() error {
	return n.shutdown(true)
}

func (n *Node) shutdown(graceful bool) error {
	n.closeOnce.Do(func() {
		if n.cancel != nil {
			n.cancel()
		}
		n.dns.close(n.log)
		n.closeMetrics()
		n.relays.close()
		if n.gossip != nil {
			n.gossip.close(graceful)
		}
		err1 := n.ov.Close()
		err2 := n.stack.Close()
		n.events.close()
		n.fw.Close()
		n.wg.Wait()
		var err3 error
		if n.claim != nil {
			err3 = n.claim.Release()
		}
		n.closeErr = errors.Join(err1, err2, err3)
	})
	return n.closeErr
}

// verifierFor is the pool, except for a node started with
// the SkipSelfCheck test hook: that node believes its own certificate names its
// actual keys, so that tests can play a node with a forged or replayed
// certificate and watch the honest side refuse it.
func verifierFor(pool *cert.Pool, opts Options, own *cert.Identity) overlay.Verifier {
	if !opts.skipSelfCheck() {
		return pool
	}
	believed := *own
	believed.IdentityKey = opts.IdentityKey.Public().(ed25519.PublicKey)
	if pub, err := (identity.Keys{WireGuard: opts.WireGuardKey}).WireGuardPublic(); err == nil {
		believed.WireGuardKey = pub
	}
	return selfTrustingVerifier{Pool: pool, own: opts.Certificate, believed: &believed}
}

type selfTrustingVerifier struct {
	*cert.Pool
	own      []byte
	believed *cert.Identity
}

// VerifyDER returns the believed identity for the node's own certificate.
func (v selfTrustingVerifier) VerifyDER(der []byte, now time.Time) (*cert.Identity, error) {
	if bytes.Equal(der, v.own) {
		id := *v.believed
		return &id, nil
	}
	return v.Pool.VerifyDER(der, now)
}
