package node

import (
	"testing"

	"github.com/aigrid/gridnet/policy"
)

// loadTrack accumulates cumulative firewall loads the way the firewall
// reports them.
type loadTrack map[string]*policy.PeerLoad

func (lt loadTrack) add(name string, accepted, dropped uint64) {
	l := lt[name]
	if l == nil {
		l = &policy.PeerLoad{Name: name}
		lt[name] = l
	}
	l.Accepted += accepted
	l.Dropped += dropped
}

func (lt loadTrack) loads() []policy.PeerLoad {
	var out []policy.PeerLoad
	for _, l := range lt {
		out = append(out, *l)
	}
	return out
}

func TestPushbackThrottlesOnlyMostlyDroppedPeers(t *testing.T) {
	const d = pushbackInterval
	p := newPushback()
	lt := loadTrack{}
	lt.add("honest", 0, 0)
	lt.add("flooder", 0, 0)
	lt.add("bursty", 0, 0)
	p.step(lt.loads(), d) // first sight: nothing to judge

	// An honest bulk sender with some refused packets, a flooder whose
	// packets are mostly refused, and a peer with a few refusals only.
	lt.add("honest", 50000, 2000)
	lt.add("flooder", 100, 40000)
	lt.add("bursty", 10, pushbackMinDrops-1)
	changes := p.step(lt.loads(), d)
	if len(changes) != 1 || changes[0].Peer != "flooder" {
		t.Fatalf("changes %+v, want only the flooder throttled", changes)
	}
	if got := p.budgets["flooder"]; got != pushbackFloor {
		t.Errorf("flooder budget %.0f, want the floor %d (2 × 400 accepted/s is below it)", got, pushbackFloor)
	}
	if _, ok := p.budgets["honest"]; ok {
		t.Error("honest peer throttled")
	}
	if _, ok := p.budgets["bursty"]; ok {
		t.Error("peer below pushbackMinDrops throttled")
	}

	// Throttled, the flooder's passed packets are fewer than
	// pushbackMinDrops but still mostly dropped: the budget stays.
	lt.add("flooder", 20, 450)
	if changes := p.step(lt.loads(), d); len(changes) != 0 {
		t.Fatalf("changes %+v while the flood goes on", changes)
	}
	if _, ok := p.budgets["flooder"]; !ok {
		t.Fatal("budget lifted while the flooder's packets are still mostly dropped")
	}

	// A throttled peer that accepts a lot keeps twice its accepted rate.
	lt.add("flooder", 10000, 12000)
	p.step(lt.loads(), d)
	if got, want := p.budgets["flooder"], 2*10000/d.Seconds(); got != want {
		t.Errorf("budget %.0f, want %.0f (twice the accepted rate)", got, want)
	}

	// The flood stops: lifted after pushbackRelease quiet intervals.
	for i := 1; i <= pushbackRelease; i++ {
		lt.add("flooder", 50, 0)
		changes := p.step(lt.loads(), d)
		_, still := p.budgets["flooder"]
		if i < pushbackRelease && (!still || len(changes) != 0) {
			t.Fatalf("lifted after %d quiet intervals, want %d", i, pushbackRelease)
		}
		if i == pushbackRelease && (still || len(changes) != 1 || changes[0].PPS != 0) {
			t.Fatalf("not lifted after %d quiet intervals: changes %+v", i, changes)
		}
	}
}

func TestPushbackForgetsRemovedAndReadmittedPeers(t *testing.T) {
	const d = pushbackInterval
	p := newPushback()
	lt := loadTrack{}
	lt.add("a", 0, 0)
	p.step(lt.loads(), d)
	lt.add("a", 0, 10000)
	p.step(lt.loads(), d)
	if _, ok := p.budgets["a"]; !ok {
		t.Fatal("flooder not throttled")
	}
	// Removed: its budget goes with it.
	changes := p.step(nil, d)
	if len(changes) != 1 || changes[0].PPS != 0 || len(p.budgets) != 0 {
		t.Fatalf("removed peer: changes %+v, budgets %v", changes, p.budgets)
	}
	// Re-admitted with counters from zero: the first interval is not judged.
	lt = loadTrack{}
	lt.add("a", 0, 5000)
	if changes := p.step(lt.loads(), d); len(changes) != 0 {
		t.Fatalf("re-admitted peer judged on its first sight: %+v", changes)
	}
}
