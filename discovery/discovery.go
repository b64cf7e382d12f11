package discovery

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultPort is the gossip port on the overlay (memberlist's usual port).
const DefaultPort = 7946

// Network is the overlay network as seen from this node. The node's stack
// package implements it; memnet implements it in memory for tests.
type Network interface {
	// ListenUDP opens a UDP socket on the node's overlay address.
	ListenUDP(port uint16) (net.PacketConn, error)
	// ListenTCP opens a TCP listener on the node's overlay address.
	ListenTCP(port uint16) (net.Listener, error)
	// DialContext opens a stream ("tcp") to an overlay ip:port.
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	// LocalAddr returns the node's overlay address.
	LocalAddr() netip.Addr
}

// Config configures Start.
type Config struct {
	// Network is the overlay network (required).
	Network Network
	// Port is the gossip port on the overlay; zero means DefaultPort.
	Port uint16
	// Self is this node's record. Version zero means "now in
	// nanoseconds", so a restarted node's record beats its previous one.
	Self Record
	// IdentityKey is this node's Ed25519 identity key (required): it signs
	// every statement the node makes about itself (its record and its
	// leave notice).
	IdentityKey ed25519.PrivateKey
	// PeerName names the member whose tunnel a packet or stream from an
	// overlay address came through (required): the node's admitted peer
	// holding that address. The transport checks every memberlist message
	// against it (a member speaks only for itself; see the package
	// documentation) and hands the package's own messages over with it.
	// It is called for every packet and must be fast; it must not call
	// back into the package.
	PeerName func(netip.Addr) (string, bool)
	// VerifyCertificate verifies a certificate DER from a record against
	// the trusted CAs, the CRLs and the clock, and returns whom it names
	// (required). A member's statements about itself are checked against
	// the certificate in its own record. It is called without the
	// package's lock; it must not call back into the package.
	VerifyCertificate func(der []byte) (Identity, error)
	// Logger receives the package's logs and memberlist's (at debug,
	// rate-limited); nil discards them.
	Logger *slog.Logger

	// Callbacks run one at a time, in order, on a goroutine of the package
	// (OnCRL runs on the goroutine that received the CRL). They must not
	// block: the node queues work.

	// OnRecord is called when a record newer than any held for its name
	// is learned (by gossip, push/pull or join), and again with the held
	// record when a member that was reported by OnLeave comes back alive.
	// Never called for Self.
	OnRecord func(Record)
	// OnLeave is called when a member left gracefully (dead=false: only
	// for a leave notice signed by the member itself) or was declared
	// dead or gone by anyone else (dead=true: failure detection, or
	// memberlist's own unsigned leave message; the node checks such a
	// verdict itself before it acts on it). A member known only
	// by its record, that memberlist has not reported for a while, is out
	// of failure detection's sight: it is offered as dead (dead=true) now
	// and then, for the node to check itself (see Ping).
	OnLeave func(name string, dead bool)
	// OnCRL is offered every CRL that differs from the newest accepted one.
	// It returns true if the CRL is valid and newer (it is then kept, put in
	// state exchanges and re-broadcast), false otherwise (dropped, and not
	// offered again). A nil OnCRL drops CRLs from others.
	OnCRL func(der []byte) bool
	// Profile selects timings: ProfileLAN (default) or ProfileLocal.
	Profile Profile
	// Reachable, if set, reports whether this node can reach a member's
	// gossip address now (over the overlay: whether a tunnel to that
	// address exists). The package's own push/pulls (settle, record
	// repair, reconnect) then go only to reachable members, and a record
	// of an unreachable member is pulled from a reachable one, so that a
	// sync never waits out a TCP timeout towards a member this node has
	// no tunnel to yet. It is called with the package's lock held and
	// must be fast and must not call back into the package. Nil: every
	// address is reachable (plain networks).
	Reachable func(netip.Addr) bool

	// testHook, if set, adjusts memberlist's and the package's timings
	// (tests only).
	testHook func(*memberlist.Config, *tuning)
}

// MemberState is a member's liveness.
type MemberState int

// Member states.
const (
	// StateUnknown: a record is known but memberlist has not reported the
	// member yet (it will, or the record is repaired by a pull).
	StateUnknown MemberState = iota
	// StateAlive: the member answers probes.
	StateAlive
	// StateSuspect: a probe failed; the member has the suspicion timeout to
	// refute. Reserved: memberlist v0.7.0 does not expose suspicion (the
	// Node it hands out never has its State updated), so Members reports
	// suspects as alive until they are declared dead.
	StateSuspect
	// StateDead: failure detection declared the member dead.
	StateDead
	// StateLeft: the member left gracefully.
	StateLeft
)

// String returns the state's lower-case name.
func (s MemberState) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return "unknown"
}

