package discovery

import (
	"fmt"
	"testing"
	"time"

	"github.com/aigrid/gridnet/discovery/baseline"
)

// Benchmarks run one fabric per iteration; use -benchtime=1x. They use
// ProfileLAN (memberlist's LAN timings) so the figures compare with
// memberlist alone on the same preset.

// convergeOurs starts n members on memnet, joins them all to one seed at
// once and returns the time until every member knows every record.
func convergeOurs(b *testing.B, n int, limit time.Duration) (*fabric, time.Duration, bool) {
	f := newFabric(b, ProfileLAN)
	for i := range n {
		f.start(i, 1)
	}
	want := f.want()
	start := time.Now()
	f.joinAll(1, n)
	for time.Since(start) < limit {
		if f.allKnowAll(want) == nil {
			return f, time.Since(start), true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return f, limit, false
}

func BenchmarkConverge(b *testing.B) {
	for _, n := range []int{10, 50, 100} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for range b.N {

				f, ours, ok := convergeOurs(b, n, 60*time.Second)
				if !ok {
					b.Errorf("N=%d: not converged in 60 s", n)
				}
				for _, nd := range f.nodes {
					nd.d.Close()
				}
				f.nodes = nil
				bl, err := baseline.Run(n, 30*time.Second, false)
				if err != nil {
					b.Fatal(err)
				}
				base, behind := bl.Converged, bl.Stragglers
				b.ReportMetric(ours.Seconds(), "s-gridnet")
				b.ReportMetric(base.Seconds(), "s-memberlist")
				b.ReportMetric(ours.Seconds()/base.Seconds(), "ratio")
				b.ReportMetric(float64(behind), "memberlist-stragglers-at-30s")
			}
		})
	}
}

func BenchmarkKilledRemoved(b *testing.B) {
	for _, n := range []int{10, 50} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for range b.N {

				f, _, ok := convergeOurs(b, n, 60*time.Second)
				if !ok {
					b.Fatal("not converged")
				}
				victim := f.nodes[n/2]
				name := victim.d.Self().Name
				f.hub.Kill(victim.host.LocalAddr())
				start := time.Now()
				took := waitFor(b, 2*ProfileLAN.SuspicionWindow(n), "dead everywhere", func() error {
					for _, nd := range f.nodes {
						if nd == victim {
							continue
						}
						nd.mu.Lock()
						dead := nd.leaves[name]
						nd.mu.Unlock()
						if !dead {
							return fmt.Errorf("node %d", nd.i)
						}
					}
					return nil
				})
				_ = start
				b.ReportMetric(took.Seconds(), "s-dead-everywhere")
			}
		})
	}
}

func BenchmarkCRLSpread(b *testing.B) {
	const n = 50
	for range b.N {

		f, _, ok := convergeOurs(b, n, 60*time.Second)
		if !ok {
			b.Fatal("not converged")
		}
		f.nodes[7].d.BroadcastCRL(testCRL(1, 800))
		took := waitFor(b, 30*time.Second, "CRL everywhere", crlEverywhere(f, 1))
		b.ReportMetric(took.Seconds(), "s-crl-everywhere")
	}
}

// BenchmarkGossipAtRest reports the payload bytes a member sends per
// second once the fabric has settled, and the same for memberlist alone
// (LAN preset, its own transport) measured in the same run.
func BenchmarkGossipAtRest(b *testing.B) {
	const settle, window = 10 * time.Second, 10 * time.Second
	for _, n := range []int{10, 50, 100} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for range b.N {
				f, _, ok := convergeOurs(b, n, 60*time.Second)
				if !ok {
					b.Fatal("not converged")
				}
				time.Sleep(settle) // settle syncs end 8 s after join
				sum := func() (t uint64) {
					for _, nd := range f.nodes {
						t += nd.host.SentBytes()
					}
					return t
				}
				before := sum()
				time.Sleep(window)
				ours := float64(sum()-before) / float64(n) / window.Seconds()
				for _, nd := range f.nodes {
					nd.d.Close()
				}
				f.nodes = nil
				base, behind, err := baseline.RestTraffic(n, 60*time.Second, settle, window)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(behind), "memberlist-stragglers-at-60s")
				b.ReportMetric(ours, "B/node/s")
				b.ReportMetric(base, "memberlist-B/node/s")
				b.ReportMetric(ours/base, "ratio")
			}
		})
	}
}
