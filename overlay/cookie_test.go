package overlay

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
	"golang.org/x/crypto/blake2s"
	"golang.zx2c4.com/wireguard/conn"
)

// msg1With makes a msg1 frame with index idx (a fresh initiator).
func msg1With(t testing.TB, idx uint32) (*handshake.Initiator, []byte) {
	t.Helper()
	k := newKeys(t)
	init, msg1, err := handshake.NewInitiator(handshake.Credentials{StaticPrivate: k.wgPriv, IdentityKey: k.idKey}, idx)
	if err != nil {
		t.Fatal(err)
	}
	return init, msg1
}

// macWith attaches the MAC under c to msg1.
func macWith(t testing.TB, msg1 []byte, c handshake.Cookie) []byte {
	t.Helper()
	mac, err := handshake.CookieMAC(c, msg1)
	if err != nil {
		t.Fatal(err)
	}
	return append(bytes.Clone(msg1[:handshake.Msg1Size]), mac[:]...)
}

// TestCookieRotation: a cookie is bound to the source address and port;
// it stays valid for at least CookieRotation after it was made (the
// previous secret is still accepted) and no longer than twice that; the
// secret rotates every CookieRotation.
func TestCookieRotation(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	c := newCookieChecker(func() time.Time { return now }, nil)
	_, msg1 := msg1With(t, 7)
	src := netip.MustParseAddrPort("127.0.0.9:4000")

	if c.valid(macWith(t, msg1, handshake.Cookie{}), src) {
		t.Fatal("a MAC under a zero cookie passed before any secret was made")
	}
	k1, err := c.cookie(src)
	if err != nil {
		t.Fatal(err)
	}
	pkt := macWith(t, msg1, k1)
	if !c.valid(pkt, src) {
		t.Fatal("fresh cookie refused")
	}
	if again, _ := c.cookie(src); again != k1 {
		t.Fatal("the cookie of a source changed within one rotation")
	}
	for _, other := range []string{"127.0.0.9:4001", "127.0.0.10:4000", "[::1]:4000"} {
		if c.valid(pkt, netip.MustParseAddrPort(other)) {
			t.Fatalf("cookie of %s accepted from %s", src, other)
		}
	}
	if !c.valid(pkt, netip.MustParseAddrPort("[::ffff:127.0.0.9]:4000")) {
		t.Fatal("an IPv4-mapped source is another source")
	}
	if c.valid(pkt[:handshake.Msg1Size], src) {
		t.Fatal("msg1 without a MAC passed")
	}

	// Just before the rotation the same secret makes cookies.
	now = now.Add(CookieRotation - time.Nanosecond)
	if k, _ := c.cookie(src); k != k1 {
		t.Fatal("secret rotated early")
	}
	// The next cookie rotates the secret; the old cookie still passes.
	now = now.Add(time.Nanosecond)
	k2, err := c.cookie(src)
	if err != nil || k2 == k1 {
		t.Fatalf("secret not rotated after CookieRotation: %v", err)
	}
	if !c.valid(pkt, src) || !c.valid(macWith(t, msg1, k2), src) {
		t.Fatal("current or previous cookie refused after a rotation")
	}
	// The first secret expires 2*CookieRotation after it was made.
	now = now.Add(CookieRotation - time.Nanosecond)
	if !c.valid(pkt, src) {
		t.Fatal("previous cookie refused before it expired")
	}
	now = now.Add(time.Nanosecond)
	if c.valid(pkt, src) {
		t.Fatal("cookie accepted 2*CookieRotation after its secret was made")
	}
	if !c.valid(macWith(t, msg1, k2), src) {
		t.Fatal("cookie of the current secret refused")
	}
	// A secret unused for long is replaced, and no old one survives.
	now = now.Add(10 * CookieRotation)
	if c.valid(macWith(t, msg1, k2), src) {
		t.Fatal("long-expired cookie accepted")
	}
	k3, _ := c.cookie(src)
	if k3 == k2 || !c.valid(macWith(t, msg1, k3), src) || c.valid(macWith(t, msg1, k2), src) {
		t.Fatal("rotation after a long pause")
	}
	c.mu.RLock()
	prevSet := c.prev.set
	c.mu.RUnlock()
	if !prevSet.IsZero() {
		t.Fatal("an expired secret was kept as the previous one")
	}
}