// Where a record was learned (Member.LearnedFrom).
const (
	// LearnedLocal marks this node's own record.
	LearnedLocal = "local"
	// LearnedJoin: from a join-type state exchange: this node's Join, a
	// joiner's push, or one of the package's settle and repair syncs
	// (which memberlist performs as joins).
	LearnedJoin = "join"
	// LearnedGossip: from a gossip broadcast.
	LearnedGossip = "gossip"
	// LearnedPushPull: from memberlist's periodic push/pull anti-entropy.
	LearnedPushPull = "push-pull"
	// LearnedPull: from the package's record repair, which asks a member
	// for the records gossip did not deliver.
	LearnedPull = "pull"
)

// Member is one member as this node sees it.
type Member struct {
	// Name is the node name.
	Name string
	// Addr is the member's overlay address (invalid if not yet known).
	Addr netip.Addr
	// State is the member's liveness.
	State MemberState
	// Record is the newest record held (zero Version if none yet).
	Record Record
	// LearnedFrom says how Record arrived: LearnedLocal, LearnedJoin,
	// LearnedGossip, LearnedPushPull or LearnedPull ("" if no record yet).
	LearnedFrom string
	// Updated is when Record was learned or State last changed.
	Updated time.Time
}

// member is the package's bookkeeping for one name.
type member struct {
	rec           Record
	raw           []byte         // rec as its owner signed it (relayed unchanged)
	recGossip     netip.AddrPort // the gossip address in the signed record
	addrs         []netip.Addr   // overlay addresses of rec's verified certificate
	hasRec        bool
	learned       string
	updated       time.Time
	gossip        netip.AddrPort // overlay ip:port of its gossip port
	state         MemberState
	stateChange   time.Time
	inML          bool      // memberlist reported it
	metaVersion   uint64    // record version its metadata advertises
	metaSeen      time.Time // when metaVersion was last raised
	leaveNotified bool      // OnLeave called since the last OnRecord
	unseenCheck   time.Time // last OnLeave for a member memberlist never reported
	leaving       bool      // a leave notice arrived (graceful, not dead)
	leaveRaw      []byte    // that notice as its leaver signed it (for push/pull)
	leaveAt       time.Time // when the leaver signed it
}

// Stats counts what this node refused of what members sent it, since
// Start. Refusals are also logged, at most once a minute per sending
// member and reason.
type Stats struct {
	// LeavesRefused counts leave notices that were not signed by the
	// leaver's own key, were stale, or named a member whose record is not
	// held.
	LeavesRefused uint64
	// RecordsRefused counts records that were not genuine: certificate,
	// signature, gossip address or version did not hold.
	RecordsRefused uint64
	// StatesRefused counts states refused whole: undecodable, from
	// another member than the sender, or an answer nobody asked for.
	StatesRefused uint64
	// Refused counts every refused message of the package's own, the
	// above included.
	Refused uint64
	// Filtered counts memberlist messages the transport did not pass to
	// memberlist (see the package documentation for the rules).
	Filtered uint64
	// StreamsRefused counts inbound streams refused unread: from an
	// address no admitted peer holds, or over the stream slot caps.
	StreamsRefused uint64
	// MessagesDropped counts the package's own messages from packets
	// dropped unread because their queue, or the sender's share of it,
	// was full.
	MessagesDropped uint64
}

