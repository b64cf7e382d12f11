package node

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aigrid/gridnet/discovery"
	"github.com/aigrid/gridnet/overlay"
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

// Gossip limits.
const (
	// admitWorkers bounds concurrent admissions of gossip-learned nodes.
	admitWorkers = 8
	// admitTimeout bounds one admission attempt of a learned node.
	admitTimeout = 8 * time.Second
	// yieldDelay: when both nodes learn each other's record, the one with
	// the higher WireGuard key waits this long for the other to admit it
	// first, so that two admissions do not cross.
	yieldDelay = 1500 * time.Millisecond
	// respondingRecheck is how long an admission waits when the other
	// side's handshake with this node is under way.
	respondingRecheck = 300 * time.Millisecond
	// retryBase is half the delay before the first retry of a failed
	// admission; each further failure doubles it.
	retryBase = 500 * time.Millisecond
	// retryMax caps the delay before a failed admission of a learned
	// node is tried again.
	retryMax = 30 * time.Second
	// maxRetries bounds the attempts for one record: about 20 minutes at
	// retryMax, after which only a newer record brings the node back.
	maxRetries = 45
	// reconcileInterval is how often live members without a tunnel are
	// looked for (see reconcile).
	reconcileInterval = 10 * time.Second
	// deathPings is how many pings a member declared dead gets before its
	// tunnel is removed (each waits memberlist's probe timeout).
	deathPings = 2
	// deathCheckWorkers bounds the death checks running at once: a check
	// waits up to deathPings probe timeouts (and sessionSetup for a new
	// peer), and verdicts beyond what the workers take wait in a queue of
	// at most one entry per member, so a flood of verdicts costs neither
	// a goroutine each nor more than this many pings at once. Real deaths
	// come a few at a time; a check takes about a second.
	deathCheckWorkers = 4
	// sessionSetup is how long after an admission a member declared dead
	// without a WireGuard session is left before it is checked: as long
	// as an admission waits for its session (the session rules'
	// SessionSetup).
	sessionSetup = 6 * time.Second
	// joinBackoffMax caps the delay between attempts to (re)join the
	// fabric through admitted peers when no other member is alive.
	joinBackoffMax = 10 * time.Second
	// mergeRetry is how long after a join through an admitted peer that is
	// not an alive member of this node's cluster the next join through it
	// may be tried (see outsiders).
	mergeRetry = 30 * time.Second
)

// gossip connects discovery with the overlay: records learned by gossip
// are verified and admitted, dead members are removed, CRLs are applied.
type gossip struct {
	n   *Node
	d   *discovery.Discovery
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	pending map[string]pendingRecord // name → newest record to admit
	// admitting holds the names a worker is admitting now: a record that
	// comes for one of them waits in pending until that worker is done, so
	// no two handshakes with one node run at once (a second admission
	// would restart the WireGuard session the first is starting).
	admitting map[string]bool
	retries   map[string]int // name → failed admissions in a row
	wake      chan struct{}
	// ping checks a member declared dead through its tunnel (d.Ping;
	// tests replace it).
	ping func(name string) bool
	// tunnels reads the WireGuard state of the peers called name
	// (peersNamed; tests replace it).
	tunnels func(name string) map[[32]byte]overlay.PeerStatus
	// responding reports whether a handshake from the endpoint is being
	// answered here (Overlay.Responding; tests replace it).
	responding func(endpoint netip.AddrPort) bool
	// checks holds the members declared dead that wait for a check
	// (name → when the first verdict came), checking those a worker
	// checks now (see checkLoop).
	checks    map[string]time.Time
	checking  map[string]bool
	checkWake chan struct{}
	// checksKept and checksRemoved count finished checks of death
	// verdicts: the member answered (or was heard from) and kept its
	// tunnel, or did not and lost it.
	checksKept, checksRemoved atomic.Uint64
}

