package nodetest

import (
	"context"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"
)

// deadline bounds each wait: generous, only a hang misses it.
const deadline = 60 * time.Second

// TestLocalCAAndControls: LocalCA's options start a node; a node started
// by Start reports its admission counters and WireGuard peers, crashes on
// request, and the switches do what they say.
func TestLocalCAAndControls(t *testing.T) {
	ca, err := NewLocalCA("ca", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	aOpts, err := ca.NodeOptions("alpha", netip.MustParsePrefix("100.64.0.1/10"), []string{"web"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Start(t.Context(), aOpts, Switches{Unfiltered: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if pub, err := WireGuardPublicKey(aOpts.WireGuardKey); err != nil || pub != a.Identity().WireGuardKey {
		t.Errorf("WireGuardPublicKey = %x, %v; the certificate holds %x", pub, err, a.Identity().WireGuardKey)
	}
	if id := a.Identity(); id.Name != "alpha" || id.Domain != "corp.example" || len(id.Groups) != 1 {
		t.Errorf("identity %+v", id)
	}

	bOpts, err := ca.NodeOptions("beta", netip.MustParsePrefix("100.64.0.2/10"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Start(t.Context(), bOpts, Switches{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(t.Context(), deadline)
	defer cancel()
	if _, err := b.Admit(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), a.UnderlayPort())); err != nil {
		t.Fatal(err)
	}
	if st := b.OverlayStats(); st.Completed == 0 {
		t.Errorf("beta's counters after an admission: %+v", st)
	}
	cfg, err := a.WireGuardConfig()
	if err != nil {
		t.Fatal(err)
	}
	if bPub := b.Identity().WireGuardKey; !strings.Contains(cfg, "public_key="+hex.EncodeToString(bPub[:])) {
		t.Errorf("alpha's WireGuard config lacks beta:\n%s", cfg)
	}

	// Unfiltered: alpha has no firewall rules (inbound denied), yet beta
	// connects.
	ln, err := a.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("x"))
			c.Close()
		}
	}()
	c, err := b.Dial(ctx, "tcp", "alpha:7000")
	if err != nil {
		t.Fatalf("dial through an unfiltered node: %v", err)
	}
	c.Close()

	if err := b.Crash(); err != nil {
		t.Fatalf("crash: %v", err)
	}
	if c, err := b.Dial(ctx, "tcp", "alpha:7000"); err == nil {
		c.Close()
		t.Error("a crashed node still dials")
	}
	if err := (&Node{}).Crash(); !errors.Is(err, errNoHooks) {
		t.Errorf("Crash of a node not from Start: %v", err)
	}
}

// TestSkipSelfCheck: a node whose certificate is for other keys does not
// start, unless the switch says to play it.
func TestSkipSelfCheck(t *testing.T) {
	ca, err := NewLocalCA("ca", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	one, err := ca.NodeOptions("one", netip.MustParsePrefix("100.64.0.1/10"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	two, err := ca.NodeOptions("two", netip.MustParsePrefix("100.64.0.2/10"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	forged := one
	forged.Certificate = two.Certificate
	if n, err := node.Start(t.Context(), forged); err == nil {
		n.Close()
		t.Fatal("a node with another node's certificate started")
	}
	n, err := Start(t.Context(), forged, Switches{SkipSelfCheck: true})
	if err != nil {
		t.Fatalf("SkipSelfCheck: %v", err)
	}
	n.Close()
}
