package handshake

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
	"golang.org/x/crypto/curve25519"
)

// epoch is the fixed clock of all test certificates, so committed fuzz
// seeds keep verifying.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// detRand is a deterministic byte stream (SHA-256 counter mode).
type detRand struct {
	seed string
	n    int
	buf  []byte
}

func (r *detRand) Read(p []byte) (int, error) {
	for len(r.buf) < len(p) {
		h := sha256.Sum256(fmt.Appendf(nil, "%s/%d", r.seed, r.n))
		r.n++
		r.buf = append(r.buf, h[:]...)
	}
	copy(p, r.buf)
	r.buf = r.buf[len(p):]
	return len(p), nil
}

type world struct {
	pool *cert.Pool
	ca   *cert.CA
}

func newWorld(tb testing.TB, seed string) *world {
	tb.Helper()
	caKey := ed25519.NewKeyFromSeed(sha(seed + "/ca"))
	ca, err := cert.NewCAFromKey(caKey, "test-ca", "test.example", 365*24*time.Hour, epoch)
	if err != nil {
		tb.Fatal(err)
	}
	pool, err := cert.NewPool(ca.Cert)
	if err != nil {
		tb.Fatal(err)
	}
	return &world{pool: pool, ca: ca}
}

func sha(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

// creds makes deterministic credentials for a node; the certificate may
// name a different WireGuard / identity key than the one used (wgFor, idFor).
func (w *world) creds(tb testing.TB, name, addr, wgFor, idFor string) Credentials {
	tb.Helper()
	var c Credentials
	copy(c.StaticPrivate[:], sha(name+"/wg"))
	c.IdentityKey = ed25519.NewKeyFromSeed(sha(name + "/id"))
	var certWG [32]byte
	priv := sha(wgFor + "/wg")
	pub, _ := curve25519.X25519(priv, curve25519.Basepoint)
	copy(certWG[:], pub)
	crt, err := w.ca.Issue(cert.IssueRequest{
		Name:         name,
		IdentityKey:  ed25519.NewKeyFromSeed(sha(idFor + "/id")).Public().(ed25519.PublicKey),
		WireGuardKey: certWG,
		Addresses:    []netip.Prefix{netip.MustParsePrefix(addr + "/10")},
		Validity:     30 * 24 * time.Hour,
	}, epoch)
	if err != nil {
		tb.Fatal(err)
	}
	c.Certificate = crt.Raw
	c.Random = &detRand{seed: name}
	return c
}

func (w *world) verify(der []byte) (*cert.Identity, error) { return w.pool.VerifyDER(der, epoch) }

// run performs a full handshake and returns the three frames.
func run(t testing.TB, w *world, ic, rc Credentials) (msg1, msg2, msg3 []byte, ip, rp *Peer, err error) {
	init, msg1, err := NewInitiator(ic, 0x01020304)
	if err != nil {
		t.Fatal(err)
	}
	m1, err := ParseMessage(msg1)
	if err != nil {
		t.Fatal(err)
	}
	resp, msg2, err := NewResponder(rc, m1, 0x11223344)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := ParseMessage(msg2)
	if err != nil {
		t.Fatal(err)
	}
	msg3, rp, err = init.ConsumeResponse(m2, w.verify)
	if err != nil {
		return msg1, msg2, nil, nil, nil, err
	}
	m3, err := ParseMessage(msg3)
	if err != nil {
		t.Fatal(err)
	}
	ip, err = resp.ConsumeFinal(m3, w.verify)
	return msg1, msg2, msg3, ip, rp, err
}

func TestHandshake(t *testing.T) {
	w := newWorld(t, "t")
	a := w.creds(t, "node-a", "100.64.0.1", "node-a", "node-a")
	b := w.creds(t, "node-b", "100.64.0.2", "node-b", "node-b")
	msg1, msg2, msg3, ip, rp, err := run(t, w, a, b)
	if err != nil {
		t.Fatal(err)
	}
	if ip.Identity.Name != "node-a" || rp.Identity.Name != "node-b" || ip.Static != ip.Identity.WireGuardKey {
		t.Fatalf("peers %+v %+v", ip.Identity, rp.Identity)
	}
	if len(msg1) != Msg1Size || len(msg2) > MaxMessageSize || len(msg3) > MaxMessageSize {
		t.Fatalf("sizes %d %d %d", len(msg1), len(msg2), len(msg3))
	}
	if len(msg2) > 2*len(msg1) {
		t.Fatalf("amplification %d/%d", len(msg2), len(msg1))
	}
	if os.Getenv("GRIDNET_WRITE_SEEDS") != "" {
		writeSeeds(t, msg1, msg2, msg3)
		if err := os.WriteFile(filepath.Join("testdata", "node-b.der"), b.Certificate, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHandshakeRefusals(t *testing.T) {
	w := newWorld(t, "t")
	other := newWorld(t, "other")
	b := w.creds(t, "node-b", "100.64.0.2", "node-b", "node-b")
	cases := []struct {
		name string
		a    Credentials
		want error
	}{
		{"untrusted CA", other.creds(t, "node-a", "100.64.0.1", "node-a", "node-a"), cert.ErrUnknownCA},
		{"WireGuard key mismatch", w.creds(t, "node-a", "100.64.0.1", "someone", "node-a"), ErrKeyMismatch},
		{"identity key mismatch", w.creds(t, "node-a", "100.64.0.1", "node-a", "someone"), ErrSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// As initiator the bad node is refused by the responder (msg3)...
			_, _, _, _, _, err := run(t, w, tc.a, b)
			if !errors.Is(err, tc.want) {
				t.Fatalf("responder: err = %v, want %v", err, tc.want)
			}
			// ...and as responder by the initiator (msg2).
			_, _, _, _, _, err = run(t, w, b, tc.a)
			if !errors.Is(err, tc.want) {
				t.Fatalf("initiator: err = %v, want %v", err, tc.want)
			}
		})
	}
	if _, _, _, _, _, err := run(t, w, cases[0].a, b); !errors.Is(err, ErrCertificate) {
		t.Fatalf("certificate failures must wrap ErrCertificate: %v", err)
	}
}

func TestReplayIntoOtherSession(t *testing.T) {
	w := newWorld(t, "t")
	a := w.creds(t, "node-a", "100.64.0.1", "node-a", "node-a")
	b := w.creds(t, "node-b", "100.64.0.2", "node-b", "node-b")
	_, _, msg3, _, _, err := run(t, w, a, b)
	if err != nil {
		t.Fatal(err)
	}
	// A recorded msg3 does not complete a fresh responder session.
	b.Random = &detRand{seed: "fresh"}
	a2 := a
	a2.Random = &detRand{seed: "fresh-a"}
	_, m1, _ := NewInitiator(a2, 0x01020304)
	pm1, _ := ParseMessage(m1)
	resp, _, err := NewResponder(b, pm1, 0x11223344)
	if err != nil {
		t.Fatal(err)
	}
	m3, _ := ParseMessage(msg3)
	if _, err := resp.ConsumeFinal(m3, w.verify); !errors.Is(err, ErrNoise) {
		t.Fatalf("replayed msg3: %v", err)
	}
	if _, err := resp.ConsumeFinal(m3, w.verify); !errors.Is(err, ErrState) {
		t.Fatalf("second use: %v", err)
	}
}

func TestParseMessage(t *testing.T) {
	good := appendHeader(nil, KindInit, 7, 0)
	good = append(good, make([]byte, Msg1Size-HeaderSize)...)
	if m, err := ParseMessage(good); err != nil || m.Sender != 7 || m.Kind != KindInit {
		t.Fatal(m, err)
	}
	bad := [][]byte{
		nil, {TypeGridnet}, good[:Msg1Size-1],
		append(bytes.Clone(good), 0),
		append([]byte{1}, good[1:]...),
		func() []byte { b := bytes.Clone(good); b[1] = 9; return b }(),
		func() []byte { b := bytes.Clone(good); b[2], b[3], b[4], b[5] = 0, 0, 0, 0; return b }(),
		func() []byte { b := bytes.Clone(good); b[6] = 1; return b }(),
		append(appendHeader(nil, KindFinal, 1, 2), make([]byte, MaxMessageSize)...),
		append(appendHeader(nil, KindResponse, 1, 0), make([]byte, Msg2MinSize)...),
		append(bytes.Clone(good), make([]byte, CookieMACSize-1)...),                              // a cut cookie MAC
		append(bytes.Clone(good), make([]byte, CookieMACSize+1)...),                              // a long one
		append(appendHeader(nil, KindCookie, 1, 7), make([]byte, CookieReplySize-HeaderSize)...), // a cookie reply names no sender
		append(appendHeader(nil, KindCookie, 0, 7), make([]byte, CookieReplySize-HeaderSize+1)...),
		append(appendHeader(nil, KindCookie, 0, 7), make([]byte, CookieReplySize-HeaderSize-1)...),
	}
	for i, b := range bad {
		if _, err := ParseMessage(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("case %d: err = %v", i, err)
		}
	}
}

// writeSeeds commits fuzz seeds taken from a real handshake.
func writeSeeds(t *testing.T, msg1, msg2, msg3 []byte) {
	write := func(target, name string, vals ...[]byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.WriteString("go test fuzz v1\n")
		for _, v := range vals {
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("FuzzParseMessage", "msg1", msg1)
	write("FuzzParseMessage", "msg2", msg2)
	write("FuzzParseMessage", "msg3", msg3)
	write("FuzzResponder", "real", msg1, msg3)
	trunc := bytes.Clone(msg3[:Msg3MinSize])
	write("FuzzResponder", "short-msg3", msg1, trunc)
}

// FuzzParseMessage: parsing never panics and accepted frames re-encode.
func FuzzParseMessage(f *testing.F) {
	f.Add([]byte{TypeGridnet, KindInit})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error outside the contract: %v", err)
			}
			return
		}
		re := append(appendHeader(nil, m.Kind, m.Sender, m.Receiver), m.Noise...)
		re = append(re, m.MAC...)
		if !bytes.Equal(re, b) {
			t.Fatal("re-encoding differs")
		}
	})
}

// FuzzResponder feeds arbitrary msg1/msg3 bytes to a responder with fixed
// credentials and deterministic ephemeral keys. It must never panic, every
// error must be one of the contract's sentinels, and success is only
// possible for the genuine initiator's credentials.
func FuzzResponder(f *testing.F) {
	w := newWorld(f, "t")
	b := fuzzResponderCreds(f, w)
	a := w.creds(f, "node-a", "100.64.0.1", "node-a", "node-a")
	aPub, _ := curve25519.X25519(a.StaticPrivate[:], curve25519.Basepoint)
	f.Fuzz(func(t *testing.T, msg1, msg3 []byte) {
		rc := b
		rc.Random = &detRand{seed: "node-b"}
		m1, err := ParseMessage(msg1)
		if err != nil || m1.Kind != KindInit {
			return
		}
		resp, _, err := NewResponder(rc, m1, 0x11223344)
		if err != nil {
			if !errors.Is(err, ErrNoise) {
				t.Fatalf("msg1: error outside the contract: %v", err)
			}
			return
		}
		m3, err := ParseMessage(msg3)
		if err != nil {
			return
		}
		p, err := resp.ConsumeFinal(m3, w.verify)
		if err != nil {
			for _, s := range []error{ErrState, ErrNoise, ErrMalformed, ErrCertificate, ErrKeyMismatch, ErrSignature} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("msg3: error outside the contract: %v", err)
		}
		if p.Identity.Name != "node-a" || !bytes.Equal(p.Static[:], aPub) {
			t.Fatalf("admitted %q with a forged transcript", p.Identity.Name)
		}
	})
}

// fuzzResponderCreds are node-b's credentials with the certificate recorded
// with the seeds (issuance picks a random serial, and the certificate is in
// the transcript), so the recorded msg3 completes the handshake.
func fuzzResponderCreds(tb testing.TB, w *world) Credentials {
	b := w.creds(tb, "node-b", "100.64.0.2", "node-b", "node-b")
	der, err := os.ReadFile(filepath.Join("testdata", "node-b.der"))
	if err != nil {
		tb.Fatal(err)
	}
	b.Certificate = der
	return b
}

// TestRecordedSeedCompletes checks the committed FuzzResponder seed reaches
// the success path, so fuzzing starts from a real handshake.
func TestRecordedSeedCompletes(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzResponder", "real"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != 3 {
		t.Fatalf("seed has %d lines", len(lines))
	}
	var vals [][]byte
	for _, l := range lines[1:] {
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(l, "[]byte("), ")"))
		if err != nil {
			t.Fatal(err)
		}
		vals = append(vals, []byte(s))
	}
	w := newWorld(t, "t")
	b := fuzzResponderCreds(t, w)
	m1, _ := ParseMessage(vals[0])
	resp, _, err := NewResponder(b, m1, 0x11223344)
	if err != nil {
		t.Fatal(err)
	}
	m3, _ := ParseMessage(vals[1])
	p, err := resp.ConsumeFinal(m3, w.verify)
	if err != nil || p.Identity.Name != "node-a" {
		t.Fatalf("recorded seed: %v", err)
	}
}

func BenchmarkHandshake(b *testing.B) {
	w := newWorld(b, "t")
	a := w.creds(b, "node-a", "100.64.0.1", "node-a", "node-a")
	c := w.creds(b, "node-b", "100.64.0.2", "node-b", "node-b")
	a.Random, c.Random = nil, nil
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, _, _, err := run(b, w, a, c); err != nil {
			b.Fatal(err)
		}
	}
}
