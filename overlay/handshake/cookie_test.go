package handshake

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

// cookieFixture is an initiator that sent msg1 (deterministic keys), a
// cookie, the reply carrying it and msg1 with the cookie's MAC.
type cookieFixture struct {
	w      *world
	init   *Initiator
	msg1   []byte
	cookie Cookie
	reply  []byte
	msg1c  []byte
}

func newCookieFixture(tb testing.TB) *cookieFixture {
	tb.Helper()
	w := newWorld(tb, "t")
	a := w.creds(tb, "node-a", "100.64.0.1", "node-a", "node-a")
	init, msg1, err := NewInitiator(a, 0x01020304)
	if err != nil {
		tb.Fatal(err)
	}
	fx := &cookieFixture{w: w, init: init, msg1: msg1}
	copy(fx.cookie[:], sha("cookie"))
	if fx.reply, err = CookieReply(mustParse(tb, msg1), fx.cookie, &detRand{seed: "nonce"}); err != nil {
		tb.Fatal(err)
	}
	if fx.msg1c, err = init.Msg1WithCookie(fx.cookie); err != nil {
		tb.Fatal(err)
	}
	return fx
}

// TestCookieRoundTrip: the initiator opens the reply to its msg1, repeats
// msg1 with the cookie's MAC, the responder checks the MAC and reads the
// repeated msg1 as if it were the first: the handshake completes. The
// reply is smaller than msg1 (no amplification).
func TestCookieRoundTrip(t *testing.T) {
	fx := newCookieFixture(t)
	if len(fx.reply) != CookieReplySize || CookieReplySize*10 > Msg1Size {
		t.Fatalf("cookie reply of %d bytes for a msg1 of %d", len(fx.reply), Msg1Size)
	}
	rm := mustParse(t, fx.reply)
	if rm.Kind != KindCookie || rm.Sender != 0 || rm.Receiver != 0x01020304 {
		t.Fatalf("reply header %+v", rm)
	}
	got, err := fx.init.OpenCookie(rm)
	if err != nil || got != fx.cookie {
		t.Fatalf("OpenCookie: %x, %v", got, err)
	}
	if len(fx.msg1c) != Msg1CookieSize || !bytes.Equal(fx.msg1c[:Msg1Size], fx.msg1) {
		t.Fatal("msg1 with a cookie is not msg1 with a trailer")
	}
	m1c := mustParse(t, fx.msg1c)
	if m1c.Kind != KindInit || len(m1c.MAC) != CookieMACSize || !bytes.Equal(m1c.Noise, mustParse(t, fx.msg1).Noise) {
		t.Fatalf("parsed msg1 with cookie: kind %d, MAC %d bytes", m1c.Kind, len(m1c.MAC))
	}
	if mustParse(t, fx.msg1).MAC != nil {
		t.Fatal("a msg1 without a cookie has a MAC")
	}
	if !CheckCookieMAC(fx.msg1c, fx.cookie) {
		t.Fatal("genuine MAC refused")
	}

	// The responder reads the repeated msg1; the handshake completes.
	b := fuzzResponderCreds(t, fx.w)
	resp, msg2, err := NewResponder(b, m1c, 0x11223344)
	if err != nil {
		t.Fatal(err)
	}
	msg3, rp, err := fx.init.ConsumeResponse(mustParse(t, msg2), fx.w.verify)
	if err != nil || rp.Identity.Name != "node-b" {
		t.Fatalf("msg2 after a cookie round trip: %v", err)
	}
	ip, err := resp.ConsumeFinal(mustParse(t, msg3), fx.w.verify)
	if err != nil || ip.Identity.Name != "node-a" {
		t.Fatalf("msg3 after a cookie round trip: %v", err)
	}
	if os.Getenv("GRIDNET_WRITE_SEEDS") != "" {
		writeSeed(t, "FuzzCookie", "genuine", fx.reply, fx.msg1c)
		writeSeed(t, "FuzzCookie", "plain-msg1", fx.reply[:HeaderSize], fx.msg1)
		writeSeed(t, "FuzzParseMessage", "msg1-cookie", fx.msg1c)
		writeSeed(t, "FuzzParseMessage", "cookie-reply", fx.reply)
	}
}