// failingReader fails every read.
type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("no entropy") }

func TestCookieSecretError(t *testing.T) {
	c := newCookieChecker(nil, failingReader{})
	if _, err := c.cookie(netip.MustParseAddrPort("127.0.0.1:1")); err == nil {
		t.Fatal("cookie without a secret")
	}
}

// TestMakeCookieIsKeyedMAC pins the cookie construction documented in
// cookie.go.
func TestMakeCookieIsKeyedMAC(t *testing.T) {
	var key [blake2s.Size]byte
	key[0] = 9
	src := netip.MustParseAddrPort("127.1.2.3:513")
	h, _ := blake2s.New128(key[:])
	a := src.Addr().As16()
	h.Write(append(a[:], 2, 1))
	if got := makeCookie(&key, src); !bytes.Equal(got[:], h.Sum(nil)) {
		t.Fatal("cookie is not BLAKE2s-128(secret, address || port)")
	}
}

// TestCookieJar: an initiator's cookies are per endpoint, expire after
// cookieKeep, can be dropped only while unchanged, and are bounded.
func TestCookieJar(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	j := newCookieJar(func() time.Time { return now })
	ep := netip.MustParseAddrPort("127.0.0.1:9")
	if _, ok := j.get(ep); ok {
		t.Fatal("empty jar has a cookie")
	}
	c1 := handshake.Cookie{1}
	j.put(ep, c1)
	if c, ok := j.get(ep); !ok || c != c1 {
		t.Fatal("cookie not kept")
	}
	if _, ok := j.get(netip.MustParseAddrPort("127.0.0.1:10")); ok {
		t.Fatal("cookie given to another endpoint")
	}
	c2 := handshake.Cookie{2}
	j.put(ep, c2)
	j.drop(ep, c1) // an older cookie: no effect
	if c, ok := j.get(ep); !ok || c != c2 {
		t.Fatal("drop of a replaced cookie removed the new one")
	}
	j.drop(ep, c2)
	if _, ok := j.get(ep); ok {
		t.Fatal("dropped cookie still used")
	}
	j.put(ep, c1)
	now = now.Add(cookieKeep)
	if _, ok := j.get(ep); ok {
		t.Fatal("cookie used after cookieKeep")
	}
	for i := range maxCookieJar + 10 {
		now = now.Add(time.Millisecond)
		j.put(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(i+1)), handshake.Cookie{byte(i)})
	}
	j.mu.Lock()
	n := len(j.entries)
	j.mu.Unlock()
	if n != maxCookieJar {
		t.Fatalf("jar holds %d cookies", n)
	}
	if _, ok := j.get(netip.MustParseAddrPort("127.0.0.2:1")); ok {
		t.Fatal("the oldest cookie was not the one evicted")
	}
	if _, ok := j.get(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), maxCookieJar+10)); !ok {
		t.Fatal("the newest cookie was evicted")
	}
}

// sent is a datagram a recordBind was asked to send.
type sent struct {
	b  []byte
	to netip.AddrPort
}

// recordBind is a conn.Bind that records what is sent and receives
// nothing.
type recordBind struct {
	mu   sync.Mutex
	sent []sent
}

func (r *recordBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) { return nil, 51820, nil }
func (r *recordBind) Close() error                                    { return nil }
func (r *recordBind) SetMark(uint32) error                            { return nil }
func (r *recordBind) BatchSize() int                                  { return 1 }
func (r *recordBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	return &conn.StdNetEndpoint{AddrPort: ap}, err
}
func (r *recordBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range bufs {
		r.sent = append(r.sent, sent{bytes.Clone(b), endpointAddr(ep)})
	}
	return nil
}

func (r *recordBind) take() []sent {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sent
	r.sent = nil
	return s
}

