package handshake

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/aigrid/gridnet/overlay/cert"
)

// halfway runs msg1 and msg2 between ic and rc and returns both states
// with msg1, msg2 and the initiator's verdict on msg2.
func halfway(t testing.TB, w *world, ic, rc Credentials) (*Initiator, *Responder, []byte, []byte, *Peer, []byte, error) {
	t.Helper()
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
	msg3, peer, err := init.ConsumeResponse(m2, w.verify)
	return init, resp, msg1, msg2, peer, msg3, err
}

func mustParse(t testing.TB, b []byte) Message {
	t.Helper()
	m, err := ParseMessage(b)
	if err != nil {
		t.Fatalf("parse %x: %v", b, err)
	}
	return m
}

// TestRefusalRoundTrip: each form of refusal is read back with its code
// by the side it refuses, and is smaller than the message it answers.
func TestRefusalRoundTrip(t *testing.T) {
	w := newWorld(t, "t")
	other := newWorld(t, "other")
	good := w.creds(t, "node-b", "100.64.0.2", "node-b", "node-b")
	foreign := other.creds(t, "node-a", "100.64.0.1", "node-a", "node-a")

	t.Run("responder refuses msg3", func(t *testing.T) {
		init, resp, _, _, _, msg3, err := halfway(t, w, foreign, good)
		if err != nil {
			t.Fatal(err)
		}
		_, err = resp.ConsumeFinal(mustParse(t, msg3), w.verify)
		if !errors.Is(err, cert.ErrUnknownCA) || errors.Is(err, ErrUnproven) {
			t.Fatalf("ConsumeFinal = %v, want an unknown CA the sender holds the keys of", err)
		}
		ref, err := resp.Refusal(RefusalUnknownCA)
		if err != nil {
			t.Fatal(err)
		}
		if len(ref) != RefusalSize || len(ref) >= len(msg3) {
			t.Fatalf("refusal of %d bytes for a msg3 of %d", len(ref), len(msg3))
		}
		code, err := init.OpenRefusal(mustParse(t, ref))
		if err != nil || code != RefusalUnknownCA {
			t.Fatalf("OpenRefusal = %v, %v", code, err)
		}
		if _, err := resp.Refusal(RefusalOther); !errors.Is(err, ErrState) {
			t.Fatalf("a second refusal under the same key: %v", err)
		}
	})
	t.Run("initiator refuses msg2", func(t *testing.T) {
		init, resp, _, msg2, _, _, err := halfway(t, w, good, foreign)
		if !errors.Is(err, cert.ErrUnknownCA) {
			t.Fatalf("ConsumeResponse = %v", err)
		}
		ref, err := init.Refusal(RefusalUnknownCA)
		if err != nil {
			t.Fatal(err)
		}
		if len(ref) >= len(msg2) {
			t.Fatalf("refusal of %d bytes for a msg2 of %d", len(ref), len(msg2))
		}
		code, err := resp.OpenRefusal(mustParse(t, ref))
		if err != nil || code != RefusalUnknownCA {
			t.Fatalf("OpenRefusal = %v, %v", code, err)
		}
		if _, err := init.Refusal(RefusalOther); !errors.Is(err, ErrState) {
			t.Fatalf("a second refusal under the same key: %v", err)
		}
	})
	t.Run("busy", func(t *testing.T) {
		init, msg1, err := NewInitiator(good, 0x01020304)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := BusyRefusal(mustParse(t, msg1))
		if err != nil {
			t.Fatal(err)
		}
		if len(ref) != BusyRefusalSize || len(ref) >= len(msg1) {
			t.Fatalf("busy refusal of %d bytes for a msg1 of %d", len(ref), len(msg1))
		}
		code, err := init.OpenRefusal(mustParse(t, ref))
		if err != nil || code != RefusalRateLimited {
			t.Fatalf("OpenRefusal = %v, %v", code, err)
		}
	})
}

