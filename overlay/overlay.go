// Package overlay runs a gridnet node's data plane: one wireguard-go device
// whose peers are admitted exclusively through a certificate-authenticated
// handshake on the same UDP port.
//
// # Admission flow
//
// A node listens on one UDP port. A conn.Bind wrapper (divertBind) looks at
// the first byte of every datagram: 1..4 is WireGuard and goes to the
// device untouched, handshake.TypeGridnet (0xF0) is gridnet's admission
// handshake, anything else is dropped and counted as junk. Handshake
// datagrams pass, before any cryptography, a size/kind check, a per-source
// token bucket (20 pps, burst 5, IPv6 grouped by /64, 65,536 sources, the
// least recently seen evicted when full), and either a bounded half-open
// table (1024 entries, 5 s) for msg1 or an index lookup for msg2/msg3;
// survivors are copied into a bounded queue served by a fixed pool of
// workers. While the queue or the half-open table is past an eighth of its
// size, a msg1 must first prove with a cookie that its sender receives at
// its source address (cookie.go): without one it only gets a cookie reply,
// and spoofed sources cost no state and no cryptography. A flood therefore
// costs a few comparisons per datagram (and a small reply under load) and
// never blocks WireGuard's receive path.
//
// The handshake itself (package handshake) is Noise XX keyed with the nodes'
// WireGuard X25519 keys; msg2 and msg3 carry the sender's certificate and an
// Ed25519 signature by its identity key over the transcript hash. The
// initiator adds the responder as a WireGuard peer only after verifying msg2;
// the responder adds the initiator only after verifying msg3. A peer is
// configured through the device's UAPI (IpcSet) with its certificate's
// WireGuard key, the UDP source of the handshake as endpoint, each
// certificate address as a host route (/32 or /128) in allowed_ip and a
// persistent keepalive of 25 s. WireGuard's cryptokey routing then drops any
// packet whose inner source address the sending peer's certificate does not
// hold.
//
// # Peer lifecycle
//
// The peer table is keyed by WireGuard key: a re-admission with a new
// certificate (renewal) replaces the entry (the most recently verified
// certificate wins). An overlay address is owned by one key: a second key
// claiming an address held by a still-valid peer (or by this node) is
// refused with ErrAddressConflict. Revalidate removes at once every peer
// whose certificate expired or was revoked; it runs every 10 s, at the
// earliest certificate expiry, and should be called by the owner whenever
// the CRL changes.
//
// # Errors
//
// Handshake refusals are returned as *RejectError carrying a Reason and
// wrapping the underlying sentinel (handshake.ErrCertificate plus the
// cert.Err* cause, handshake.ErrKeyMismatch, handshake.ErrSignature,
// ErrAddressConflict, ...). They are counted per Reason in Stats and logged at
// most a few lines per second per reason.
//
// # Refusals
//
// The refusing side tells the refused one why, with a handshake.RefusalCode
// (see refusal.go for when a refusal may be sent and its limits). The
// refused side checks that the refusal belongs to a handshake it holds,
// records it per endpoint (Refusals), logs it once per reason and peer per
// minute, and, as initiator, gets it from Admit as a *RefusedError, after
// which Admit keeps trying with a longer back-off.
package overlay

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/handshake"
	"github.com/aigrid/gridnet/overlay/internal/session"
	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

const (
	// PersistentKeepalive keeps NAT mappings alive (seconds, WireGuard's
	// usual recommendation).
	PersistentKeepalive = 25
	// HalfOpenCap bounds responder state kept between msg1 and msg3.
	HalfOpenCap = 1024
	// HalfOpenPerSource bounds the half-open entries one source (an IPv4
	// address or an IPv6 /64) may hold, so that a few sources cannot fill
	// the table and lock everyone else out; an honest node needs one.
	HalfOpenPerSource = 8
	// HalfOpenTimeout is how long a responder waits for msg3.
	HalfOpenTimeout = 5 * time.Second
	// handshakeQueueLen bounds handshake datagrams waiting for a worker;
	// beyond it they are dropped (the sender retries). Last messages
	// (msg3) have a queue of this length of their own, which the workers
	// serve first.
	handshakeQueueLen = 256
	// handshakeWorkers is the number of goroutines doing handshake crypto.
	handshakeWorkers = 2
)

// Verifier checks peer certificates. *cert.Pool implements it.
type Verifier interface {
	// VerifyDER verifies a certificate (chain, validity at now, revocation,
	// domain) and returns the identity it proves.
	VerifyDER(der []byte, now time.Time) (*cert.Identity, error)
	// IsRevoked reports whether a previously verified identity is revoked
	// by the currently applied CRLs.
	IsRevoked(id *cert.Identity) bool
}

