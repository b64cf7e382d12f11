package overlay

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/handshake"
)

func TestTwoNodes(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{})

	admit(t, a, b)
	// The responder admits after msg3; wait for it.
	waitFor(t, sessionTimeout, "b admits a", func() bool { return b.hasPeer(a.keys.wgPub) })
	// Both sides hold each other with host routes only.
	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		dump, err := pair[0].WireGuardConfig()
		if err != nil {
			t.Fatal(err)
		}
		want := "allowed_ip=" + pair[1].addr.String() + "/32"
		if !bytes.Contains([]byte(dump), []byte(want)) {
			t.Fatalf("%s: IpcGet lacks %q:\n%s", pair[0].name, want, dump)
		}
		if bytes.Contains([]byte(dump), []byte("/10")) {
			t.Fatalf("%s: allowed_ip must be a host route:\n%s", pair[0].name, dump)
		}
		if !bytes.Contains([]byte(dump), []byte("persistent_keepalive_interval=25")) {
			t.Fatalf("%s: no persistent keepalive:\n%s", pair[0].name, dump)
		}
	}
	if err := exchange(t, a, b, 7000, bytes.Repeat([]byte("gridnet "), 4096), exchangeTimeout); err != nil {
		t.Fatal(err)
	}
	if err := exchange(t, b, a, 7001, []byte("reverse"), exchangeTimeout); err != nil {
		t.Fatal(err)
	}
	if err := ping(a, b, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		ps := pair[0].Peers()
		if len(ps) != 1 || ps[0].Name != pair[1].name {
			t.Fatalf("%s Peers() = %+v", pair[0].name, ps)
		}
		p := ps[0]
		if p.State != PeerConnected || p.LastHandshake.IsZero() || p.RxBytes == 0 || p.TxBytes == 0 {
			t.Fatalf("%s peer status %+v", pair[0].name, p)
		}
		if p.Endpoint.Port() != pair[1].Port() || p.NotAfter.IsZero() || p.AdmittedAt.IsZero() {
			t.Fatalf("%s peer status %+v", pair[0].name, p)
		}
		id, ok := pair[0].IdentityByAddr(pair[1].addr)
		if !ok || id.Name != pair[1].name {
			t.Fatalf("%s IdentityByAddr(%s) = %v, %v", pair[0].name, pair[1].addr, id, ok)
		}
	}
	if _, ok := a.IdentityByAddr(a.addr); ok {
		t.Fatal("own address must not map to a peer")
	}
	sa, sb := a.Stats(), b.Stats()
	if sa.Completed != 1 || sb.Completed != 1 || sb.Responded < 1 || sa.Initiated < 1 {
		t.Fatalf("stats a=%+v b=%+v", sa, sb)
	}
}

func TestThreeNodeMesh(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	nodes := []*node{
		startNode(t, f, "node-a", "100.64.0.1", nodeOpts{}),
		startNode(t, f, "node-b", "100.64.0.2", nodeOpts{}),
		startNode(t, f, "node-c", "100.64.0.3", nodeOpts{}),
	}
	// Static peers: a->b, b->c, c->a covers every pair once.
	for i, n := range nodes {
		n.AddStaticPeer(nodes[(i+1)%3].ep)
	}
	for _, n := range nodes {
		waitFor(t, sessionTimeout, n.name+" has 2 peers", func() bool { return len(n.Peers()) == 2 })
	}
	port := uint16(7100)
	for _, x := range nodes {
		for _, y := range nodes {
			if x == y {
				continue
			}
			port++
			if err := exchange(t, x, y, port, []byte(x.name+" to "+y.name), exchangeTimeout); err != nil {
				for _, n := range nodes {
					d, _ := n.WireGuardConfig()
					t.Logf("%s %s\n%s", n.name, n.ep, d)
				}
				t.Fatal(err)
			}
		}
	}
}

// liar wraps a pool and doctors the verification of one certificate, so a
// misbehaving node can start with credentials an honest node would refuse.
type liar struct {
	*cert.Pool
	der    []byte
	doctor func(*cert.Identity)
	fake   *cert.Identity
}

func (l *liar) VerifyDER(der []byte, now time.Time) (*cert.Identity, error) {
	if bytes.Equal(der, l.der) {
		if l.fake != nil {
			return l.fake, nil
		}
		id, err := l.Pool.VerifyDER(der, now)
		if err != nil {
			return nil, err
		}
		l.doctor(id)
		return id, nil
	}
	return l.Pool.VerifyDER(der, now)
}