// pendingRecord is a learned record waiting for an admission worker.
type pendingRecord struct {
	rec discovery.Record
	// yielded: this node already gave the other side yieldDelay to
	// admit it first, so it now admits the other side itself.
	yielded bool
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
	g := &gossip{n: n, log: n.log.With("component", "gossip"), pending: map[string]pendingRecord{}, admitting: map[string]bool{}, retries: map[string]int{}, wake: make(chan struct{}, 1),
		checks: map[string]time.Time{}, checking: map[string]bool{}, checkWake: make(chan struct{}, 1)}
	g.tunnels, g.responding = g.peersNamed, n.ov.Responding
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
	for range admitWorkers {
		g.wg.Add(1)
		go g.admitLoop()
	}
	for range deathCheckWorkers {
		g.wg.Add(1)
		go g.checkLoop()
	}
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

// onRecord queues a learned record for admission; memberlist callbacks
// must not block.
func (g *gossip) onRecord(r discovery.Record) {
	g.queue(pendingRecord{rec: r})
}

// queue makes p the record to admit for its name and wakes a worker.
func (g *gossip) queue(p pendingRecord) {
	g.mu.Lock()
	g.pending[p.rec.Name] = p
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// next takes a pending record whose node no worker is admitting and marks
// it as being admitted; done must follow.
func (g *gossip) next() (pendingRecord, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, p := range g.pending {
		if g.admitting[name] {
			continue
		}
		delete(g.pending, name)
		g.admitting[name] = true
		return p, true
	}
	return pendingRecord{}, false
}

// done ends a worker's admission of name.
func (g *gossip) done(name string) {
	g.mu.Lock()
	delete(g.admitting, name)
	g.mu.Unlock()
}

func (g *gossip) admitLoop() {
	defer g.wg.Done()
	for {
		r, ok := g.next()
		if !ok {
			select {
			case <-g.ctx.Done():
				return
			case <-g.wake:
				continue
			}
		}
		g.admit(r)
		g.done(r.rec.Name)
		// More may be pending (perhaps for the node just done): pass the
		// wake-up on.
		select {
		case g.wake <- struct{}{}:
		default:
		}
	}
}

// admit verifies a learned record's certificate and admits the node: a
// member cannot introduce a node the trusted CAs did not sign.
func (g *gossip) admit(p pendingRecord) {
	r := p.rec
	id, err := g.n.pool.VerifyDER(r.Certificate, g.n.opts.Now())
	if err != nil {
		g.log.Warn("gossip record refused", "name", r.Name, "err", err)
		return
	}
	if id.Name != r.Name {
		g.log.Warn("gossip record refused: name differs from its certificate", "record", r.Name, "certificate", id.Name)
		return
	}
	self := g.n.Identity()
	if id.WireGuardKey == self.WireGuardKey || g.n.ov.HasPeer(id.WireGuardKey) {
		g.mu.Lock()
		delete(g.retries, r.Name) // admitted: no failure in a row any more
		g.mu.Unlock()
		return
	}
	if !p.yielded && bytes.Compare(self.WireGuardKey[:], id.WireGuardKey[:]) > 0 {
		// Let the other side admit us first; the worker moves on and the
		// record comes back after the delay (unless a newer one came).
		g.requeueAfter(yieldDelay+rand.N(yieldDelay/2), r)
		return
	}
	for _, ep := range r.Endpoints {
		if g.responding(ep) {
			// The other side is admitting us (we answered its msg1 and
			// wait for its msg3): a handshake of our own would cross it
			// and do the work twice. Look again once it had time to end.
			g.requeueAfter(respondingRecheck+rand.N(respondingRecheck/2), r)
			return
		}
	}
	for _, ep := range r.Endpoints {
		ctx, cancel := context.WithTimeout(g.ctx, admitTimeout)
		_, err := g.n.ov.Admit(ctx, ep)
		cancel()
		if err == nil {
			g.mu.Lock()
			delete(g.retries, r.Name)
			g.mu.Unlock()
			return
		}
		if g.ctx.Err() != nil {
			return
		}
		g.log.Info("admission of a gossip-learned node failed", "name", r.Name, "endpoint", ep, "err", err)
	}
	g.retryLater(r)
}

// retryLater queues r again after a growing delay: a node that could not
// be admitted (overload, lost packets), or that failure detection declared
// dead, is tried again until it is admitted, its record is superseded, it
// leaves gracefully, or maxRetries attempts failed. The tunnel is what
// gossip needs to see a member again, so after a false death or a
// partition this is how the fabric heals by itself.
func (g *gossip) retryLater(r discovery.Record) {
	g.mu.Lock()
	g.retries[r.Name]++
	n := g.retries[r.Name]
	g.mu.Unlock()
	if n > maxRetries {
		return
	}
	delay := min(retryBase<<min(n, 6), retryMax)
	g.requeueAfter(delay+rand.N(delay/2), r)
}

// requeueAfter queues r for admission again after d (without a second
// yield), unless the node stopped, the member left gracefully, or a newer
// record is already queued.
func (g *gossip) requeueAfter(d time.Duration, r discovery.Record) {
	time.AfterFunc(d, func() {
		if g.ctx.Err() != nil || g.left(r.Name) {
			return
		}
		g.mu.Lock()
		_, newer := g.pending[r.Name]
		g.mu.Unlock()
		if !newer {
			g.queue(pendingRecord{rec: r, yielded: true})
		}
	})
}

// left reports whether name left the fabric gracefully.
func (g *gossip) left(name string) bool {
	m, ok := g.d.Member(name)
	return !ok || m.State == discovery.StateLeft
}

// onLeave removes a member that left from WireGuard at once: discovery
// reports a leave (dead=false) only for a leave notice the member signed
// itself. Every other verdict (a death from failure detection,
// memberlist's own unsigned leave, anything another member said) comes
// as dead=true and is checked here first: the member is pinged through
// its tunnel (deathPings times), so no member can cost another its
// tunnels by what it says, and a node starved of CPU or a lossy moment
// (which make failure detection declare live members dead) does not tear
// down a working tunnel and make the member unreachable in earnest. One
// that answers keeps its tunnel (it refutes its death in memberlist by
// itself), and so does one that WireGuard heard from during the check
// (an answer after the ping's timeout counts). A member admitted moments
// ago without a session yet is checked only once its session had time to
// come (sessionSetup). One that does not answer is removed and tried
// again later (see retryLater): it may only be unreachable for a while.
func (g *gossip) onLeave(name string, dead bool) {
	if !dead {
		g.removeNamed(name, g.n.opts.Now(), "left the fabric")
		return
	}
	g.mu.Lock()
	if _, queued := g.checks[name]; !queued {
		// The first verdict counts: only admissions before it are removed.
		g.checks[name] = g.n.opts.Now()
	}
	g.mu.Unlock()
	select {
	case g.checkWake <- struct{}{}:
	default:
	}
}

// nextCheck takes a queued death check whose member no worker is
// checking now; doneCheck must follow.
func (g *gossip) nextCheck() (string, time.Time, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, declared := range g.checks {
		if g.checking[name] {
			continue
		}
		delete(g.checks, name)
		g.checking[name] = true
		return name, declared, true
	}
	return "", time.Time{}, false
}

// doneCheck ends a worker's check of name.
func (g *gossip) doneCheck(name string) {
	g.mu.Lock()
	delete(g.checking, name)
	g.mu.Unlock()
}

// checkLoop runs queued death checks, one member at a time per worker
// and one worker per member: a flood of verdicts waits in the queue (at
// most one entry per member) instead of spawning a goroutine each.
func (g *gossip) checkLoop() {
	defer g.wg.Done()
	for {
		name, declared, ok := g.nextCheck()
		if !ok {
			select {
			case <-g.ctx.Done():
				return
			case <-g.checkWake:
				continue
			}
		}
		g.checkDeath(name, declared)
		g.doneCheck(name)
		select {
		case g.checkWake <- struct{}{}:
		default:
		}
	}
}

// checkDeath checks a member declared dead at declared through its
// tunnel and removes it if it neither answers nor was heard from (see
// onLeave).
func (g *gossip) checkDeath(name string, declared time.Time) {
	began := time.Now() // WireGuard's clock, not opts.Now
	heard := g.tunnels(name)
	// A member admitted moments ago whose session is not up yet cannot
	// answer through its tunnel (this side may not even have its
	// endpoint: the other side starts the session). Judge it once the
	// session had time to come.
	if wait := sessionSetupLeft(heard, g.n.opts.Now()); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-g.ctx.Done():
			t.Stop()
			return
		}
	}
	for range deathPings {
		if g.ctx.Err() != nil {
			return
		}
		if g.ping(name) {
			g.checksKept.Add(1)
			g.log.Info("member declared dead answers through its tunnel; tunnel kept", "name", name)
			return
		}
	}
	// On a loaded node an answer can come after memberlist's probe
	// timeout; WireGuard still counts it. Anything it authenticated
	// from the member since the check began, or a handshake since,
	// proves the member alive.
	if now := g.tunnels(name); heardSince(heard, now, began) {
		g.checksKept.Add(1)
		g.log.Info("member declared dead was heard from through its tunnel; tunnel kept", "name", name)
		return
	}
	g.checksRemoved.Add(1)
	// An admission since the verdict proved the member alive (the
	// verdict itself may come from the missing tunnel): it stays.
	g.removeNamed(name, declared, "declared dead by failure detection")
	// Tried again later, whatever its state by now: if it already
	// came back alive, its record was handed over while it was still
	// admitted here, and was skipped.
	if m, ok := g.d.Member(name); ok && m.Record.Version != 0 && m.State != discovery.StateLeft {
		g.mu.Lock()
		g.retries[name] = 0
		g.mu.Unlock()
		g.retryLater(m.Record)
	}
}

