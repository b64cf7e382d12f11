package node

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/aigrid/gridnet/discovery"
	"github.com/aigrid/gridnet/overlay/cert"
)

// GossipOptions turn on discovery: memberlist over the overlay spreads node
// records and CRLs, so a node needs only one seed among its static peers.
type GossipOptions struct {
	// Port is the gossip port on the overlay; 0 means discovery.DefaultPort.
	Port uint16
	// Advertise are the underlay endpoints other nodes should use to reach
	// this node's WireGuard port. Empty: 127.0.0.1 with the node's port
	// (enough for one machine; real fabrics set it).
	Advertise []netip.AddrPort
	// Profile selects memberlist timings (LAN default; Local for tests).
	Profile discovery.Profile
}

// Gossip timings.
const (
	// reconcileInterval is how often live members without a tunnel are
	// wanted again (see reconcile).
	reconcileInterval = 10 * time.Second
	// joinBackoffMax caps the delay between attempts to (re)join the
	// fabric through admitted peers when no other member is alive.
	joinBackoffMax = 10 * time.Second
	// mergeRetry is how long after a join through an admitted peer that is
	// not an alive member of this node's cluster the next join through it
	// may be tried (see outsiders).
	mergeRetry = 30 * time.Second
	// outsiderGrace is how long an admitted peer must have been outside
	// this node's cluster before a join goes through it. While a fabric
	// assembles, a node admits peers that gossip has not yet made alive
	// members here; a join through each of them, a push/pull of every
	// record both ways, cost a 100-node fabric more CPU than its
	// admissions (nodes joined through about 20 such peers at once).
	outsiderGrace = 5 * time.Second
)

// gossip connects discovery with the overlay: records learned by gossip
// are verified and handed to the overlay as wanted peers, verdicts of
// failure detection and signed leaves are passed on, CRLs are applied.
// The overlay's session rules decide the rest (who admits, retries,
// whether a suspected peer is alive).
type gossip struct {
	n   *Node
	d   *discovery.Discovery
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// ping checks a member through its tunnel for the overlay's probe of
	// a suspected peer (d.Ping; tests replace it before the node runs).
	ping func(name string) bool
}

// overlayNetwork is the node's stack as discovery's Network.
type overlayNetwork struct{ n *Node }

func (o overlayNetwork) ListenUDP(port uint16) (net.PacketConn, error) {
	return o.n.stack.ListenUDP(port)
}
func (o overlayNetwork) ListenTCP(port uint16) (net.Listener, error) {
	return o.n.stack.ListenTCP(port)
}
func (o overlayNetwork) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return o.n.stack.DialContext(ctx, network, address)
}
func (o overlayNetwork) LocalAddr() netip.Addr { return o.n.Addr() }

func startGossip(n *Node, opts GossipOptions) (*gossip, error) {
	g := &gossip{n: n, log: n.log.With("component", "gossip")}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	adv := opts.Advertise
	if len(adv) == 0 {
		adv = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.ov.Port())}
	}
	d, err := discovery.Start(g.ctx, discovery.Config{
		Network:           overlayNetwork{n},
		Port:              opts.Port,
		Self:              discovery.Record{Name: n.Identity().Name, Certificate: n.Identity().Raw, Endpoints: adv},
		IdentityKey:       n.opts.IdentityKey,
		VerifyCertificate: g.verifyCertificate,
		Logger:            g.log,
		OnRecord:          g.onRecord,
		OnLeave:           g.onLeave,
		OnCRL:             g.onCRL,
		Profile:           opts.Profile,
		// Only admitted peers can be synced with: their tunnel exists.
		Reachable: func(a netip.Addr) bool {
			_, ok := n.ov.IdentityByAddr(a)
			return ok
		},
		// A gossip packet from an overlay address came through the tunnel
		// of the peer whose certificate holds it (WireGuard's cryptokey
		// routing drops any other).
		PeerName: func(a netip.Addr) (string, bool) {
			id, ok := n.ov.IdentityByAddr(a)
			if !ok {
				return "", false
			}
			return id.Name, true
		},
	})
	if err != nil {
		g.cancel()
		return nil, fmt.Errorf("gossip: %w", err)
	}
	g.d = d
	g.ping = d.Ping
	n.probing.Store(g)
	g.wg.Add(1)
	go g.joinLoop()
	return g, nil
}

