package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node/nodetest"
	"github.com/aigrid/gridnet/policy"
	"github.com/aigrid/gridnet/stack"
)

// tuningWindow is how long each bulk measurement of BenchmarkStackTuning
// sends: a bounded time rather than a size, because a setting that makes
// TCP collapse must not make the benchmark run for minutes.
const tuningWindow = 3 * time.Second

// tuningPolicedRate is the per-peer packet cap of the benchmark's policed
// case: far below what one stream sends unpoliced (about 600,000 packets/s
// on the machine the defaults were chosen on), so the policer drops.
const tuningPolicedRate = 100_000

// measureWindow sends as fast as it can for d and returns the Mbit/s the
// receiver read within d and the process CPU time spent meanwhile.
func measureWindow(b *testing.B, p pair, d time.Duration) (float64, time.Duration) {
	b.Helper()
	ln, err := p.listen(bulkPort)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var got atomic.Int64
	accepted := make(chan io.Closer, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
		buf := make([]byte, 128<<10)
		for {
			n, err := c.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := p.dial(ctx, fmt.Sprintf("%s:%d", p.host, bulkPort))
	if err != nil {
		b.Fatal(err)
	}
	// The writer stops when the connection is closed below.
	go func() {
		buf := make([]byte, 128<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	cpu0 := processCPU(b)
	start, before := time.Now(), got.Load()
	time.Sleep(d)
	n, elapsed := got.Load()-before, time.Since(start)
	cpu := processCPU(b) - cpu0
	c.Close()
	if sc := <-accepted; sc != nil {
		sc.Close()
	}
	return float64(n*8) / elapsed.Seconds() / 1e6, cpu
}

// tuningVariant is one alternative to the userspace stack's defaults.
type tuningVariant struct {
	name   string
	tuning stack.Tuning
}

// BenchmarkStackTuning measures the userspace stack's tunable settings
// (stack.Tuning) against its defaults in the same run: each round measures
// every alternative next to a pair of nodes with the defaults (the
// defaults first in even rounds, second in odd ones, so that neither gains
// from its place), and reports for each alternative the median over
// rounds of its ratio to the defaults beside it: throughput of one TCP
// stream in a fixed window,
// CPU time per byte, and the p50 of a 64-byte request/response. It does so
// with the pass-through hook ("open") and with the firewall's per-peer
// packet cap far below the stream's rate ("policed"), where the congestion
// control and loss detection decide how TCP copes with drops. Rounds:
// GRIDNET_TUNING_ROUNDS (default 3); GRIDNET_TUNING_ONLY (comma-separated
// names) measures only those alternatives. Run it with -benchtime 1x and
// -v (`make bench-tuning`). docs/TUNING.md has the figures that chose the
// defaults.
func BenchmarkStackTuning(b *testing.B) {
	rounds := 3
	if s := os.Getenv("GRIDNET_TUNING_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("GRIDNET_TUNING_ROUNDS=%q: want a positive number", s)
		}
		rounds = n
	}
	variants := []tuningVariant{
		{"cubic", stack.Tuning{CongestionControl: "cubic"}},
		{"RACK", stack.Tuning{RACK: true}},
		{"queue-256", stack.Tuning{QueueLen: 256}},
		{"queue-4096", stack.Tuning{QueueLen: 4096}},
		{"batch-32", stack.Tuning{Batch: 32}},
		{"batch-64", stack.Tuning{Batch: 64}},
		{"batch-256", stack.Tuning{Batch: 256}},
		{"buffers-1MiB", stack.Tuning{MaxReceiveBuffer: 1 << 20, MaxSendBuffer: 1 << 20}},
		{"buffers-4MiB", stack.Tuning{MaxReceiveBuffer: 4 << 20, MaxSendBuffer: 4 << 20}},
		{"buffers-16MiB", stack.Tuning{MaxReceiveBuffer: 16 << 20, MaxSendBuffer: 16 << 20}},
	}
	if only := os.Getenv("GRIDNET_TUNING_ONLY"); only != "" {
		names := strings.Split(only, ",")
		variants = slices.DeleteFunc(variants, func(v tuningVariant) bool { return !slices.Contains(names, v.name) })
		if len(variants) == 0 {
			b.Fatalf("GRIDNET_TUNING_ONLY=%q names no alternative", only)
		}
	}
	policed := mustRules(b, fmt.Sprintf("inbound:\n  - {proto: tcp, port: %d-%d, host: any}\n", bulkPort, rrPort))
	policed.Flood.PacketsPerSec = tuningPolicedRate
	scenarios := []tuningScenario{{"open", nil}, {"policed", policed}}
	measure := func(rules *policy.Config, t stack.Tuning) tuningSample {
		runtime.GC()
		p := gridnetPairWith(b, rules, nodetest.Switches{Unfiltered: rules == nil, StackTuning: t})
		defer p.close()
		mbps, cpu := measureWindow(b, p, tuningWindow)
		runtime.GC()
		p50, _ := measureRR(b, p)
		gib := mbps * 1e6 / 8 * tuningWindow.Seconds() / (1 << 30)
		return tuningSample{mbps, cpu.Seconds() / max(gib, 1e-9), float64(p50)}
	}
	for range b.N {
		tuningRounds(b, rounds, scenarios, variants, measure)
	}
}

// tuningScenario is a setting of the firewall the alternatives are
// measured under.
type tuningScenario struct {
	name  string
	rules *policy.Config
}

// tuningSample is one measurement: Mbit/s, CPU-seconds per GiB, p50 in
// nanoseconds.
type tuningSample struct{ mbps, cpuPerGiB, p50 float64 }

// tuningRounds runs BenchmarkStackTuning's rounds and reports them.
func tuningRounds(b *testing.B, rounds int, scenarios []tuningScenario, variants []tuningVariant, measure func(*policy.Config, stack.Tuning) tuningSample) {
	for _, sc := range scenarios {
		ratios := make(map[string][][3]float64)
		var defaults []tuningSample
		for round := range rounds {
			for _, v := range variants {
				var base, s tuningSample
				if round%2 == 0 {
					base = measure(sc.rules, stack.Tuning{})
					s = measure(sc.rules, v.tuning)
				} else {
					s = measure(sc.rules, v.tuning)
					base = measure(sc.rules, stack.Tuning{})
				}
				defaults = append(defaults, base)
				ratios[v.name] = append(ratios[v.name], [3]float64{s.mbps / base.mbps, s.cpuPerGiB / base.cpuPerGiB, s.p50 / base.p50})
			}
		}
		median := func(xs []float64) float64 {
			xs = slices.Clone(xs)
			slices.Sort(xs)
			return xs[len(xs)/2]
		}
		var dm, dc, dp []float64
		for _, d := range defaults {
			dm, dc, dp = append(dm, d.mbps), append(dc, d.cpuPerGiB), append(dp, d.p50/1e3)
		}
		b.Logf("%s, defaults: median %.0f Mbit/s (runs %.0f), %.2f CPU-s/GiB, p50 %.1f µs",
			sc.name, median(dm), dm, median(dc), median(dp))
		b.ReportMetric(median(dm), sc.name+"-default-Mbit/s")
		for _, v := range variants {
			var tr, cr, pr []float64
			for _, r := range ratios[v.name] {
				tr, cr, pr = append(tr, r[0]), append(cr, r[1]), append(pr, r[2])
			}
			b.Logf("%s, %s vs defaults: throughput %.3f× (rounds %.2f), CPU per GiB %.3f×, p50 %.3f×",
				sc.name, v.name, median(tr), tr, median(cr), median(pr))
			b.ReportMetric(median(tr), sc.name+"-"+v.name+"-throughput-ratio")
		}
	}
}