func TestRefusals(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	rogue := newFixture(t, "rogue")
	// The honest node trusts both CAs' domains? No: only alpha. Its clock
	// runs two hours ahead so one-hour certificates are expired for it.
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	honest := startNode(t, f, "honest", "100.64.0.1", nodeOpts{now: later})

	victimKeys := newKeys(t)
	victimDER := f.issue("victim", victimKeys, "100.64.0.9", 12*time.Hour).Raw

	revokedKeys := newKeys(t)
	revokedCert := f.issue("revoked", revokedKeys, "100.64.0.4", 12*time.Hour)
	crl, err := f.ca.Revoke(nil, []*big.Int{revokedCert.SerialNumber}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.ApplyCRL(crl, time.Now()); err != nil {
		t.Fatal(err)
	}
	// The revoked node verifies itself with a pool that has no CRL.
	cleanPool, _ := cert.NewPool(f.ca.Cert)

	mismatchKeys := newKeys(t)
	otherKeys := newKeys(t)
	mismatchDER := f.issue("mismatch", mismatchKeys, "100.64.0.5", 12*time.Hour).Raw
	runAsMismatch := otherKeys
	runAsMismatch.idKey = mismatchKeys.idKey // right identity key, wrong WireGuard key

	// Replay 1: X's cert and X's WireGuard key, but not X's identity key.
	stolenWG := victimKeys
	stolenWG.idKey = newKeys(t).idKey
	// Replay 2: X's cert only, own keys.
	own := newKeys(t)

	cases := []struct {
		name   string
		start  func() *node
		reason Reason
		sent   error
	}{
		{"untrusted CA", func() *node {
			both, err := cert.NewPool(rogue.ca.Cert, f.ca.Cert)
			if err != nil {
				t.Fatal(err)
			}
			return startNode(t, rogue, "intruder", "100.64.0.3", nodeOpts{verifier: both})
		}, ReasonUnknownCA, cert.ErrUnknownCA},
		{"expired", func() *node {
			return startNode(t, f, "expired", "100.64.0.6", nodeOpts{validity: time.Hour})
		}, ReasonExpired, cert.ErrExpired},
		{"revoked", func() *node {
			return startNode(t, f, "revoked", "100.64.0.4", nodeOpts{keys: &revokedKeys, der: revokedCert.Raw, verifier: cleanPool})
		}, ReasonRevoked, cert.ErrRevoked},
		{"key mismatch", func() *node {
			return startNode(t, f, "mismatch", "100.64.0.5", nodeOpts{keys: &runAsMismatch, der: mismatchDER,
				verifier: &liar{Pool: f.pool, der: mismatchDER, doctor: func(id *cert.Identity) { id.WireGuardKey = runAsMismatch.wgPub }}})
		}, ReasonKeyMismatch, handshake.ErrKeyMismatch},
		{"replay with stolen WireGuard key", func() *node {
			return startNode(t, f, "victim", "100.64.0.9", nodeOpts{keys: &stolenWG, der: victimDER,
				verifier: &liar{Pool: f.pool, der: victimDER, doctor: func(id *cert.Identity) { id.IdentityKey = stolenWG.idKey.Public().(ed25519.PublicKey) }}})
		}, ReasonSignature, handshake.ErrSignature},
		{"replay with own keys", func() *node {
			return startNode(t, f, "victim", "100.64.0.9", nodeOpts{keys: &own, der: victimDER,
				verifier: &liar{Pool: f.pool, der: victimDER, doctor: func(id *cert.Identity) {
					id.IdentityKey = own.idKey.Public().(ed25519.PublicKey)
					id.WireGuardKey = own.wgPub
				}}})
		}, ReasonKeyMismatch, handshake.ErrKeyMismatch},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad := tc.start()
			defer bad.Close()
			before := honest.Stats().Rejected[tc.reason]

			// Honest node initiates: msg2 is refused with the typed reason.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := honest.Admit(ctx, bad.ep)
			cancel()
			var rej *RejectError
			if !errors.As(err, &rej) || rej.Reason != tc.reason || !errors.Is(err, tc.sent) {
				t.Fatalf("Admit error = %v, want reason %s wrapping %v", err, tc.reason, tc.sent)
			}
			if got := honest.Stats().Rejected[tc.reason]; got != before+1 {
				t.Fatalf("counter %s = %d, want %d", tc.reason, got, before+1)
			}

			// Bad node initiates: the honest responder refuses msg3.
			ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
			bad.Admit(ctx, honest.ep)
			cancel()
			waitFor(t, 20*time.Second, "responder refusal counted", func() bool {
				return honest.Stats().Rejected[tc.reason] >= before+2
			})
			if wgPeerKeys(t, honest.Overlay)[bad.keys.wgPub] || len(honest.Peers()) != 0 {
				t.Fatalf("bad node appears as a WireGuard peer of the honest node")
			}
		})
	}
	if keys := wgPeerKeys(t, honest.Overlay); len(keys) != 0 {
		t.Fatalf("honest node has %d WireGuard peers, want 0", len(keys))
	}
}