// stats are the counters behind Stats.
type stats struct {
	leavesRefused, recordsRefused, statesRefused, refused atomic.Uint64
	filtered, streamsRefused                              atomic.Uint64
}

// Discovery is a running member of the fabric.
type Discovery struct {
	stats stats

	cfg  Config
	tun  tuning
	log  *slog.Logger
	tr   *transport
	ml   *memberlist.Memberlist
	addr netip.AddrPort // own gossip address

	gossipInterval time.Duration

	queue    *memberlist.TransmitLimitedQueue
	numAlive atomic.Int32 // members alive, self included (queue scaling)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// goMu guards wg.Add against Close's wg.Wait (see spawn); stopping
	// is set once Close began.
	goMu     sync.Mutex
	stopping bool
	events   *notifier
	// user holds the package's own messages from packets for handleUsers.
	user *userQueue
	// syncs holds exchanges to run (see syncWorker); replies, pull
	// requests to answer, one per requester (see answerPulls).
	syncs   *keyedQueue[syncRequest, syncRequest]
	replies *keyedQueue[netip.AddrPort, pullRequest]

	crlMu sync.Mutex // serializes CRL acceptance (OnCRL calls)

	badLog badInputLog

	mu   sync.Mutex
	self Record
	// selfEntry is self signed by IdentityKey (see resignLocked).
	selfEntry entry
	// pulls holds, per member name, this node's pending pulls from it:
	// only then is a state from that member an answer.
	pulls     map[string]pendingPulls
	incs      map[string]uint32 // highest memberlist incarnation let through per name (see guard.go)
	members   map[string]*member
	crl       []byte
	rejected  [][]byte // digests of CRLs OnCRL refused (ring)
	seeds     []netip.AddrPort
	seedNext  time.Time
	seedWait  time.Duration
	lastRecon time.Time
	left      bool

	closeOnce sync.Once
}

// leaveNoticeRounds is how many gossip intervals the leave notice travels
// ahead of memberlist's leave message, so that members mostly learn it is a
// leave before memberlist reports the member gone (late notices correct a
// "dead" to "left").
const leaveNoticeRounds = 3

// maxRejectedCRLs is how many refused CRL digests are remembered so that a
// bad CRL still circulating is not offered to OnCRL again and again.
const maxRejectedCRLs = 32

// syncQueueLen bounds queued push/pulls; more requests are dropped (the
// repair loop asks again later).
const syncQueueLen = 64

// syncWorkers is how many push/pulls the package runs at once.
const syncWorkers = 2

// Start creates the memberlist instance on the overlay and starts the
// package's loops. ctx bounds only the start; the returned Discovery runs
// until Close.
func Start(ctx context.Context, cfg Config) (*Discovery, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("discovery: start: %w", err)
	}
	if cfg.Network == nil {
		return nil, errors.New("discovery: start: no network")
	}
	if len(cfg.IdentityKey) != ed25519.PrivateKeySize || cfg.VerifyCertificate == nil || cfg.PeerName == nil {
		return nil, errors.New("discovery: start: an identity key, a certificate verifier and a peer namer are required")
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Self = cfg.Self.Clone()
	if cfg.Self.Version == 0 {
		cfg.Self.Version = uint64(time.Now().UnixNano())
	}
	if err := cfg.Self.Validate(); err != nil {
		return nil, fmt.Errorf("discovery: start: self: %w", err)
	}
	if cfg.Self.Version > uint64(time.Now().Add(MaxClockSkew).UnixNano()) {
		return nil, fmt.Errorf("discovery: start: self: version %d ahead of the clock: %w", cfg.Self.Version, ErrBadStatement)
	}
	d := &Discovery{
		cfg:     cfg,
		tun:     cfg.Profile.tuning(),
		log:     cfg.Logger.With("node", cfg.Self.Name),
		addr:    netip.AddrPortFrom(cfg.Network.LocalAddr().Unmap(), cfg.Port),
		self:    cfg.Self,
		members: make(map[string]*member),
		pulls:   make(map[string]pendingPulls),
		incs:    make(map[string]uint32),
		user:    newUserQueue(),
		syncs:   newKeyedQueue[syncRequest, syncRequest](syncQueueLen),
		replies: newKeyedQueue[netip.AddrPort, pullRequest](syncQueueLen),
	}
	if err := d.resignLocked(); err != nil {
		return nil, fmt.Errorf("discovery: start: %w", err)
	}
	d.numAlive.Store(1)
	mc := cfg.Profile.memberlistConfig()
	if cfg.testHook != nil {
		cfg.testHook(mc, &d.tun)
	}
	d.gossipInterval = mc.GossipInterval
	d.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(d.numAlive.Load()) },
		RetransmitMult: mc.RetransmitMult,
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.events = newNotifier()

	tr, err := newTransport(cfg.Network, cfg.Port, d, mc.TCPTimeout, d.log)
	if err != nil {
		d.cancel()
		return nil, err
	}
	d.tr = tr
	mc.Name = cfg.Self.Name
	mc.Transport = tr
	mc.Delegate = (*delegate)(d)
	mc.Events = (*eventDelegate)(d)
	mc.Logger = log.New(newMLLogWriter(d.log), "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		tr.Shutdown()
		d.cancel()
		return nil, fmt.Errorf("discovery: start memberlist: %w", err)
	}
	d.ml = ml
	d.wg.Add(4 + syncWorkers)
	go func() { defer d.wg.Done(); d.events.run(d.ctx) }()
	go d.handleUsers()
	go d.maintain()
	go d.answerPulls()
	for range syncWorkers {
		go d.syncWorker()
	}
	d.log.Debug("discovery: started", "addr", d.addr, "profile", cfg.Profile)
	return d, nil
}