// TestRefusalForgeries: a refusal that does not belong to this handshake
// (tampered, from another handshake, reflected, echoing another msg1, sealed
// before msg2) is refused, and the handshake goes on as if it never came.
func TestRefusalForgeries(t *testing.T) {
	w := newWorld(t, "t")
	a := w.creds(t, "node-a", "100.64.0.1", "node-a", "node-a")
	b := w.creds(t, "node-b", "100.64.0.2", "node-b", "node-b")

	init, resp, _, _, _, _, err := halfway(t, w, a, b)
	if err != nil {
		t.Fatal(err)
	}
	genuine, err := resp.Refusal(RefusalRevoked)
	if err != nil {
		t.Fatal(err)
	}
	// The same two nodes, the same indices, other ephemeral keys.
	a2, b2 := a, b
	a2.Random, b2.Random = &detRand{seed: "again-a"}, &detRand{seed: "again-b"}
	_, resp2, _, _, _, _, err := halfway(t, w, a2, b2)
	if err != nil {
		t.Fatal(err)
	}
	otherSession, _ := resp2.Refusal(RefusalRevoked)
	reflected, _ := init.Refusal(RefusalRevoked)
	copy(reflected[2:HeaderSize], genuine[2:HeaderSize]) // the responder's indices

	tampered := func(i int) []byte { b := bytes.Clone(genuine); b[i] ^= 1; return b }
	for name, frame := range map[string][]byte{
		"tampered code":       tampered(HeaderSize),
		"tampered tag":        tampered(RefusalSize - 1),
		"tampered header":     tampered(2),
		"other handshake":     otherSession,
		"reflected initiator": reflected,
	} {
		m, err := ParseMessage(frame)
		if err != nil {
			continue // a header change may make it unparsable: refused too
		}
		if code, err := init.OpenRefusal(m); err == nil {
			t.Errorf("%s: accepted with code %s", name, code)
		}
	}
	if code, err := init.OpenRefusal(mustParse(t, genuine)); err != nil || code != RefusalRevoked {
		t.Fatalf("genuine refusal after forgeries: %v, %v", code, err)
	}

	// Before msg2: a busy refusal must echo this msg1; a sealed one is
	// meaningless; neither spoils the handshake.
	init3, msg1, err := NewInitiator(a, 0x01020304)
	if err != nil {
		t.Fatal(err)
	}
	_, otherMsg1, _ := NewInitiator(a2, 0x01020304)
	wrongEcho, _ := BusyRefusal(mustParse(t, otherMsg1))
	wrongCode, _ := BusyRefusal(mustParse(t, msg1))
	wrongCode[len(wrongCode)-1] = byte(RefusalRevoked)
	for name, frame := range map[string][]byte{"busy echoing another msg1": wrongEcho, "busy with another code": wrongCode, "sealed before msg2": genuine} {
		if code, err := init3.OpenRefusal(mustParse(t, frame)); err == nil {
			t.Errorf("%s: accepted with code %s", name, code)
		}
	}
	m1 := mustParse(t, msg1)
	_, msg2, err := NewResponder(b, m1, 0x11223344)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := init3.ConsumeResponse(mustParse(t, msg2), w.verify); err != nil {
		t.Fatalf("handshake after rejected refusals: %v", err)
	}
}

// TestUnprovenCertificate: a certificate that does not verify is reported
// as such only to a sender that holds its keys; for anyone else the error
// carries ErrUnproven (the refusal then says wrong key).
func TestUnprovenCertificate(t *testing.T) {
	w := newWorld(t, "t")
	other := newWorld(t, "other")
	b := w.creds(t, "node-b", "100.64.0.2", "node-b", "node-b")
	for _, tc := range []struct {
		name       string
		wgFor      string
		idFor      string
		unproven   bool
		underlying error
	}{
		{"own keys", "node-a", "node-a", false, cert.ErrUnknownCA},
		{"another WireGuard key", "someone", "node-a", true, cert.ErrUnknownCA},
		{"another identity key", "node-a", "someone", true, cert.ErrUnknownCA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := other.creds(t, "node-a", "100.64.0.1", tc.wgFor, tc.idFor)
			for role, run := range map[string]func() error{
				"responder": func() error { _, _, _, _, _, err := run(t, w, a, b); return err },
				"initiator": func() error { _, _, _, _, _, err := run(t, w, b, a); return err },
			} {
				err := run()
				if !errors.Is(err, tc.underlying) || errors.Is(err, ErrUnproven) != tc.unproven {
					t.Errorf("%s: err = %v, want %v with unproven=%v", role, err, tc.underlying, tc.unproven)
				}
			}
		})
	}
}

