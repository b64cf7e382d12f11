package overlay

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
	"golang.org/x/crypto/blake2s"
)

// Cookies under load (WireGuard's idea, applied to admission). A first
// message (msg1) costs the responder a half-open slot and the work of
// msg2 (three X25519 operations and an Ed25519 signature), and its source
// address is not proven: anyone can send it from addresses that are not
// theirs. While the responder is under load (see underLoad), a msg1 that
// does not carry a valid cookie MAC is answered with a cookie reply and
// costs nothing else: no half-open slot, no per-source bucket, no queue
// slot, no Noise work. The cookie is a MAC over the msg1's source address
// and port under a secret that rotates; an initiator that receives the
// reply proves it can receive at that address by sending its msg1 again
// with the cookie's MAC (handshake.KindCookie has the wire format).
//
// Choices where WireGuard left room or does not apply:
//   - Load is the handshake queue at loadQueueMark or more, or the
//     half-open table at loadHalfOpenMark or more (an eighth of each, as
//     WireGuard's), and lasts loadHold after the last time a mark was
//     passed, so that the state does not flap with every message.
//   - Only with a valid cookie does a msg1 reach the per-source limiter:
//     a spoofer cannot spend the budget of the address it spoofs, and
//     spoofed sources never enter the limiter's table.
//   - Cookie replies are not rate limited per source (a spoofer would
//     spend the budget of the address it spoofs): each is an eighteenth of
//     the bytes of the msg1 it answers (66 of 1200), so a flood of msg1s
//     cannot make the node send more than it receives. They are sent by
//     one goroutine from a queue of cookieQueueLen; the receive path only
//     queues them, and drops what does not fit.
//   - Not under load, a msg1 with a cookie MAC is served like one without
//     (the MAC is not checked).
//   - An initiator keeps a cookie per endpoint for cookieKeep and sends it
//     with every msg1 to that endpoint meanwhile, saving the round trip.
//     If an attempt that carried a cookie gets no answer at all, the
//     cookie is dropped: the responder may have restarted as a version
//     without cookies, which drops a msg1 with a MAC as malformed.
//   - A cookie reply makes an attempt send its msg1 again at once, and
//     at most once: a forged or repeated reply cannot turn the initiator
//     into an amplifier (66 bytes in, 1216 out). The attempt's own resends
//     (Msg1Resend) carry the cookie from then on; they follow the
//     initiator's clock, not what it receives.
//   - Versions: a node without cookies drops a cookie reply as junk (an
//     unknown kind), so a node under load admits only initiators that
//     know cookies; not under load, old and new nodes admit each other
//     as before. A msg1 with a MAC goes only to an endpoint that sent a
//     cookie.
const (
	// CookieRotation is how often the responder's cookie secret is
	// replaced. The previous secret stays valid until the next rotation,
	// so a cookie works for at least CookieRotation after it was made.
	CookieRotation = 2 * time.Minute
	// cookieKeep is how long an initiator uses a cookie it received:
	// CookieRotation, which the responder guarantees.
	cookieKeep = CookieRotation
	// maxCookieJar bounds the cookies an initiator keeps (one per
	// endpoint); when full, the oldest goes. Only replies to msg1s this
	// node sent are stored, so only its own attempts fill it.
	maxCookieJar = 1024
	// loadQueueMark and loadHalfOpenMark are the load marks: an eighth of
	// the handshake queue and of the half-open table.
	loadQueueMark    = handshakeQueueLen / 8
	loadHalfOpenMark = HalfOpenCap / 8
	// loadHold is how long the node stays under load after a mark was
	// last passed (WireGuard's UnderLoadAfterTime).
	loadHold = time.Second
	// halfOpenSweepEvery bounds how often the load check sweeps expired
	// half-open entries (it counts live ones only).
	halfOpenSweepEvery = 100 * time.Millisecond
	// cookieQueueLen bounds the cookie replies waiting for the cookie
	// sender (36 bytes and an address each). The receive path only
	// queues them, so that a flood the node cannot answer in full still
	// leaves it draining its socket: messages with a valid cookie,
	// the rest of the handshakes and WireGuard's packets are not lost
	// behind it. Past the bound, msg1s without a cookie go unanswered.
	cookieQueueLen = 1024
)

// loadMode overrides the load check in tests and benchmarks.
type loadMode int32

const (
	loadAuto   loadMode = iota // by the load marks
	loadAlways                 // always under load (cookies always)
	loadNever                  // never under load (no cookies, as before them)
)

// cookieSecret is one cookie secret and when it was made.
type cookieSecret struct {
	key [blake2s.Size]byte
	set time.Time
}