// verifyCertificate checks a certificate from a gossiped statement
// against the trust pool (CAs, CRLs, the clock) for discovery.
func (g *gossip) verifyCertificate(der []byte) (discovery.Identity, error) {
	id, err := g.n.pool.VerifyDER(der, g.n.opts.Now())
	if err != nil {
		return discovery.Identity{}, fmt.Errorf("gossip certificate: %w", err)
	}
	addrs := make([]netip.Addr, 0, len(id.Addresses))
	for _, p := range id.Addresses {
		addrs = append(addrs, p.Addr())
	}
	return discovery.Identity{Name: id.Name, Key: id.IdentityKey, Addrs: addrs}, nil
}

// onRecord hands a learned record to the overlay: its certificate is
// verified first (a member cannot introduce a node the trusted CAs did
// not sign, nor one under another name).
func (g *gossip) onRecord(r discovery.Record) {
	id, err := g.n.pool.VerifyDER(r.Certificate, g.n.opts.Now())
	if err != nil {
		g.log.Warn("gossip record refused", "name", r.Name, "err", err)
		return
	}
	if id.Name != r.Name {
		g.log.Warn("gossip record refused: name differs from its certificate", "record", r.Name, "certificate", id.Name)
		return
	}
	g.n.ov.Want(id, r.Endpoints)
}

// onLeave passes discovery's verdicts on to the overlay. A leave notice
// the member signed itself (dead=false) removes it at once. Every other
// verdict (a death from failure detection, memberlist's own unsigned
// leave, anything another member said) only makes it suspect: the overlay
// removes it only if nothing comes through its tunnel while it is probed,
// so no member can cost another its tunnels by what it says, and a node
// starved of CPU does not tear down working tunnels.
func (g *gossip) onLeave(name string, dead bool) {
	for _, key := range g.n.ov.KeysNamed(name) {
		if dead {
			g.n.ov.Suspect(key)
		} else {
			g.n.ov.PeerLeft(key)
		}
	}
}

// probe checks a suspected peer through its tunnel (the overlay's
// Config.Probe).
func (g *gossip) probe(id *cert.Identity) bool { return g.ping(id.Name) }

// reconcile wants again every live member with a record that has no
// tunnel: a safety net for anything that would otherwise leave a live
// member without one until its record changes (a peer given up after
// many failures, a removal nobody reported).
func (g *gossip) reconcile() {
	admitted := map[string]bool{}
	for _, id := range g.n.ov.Admitted() {
		admitted[id.Name] = true
	}
	self := g.n.Identity().Name
	for _, m := range g.d.Members() {
		if m.Name == self || admitted[m.Name] || m.State != discovery.StateAlive || m.Record.Version == 0 {
			continue
		}
		g.onRecord(m.Record)
	}
}

// onCRL applies a CRL learned by gossip; only a valid, newer one spreads.
func (g *gossip) onCRL(der []byte) bool {
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		g.log.Warn("gossip CRL refused", "err", err)
		return false
	}
	applied, err := g.n.ApplyCRL(crl)
	if err != nil {
		g.log.Warn("gossip CRL refused", "err", err)
		return false
	}
	return applied
}

// joinLoop (re)joins the fabric through admitted peers whenever no other
// member is alive, with backoff: a node that lost all its peers keeps
// trying. While it has live members it joins through every admitted peer
// that is not one of them (see outsiders), so that two memberlist clusters
// that share a tunnel merge.
func (g *gossip) joinLoop() {
	defer g.wg.Done()
	delay := 100 * time.Millisecond
	lastReconcile := time.Now()
	outside := map[string]*outsider{} // admitted peers outside the cluster
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-time.After(delay):
		}
		if g.aliveOthers() > 0 {
			delay = 2 * time.Second
			if time.Since(lastReconcile) >= reconcileInterval {
				lastReconcile = time.Now()
				g.reconcile()
			}
			if seeds := g.outsiders(time.Now(), outside); len(seeds) > 0 {
				ctx, cancel := context.WithTimeout(g.ctx, 5*time.Second)
				n, err := g.d.Join(ctx, seeds)
				cancel()
				g.log.Debug("gossip join through admitted peers outside the cluster", "seeds", seeds, "joined", n, "err", err)
			}
			continue
		}
		var seeds []netip.Addr
		for _, id := range g.n.ov.Admitted() {
			if len(id.Addresses) > 0 {
				seeds = append(seeds, id.Addresses[0].Addr())
			}
		}
		if len(seeds) > 0 {
			ctx, cancel := context.WithTimeout(g.ctx, 5*time.Second)
			_, err := g.d.Join(ctx, seeds)
			cancel()
			if err == nil {
				delay = 2 * time.Second
				continue
			}
			g.log.Debug("gossip join failed", "seeds", seeds, "err", err)
		}
		delay = min(2*delay, joinBackoffMax)
	}
}