func TestAddressConflict(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{})
	c := startNode(t, f, "node-c", "100.64.0.2", nodeOpts{}) // same address, other key
	admit(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := a.Admit(ctx, c.ep)
	if !errors.Is(err, ErrAddressConflict) || a.Stats().Rejected[ReasonAddressConflict] != 1 {
		t.Fatalf("Admit = %v, stats %+v", err, a.Stats())
	}
	if wgPeerKeys(t, a.Overlay)[c.keys.wgPub] {
		t.Fatal("conflicting node became a peer")
	}
	if id, _ := a.IdentityByAddr(b.addr); id == nil || id.Name != "node-b" {
		t.Fatalf("address owner changed to %v", id)
	}
	// Renewal: b re-admitted with a new certificate for the same key wins.
	renewed := f.issue("node-b", b.keys, "100.64.0.2", 6*time.Hour)
	if err := b.SetCertificate(renewed.Raw); err != nil {
		t.Fatal(err)
	}
	admit(t, a, b)
	if id, _ := a.IdentityByAddr(b.addr); id == nil || !bytes.Equal(id.Raw, renewed.Raw) {
		t.Fatal("renewed certificate did not replace the old one")
	}
	if len(a.Peers()) != 1 {
		t.Fatalf("peers after renewal: %+v", a.Peers())
	}
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkAdmit measures complete admissions per second between two nodes
// on loopback: Noise XX, certificate chain/CRL verification and signatures
// on both sides, plus the WireGuard peer update.
func BenchmarkAdmit(b *testing.B) {
	checkLeaks(b)
	f := newFixture(b, "alpha")
	x := startNode(b, f, "node-a", "100.64.0.1", nodeOpts{rate: 1e6})
	y := startNode(b, f, "node-b", "100.64.0.2", nodeOpts{rate: 1e6})
	admit(b, x, y) // first admission also sets up the WireGuard session
	b.ReportAllocs()
	for b.Loop() {
		admit(b, x, y)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

func TestNewRejectsForeignCertificate(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	k, other := newKeys(t), newKeys(t)
	der := f.issue("node-a", other, "100.64.0.1", time.Hour).Raw
	// New closes the TUN on failure.
	_, err := New(Config{WireGuardKey: k.wgPriv, IdentityKey: k.idKey, Certificate: der, Verifier: f.pool, TUN: tuntestTUN()})
	if !errors.Is(err, handshake.ErrKeyMismatch) {
		t.Fatalf("New with a certificate for other keys: %v", err)
	}
	_, err = New(Config{WireGuardKey: k.wgPriv, IdentityKey: k.idKey, Certificate: []byte("junk"), Verifier: f.pool, TUN: tuntestTUN()})
	if !errors.Is(err, cert.ErrMalformed) {
		t.Fatalf("New with junk certificate: %v", err)
	}
}

func TestCloseStopsStaticPeers(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	a.AddStaticPeer(netip.MustParseAddrPort("127.0.0.1:9")) // nobody answers
	time.Sleep(200 * time.Millisecond)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a.Close()                                               // idempotent
	a.AddStaticPeer(netip.MustParseAddrPort("127.0.0.1:9")) // no-op after Close
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Admit(ctx, netip.MustParseAddrPort("127.0.0.1:9")); err == nil || ctx.Err() != nil {
		t.Fatalf("Admit after Close: %v (should fail at once)", err)
	}
	if a.Stats().Initiated == 0 {
		t.Fatal("static peer never tried")
	}
}

// TestClassifyOutsideNetworks: a certificate whose address lies outside
// its CA's networks is counted as such, not as outside the CA's domain
// (which its error also wraps), and the refused side hears a reason.
func TestClassifyOutsideNetworks(t *testing.T) {
	err := &RejectError{Err: fmt.Errorf("verify peer: %w", cert.ErrOutsideNetworks)}
	if got := classify(err); got != ReasonOutsideNetworks {
		t.Fatalf("classify = %v, want %v", got, ReasonOutsideNetworks)
	}
	if got := classify(fmt.Errorf("verify peer: %w", cert.ErrOutsideDomain)); got != ReasonOutsideDomain {
		t.Fatalf("classify(outside domain) = %v", got)
	}
	if got := ReasonOutsideNetworks.String(); got != "outside_networks" {
		t.Fatalf("name %q", got)
	}
	// As the handshake reports a certificate that did not verify.
	if _, ok := refusalFor(fmt.Errorf("%w: %w", handshake.ErrCertificate, cert.ErrOutsideNetworks)); !ok {
		t.Fatal("no refusal sent for a certificate outside its CA's networks")
	}
}
