package overlay

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/handshake"
)

// refusalFrom returns what n recorded about a refusal from endpoint.
func refusalFrom(n *node, endpoint netip.AddrPort) (Refusal, bool) {
	for _, r := range n.Refusals() {
		if r.Endpoint == endpoint {
			return r, true
		}
	}
	return Refusal{}, false
}

// TestRefusedSideLearnsWhy: a node refused for its certificate, its keys or
// its address is told the reason, whichever side started the handshake:
// as initiator (refused at msg3) Admit says who refused and why, and as
// responder (refused at msg2) the refusal is recorded with the refuser's
// endpoint. The honest side's clock runs two hours ahead, so one-hour
// certificates are expired for it.
func TestRefusedSideLearnsWhy(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	rogue := newFixture(t, "rogue")
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	honest := startNode(t, f, "honest", "100.64.0.1", nodeOpts{now: later, refusals: 1000})

	revokedKeys := newKeys(t)
	revokedCert := f.issue("revoked", revokedKeys, "100.64.0.4", 12*time.Hour)
	crl, err := f.ca.Revoke(nil, []*big.Int{revokedCert.SerialNumber}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.ApplyCRL(crl, time.Now()); err != nil {
		t.Fatal(err)
	}
	cleanPool, _ := cert.NewPool(f.ca.Cert)

	mismatchKeys, otherKeys := newKeys(t), newKeys(t)
	mismatchDER := f.issue("mismatch", mismatchKeys, "100.64.0.5", 12*time.Hour).Raw
	runAsMismatch := otherKeys
	runAsMismatch.idKey = mismatchKeys.idKey

	cases := []struct {
		name  string
		start func() *node
		code  handshake.RefusalCode
	}{
		{"foreign CA", func() *node {
			both, err := cert.NewPool(rogue.ca.Cert, f.ca.Cert)
			if err != nil {
				t.Fatal(err)
			}
			return startNode(t, rogue, "intruder", "100.64.0.3", nodeOpts{verifier: both, refusals: 1000})
		}, handshake.RefusalUnknownCA},
		{"expired", func() *node {
			return startNode(t, f, "expired", "100.64.0.6", nodeOpts{validity: time.Hour, refusals: 1000})
		}, handshake.RefusalExpired},
		{"revoked", func() *node {
			return startNode(t, f, "revoked", "100.64.0.4", nodeOpts{keys: &revokedKeys, der: revokedCert.Raw, verifier: cleanPool, refusals: 1000})
		}, handshake.RefusalRevoked},
		{"wrong key", func() *node {
			return startNode(t, f, "mismatch", "100.64.0.5", nodeOpts{keys: &runAsMismatch, der: mismatchDER, refusals: 1000,
				verifier: &liar{Pool: f.pool, der: mismatchDER, doctor: func(id *cert.Identity) { id.WireGuardKey = runAsMismatch.wgPub }}})
		}, handshake.RefusalWrongKey},
		{"address conflict", func() *node {
			holder := startNode(t, f, "holder", "100.64.0.7", nodeOpts{refusals: 1000})
			admit(t, honest, holder)
			return startNode(t, f, "twin", "100.64.0.7", nodeOpts{refusals: 1000}) // the holder's address
		}, handshake.RefusalAddressConflict},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad := tc.start()
			defer bad.Close()

			// The bad node initiates: the honest responder refuses msg3 and
			// says why; Admit reports it (and keeps trying until ctx ends,
			// which must leave room for one handshake on a loaded machine).
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := bad.Admit(ctx, honest.ep)
			cancel()
			var refused *RefusedError
			if !errors.As(err, &refused) || refused.Code != tc.code || refused.Name != "honest" || refused.Endpoint != honest.ep {
				t.Fatalf("Admit error = %v, want a refusal by honest with %s", err, tc.code)
			}
			r, ok := refusalFrom(bad, honest.ep)
			if !ok || r.Code != tc.code || r.Name != "honest" || r.At.IsZero() || r.Count == 0 {
				t.Fatalf("recorded refusals %+v, want %s by honest", bad.Refusals(), tc.code)
			}
			if wgPeerKeys(t, bad.Overlay)[honest.keys.wgPub] {
				t.Fatal("the refused node kept the refuser as a WireGuard peer")
			}

			// The honest node initiates: it refuses msg2 and says why.
			before := bad.Stats().RefusedBy[tc.code]
			ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
			_, err = honest.Admit(ctx, bad.ep)
			cancel()
			var rej *RejectError
			if !errors.As(err, &rej) {
				t.Fatalf("honest Admit = %v, want a refusal", err)
			}
			waitFor(t, sessionTimeout, "the refusal of msg2 at the responder", func() bool {
				return bad.Stats().RefusedBy[tc.code] > before
			})
			if r, ok := refusalFrom(bad, honest.ep); !ok || r.Code != tc.code {
				t.Fatalf("recorded refusals %+v, want %s from %s", bad.Refusals(), tc.code, honest.ep)
			}
		})
	}
	if honest.Stats().RefusalsSent == 0 {
		t.Fatal("the honest node counted no refusal sent")
	}
}