// decisionNode is an Overlay with no device and no workers whose bind
// records what it sends: onGridnet's decisions can be called directly,
// with any source address, and everything it queues stays queued.
func decisionNode(t testing.TB) (*Overlay, *recordBind) {
	t.Helper()
	f := newFixture(t, "alpha")
	k := newKeys(t)
	o, err := newOverlay(Config{
		WireGuardKey: k.wgPriv,
		IdentityKey:  k.idKey,
		Certificate:  f.issue("decider", k, "100.64.0.1", time.Hour).Raw,
		Verifier:     f.pool,
	})
	if err != nil {
		t.Fatal(err)
	}
	rb := &recordBind{}
	o.bind = newDivertBind(rb, o.onGridnet, &o.stats.junk)
	return o, rb
}

// spoofedSource is the i-th synthetic source address (127.x.y.z, port
// 1024+i%50000): only the decision is exercised, nothing is sent to it.
func spoofedSource(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(1024+i%50000))
}

// TestUnderLoadCookieDecision: under load, first messages without a
// valid cookie from 5,000 (spoofed) sources each get a cookie reply
// addressed to their source and cost nothing else: no queue slot, no
// half-open slot, no per-source bucket. A first message with the cookie
// of its source passes on to the limiter and the queue; one with the
// cookie of another source is answered with a cookie again. Not under
// load, first messages are served as before (limiter and queue).
func TestUnderLoadCookieDecision(t *testing.T) {
	o, rb := decisionNode(t)
	o.loadMode.Store(int32(loadAlways))
	init, msg1 := msg1With(t, 0x0a0b0c0d)
	const sources = 5000
	for i := range sources {
		o.onGridnet(msg1, spoofedSource(i))
		o.sendCookie(<-o.cookieQ) // the cookie sender's work
	}
	out := rb.take()
	if len(out) != sources {
		t.Fatalf("%d replies to %d first messages", len(out), sources)
	}
	for i, s := range out {
		m, err := handshake.ParseMessage(s.b)
		if err != nil || m.Kind != handshake.KindCookie || s.to != spoofedSource(i) || len(s.b) >= len(msg1)/10 {
			t.Fatalf("reply %d: %d bytes of kind %d to %v (%v)", i, len(s.b), m.Kind, s.to, err)
		}
	}
	st := o.Stats()
	if st.CookiesSent != sources || len(o.queue) != 0 || o.limiter.size() != 0 || st.RateLimited != 0 || st.RefusalsSent != 0 {
		t.Fatalf("spoofed first messages cost state: %+v, queue %d, limiter %d", st, len(o.queue), o.limiter.size())
	}

	// The genuine initiator at source 17 repeats msg1 with its cookie.
	c, err := init.OpenCookie(mustParseMessage(t, out[17].b))
	if err != nil {
		t.Fatal(err)
	}
	withCookie, err := init.Msg1WithCookie(c)
	if err != nil {
		t.Fatal(err)
	}
	o.onGridnet(withCookie, spoofedSource(17))
	if len(o.queue) != 1 || o.limiter.size() != 1 || len(rb.take()) != 0 {
		t.Fatalf("msg1 with a valid cookie not passed on: queue %d, limiter %d", len(o.queue), o.limiter.size())
	}
	// The same cookie from another source (or port) is worthless.
	o.onGridnet(withCookie, spoofedSource(18))
	o.onGridnet(withCookie, netip.AddrPortFrom(spoofedSource(17).Addr(), 1))
	o.sendCookie(<-o.cookieQ)
	o.sendCookie(<-o.cookieQ)
	if len(o.queue) != 1 || len(rb.take()) != 2 || o.Stats().CookiesSent != sources+2 {
		t.Fatal("a cookie passed from a source it was not made for")
	}
	in := <-o.queue
	if !bytes.Equal(in.pkt, withCookie) || in.from != spoofedSource(17) {
		t.Fatal("queued something else")
	}
	// While it waits for a worker, the same msg1 again is not queued twice.
	o.onGridnet(withCookie, spoofedSource(17))
	if len(o.queue) != 0 || o.Stats().RepeatsAnswered != 1 {
		t.Fatal("a repeat of a queued msg1 was queued again")
	}
	o.unqueue(rawKeyOf(in.pkt, in.from)) // a worker took it (and lost it)

	// Past the cookie queue's bound, msg1s without a cookie are dropped
	// unanswered (and cost nothing else); one with a cookie still passes.
	for i := range cookieQueueLen + 10 {
		o.onGridnet(msg1, spoofedSource(i))
	}
	if st := o.Stats(); len(o.cookieQ) != cookieQueueLen || st.CookiesDropped != 10 || len(o.queue) != 0 || o.limiter.size() != 1 {
		t.Fatalf("full cookie queue: %d queued, %+v", len(o.cookieQ), st)
	}
	o.onGridnet(withCookie, spoofedSource(17))
	if len(o.queue) != 1 {
		t.Fatal("msg1 with a valid cookie lost behind a full cookie queue")
	}
	<-o.queue

	// Not under load: served as before, without cookies.
	o.loadMode.Store(int32(loadNever))
	o.onGridnet(msg1, spoofedSource(20))
	if len(o.queue) != 1 || o.limiter.size() != 2 || len(rb.take()) != 0 {
		t.Fatal("not under load, msg1 was not passed on")
	}
}