// Join joins the fabric through seeds (overlay addresses; the gossip port
// is Config.Port). It retries all seeds with exponential backoff until one
// answers or ctx ends, and returns how many answered. After a join the
// package runs settle syncs (push/pull with random members a few times in
// the next seconds) so that members joining at the same moment do not miss
// each other; the seeds are remembered and retried whenever this node has
// no live peer left.
func (d *Discovery) Join(ctx context.Context, seeds []netip.Addr) (int, error) {
	var addrs []string
	var aps []netip.AddrPort
	for _, s := range seeds {
		ap := netip.AddrPortFrom(s.Unmap(), d.cfg.Port)
		if ap == d.addr {
			continue
		}
		addrs = append(addrs, ap.String())
		aps = append(aps, ap)
	}
	if len(addrs) == 0 {
		return 0, errors.New("discovery: join: no seed other than this node")
	}
	d.mu.Lock()
	d.seeds = aps
	d.seedWait = d.tun.joinBackoffMin
	d.mu.Unlock()
	wait := d.tun.joinBackoffMin
	for {
		n, err := d.ml.Join(addrs)
		if n > 0 {
			d.log.Debug("discovery: joined", "seeds", n)
			d.spawn(d.settle)
			return n, nil
		}
		d.log.Debug("discovery: join failed; retrying", "err", err, "wait", wait)
		t := time.NewTimer(jitter(wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("discovery: join: %w (last: %w)", ctx.Err(), err)
		case <-d.ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("discovery: join: %w", net.ErrClosed)
		case <-t.C:
		}
		wait = min(2*wait, d.tun.joinBackoffMax)
	}
}

// jitter returns d plus or minus up to 20%, so that retries spread out.
func jitter(d time.Duration) time.Duration {
	return d*4/5 + rand.N(d*2/5+1)
}

// Members returns every known member, this node included, sorted by name.
func (d *Discovery) Members() []Member {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Member, 0, len(d.members)+1)
	out = append(out, Member{Name: d.self.Name, Addr: d.addr.Addr(), State: StateAlive,
		Record: d.self.Clone(), LearnedFrom: LearnedLocal, Updated: time.Now()})
	for name, m := range d.members {
		out = append(out, m.view(name))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Stats returns the refusal counters.
func (d *Discovery) Stats() Stats {
	return Stats{
		LeavesRefused:   d.stats.leavesRefused.Load(),
		RecordsRefused:  d.stats.recordsRefused.Load(),
		StatesRefused:   d.stats.statesRefused.Load(),
		Refused:         d.stats.refused.Load(),
		Filtered:        d.stats.filtered.Load(),
		StreamsRefused:  d.stats.streamsRefused.Load(),
		MessagesDropped: d.user.dropped.Load(),
	}
}

// Member returns what this node knows of the named member (this node
// included), without copying the whole table.
func (d *Discovery) Member(name string) (Member, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if name == d.self.Name {
		return Member{Name: name, Addr: d.addr.Addr(), State: StateAlive, Record: d.self.Clone(),
			LearnedFrom: LearnedLocal, Updated: time.Now()}, true
	}
	m := d.members[name]
	if m == nil {
		return Member{}, false
	}
	return m.view(name), true
}

// view is m as a Member.
func (m *member) view(name string) Member {
	mm := Member{Name: name, Addr: m.gossip.Addr(), State: m.state, LearnedFrom: m.learned, Updated: m.updated}
	if m.stateChange.After(mm.Updated) {
		mm.Updated = m.stateChange
	}
	if m.hasRec {
		mm.Record = m.rec.Clone()
	}
	return mm
}

// NumAlive returns how many members are alive, this node included.
func (d *Discovery) NumAlive() int { return int(d.numAlive.Load()) }

// Self returns this node's current record.
func (d *Discovery) Self() Record {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.self.Clone()
}

// resignLocked signs self (with the own gossip address) into selfEntry.
func (d *Discovery) resignLocked() error {
	e, err := signEntry(d.cfg.IdentityKey, d.self, d.addr)
	if err != nil {
		return fmt.Errorf("sign own record: %w", err)
	}
	d.selfEntry = e
	return nil
}

// UpdateSelf replaces this node's record (same name; e.g. a renewed
// certificate or new endpoints), signs it and spreads it. The version
// becomes the clock (Unix nanoseconds), or r.Version or current+1 if
// higher.
func (d *Discovery) UpdateSelf(r Record) error {
	r = r.Clone()
	d.mu.Lock()
	if r.Name == "" {
		r.Name = d.self.Name
	}
	if r.Name != d.self.Name {
		d.mu.Unlock()
		return fmt.Errorf("discovery: update self: name %q is not %q", r.Name, d.self.Name)
	}
	r.Version = max(r.Version, d.self.Version+1, uint64(time.Now().UnixNano()))
	if err := r.Validate(); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("discovery: update self: %w", err)
	}
	old := d.self
	d.self = r
	if err := d.resignLocked(); err != nil {
		d.self = old
		d.mu.Unlock()
		return fmt.Errorf("discovery: update self: %w", err)
	}
	d.mu.Unlock()
	d.spreadSelf()
	return nil
}

// spreadSelf broadcasts the own record and re-advertises the metadata
// digest so members that miss the broadcast pull the record.
func (d *Discovery) spreadSelf() {
	d.mu.Lock()
	self := d.selfEntry
	d.mu.Unlock()
	d.queueRecord(self)
	d.spawn(func() {
		if err := d.ml.UpdateNode(d.tun.updateTimeout); err != nil {
			d.log.Debug("discovery: metadata update", "err", err)
		}
	})
}

// BroadcastCRL makes der the newest CRL of this node (the caller has
// validated it) and spreads it; others offer it to their OnCRL. CRLs over
// MaxCRLSize are refused.
//
// A revocation must reach every member, and gossip alone reaches each one
// only with high probability: with memberlist's retransmit budget a member
// misses every copy a few times in a hundred revocations and then waits
// for the next push/pull (30 s at LAN timings). So this node, where the
// CRL enters the fabric, also sends it to every live, reachable member
// directly over a stream; members that accept it gossip it on as usual.
func (d *Discovery) BroadcastCRL(der []byte) error {
	if len(der) == 0 {
		return fmt.Errorf("discovery: broadcast CRL: empty: %w", ErrMalformed)
	}
	if len(der) > MaxCRLSize {
		return fmt.Errorf("discovery: broadcast CRL of %d bytes, limit %d: %w", len(der), MaxCRLSize, ErrTooLarge)
	}
	der = bytes.Clone(der)
	d.crlMu.Lock()
	d.mu.Lock()
	d.crl = der
	d.mu.Unlock()
	d.crlMu.Unlock()
	d.queueCRL(der)
	// Streams have no packet limit: the whole CRL goes directly.
	msg := append([]byte{msgCRL}, der...)
	d.spawn(func() { d.sendToMembers(msg) })
	return nil
}

// directSendWorkers bounds concurrent direct sends (see sendToMembers).
const directSendWorkers = 8

// sendToMembers sends msg to every live, reachable member over a stream,
// a few at a time; each send is bounded by memberlist's TCP timeout. The
// targets come from this node's own member table: memberlist's Members
// returns its live node structs, which its packet handler rewrites in
// place, so reading them here would race.
func (d *Discovery) sendToMembers(msg []byte) {
	sem := make(chan struct{}, directSendWorkers)
	var wg sync.WaitGroup
	sent, failed := 0, 0
	var mu sync.Mutex
	d.mu.Lock()
	targets := d.reachableAliveLocked()
	d.mu.Unlock()
	for _, addr := range targets {
		if d.ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			err := d.ml.SendReliable(addrNode(addr), msg)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				d.log.Debug("discovery: direct send failed", "member", addr, "err", err)
				return
			}
			sent++
		})
	}
	wg.Wait()
	d.log.Debug("discovery: CRL sent directly", "members", sent, "failed", failed)
}

