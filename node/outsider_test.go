package node

import (
	"net/netip"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
)

// TestPickOutsider: the join loop joins through an admitted peer outside
// the cluster only once it has been outside for outsiderGrace, through one
// peer a round, the longest outside first, and through the same peer again
// only after mergeRetry; a peer that became a member, or is no longer
// admitted, is forgotten.
func TestPickOutsider(t *testing.T) {
	id := func(name, addr string) *cert.Identity {
		return &cert.Identity{Name: name, Addresses: []netip.Prefix{netip.MustParsePrefix(addr + "/10")}}
	}
	a, b, c := id("a", "100.64.0.1"), id("b", "100.64.0.2"), id("c", "100.64.0.3")
	out := map[string]*outsider{}
	t0 := time.Unix(1000, 0)
	pick := func(at time.Duration, admitted []*cert.Identity, alive map[string]bool) string {
		t.Helper()
		addr, ok := pickOutsider(t0.Add(at), admitted, alive, out)
		if !ok {
			return ""
		}
		for _, x := range admitted {
			if x.Addresses[0].Addr() == addr {
				return x.Name
			}
		}
		t.Fatalf("picked %v, not an admitted peer's address", addr)
		return ""
	}
	steps := []struct {
		at       time.Duration
		admitted []*cert.Identity
		alive    map[string]bool
		want     string
	}{
		{0, []*cert.Identity{a, b}, map[string]bool{"b": true}, ""},                                // a outside from 0: not yet
		{time.Second, []*cert.Identity{a, b, c}, nil, ""},                                          // c outside from 1 s (b too)
		{outsiderGrace - time.Millisecond, []*cert.Identity{a, b, c}, nil, ""},                     // a's grace not over
		{outsiderGrace, []*cert.Identity{a, b, c}, nil, "a"},                                       // a: the longest outside
		{outsiderGrace + time.Second, []*cert.Identity{a, b, c}, nil, "b"},                         // b and c since 1 s: by name
		{outsiderGrace + 2*time.Second, []*cert.Identity{a, b, c}, nil, "c"},                       // one a round
		{outsiderGrace + 3*time.Second, []*cert.Identity{a, b, c}, nil, ""},                        // all tried
		{outsiderGrace + 4*time.Second, []*cert.Identity{a, b, c}, map[string]bool{"a": true}, ""}, // a joined: forgotten
		{outsiderGrace + 5*time.Second, []*cert.Identity{a, c}, nil, ""},                           // b not admitted: forgotten; a outside anew
		{outsiderGrace + mergeRetry + 2*time.Second, []*cert.Identity{a, b, c}, nil, "c"},          // c's retry is due; a and b start again
		{outsiderGrace + mergeRetry + 10*time.Second, []*cert.Identity{a, b, c}, nil, "a"},         // a outside since 5 s + grace
		{outsiderGrace + mergeRetry + 10*time.Second + time.Millisecond, []*cert.Identity{a, b, c}, nil, "b"},
	}
	for i, s := range steps {
		if got := pick(s.at, s.admitted, s.alive); got != s.want {
			t.Fatalf("step %d (at %v): picked %q, want %q", i, s.at, got, s.want)
		}
	}
	if len(out) != 3 {
		t.Fatalf("%d outsiders remembered, want the 3 admitted", len(out))
	}
}