func TestRefusalCodeNames(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range RefusalCodes() {
		if c.String() == "" || seen[c.String()] || c.Description() == "" {
			t.Errorf("code %d: name %q, description %q", byte(c), c.String(), c.Description())
		}
		seen[c.String()] = true
	}
	if RefusalCode(200).String() != "refusal(200)" || RefusalCode(200).Description() != RefusalOther.Description() {
		t.Errorf("unknown code: %q, %q", RefusalCode(200).String(), RefusalCode(200).Description())
	}
}

// refusalFixture is an initiator that read node-b's recorded msg2 (so its
// refusal keys are those of the committed FuzzRefusal seeds), a fresh
// initiator still waiting for msg2, and every frame the genuine responder
// could send them.
type refusalFixture struct {
	after, before *Initiator
	genuine       map[string]bool
}

func newRefusalFixture(tb testing.TB) *refusalFixture {
	w := newWorld(tb, "t")
	a := w.creds(tb, "node-a", "100.64.0.1", "node-a", "node-a")
	b := fuzzResponderCreds(tb, w)
	after, resp, _, _, _, _, err := halfway(tb, w, a, b)
	if err != nil {
		tb.Fatal(err)
	}
	a.Random = &detRand{seed: "node-a-before"}
	before, msg1, err := NewInitiator(a, 0x01020304)
	if err != nil {
		tb.Fatal(err)
	}
	fx := &refusalFixture{after: after, before: before, genuine: map[string]bool{}}
	for c := range 256 { // every code the genuine responder could seal
		ref, err := sealRefusal(resp.hs, resp.h2, roleResponder, resp.local, resp.remote, RefusalCode(c))
		if err != nil {
			tb.Fatal(err)
		}
		fx.genuine[string(ref)] = true
	}
	busy, err := BusyRefusal(mustParse(tb, msg1))
	if err != nil {
		tb.Fatal(err)
	}
	fx.genuine[string(busy)] = true
	if os.Getenv("GRIDNET_WRITE_SEEDS") != "" {
		sealed, _ := sealRefusal(resp.hs, resp.h2, roleResponder, resp.local, resp.remote, RefusalExpired)
		writeSeed(tb, "FuzzRefusal", "sealed-expired", sealed)
		writeSeed(tb, "FuzzRefusal", "busy", busy)
	}
	return fx
}

// TestRefusalSeedsOpen checks the committed FuzzRefusal seeds reach the
// success path, so fuzzing starts from genuine refusals.
func TestRefusalSeedsOpen(t *testing.T) {
	fx := newRefusalFixture(t)
	for name, want := range map[string]RefusalCode{"sealed-expired": RefusalExpired, "busy": RefusalRateLimited} {
		vals := readSeed(t, "FuzzRefusal", name)
		m := mustParse(t, vals[0])
		in := fx.after
		if m.Sender == 0 {
			in = fx.before
		}
		if code, err := in.OpenRefusal(m); err != nil || code != want {
			t.Errorf("seed %s: %v, %v (want %v)", name, code, err, want)
		}
	}
}

// FuzzRefusal feeds arbitrary frames as refusals to an initiator that sent
// msg1 only (busy form) and to one that read msg2 (sealed form). It must
// never panic, every error must be one of the contract's sentinels, and a
// frame is accepted only if the genuine responder made it.
func FuzzRefusal(f *testing.F) {
	fx := newRefusalFixture(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error outside the contract: %v", err)
			}
			return
		}
		for _, in := range []*Initiator{fx.before, fx.after} {
			code, err := in.OpenRefusal(m)
			if err != nil {
				if !errors.Is(err, ErrState) && !errors.Is(err, ErrNoise) && !errors.Is(err, ErrMalformed) {
					t.Fatalf("error outside the contract: %v", err)
				}
				continue
			}
			if !fx.genuine[string(b)] || code >= numRefusalCodes {
				t.Fatalf("accepted a forged refusal %x as %v", b, code)
			}
		}
	})
}

// writeSeed writes one fuzz seed file of []byte values.
func writeSeed(tb testing.TB, target, name string, vals ...[]byte) {
	tb.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, v := range vals {
		fmt.Fprintf(&b, "[]byte(%q)\n", v)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// readSeed reads the []byte values of a committed fuzz seed file.
func readSeed(tb testing.TB, target, name string) [][]byte {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, name))
	if err != nil {
		tb.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	var vals [][]byte
	for _, l := range lines[1:] {
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(l, "[]byte("), ")"))
		if err != nil {
			tb.Fatal(err)
		}
		vals = append(vals, []byte(s))
	}
	return vals
}