// TestBusyRefusalBacksOffAndRetries: a responder that drops msg1 under its
// per-source limit says so; the initiator records "rate limited", backs
// off and keeps trying until it is admitted, and the record goes then.
func TestBusyRefusalBacksOffAndRetries(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{rate: 0.5, burst: 1})
	// A first message from 127.0.0.1 takes b's only token for that
	// address; the next comes in 2 s.
	msg1 := make([]byte, handshake.Msg1Size)
	msg1[0], msg1[1], msg1[2] = handshake.TypeGridnet, handshake.KindInit, 1
	if _, err := udpSender(t).WriteToUDPAddrPort(msg1, b.ep); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sessionTimeout, "the first message counted", func() bool { return b.Stats().Responded+b.Stats().Rejected[ReasonNoise] > 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := a.Admit(ctx, b.ep); err != nil {
		t.Fatalf("Admit after a busy refusal: %v", err)
	}
	if got := a.Stats().RefusedBy[handshake.RefusalRateLimited]; got == 0 {
		t.Fatalf("no rate-limited refusal counted: %+v", a.Stats())
	}
	if got := b.Stats().RefusalsSent; got == 0 {
		t.Fatalf("responder sent no refusal: %+v", b.Stats())
	}
	if rs := a.Refusals(); len(rs) != 0 {
		t.Fatalf("refusals still recorded after admission: %+v", rs)
	}
}

// fakeResponder is a UDP socket on 127.0.0.1 that plays a responder by
// hand: it collects the msg1 frames it gets, and the test answers them.
type fakeResponder struct {
	conn *net.UDPConn
	ep   netip.AddrPort
	in   chan datagram
}

type datagram struct {
	b    []byte
	from netip.AddrPort
}

func newFakeResponder(t *testing.T) *fakeResponder {
	t.Helper()
	c := udpSender(t)
	fr := &fakeResponder{conn: c, ep: c.LocalAddr().(*net.UDPAddr).AddrPort(), in: make(chan datagram, 64)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case fr.in <- datagram{bytes.Clone(buf[:n]), from}:
			default:
			}
		}
	}()
	t.Cleanup(func() { c.Close(); wg.Wait() })
	return fr
}