func mustParseMessage(t testing.TB, b []byte) handshake.Message {
	t.Helper()
	m, err := handshake.ParseMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestLoadMarks: the node is under load while the handshake queue holds
// loadQueueMark messages or loadHalfOpenMark half-open handshakes are
// live, and for loadHold after; expired half-open entries do not count.
func TestLoadMarks(t *testing.T) {
	o, _ := decisionNode(t)
	now := time.Now()
	if o.underLoadAt(now) {
		t.Fatal("idle node under load")
	}
	// Queue mark.
	for range loadQueueMark - 1 {
		o.queue <- inboundPacket{}
	}
	if o.underLoadAt(now) {
		t.Fatal("under load below the queue mark")
	}
	o.queue <- inboundPacket{}
	if !o.underLoadAt(now) {
		t.Fatal("not under load at the queue mark")
	}
	for len(o.queue) > 0 {
		<-o.queue
	}
	if !o.underLoadAt(now.Add(loadHold - time.Nanosecond)) {
		t.Fatal("load ended before loadHold")
	}
	if o.underLoadAt(now.Add(loadHold)) {
		t.Fatal("load lasted past loadHold")
	}

	// Half-open mark, with entries that expire.
	later := now.Add(time.Minute)
	o.hsMu.Lock()
	for i := range loadHalfOpenMark {
		o.halfOpen[uint32(i+1)] = &halfOpenState{from: spoofedSource(i), expires: later.Add(HalfOpenTimeout)}
	}
	o.halfOpenN.Store(int32(len(o.halfOpen)))
	o.hsMu.Unlock()
	if !o.underLoadAt(later) {
		t.Fatal("not under load at the half-open mark")
	}
	o.hsMu.Lock()
	o.deleteHalfOpenLocked(1)
	o.hsMu.Unlock()
	if o.underLoadAt(later.Add(loadHold)) {
		t.Fatal("under load below the half-open mark")
	}
	o.hsMu.Lock()
	o.halfOpen[1] = &halfOpenState{from: spoofedSource(0), expires: later.Add(HalfOpenTimeout)}
	o.halfOpenN.Store(int32(len(o.halfOpen)))
	o.hsMu.Unlock()
	if !o.underLoadAt(later.Add(loadHold)) {
		t.Fatal("not under load at the half-open mark again")
	}
	// Once the entries expired, they no longer count.
	gone := later.Add(HalfOpenTimeout + time.Hour)
	if o.underLoadAt(gone) {
		t.Fatal("expired half-open entries keep the node under load")
	}
	if o.halfOpenN.Load() != 0 {
		t.Fatalf("%d half-open entries after expiry", o.halfOpenN.Load())
	}
}

// TestAdmitThroughCookie: a node under load answers the first message of
// a legitimate initiator with a cookie, the initiator repeats it with the
// cookie's MAC and is admitted, and keeps the cookie for its next
// admissions there (TestInitiatorCookieHandling shows it is sent from the
// start). A first message without a cookie from a plain socket gets a
// cookie reply and no msg2.
func TestAdmitThroughCookie(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{})
	b.loadMode.Store(int32(loadAlways))
	admit(t, a, b)
	if a.Stats().CookiesReceived == 0 || b.Stats().CookiesSent == 0 {
		t.Fatalf("admitted without a cookie round trip: a %+v, b %+v", a.Stats(), b.Stats())
	}
	if _, ok := a.jar.get(b.ep); !ok {
		t.Fatal("a kept no cookie for b")
	}
	if err := exchange(t, a, b, 7100, []byte("through the cookie"), exchangeTimeout); err != nil {
		t.Fatal(err)
	}
	completed := b.Stats().Completed
	admit(t, a, b) // again, with the cookie
	if _, ok := a.jar.get(b.ep); !ok {
		t.Fatal("a dropped b's cookie after an admission")
	}
	// a's Admit returns as soon as it sent msg3 when the session the
	// first admission brought stays: b finishes its side a moment later.
	waitFor(t, sessionTimeout, "b completed the second admission", func() bool { return b.Stats().Completed > completed })

	before := b.Stats()
	sock := udpSender(t)
	_, msg1 := msg1With(t, 99)
	if _, err := sock.WriteToUDPAddrPort(msg1, b.ep); err != nil {
		t.Fatal(err)
	}
	sock.SetReadDeadline(time.Now().Add(sessionTimeout))
	buf := make([]byte, 4096)
	n, err := readFromPeer(sock, b.ep, buf)
	if err != nil {
		t.Fatal(err)
	}
	if m := mustParseMessage(t, buf[:n]); m.Kind != handshake.KindCookie || m.Receiver != 99 {
		t.Fatalf("answer to a msg1 without cookie: kind %d", m.Kind)
	}
	// The reply was counted before it left.
	waitFor(t, sessionTimeout, "the reply counted", func() bool { return b.Stats().CookiesSent > before.CookiesSent })
	if after := b.Stats(); after.Responded != before.Responded || after.CookiesSent != before.CookiesSent+1 {
		t.Fatalf("b under load answered a msg1 without cookie: before %+v, after %+v", before, after)
	}
}

