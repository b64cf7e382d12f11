package integration

import (
	"fmt"
	"math/big"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"
)

// gossipBenchSizes are the fabric sizes BenchmarkGossipFabric measures;
// GRIDNET_BENCH_NODES (comma-separated) overrides them.
func gossipBenchSizes() []int {
	sizes := []int{10, 50}
	if s := os.Getenv("GRIDNET_BENCH_NODES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n >= 3 {
				sizes = append(sizes, n)
			}
		}
	}
	return sizes
}

// BenchmarkGossipFabric measures, for N in-process nodes that all know one
// seed: the time until every node has a WireGuard session with every other,
// the time until a crashed node is removed everywhere, and the time until
// a revocation pushed at one node has cut the revoked node off everywhere.
// The discovery package's BenchmarkConvergence measures memberlist alone
// (no overlay) as the baseline.
func BenchmarkGossipFabric(b *testing.B) {
	for _, n := range gossipBenchSizes() {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for range b.N {
				benchGossipOnce(b, n)
			}
		})
	}
}

func benchGossipOnce(b *testing.B, n int) {
	ca, err := node.NewLocalCA("bench-ca", "bench.gridnet")
	if err != nil {
		b.Fatal(err)
	}
	var nodes []*node.Node
	defer func() {
		for _, x := range nodes {
			x.Close()
		}
	}()
	start := time.Now()
	for i := 1; i <= n; i++ {
		opts, err := ca.NodeOptions(fmt.Sprintf("n%d", i), overlayPrefix(i), nil, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		opts.Gossip = &node.GossipOptions{}
		opts.HandshakeRate, opts.HandshakeBurst, opts.HalfOpenPerSource = 1e6, 1e5, 1<<16
		opts.Firewall = mustRules(b, allowAll)
		if len(nodes) > 0 {
			opts.Peers = append(opts.Peers, underlay(nodes[0]))
		}
		x, err := node.Start(b.Context(), opts)
		if err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, x)
	}
	bound := 120 * time.Second
	benchWait(b, bound, func() string { return meshProblem(nodes) })
	mesh := time.Since(start)
	b.ReportMetric(mesh.Seconds(), "mesh-s")

	crashed := nodes[n-1]
	crashed.CrashForTest()
	rest := nodes[:n-1]
	removal := benchWait(b, bound, func() string { return anyHas(rest, crashed.Identity().Name) })
	b.ReportMetric(removal.Seconds(), "crash-removed-s")

	revoked := nodes[1]
	crl, err := ca.CA.Revoke(nil, []*big.Int{revoked.Identity().Serial}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if _, err := nodes[n/2].PushCRL(crl); err != nil {
		b.Fatal(err)
	}
	others := append([]*node.Node{nodes[0]}, nodes[2:n-1]...)
	benchWait(b, bound, func() string { return anyHas(others, revoked.Identity().Name) })
	revocation := time.Since(t0)
	b.ReportMetric(revocation.Seconds(), "revocation-s")
	b.Logf("N=%d: full mesh (every pair with a WireGuard session) %.1fs after the first start, crashed node removed everywhere in %.1fs, revocation everywhere in %.2fs",
		n, mesh.Seconds(), removal.Seconds(), revocation.Seconds())
}

func anyHas(nodes []*node.Node, name string) string {
	for _, x := range nodes {
		for _, p := range x.Peers() {
			if p.Name == name {
				return x.Identity().Name + " still has " + name
			}
		}
	}
	return ""
}

func benchWait(b *testing.B, bound time.Duration, cond func() string) time.Duration {
	start := time.Now()
	for {
		problem := cond()
		if problem == "" {
			return time.Since(start)
		}
		if time.Since(start) > bound {
			b.Fatalf("not within %v: %s", bound, problem)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