// TestCookieForgeries: a reply is accepted only for the msg1 it answers,
// unaltered; a MAC only for the cookie and the msg1 it was made with.
func TestCookieForgeries(t *testing.T) {
	fx := newCookieFixture(t)
	flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }

	// Another msg1 of the same index (another ephemeral key).
	other, otherMsg1, err := NewInitiator(fx.w.creds(t, "node-c", "100.64.0.3", "node-c", "node-c"), 0x01020304)
	if err != nil {
		t.Fatal(err)
	}
	otherReply, err := CookieReply(mustParse(t, otherMsg1), fx.cookie, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.OpenCookie(mustParse(t, otherReply)); err != nil {
		t.Fatalf("other initiator's own reply: %v", err)
	}
	readdressed := bytes.Clone(fx.reply)
	readdressed[6]++ // the reply names another index
	for name, b := range map[string][]byte{
		"reply to another msg1": otherReply,
		"nonce altered":         flip(fx.reply, HeaderSize),
		"cookie altered":        flip(fx.reply, HeaderSize+cookieNonceLen),
		"tag altered":           flip(fx.reply, CookieReplySize-1),
		"other receiver":        readdressed,
	} {
		if _, err := fx.init.OpenCookie(mustParse(t, b)); !errors.Is(err, ErrNoise) && !errors.Is(err, ErrState) {
			t.Errorf("%s: accepted (err %v)", name, err)
		}
	}
	// Other kinds are not cookie replies.
	busy, err := BusyRefusal(mustParse(t, fx.msg1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.init.OpenCookie(mustParse(t, busy)); !errors.Is(err, ErrState) {
		t.Errorf("busy refusal opened as a cookie reply: %v", err)
	}
	if _, err := CookieReply(mustParse(t, busy), fx.cookie, nil); !errors.Is(err, ErrState) {
		t.Errorf("cookie reply to a refusal: %v", err)
	}

	var wrong Cookie
	wrong[0] = 1
	for name, b := range map[string][]byte{
		"wrong cookie":     mustMsg1WithCookie(t, fx.init, wrong),
		"msg1 altered":     flip(fx.msg1c, HeaderSize+dhLen+5),
		"header altered":   flip(fx.msg1c, 2),
		"MAC altered":      flip(fx.msg1c, Msg1CookieSize-1),
		"no MAC":           fx.msg1,
		"MAC cut":          fx.msg1c[:Msg1CookieSize-1],
		"not a msg1":       append(append([]byte{TypeGridnet, KindFinal}, fx.msg1c[2:Msg1Size]...), fx.msg1c[Msg1Size:]...),
		"not gridnet":      append([]byte{1}, fx.msg1c[1:]...),
		"other msg1's MAC": append(bytes.Clone(otherMsg1), fx.msg1c[Msg1Size:]...),
	} {
		if CheckCookieMAC(b, fx.cookie) {
			t.Errorf("%s: MAC accepted", name)
		}
	}
	if _, err := CookieMAC(fx.cookie, fx.msg1[:Msg1Size-1]); !errors.Is(err, ErrMalformed) {
		t.Errorf("MAC of a short msg1: %v", err)
	}
}

func mustMsg1WithCookie(t *testing.T, i *Initiator, c Cookie) []byte {
	t.Helper()
	b, err := i.Msg1WithCookie(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCookieSeedsGenuine checks the committed FuzzCookie seed reaches the
// success paths, so fuzzing starts from a genuine reply and MAC.
func TestCookieSeedsGenuine(t *testing.T) {
	fx := newCookieFixture(t)
	vals := readSeed(t, "FuzzCookie", "genuine")
	if !bytes.Equal(vals[0], fx.reply) || !bytes.Equal(vals[1], fx.msg1c) {
		t.Fatal("seed differs from the fixture (regenerate with GRIDNET_WRITE_SEEDS=1)")
	}
	if c, err := fx.init.OpenCookie(mustParse(t, vals[0])); err != nil || c != fx.cookie {
		t.Fatalf("seed reply: %v", err)
	}
	if !CheckCookieMAC(vals[1], fx.cookie) {
		t.Fatal("seed MAC refused")
	}
}

// FuzzCookie feeds an arbitrary frame as a cookie reply to an initiator
// and an arbitrary frame as a msg1 with a cookie MAC to the MAC check.
// Neither may panic, errors stay in the contract, and only the genuine
// reply and the genuine MAC are accepted.
func FuzzCookie(f *testing.F) {
	fx := newCookieFixture(f)
	f.Fuzz(func(t *testing.T, reply, msg1c []byte) {
		if m, err := ParseMessage(reply); err == nil {
			c, err := fx.init.OpenCookie(m)
			switch {
			case err != nil:
				if !errors.Is(err, ErrState) && !errors.Is(err, ErrNoise) {
					t.Fatalf("error outside the contract: %v", err)
				}
			case c != fx.cookie || !bytes.Equal(reply, fx.reply):
				t.Fatalf("accepted a forged cookie reply %x", reply)
			}
			if m.Kind == KindInit {
				if _, err := CookieReply(m, fx.cookie, nil); err != nil {
					t.Fatalf("no cookie reply to a parsed msg1: %v", err)
				}
			}
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error outside the contract: %v", err)
		}
		if CheckCookieMAC(msg1c, fx.cookie) && !bytes.Equal(msg1c, fx.msg1c) {
			t.Fatalf("accepted a forged cookie MAC %x", msg1c)
		}
	})
}