// nextMsg1 waits for the next msg1 and returns it with its source.
func (fr *fakeResponder) nextMsg1(t *testing.T) (handshake.Message, netip.AddrPort) {
	t.Helper()
	timeout := time.After(10 * time.Second)
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

// newestMsg1 returns the newest msg1 received so far, or m if none.
func (fr *fakeResponder) newestMsg1(m handshake.Message) handshake.Message {
	for {
		select {
		case d := <-fr.in:
			if n, err := handshake.ParseMessage(d.b); err == nil && n.Kind == handshake.KindInit {
				m = n
			}
		default:
			return m
		}
	}
}

// TestForgedRefusalsIgnored: refusals that do not prove they belong to the
// handshake the node started (another source, another msg1's echo, a
// sealed form nobody can make yet) change nothing; the genuine busy
// refusal is recorded, and the node keeps trying.
func TestForgedRefusalsIgnored(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	fr := newFakeResponder(t)
	elsewhere := udpSender(t)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := a.Admit(ctx, fr.ep); done <- err }()
	defer func() { cancel(); <-done }()

	m1, from := fr.nextMsg1(t)
	genuine, err := handshake.BusyRefusal(m1)
	if err != nil {
		t.Fatal(err)
	}
	wrongEcho := bytes.Clone(genuine)
	wrongEcho[handshake.HeaderSize] ^= 1
	sealed := bytes.Clone(genuine[:handshake.RefusalSize])
	sealed[2] = 1 // a sender index: the sealed form
	send := func(c *net.UDPConn, b []byte) {
		if _, err := c.WriteToUDPAddrPort(b, from); err != nil {
			t.Fatal(err)
		}
	}
	junk := a.Stats().Junk
	send(elsewhere, genuine) // right bytes, wrong source
	send(fr.conn, wrongEcho)
	send(fr.conn, sealed)
	waitFor(t, sessionTimeout, "the forgeries counted as junk", func() bool { return a.Stats().Junk >= junk+3 })
	if rs := a.Refusals(); len(rs) != 0 {
		t.Fatalf("forged refusals recorded: %+v", rs)
	}

	// The genuine refusal, of the newest attempt (on a slow machine the
	// first may have timed out meanwhile), until it is recorded.
	waitFor(t, sessionTimeout, "the genuine refusal recorded", func() bool {
		m1 = fr.newestMsg1(m1)
		ref, err := handshake.BusyRefusal(m1)
		if err != nil {
			t.Fatal(err)
		}
		send(fr.conn, ref)
		time.Sleep(100 * time.Millisecond)
		r, ok := refusalFrom(a, fr.ep)
		return ok && r.Code == handshake.RefusalRateLimited && r.Name == ""
	})
	// Still trying: another attempt's msg1 comes after the back-off.
	fr.newestMsg1(m1)
	if m, _ := fr.nextMsg1(t); m.Sender == m1.Sender {
		t.Fatal("the next msg1 has the refused attempt's index")
	}
	select {
	case err := <-done:
		t.Fatalf("Admit gave up after a rate-limited refusal: %v", err)
	default:
	}
}

// TestRefusalGate: refusals to one source are limited to the refusal rate
// (burst as large), and to all sources together to refusalGlobalRate.
func TestRefusalGate(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	g := newRefusalGate(5, clock)
	src := netip.MustParseAddr("192.0.2.1")
	count := func(src netip.Addr, n int) int {
		k := 0
		for range n {
			if g.allow(src) {
				k++
			}
		}
		return k
	}
	if got := count(src, 100); got != 5 {
		t.Fatalf("one source, one instant: %d refusals, want 5", got)
	}
	if got := count(netip.MustParseAddr("192.0.2.2"), 100); got != 5 {
		t.Fatalf("another source: %d refusals, want 5", got)
	}
	now = now.Add(time.Second)
	if got := count(src, 100); got != 5 {
		t.Fatalf("one second later: %d refusals, want 5", got)
	}

	g = newRefusalGate(5, clock)
	total := 0
	for i := range 1000 {
		total += count(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 1)
	}
	if total != refusalGlobalRate {
		t.Fatalf("1000 sources at one instant: %d refusals, want %d", total, refusalGlobalRate)
	}
}