var _ Verifier = (*cert.Pool)(nil)

// Config configures an Overlay.
type Config struct {
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// WireGuardKey is the node's X25519 private key (also the Noise static key).
	WireGuardKey [32]byte
	// IdentityKey is the node's Ed25519 identity private key.
	IdentityKey ed25519.PrivateKey
	// Certificate is the node's own certificate DER; it must verify with
	// Verifier and name WireGuardKey's public key and IdentityKey's public key.
	Certificate []byte
	// Verifier verifies peer certificates.
	Verifier Verifier
	// ListenPort is the UDP port (IPv4 and IPv6, all addresses); 0 picks one.
	ListenPort uint16
	// TUN is the inner network device (provided by the stack package). The
	// device MTU is taken from it. New takes ownership: the TUN is closed by
	// Close, or by New itself if New fails.
	TUN tun.Device
	// Now is the clock used for certificate validity; nil means time.Now.
	Now func() time.Time
	// HandshakeRate and HandshakeBurst tune the per-source limit on first
	// handshake messages; zero means DefaultHandshakeRate /
	// DefaultHandshakeBurst.
	HandshakeRate  float64
	HandshakeBurst int
	// HalfOpenPerSource caps half-open handshakes per source address (an
	// IPv6 /64); zero means HalfOpenPerSource. Raise it with the rate when
	// many nodes share one address (in-process tests).
	HalfOpenPerSource int
	// RefusalRate is how many refusals per second (and burst) this node
	// sends to one source address; zero means DefaultRefusalRate.
	RefusalRate float64
	// OnAdmit is called with a peer's verified identity just before its
	// WireGuard peer is configured (so a firewall knows it before its first
	// packet), and again when its certificate is renewed. OnRemove is
	// called after the peer was removed. Both run under the peer table's
	// lock: they must be quick and must not call back into the Overlay.
	OnAdmit  func(*cert.Identity)
	OnRemove func(*cert.Identity)
	// Probe checks a peer that failure detection declared suspect or dead
	// through its tunnel (a ping over the overlay) and reports whether it
	// answered; nil probes nothing (only traffic from the peer then keeps
	// it). It runs in a goroutine of its own, at most a few at once.
	Probe func(*cert.Identity) bool
}

// Overlay is a running node data plane. Methods are safe for concurrent use.
type Overlay struct {
	log    *slog.Logger
	logLim *logLimiter
	now    func() time.Time
	verify Verifier
	wgPriv [32]byte
	wgPub  [32]byte
	idKey  ed25519.PrivateKey
	// creds are the handshake credentials without the certificate,
	// prepared once (see handshake.Credentials.Prepare).
	creds   handshake.Credentials
	self    atomic.Pointer[cert.Identity]
	dev     *device.Device
	bind    *divertBind
	limiter *rateLimiter
	stats   counters
	// Data path facts fixed at start (see DataPath).
	backlogLimit   int
	udpGSO, udpGRO bool

	// cookies makes and checks the cookies this node hands out under
	// load; jar keeps those it received as initiator (see cookie.go).
	// loadMode overrides the load check (tests); loadUntil is when the
	// load last seen ends (Unix nanoseconds).
	cookies   *cookieChecker
	cookieQ   chan cookieJob
	jar       *cookieJar
	loadMode  atomic.Int32
	loadUntil atomic.Int64

	// refusalGate limits the refusals sent; refusedFrom records the last
	// refusal received per endpoint (guarded by refusedMu).
	refusalGate *refusalGate
	refusedMu   sync.Mutex
	refusedFrom map[netip.AddrPort]*refusalRecord

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// queue holds first messages (and refusals of msg2) for the
	// workers; finals the last messages, served first: a msg3 completes
	// an admission both sides already paid for and a session waits on,
	// where a msg1 starts new work. Only a msg3 that names a half-open
	// handshake from its own source gets in, and the first one handled
	// closes it, so copies cost a lookup each.
	queue, finals chan inboundPacket

	hsMu              sync.Mutex
	halfOpenTTL       time.Duration  // HalfOpenTimeout; tests may raise it
	timers            session.Timers // sessionTimers(); tests may switch some off
	halfOpen          map[uint32]*halfOpenState
	onAdmit, onRemove func(*cert.Identity)

	// halfOpenBySrc counts halfOpen entries per rateKey(source), capped
	// at halfOpenPerSrc (HalfOpenPerSource; tests may raise it).
	halfOpenBySrc  map[netip.Addr]int
	halfOpenPerSrc int
	// halfOpenByInit finds the halfOpen entry a msg1 made (or
	// queuedMsg1 while it waits in the queue), so that the same msg1
	// sent again is answered from it (see heldLocked). Queued marks are
	// bounded by the queue, the rest by the half-open table.
	halfOpenByInit map[msg1Key]uint32
	// halfOpenN mirrors len(halfOpen) for the load check without the
	// lock; halfOpenSwept is when that check last swept the table (Unix
	// nanoseconds).
	halfOpenN     atomic.Int32
	halfOpenSwept atomic.Int64
	pending       map[uint32]chan inboundPacket
	// attempting counts initiator attempts in flight per endpoint; a
	// responder consults it to break the tie when both sides admit each
	// other at once (see startsSession).
	attempting map[netip.AddrPort]int

	peersMu sync.Mutex
	peers   map[[32]byte]*peerEntry
	// admissions counts admissions (peerEntry.gen); guarded by peersMu.
	admissions uint64
	// sessions owns every peer's session (see sessions.go); exec runs
	// its actions.
	sessions *session.Table
	exec     *sessionExec
	// wanted holds the peers Want named and the static peers whose key
	// is known (guarded by wantMu); probe is Config.Probe.
	wantMu  sync.Mutex
	wanted  map[[32]byte]wantedPeer
	probe   func(*cert.Identity) bool
	byAddr  atomic.Pointer[addrTable]
	changed chan struct{} // poked when the peer table changes (revalidation timer)
	lifeMu  sync.Mutex    // orders AddStaticPeer against Close

	statsFetch sync.Mutex // one device dump at a time for recentStats
	statsMu    sync.Mutex // guards statsCache and statsAt
	statsCache map[[32]byte]*wgPeerStats
	statsAt    time.Time
	closing    bool
	closeErr   error
	closed     sync.Once
}