// cookieChecker makes and checks the cookies of a responder. A cookie is
// BLAKE2s-128(key = secret, source IP (16 bytes) || source port (2 bytes,
// big-endian)). The current secret makes cookies for CookieRotation; the
// one before it is still accepted until it is replaced in turn.
type cookieChecker struct {
	now  func() time.Time
	rand io.Reader

	mu        sync.RWMutex
	cur, prev cookieSecret // zero set: no secret yet
}

func newCookieChecker(now func() time.Time, rnd io.Reader) *cookieChecker {
	if now == nil {
		now = time.Now
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	return &cookieChecker{now: now, rand: rnd}
}

// cookie returns the cookie for src under the current secret, rotating
// the secrets first if the current one is due.
func (c *cookieChecker) cookie(src netip.AddrPort) (handshake.Cookie, error) {
	now := c.now()
	c.mu.RLock()
	cur := c.cur
	c.mu.RUnlock()
	if cur.set.IsZero() || now.Sub(cur.set) >= CookieRotation {
		var err error
		if cur, err = c.rotate(now); err != nil {
			return handshake.Cookie{}, err
		}
	}
	return makeCookie(&cur.key, src), nil
}

// rotate replaces the current secret if it is (still) due and returns
// the current one.
func (c *cookieChecker) rotate(now time.Time) (cookieSecret, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.cur.set.IsZero() && now.Sub(c.cur.set) < CookieRotation {
		return c.cur, nil // another goroutine rotated meanwhile
	}
	next := cookieSecret{set: now}
	if _, err := io.ReadFull(c.rand, next.key[:]); err != nil {
		return cookieSecret{}, fmt.Errorf("overlay: cookie secret: %w", err)
	}
	c.prev, c.cur = c.cur, next
	if now.Sub(c.prev.set) >= 2*CookieRotation {
		c.prev = cookieSecret{} // unused for so long that its cookies expired
	}
	return c.cur, nil
}

// valid reports whether pkt is a msg1 with a cookie MAC made with the
// cookie of src under the current or the previous secret, each accepted
// until 2*CookieRotation after it was made.
func (c *cookieChecker) valid(pkt []byte, src netip.AddrPort) bool {
	if len(pkt) != handshake.Msg1CookieSize {
		return false
	}
	now := c.now()
	c.mu.RLock()
	cur, prev := c.cur, c.prev
	c.mu.RUnlock()
	for _, s := range [...]*cookieSecret{&cur, &prev} {
		if s.set.IsZero() || now.Sub(s.set) >= 2*CookieRotation || now.Before(s.set) {
			continue
		}
		if handshake.CheckCookieMAC(pkt, makeCookie(&s.key, src)) {
			return true
		}
	}
	return false
}

// makeCookie computes the cookie of src under key.
func makeCookie(key *[blake2s.Size]byte, src netip.AddrPort) handshake.Cookie {
	var in [18]byte
	a := src.Addr().Unmap().As16()
	copy(in[:16], a[:])
	binary.BigEndian.PutUint16(in[16:], src.Port())
	h, _ := blake2s.New128(key[:]) // fails only for a key over 32 bytes
	h.Write(in[:])
	var c handshake.Cookie
	h.Sum(c[:0])
	return c
}

// jarEntry is a cookie an initiator received and when.
type jarEntry struct {
	cookie handshake.Cookie
	at     time.Time
}

// cookieJar holds the cookies an initiator received, per endpoint.
type cookieJar struct {
	mu      sync.Mutex
	now     func() time.Time
	entries map[netip.AddrPort]jarEntry
}

func newCookieJar(now func() time.Time) *cookieJar {
	if now == nil {
		now = time.Now
	}
	return &cookieJar{now: now, entries: make(map[netip.AddrPort]jarEntry)}
}

// get returns the cookie for endpoint if one younger than cookieKeep is
// held.
func (j *cookieJar) get(endpoint netip.AddrPort) (handshake.Cookie, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	e, ok := j.entries[endpoint]
	if !ok {
		return handshake.Cookie{}, false
	}
	if j.now().Sub(e.at) >= cookieKeep {
		delete(j.entries, endpoint)
		return handshake.Cookie{}, false
	}
	return e.cookie, true
}

// put stores the cookie endpoint sent, dropping the oldest entry if the
// jar is full.
func (j *cookieJar) put(endpoint netip.AddrPort, c handshake.Cookie) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.entries[endpoint]; !ok && len(j.entries) >= maxCookieJar {
		var oldest netip.AddrPort
		var at time.Time
		for ep, e := range j.entries {
			if at.IsZero() || e.at.Before(at) {
				oldest, at = ep, e.at
			}
		}
		delete(j.entries, oldest)
	}
	j.entries[endpoint] = jarEntry{cookie: c, at: j.now()}
}