// TestRefusalFor maps every refusal cause to the code sent, and sends
// nothing for what could not be authenticated or is this node's own fault.
func TestRefusalFor(t *testing.T) {
	wrap := func(errs ...error) error { return errors.Join(errs...) }
	for _, tc := range []struct {
		err  error
		code handshake.RefusalCode
		ok   bool
	}{
		{wrap(handshake.ErrCertificate, cert.ErrUnknownCA), handshake.RefusalUnknownCA, true},
		{wrap(handshake.ErrCertificate, cert.ErrRevoked), handshake.RefusalRevoked, true},
		{wrap(handshake.ErrCertificate, cert.ErrExpired), handshake.RefusalExpired, true},
		{wrap(handshake.ErrCertificate, cert.ErrNotYetValid), handshake.RefusalNotYetValid, true},
		{wrap(handshake.ErrCertificate, cert.ErrExpired, handshake.ErrUnproven), handshake.RefusalWrongKey, true},
		{handshake.ErrKeyMismatch, handshake.RefusalWrongKey, true},
		{handshake.ErrSignature, handshake.RefusalWrongKey, true},
		{ErrAddressConflict, handshake.RefusalAddressConflict, true},
		{wrap(errors.New("admit"), cert.ErrRevoked), handshake.RefusalRevoked, true}, // revoked while admitting
		{wrap(handshake.ErrCertificate, cert.ErrOutsideDomain), handshake.RefusalOther, true},
		{handshake.ErrMalformed, handshake.RefusalOther, true},
		{ErrSelf, handshake.RefusalOther, true},
		{handshake.ErrNoise, 0, false},
		{handshake.ErrState, 0, false},
		{errors.New("overlay: configure peer: device closed"), 0, false},
	} {
		code, ok := refusalFor(tc.err)
		if code != tc.code || ok != tc.ok {
			t.Errorf("refusalFor(%v) = %s, %v; want %s, %v", tc.err, code, ok, tc.code, tc.ok)
		}
	}
}

// lineCounter counts log lines by message.
type lineCounter struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineCounter) Enabled(context.Context, slog.Level) bool { return true }
func (l *lineCounter) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}
func (l *lineCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *lineCounter) WithGroup(string) slog.Handler      { return l }

// TestRefusalLoggedOncePerWindow: refusals by one peer for one reason make
// one log line per window; a new reason or another peer logs at once.
func TestRefusalLoggedOncePerWindow(t *testing.T) {
	now := time.Unix(1000, 0)
	lc := &lineCounter{}
	o := &Overlay{log: slog.New(lc), now: func() time.Time { return now }, refusedFrom: map[netip.AddrPort]*refusalRecord{}}
	p1 := netip.MustParseAddrPort("192.0.2.1:4242")
	p2 := netip.MustParseAddrPort("192.0.2.2:4242")
	for range 50 {
		o.refused(p1, "beta", handshake.RefusalExpired)
	}
	o.refused(p1, "", handshake.RefusalRevoked)
	o.refused(p2, "", handshake.RefusalRevoked)
	now = now.Add(refusalLogWindow)
	o.refused(p1, "", handshake.RefusalRevoked)
	if len(lc.lines) != 4 {
		t.Fatalf("%d log lines, want 4:\n%s", len(lc.lines), strings.Join(lc.lines, "\n"))
	}
	if !strings.Contains(lc.lines[0], "peer=beta") || !strings.Contains(lc.lines[0], "reason=expired") {
		t.Errorf("first line: %s", lc.lines[0])
	}
	rs := o.Refusals()
	if len(rs) != 2 || rs[0].Endpoint != p1 || rs[0].Count != 52 || rs[0].Name != "beta" || rs[0].Code != handshake.RefusalRevoked {
		t.Fatalf("records %+v", rs)
	}
	if got := o.stats.refusedBy[handshake.RefusalExpired].Load(); got != 50 {
		t.Fatalf("%d expired refusals counted, want 50", got)
	}
}

// TestReasonsListsEveryReason: Reasons names each reason once, every one
// with its metric name (none falls back to "reason(N)").
func TestReasonsListsEveryReason(t *testing.T) {
	rs := Reasons()
	if len(rs) != int(numReasons) {
		t.Fatalf("%d reasons, want %d", len(rs), numReasons)
	}
	seen := map[string]bool{}
	for _, r := range rs {
		name := r.String()
		if strings.HasPrefix(name, "reason(") || seen[name] {
			t.Errorf("reason %d: name %q", int(r), name)
		}
		seen[name] = true
	}
}