// New validates cfg, opens the UDP port, creates the WireGuard device and
// brings it up.
func New(cfg Config) (*Overlay, error) {
	if cfg.Verifier == nil || cfg.TUN == nil {
		return nil, errors.New("overlay: Config needs Verifier and TUN")
	}
	o, err := newOverlay(cfg)
	if err != nil {
		cfg.TUN.Close()
		return nil, err
	}
	return o.start(cfg)
}

// newOverlay is New before the device exists; New closes the TUN if it fails.
func newOverlay(cfg Config) (*Overlay, error) {
	if len(cfg.IdentityKey) != ed25519.PrivateKeySize || len(cfg.Certificate) == 0 {
		return nil, errors.New("overlay: Config needs IdentityKey and Certificate")
	}
	o := &Overlay{
		log:            cfg.Logger,
		onAdmit:        cfg.OnAdmit,
		onRemove:       cfg.OnRemove,
		probe:          cfg.Probe,
		wanted:         make(map[[32]byte]wantedPeer),
		now:            cfg.Now,
		verify:         cfg.Verifier,
		wgPriv:         cfg.WireGuardKey,
		idKey:          cfg.IdentityKey,
		limiter:        newRateLimiter(cfg.HandshakeRate, cfg.HandshakeBurst, nil),
		refusalGate:    newRefusalGate(cfg.RefusalRate, nil),
		cookies:        newCookieChecker(nil, nil),
		cookieQ:        make(chan cookieJob, cookieQueueLen),
		jar:            newCookieJar(nil),
		refusedFrom:    make(map[netip.AddrPort]*refusalRecord),
		logLim:         newLogLimiter(nil),
		queue:          make(chan inboundPacket, handshakeQueueLen),
		finals:         make(chan inboundPacket, handshakeQueueLen),
		halfOpen:       make(map[uint32]*halfOpenState),
		halfOpenBySrc:  make(map[netip.Addr]int),
		halfOpenByInit: make(map[msg1Key]uint32),
		halfOpenPerSrc: cmp.Or(cfg.HalfOpenPerSource, HalfOpenPerSource),
		halfOpenTTL:    HalfOpenTimeout,
		timers:         sessionTimers(),
		pending:        make(map[uint32]chan inboundPacket),
		attempting:     make(map[netip.AddrPort]int),
		peers:          make(map[[32]byte]*peerEntry),
		changed:        make(chan struct{}, 1),
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.now == nil {
		o.now = time.Now
	}
	pub, err := curve25519.X25519(o.wgPriv[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("overlay: WireGuard key: %w", err)
	}
	copy(o.wgPub[:], pub)
	o.creds = handshake.Credentials{StaticPrivate: o.wgPriv, IdentityKey: o.idKey}
	if err := o.creds.Prepare(); err != nil {
		return nil, fmt.Errorf("overlay: WireGuard key: %w", err)
	}
	if err := o.setCertificate(cfg.Certificate); err != nil {
		return nil, err
	}
	o.byAddr.Store(&addrTable{})
	return o, nil
}

// start creates the device (which owns the TUN from here on), brings it up
// and starts the goroutines.
func (o *Overlay) start(cfg Config) (*Overlay, error) {
	o.ctx, o.cancel = context.WithCancel(context.Background())
	o.exec = newSessionExec(o)
	o.sessions = session.NewTable(o.timers, session.SystemClock{}, o.exec)
	o.bind = newDivertBind(conn.NewStdNetBind(), o.onGridnet, &o.stats.junk)
	o.dev = device.NewDevice(o.boundBacklog(cfg.TUN), o.bind, o.wgLogger())
	if err := o.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(o.wgPriv[:]), cfg.ListenPort)); err != nil {
		o.cancel()
		o.dev.Close()
		return nil, fmt.Errorf("overlay: configure device: %w", err)
	}
	if err := o.dev.Up(); err != nil {
		o.cancel()
		o.dev.Close()
		return nil, fmt.Errorf("overlay: bring device up: %w", err)
	}
	for range handshakeWorkers {
		o.wg.Add(1)
		go o.worker()
	}
	o.wg.Add(3)
	go o.cookieSender()
	go o.revalidateLoop()
	go func() {
		defer o.wg.Done()
		o.sessions.Run(o.ctx)
	}()
	return o, nil
}