// drop forgets the cookie for endpoint if it is still c.
func (j *cookieJar) drop(endpoint netip.AddrPort, c handshake.Cookie) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if e, ok := j.entries[endpoint]; ok && subtle.ConstantTimeCompare(e.cookie[:], c[:]) == 1 {
		delete(j.entries, endpoint)
	}
}

// underLoad reports whether msg1s must carry a valid cookie now: the
// handshake queue or the half-open table passed its load mark less than
// loadHold ago.
func (o *Overlay) underLoad() bool { return o.underLoadAt(time.Now()) }

// underLoadAt is underLoad at the time now.
func (o *Overlay) underLoadAt(now time.Time) bool {
	switch loadMode(o.loadMode.Load()) {
	case loadAlways:
		return true
	case loadNever:
		return false
	}
	if len(o.queue) >= loadQueueMark || o.halfOpenLoaded(now) {
		o.loadUntil.Store(now.Add(loadHold).UnixNano())
		return true
	}
	return now.UnixNano() < o.loadUntil.Load()
}

// halfOpenLoaded reports whether at least loadHalfOpenMark half-open
// handshakes are live. Expired entries are swept at most every
// halfOpenSweepEvery, so the check costs atomic loads, and the lock only
// for a sweep.
func (o *Overlay) halfOpenLoaded(now time.Time) bool {
	if o.halfOpenN.Load() < loadHalfOpenMark {
		return false
	}
	if last := o.halfOpenSwept.Load(); now.UnixNano()-last >= int64(halfOpenSweepEvery) && o.halfOpenSwept.CompareAndSwap(last, now.UnixNano()) {
		o.hsMu.Lock()
		o.sweepHalfOpenLocked(now)
		o.hsMu.Unlock()
	}
	return o.halfOpenN.Load() >= loadHalfOpenMark
}

// cookieJob is a msg1 to answer with a cookie reply: what of it the reply
// needs (its sender index and ephemeral key) and its source.
type cookieJob struct {
	sender uint32
	e      [32]byte
	from   netip.AddrPort
}

// queueCookie hands msg1 pkt from src, which carries no valid cookie, to
// the cookie sender. It runs on the receive path: it copies 36 bytes and
// never blocks; when the cookie queue is full the msg1 is dropped
// unanswered (its initiator retries after its attempt timeout).
func (o *Overlay) queueCookie(pkt []byte, from netip.AddrPort) {
	m, err := handshake.ParseMessage(pkt)
	if err != nil {
		o.stats.junk.Add(1)
		return
	}
	job := cookieJob{sender: m.Sender, from: from}
	copy(job.e[:], m.Noise)
	select {
	case o.cookieQ <- job:
	default:
		o.stats.cookiesDropped.Add(1)
	}
}

// cookieSender sends the cookie replies queued by queueCookie until the
// overlay closes.
func (o *Overlay) cookieSender() {
	defer o.wg.Done()
	for {
		select {
		case <-o.ctx.Done():
			return
		case job := <-o.cookieQ:
			o.sendCookie(job)
		}
	}
}

// sendCookie sends the cookie reply of one job.
func (o *Overlay) sendCookie(job cookieJob) {
	c, err := o.cookies.cookie(job.from)
	if err != nil {
		o.logSend(err)
		return
	}
	m := handshake.Message{Kind: handshake.KindInit, Sender: job.sender, Noise: job.e[:]}
	reply, err := handshake.CookieReply(m, c, nil)
	if err != nil {
		o.logSend(err)
		return
	}
	if err := o.sendCounted(&o.stats.cookiesSent, reply, job.from); err != nil {
		o.logSend(err)
	}
}

// openCookie reads a cookie reply for the initiator init; ok is false
// (and the packet counted as junk) if it does not answer init's msg1.
func (o *Overlay) openCookie(init *handshake.Initiator, in inboundPacket) (handshake.Cookie, bool) {
	m, err := handshake.ParseMessage(in.pkt)
	if err != nil {
		o.stats.junk.Add(1)
		return handshake.Cookie{}, false
	}
	c, err := init.OpenCookie(m)
	if err != nil {
		o.stats.junk.Add(1)
		return handshake.Cookie{}, false
	}
	o.stats.cookiesTaken.Add(1)
	return c, true
}