// peersNamed returns the status of the admitted peers called name, keyed
// by WireGuard key (a name can have two entries while a renewed
// certificate replaces the old one).
func (g *gossip) peersNamed(name string) map[[32]byte]overlay.PeerStatus {
	out := map[[32]byte]overlay.PeerStatus{}
	for _, id := range g.n.ov.Admitted() {
		if id.Name == name {
			if ps, ok := g.n.ov.Peer(id.WireGuardKey); ok {
				out[id.WireGuardKey] = ps
			}
		}
	}
	return out
}

// sessionSetupLeft is how long the newest admission among peers, if it
// has no WireGuard session yet, still has for one to come (sessionSetup
// after it was admitted); 0 if none is waiting for its session.
func sessionSetupLeft(peers map[[32]byte]overlay.PeerStatus, now time.Time) time.Duration {
	var left time.Duration
	for _, ps := range peers {
		if ps.LastHandshake.IsZero() {
			left = max(left, ps.AdmittedAt.Add(sessionSetup).Sub(now))
		}
	}
	return left
}

// heardSince reports whether now shows more received bytes than before
// for a peer, or a handshake with it after t.
func heardSince(before, now map[[32]byte]overlay.PeerStatus, t time.Time) bool {
	for key, ps := range now {
		if ps.LastHandshake.After(t) {
			return true
		}
		if b, ok := before[key]; ok && ps.RxBytes > b.RxBytes {
			return true
		}
	}
	return false
}