// setCertificate verifies a certificate for this node and installs it.
func (o *Overlay) setCertificate(der []byte) error {
	id, err := o.verify.VerifyDER(der, o.now())
	if err != nil {
		return fmt.Errorf("overlay: own certificate: %w", err)
	}
	if id.WireGuardKey != o.wgPub {
		return fmt.Errorf("overlay: own certificate names another WireGuard key: %w", handshake.ErrKeyMismatch)
	}
	if !ed25519.PublicKey(id.IdentityKey).Equal(o.idKey.Public()) {
		return fmt.Errorf("overlay: own certificate names another identity key: %w", handshake.ErrKeyMismatch)
	}
	o.self.Store(id)
	return nil
}

// SetCertificate installs a renewed certificate for this node (same keys).
// New handshakes present it; existing sessions are unaffected.
func (o *Overlay) SetCertificate(der []byte) error {
	return o.setCertificate(der)
}

// Identity returns this node's own verified identity.
func (o *Overlay) Identity() *cert.Identity { return o.self.Load() }

// Port returns the UDP port shared by WireGuard and the handshake.
func (o *Overlay) Port() uint16 { return o.bind.Port() }

// PublicKey returns this node's WireGuard public key.
func (o *Overlay) PublicKey() [32]byte { return o.wgPub }

// WireGuardConfig is the WireGuard device's configuration and state as
// wireguard-go reports it (its UAPI "get": keys, peers, endpoints,
// allowed IPs, counters), for diagnostics and tests. The device itself
// stays inside the overlay: a peer added to it would bypass admission.
func (o *Overlay) WireGuardConfig() (string, error) {
	s, err := o.dev.IpcGet()
	if err != nil {
		return "", fmt.Errorf("wireguard config: %w", err)
	}
	return s, nil
}

// Close stops all goroutines, removes all peers and closes the device, the
// UDP port and the TUN. It is idempotent.
func (o *Overlay) Close() error {
	o.closed.Do(func() {
		o.lifeMu.Lock()
		o.closing = true
		o.lifeMu.Unlock()
		o.cancel()
		o.wg.Wait()
		o.dev.Close()
	})
	return o.closeErr
}

// credentials returns the current handshake credentials.
func (o *Overlay) credentials() handshake.Credentials {
	c := o.creds
	c.Certificate = o.self.Load().Raw
	return c
}

// verifyPeer is the handshake's certificate check.
func (o *Overlay) verifyPeer(der []byte) (*cert.Identity, error) {
	return o.verify.VerifyDER(der, o.now())
}

// wgLogger routes wireguard-go's logs into slog, rate limited: its error
// lines can be triggered per packet.
func (o *Overlay) wgLogger() *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if o.log.Enabled(context.Background(), slog.LevelDebug) && o.logLim.allow("wireguard-verbose") {
				o.log.Debug("wireguard", "msg", fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			if o.logLim.allow("wireguard-error") {
				o.log.Warn("wireguard", "msg", fmt.Sprintf(format, args...))
			}
		},
	}
}
