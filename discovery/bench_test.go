package discovery

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aigrid/gridnet/discovery/baseline"
	"github.com/aigrid/gridnet/discovery/insider"
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

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkInsiderFlood: an insider sends one member as much as it can of
// what it would use to exhaust it, while the fabric (3 members, LAN
// timings, in one process) runs: gossip packets with forged records (the
// victim's certificate under the insider's signature: the costliest
// record to refuse), and unsolicited pushes of 4096 made-up members (7.4
// MiB each). It reports the process's CPU time (the insider's sending
// included) per 10,000 packets or per push, the heap in use and
// goroutines at the end, and how many of the target's members are real.
func BenchmarkInsiderFlood(b *testing.B) {
	setup := func(b *testing.B) (*fabric, *insider.Member) {
		f := newFabric(b, ProfileLAN)
		for i := range 3 {
			f.start(i, 1)
		}
		f.joinAll(1, 3)
		waitFor(b, convergeTimeout, "converged", func() error { return f.allKnowAll(f.want()) })
		return f, newInsider(b, f, 2)
	}
	report := func(b *testing.B, f *fabric, cpu time.Duration, per float64, unit string) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(cpu.Seconds()/per, "cpu-s/"+unit)
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
		// The whole test process: the three members and the insider.
		if rss, ok := processRSS(); ok {
			b.ReportMetric(float64(rss)/(1<<20), "process-rss-MiB")
		}
		b.ReportMetric(float64(runtime.NumGoroutine()), "goroutines")
		b.ReportMetric(float64(len(f.nodes[0].d.Members())), "members")
		st := f.nodes[0].d.Stats()
		b.ReportMetric(float64(st.RecordsRefused), "refused")
		b.ReportMetric(float64(st.MessagesDropped), "dropped-queue-full")
	}
	b.Run("records", func(b *testing.B) {
		f, evil := setup(b)
		victim := f.nodes[1].d.Self()
		const batch = 10000
		// One forgery, sent over and over: refusing it costs the target a
		// signature check every time (its version is newer than the one
		// held), sending it costs the insider nothing more.
		r := insider.EncodeRecord(insider.Record{Name: victim.Name, Certificate: victim.Certificate,
			Version: uint64(time.Now().Add(time.Minute).UnixNano()), Gossip: gossipAddr(1)}, evil.Key)
		packet := insider.UserMsg(insider.RecordMsg(r))
		start := cpuTime(b)
		for range b.N {
			for range batch {
				evil.Send(gossipAddr(0), packet)
			}
		}
		report(b, f, cpuTime(b)-start, float64(b.N), "10k-packets")
		if !heldRecord(f.nodes[0], victim.Name).Equal(victim) {
			b.Fatal("the victim's record changed")
		}
	})
	b.Run("pushes", func(b *testing.B) {
		f, evil := setup(b)
		st := junkState(evil.Name, evil.Key, MaxStateRecords, 1800)
		var nodes []insider.NodeState
		for i := range MaxStateRecords {
			nodes = append(nodes, insider.AliveNode(fmt.Sprintf("fake-%04d", i), 1, gossipAddr(2), nil))
		}
		start := cpuTime(b)
		for range b.N {
			ctx, cancel := context.WithTimeout(context.Background(), convergeTimeout)
			_, _, err := evil.PushPull(ctx, gossipAddr(0), nodes, st, false)
			cancel()
			if err != nil {
				b.Fatal(err)
			}
		}
		report(b, f, cpuTime(b)-start, float64(b.N), "push")
		if k := len(f.nodes[0].d.Members()); k != 3 {
			b.Fatalf("%d members after the pushes", k)
		}
	})
}

// processRSS is the resident set size of this process (VmRSS in
// /proc/self/status), where the system has one.
func processRSS() (uint64, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kib); err != nil {
				return 0, false
			}
			return kib << 10, true
		}
	}
	return 0, false
}