// reconcile queues every live member with a record that is neither
// admitted nor waiting for a retry: a safety net for any race between
// failure detection, admissions and removals that would otherwise leave a
// live member without a tunnel until its record changes.
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
		g.mu.Lock()
		_, queued := g.pending[m.Name]
		busy := g.admitting[m.Name]
		retrying := g.retries[m.Name] > 0
		g.mu.Unlock()
		if !queued && !busy && !retrying {
			g.queue(pendingRecord{rec: m.Record, yielded: true})
		}
	}
}

// removeNamed removes the admitted peer called name, if it was admitted
// before the given time (see overlay.RemovePeerAdmittedBefore).
func (g *gossip) removeNamed(name string, before time.Time, why string) {
	for _, id := range g.n.ov.Admitted() {
		if id.Name == name {
			g.n.ov.RemovePeerAdmittedBefore(id.WireGuardKey, before, why)
		}
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
	tried := map[string]time.Time{} // outsiders: last join through each
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
			if seeds := g.outsiders(time.Now(), tried); len(seeds) > 0 {
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

// outsiders returns the overlay addresses of admitted peers that are not
// alive members of this node's memberlist cluster: a static peer or seed
// that belongs to another cluster, or a node of a cluster that formed apart.
// A join through one merges the two clusters (memberlist's push/pull
// exchanges both member lists). Each is tried at most once per mergeRetry;
// tried holds the last try per name and keeps only admitted names.
func (g *gossip) outsiders(now time.Time, tried map[string]time.Time) []netip.Addr {
	alive := map[string]bool{g.n.Identity().Name: true}
	for _, m := range g.d.Members() {
		if m.State == discovery.StateAlive {
			alive[m.Name] = true
		}
	}
	admitted := map[string]bool{}
	var out []netip.Addr
	for _, id := range g.n.ov.Admitted() {
		admitted[id.Name] = true
		if alive[id.Name] || len(id.Addresses) == 0 {
			continue
		}
		if last, ok := tried[id.Name]; ok && now.Sub(last) < mergeRetry {
			continue
		}
		tried[id.Name] = now
		out = append(out, id.Addresses[0].Addr())
	}
	for name := range tried {
		if !admitted[name] {
			delete(tried, name)
		}
	}
	return out
}

func (g *gossip) aliveOthers() int { return g.d.NumAlive() - 1 }

// close leaves the fabric (gracefully unless crash) and stops.
func (g *gossip) close(graceful bool) {
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