// msg1Raw rebuilds the frame of a parsed msg1 (without its MAC).
func msg1Raw(m handshake.Message) []byte {
	b := []byte{handshake.TypeGridnet, handshake.KindInit, byte(m.Sender), byte(m.Sender >> 8), byte(m.Sender >> 16), byte(m.Sender >> 24), 0, 0, 0, 0}
	return append(b, m.Noise...)
}

// TestInitiatorCookieHandling: an initiator repeats msg1 with the cookie
// at once, and its resends carry the cookie too; however many replies
// come, one attempt sends at most 2+maxResends msg1s (no reply makes it
// an amplifier). Its next attempt to that endpoint carries the cookie from
// the start; an attempt that carried a cookie and got no answer at all
// drops it (the responder may not know cookies), so the one after goes
// without.
func TestInitiatorCookieHandling(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	fr := newFakeResponder(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.Admit(ctx, fr.ep)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	next := func() (handshake.Message, netip.AddrPort) {
		t.Helper()
		timeout := time.After(sessionTimeout)
		for {
			select {
			case d := <-fr.in:
				if m, err := handshake.ParseMessage(d.b); err == nil && m.Kind == handshake.KindInit {
					return m, d.from
				}
			case <-timeout:
				t.Fatal("no msg1 came")
			}
		}
	}
	// rest returns the msg1s of first's attempt that follow it, and the
	// first msg1 of the next attempt.
	rest := func(first handshake.Message) (same []handshake.Message, following handshake.Message) {
		t.Helper()
		for {
			m, _ := next()
			if m.Sender != first.Sender {
				return same, m
			}
			if !bytes.Equal(m.Noise, first.Noise) {
				t.Fatal("msg1 changed within an attempt")
			}
			same = append(same, m)
		}
	}

	m1, from := next()
	if m1.MAC != nil {
		t.Fatal("first msg1 carries a cookie MAC")
	}
	c := handshake.Cookie{7, 7, 7}
	const replies = 3 * maxResends
	for range replies {
		reply, err := handshake.CookieReply(m1, c, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fr.conn.WriteToUDPAddrPort(reply, from); err != nil {
			t.Fatal(err)
		}
	}
	want, err := handshake.CookieMAC(c, msg1Raw(m1))
	if err != nil {
		t.Fatal(err)
	}
	// Nothing answers: the attempt ends, and the next begins.
	again, m2 := rest(m1)
	withMAC := 0
	for _, m := range again {
		switch {
		case m.MAC == nil && withMAC > 0:
			t.Fatal("msg1 sent without the cookie after it was repeated with it")
		case m.MAC == nil: // a resend before the replies came
		case !bytes.Equal(m.MAC, want[:]):
			t.Fatal("msg1 repeated with a wrong MAC")
		default:
			withMAC++
		}
	}
	if withMAC == 0 {
		t.Fatal("msg1 not repeated unchanged with the cookie's MAC")
	}
	if n := 1 + len(again); n > 2+maxResends {
		t.Fatalf("one attempt sent %d msg1s after %d cookie replies, want at most %d", n, replies, 2+maxResends)
	}
	want, _ = handshake.CookieMAC(c, msg1Raw(m2))
	if !bytes.Equal(m2.MAC, want[:]) {
		t.Fatal("the next attempt did not carry the cookie")
	}
	if got := a.Stats().CookiesReceived; got == 0 {
		t.Fatal("no cookie reply counted")
	}
	// That attempt got no answer: the cookie goes.
	_, m3 := rest(m2)
	if m3.MAC != nil {
		t.Fatal("an attempt after an unanswered cookie still carried it")
	}
}

// fuzzSecret is a fixed cookie secret source for FuzzReceiveUnderLoad, so
// that its committed seeds carry a valid cookie.
type fuzzSecret struct{}

func (fuzzSecret) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i * 7)
	}
	return len(p), nil
}