// Ping sends one memberlist ping to the named member's gossip address and
// reports whether it answered within the probe timeout. It lets the node
// check for itself a member that failure detection declared dead.
func (d *Discovery) Ping(name string) bool {
	d.mu.Lock()
	var addr netip.AddrPort
	if m := d.members[name]; m != nil {
		addr = m.gossip
	}
	d.mu.Unlock()
	if !addr.IsValid() || d.ctx.Err() != nil {
		return false
	}
	_, err := d.ml.Ping(name, net.UDPAddrFromAddrPort(addr))
	return err == nil
}

// CRL returns the newest CRL this node holds (nil if none).
func (d *Discovery) CRL() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.crl)
}

// Leave tells the fabric that this node leaves, waiting up to timeout for
// the messages to go out; members see it at once (OnLeave dead=false).
// It first gossips the package's leave notice for leaveNoticeRounds gossip
// intervals (at most half of timeout), then memberlist's leave. Call Close
// afterwards.
func (d *Discovery) Leave(timeout time.Duration) error {
	d.mu.Lock()
	d.left = true
	notice := encodeLeave(d.cfg.IdentityKey, d.self.Name, d.self.Version, time.Now())
	d.mu.Unlock()
	d.enqueue("l/"+d.cfg.Self.Name, notice)
	start := time.Now()
	wait := min(timeout/2, leaveNoticeRounds*d.gossipInterval)
	t := time.NewTimer(wait)
	select {
	case <-t.C:
	case <-d.ctx.Done():
		t.Stop()
	}
	if err := d.ml.Leave(timeout - time.Since(start)); err != nil {
		return fmt.Errorf("discovery: leave: %w", err)
	}
	return nil
}

// spawn runs f on a goroutine that Close waits for, unless Close began
// (a WaitGroup must not grow while Close waits on it: an admission, a
// CRL or a join that ends during Close would otherwise start one then).
// It reports whether f runs.
func (d *Discovery) spawn(f func()) bool {
	d.goMu.Lock()
	defer d.goMu.Unlock()
	if d.stopping {
		return false
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
	return true
}

// Close stops the member without a leave message (others will declare it
// dead) and waits for every goroutine of the package. Safe to call twice.
func (d *Discovery) Close() error {
	var err error
	d.closeOnce.Do(func() {
		d.goMu.Lock()
		d.stopping = true // no goroutine starts from here on
		d.goMu.Unlock()
		d.cancel()
		if e := d.ml.Shutdown(); e != nil {
			err = fmt.Errorf("discovery: close: %w", e)
		}
		d.wg.Wait()
	})
	return err
}