// outsider is what the join loop remembers of an admitted peer outside
// this node's cluster.
type outsider struct {
	since time.Time // outside without a break since then
	tried time.Time // the last join through it (zero: none)
}

// outsiders returns the overlay address of the admitted peer to join
// through now, if any: a peer that is not an alive member of this node's
// memberlist cluster (a static peer or seed that belongs to another
// cluster, or a node of a cluster that formed apart). A join through one
// merges the two clusters (memberlist's push/pull exchanges both member
// lists), so one a round is enough. out holds the peers outside and is
// kept to the admitted ones.
func (g *gossip) outsiders(now time.Time, out map[string]*outsider) []netip.Addr {
	alive := map[string]bool{g.n.Identity().Name: true}
	for _, m := range g.d.Members() {
		if m.State == discovery.StateAlive {
			alive[m.Name] = true
		}
	}
	if a, ok := pickOutsider(now, g.n.ov.Admitted(), alive, out); ok {
		return []netip.Addr{a}
	}
	return nil
}

// pickOutsider updates out with the admitted identities that are not alive
// members (forgetting those that are, or are no longer admitted) and
// returns the address of the one to join through now: outside for
// outsiderGrace at least, not tried within mergeRetry, and outside the
// longest of those (by name among equals). It marks that one tried.
func pickOutsider(now time.Time, admitted []*cert.Identity, alive map[string]bool, out map[string]*outsider) (netip.Addr, bool) {
	addrs := map[string]netip.Addr{}
	for _, id := range admitted {
		if alive[id.Name] || len(id.Addresses) == 0 {
			continue
		}
		addrs[id.Name] = id.Addresses[0].Addr()
		if out[id.Name] == nil {
			out[id.Name] = &outsider{since: now}
		}
	}
	var best string
	for name, o := range out {
		if _, ok := addrs[name]; !ok {
			delete(out, name)
			continue
		}
		if now.Sub(o.since) < outsiderGrace || (!o.tried.IsZero() && now.Sub(o.tried) < mergeRetry) {
			continue
		}
		if b := out[best]; best == "" || o.since.Before(b.since) || (o.since.Equal(b.since) && name < best) {
			best = name
		}
	}
	if best == "" {
		return netip.Addr{}, false
	}
	out[best].tried = now
	return addrs[best], true
}

func (g *gossip) aliveOthers() int { return g.d.NumAlive() - 1 }

// close leaves the fabric (gracefully unless crash) and stops.
func (g *gossip) close(graceful bool) {
	g.n.probing.CompareAndSwap(g, nil)
	if graceful {
		_ = g.d.Leave(time.Second)
	}
	g.cancel()
	g.d.Close()
	g.wg.Wait()
}

// MemberView is one member in `gridnet peers`.
type MemberView struct {
	Name        string    `json:"name"`
	Addr        string    `json:"addr,omitempty"`
	State       string    `json:"state"`
	CertExpiry  time.Time `json:"cert_expiry,omitzero"`
	LearnedFrom string    `json:"learned_from,omitempty"`
	Updated     time.Time `json:"updated"`
	Admitted    bool      `json:"admitted"`
}

// Members lists the fabric's members as this node sees them (empty without
// gossip).
func (n *Node) Members() []MemberView {
	if n.gossip == nil {
		return nil
	}
	admitted := map[string]bool{}
	for _, id := range n.ov.Admitted() {
		admitted[id.Name] = true
	}
	var out []MemberView
	for _, m := range n.gossip.d.Members() {
		v := MemberView{Name: m.Name, State: m.State.String(), LearnedFrom: m.LearnedFrom, Updated: m.Updated, Admitted: admitted[m.Name]}
		if m.Addr.IsValid() {
			v.Addr = m.Addr.String()
		}
		if c, err := x509.ParseCertificate(m.Record.Certificate); err == nil {
			v.CertExpiry = c.NotAfter
		}
		out = append(out, v)
	}
	return out
}

// PushCRL applies a CRL here and, if it was new, spreads it to the fabric.
func (n *Node) PushCRL(crl *x509.RevocationList) (bool, error) {
	applied, err := n.ApplyCRL(crl)
	if err != nil || !applied {
		return applied, err
	}
	if n.gossip != nil {
		if err := n.gossip.d.BroadcastCRL(crl.Raw); err != nil {
			return true, fmt.Errorf("spread CRL: %w", err)
		}
	}
	return true, nil
}