// FuzzReceiveUnderLoad feeds arbitrary datagrams, from 127.0.0.1 at an
// arbitrary port, to the receive path of a node under load. It must not
// panic, and nothing reaches the handshake queue or the per-source
// limiter unless it is a msg1 with the valid cookie of its source.
func FuzzReceiveUnderLoad(f *testing.F) {
	o, rb := decisionNode(f)
	o.cookies = newCookieChecker(nil, fuzzSecret{})
	o.loadMode.Store(int32(loadAlways))
	if _, err := o.cookies.cookie(netip.MustParseAddrPort("127.0.0.1:1")); err != nil { // make the secret
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, pkt []byte, port uint16) {
		from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
		o.onGridnet(pkt, from)
		queued := len(o.queue) > 0
		for len(o.queue) > 0 {
			<-o.queue
		}
		for len(o.cookieQ) > 0 {
			o.sendCookie(<-o.cookieQ)
		}
		rb.take()
		c, err := o.cookies.cookie(from)
		if err != nil {
			t.Fatal(err)
		}
		cookieOK := handshake.CheckCookieMAC(pkt, c)
		if queued && len(pkt) >= 2 && pkt[1] == handshake.KindInit && !cookieOK {
			t.Fatalf("msg1 without a valid cookie queued under load: %x", pkt[:min(len(pkt), 16)])
		}
		if !cookieOK && o.limiter.size() > 0 {
			t.Fatal("a datagram without a valid cookie entered the limiter")
		}
		o.limiter = newRateLimiter(1e6, 1e6, nil)
	})
}

// TestReceiveSeedPasses checks that the committed FuzzReceiveUnderLoad
// seed with a valid cookie reaches the queue, so fuzzing starts from the
// path a cookie opens.
func TestReceiveSeedPasses(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzReceiveUnderLoad", "msg1-cookie"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	pkt, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(lines[2], "uint16("), ")"), 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	o, _ := decisionNode(t)
	o.cookies = newCookieChecker(nil, fuzzSecret{})
	o.loadMode.Store(int32(loadAlways))
	from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	if _, err := o.cookies.cookie(from); err != nil { // the cookie was handed out
		t.Fatal(err)
	}
	o.onGridnet([]byte(pkt), from)
	if len(o.queue) != 1 {
		t.Fatal("the seed's msg1 with a cookie was not queued")
	}
}
