package integration

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/nodetest"
	"github.com/aigrid/gridnet/overlay"
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
// In the same run it measures memberlist alone (its own UDP/TCP transport
// on 127.0.0.1, LAN preset, no overlay, all members joining one seed at
// once): the time until every member knows all N and the time until a
// member shut down without leaving is gone everywhere. It reports the
// worst of the b.N runs (use -benchtime 5x for the worst of five) and the
// ratios of the fabric's worst to memberlist's worst.
//
// Each run is a fresh copy of the test binary: runs in one process are
// not independent. The second fabric reuses the heap the first freed, and
// the Go runtime zeroes reused memory where fresh memory from the kernel
// comes zeroed: each wireguard-go device allocates a batch of 128 64 KiB
// message buffers per receive path, GiBs for 100 devices, and zeroing them
// again took the second fabric of a process about 10 s more CPU than the
// first (memclr 10.9 s against 0.6 s in a profile).
//
// GRIDNET_BENCH_LOG=FILE writes the nodes' debug logs and a progress line per
// second (what the pairs without a session are waiting for) to FILE;
// GRIDNET_BENCH_PROFILE=FILE a CPU profile of the mesh's assembly (from
// the first start to the full mesh; of the last run) to FILE.
func BenchmarkGossipFabric(b *testing.B) {
	if os.Getenv(gossipChildEnv) != "" {
		n := gossipBenchSizes()[0]
		ft := benchGossipOnce(b, n)
		bt := memberlistBaseline(b, n)
		out, err := json.Marshal([2]fabricTimes{ft, bt})
		if err != nil {
			b.Fatal(err)
		}
		fmt.Printf("%s%s\n", gossipResultPrefix, out)
		return
	}
	for _, n := range gossipBenchSizes() {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var worst, base fabricTimes
			for i := range b.N {
				ft, bt := gossipRunIsolated(b, n)
				b.Logf("N=%d run %d: fabric: full mesh (every pair with a WireGuard session) %.1fs after the first start using %.1f CPU-s, %.2f WireGuard initiations and %.2f admissions per pair; crashed node removed everywhere %.1fs (its own memberlist: dead everywhere after %.1fs, the last tunnel gone %.1fs later), revocation everywhere %.2fs; memberlist alone: all know all %.1fs, killed member gone everywhere %.1fs",
					n, i+1, ft.Mesh.Seconds(), ft.MeshCPU.Seconds(), ft.InitiationsPerPair, ft.AdmissionsPerPair, ft.Removal.Seconds(), ft.Detection.Seconds(), ft.RemovalAfter.Seconds(), ft.Revocation.Seconds(), bt.Mesh.Seconds(), bt.Removal.Seconds())
				worst = worst.max(ft)
				base = base.max(bt)
			}
			b.ReportMetric(worst.Mesh.Seconds(), "mesh-s")
			b.ReportMetric(worst.MeshCPU.Seconds(), "mesh-cpu-s")
			b.ReportMetric(worst.InitiationsPerPair, "wg-initiations/pair")
			b.ReportMetric(worst.AdmissionsPerPair, "admissions/pair")
			b.ReportMetric(worst.Removal.Seconds(), "crash-removed-s")
			b.ReportMetric(worst.RemovalAfter.Seconds(), "crash-removed-after-detection-s")
			b.ReportMetric(worst.Revocation.Seconds(), "revocation-s")
			b.ReportMetric(base.Mesh.Seconds(), "memberlist-mesh-s")
			b.ReportMetric(base.Removal.Seconds(), "memberlist-removed-s")
			b.ReportMetric(worst.Mesh.Seconds()/base.Mesh.Seconds(), "mesh-ratio")
			b.ReportMetric(worst.Removal.Seconds()/base.Removal.Seconds(), "removed-ratio")
		})
	}
}

const (
	// gossipChildEnv makes BenchmarkGossipFabric run one fabric of the
	// size in GRIDNET_BENCH_NODES and print its figures.
	gossipChildEnv = "GRIDNET_GOSSIP_CHILD"
	// gossipResultPrefix starts the child's result line.
	gossipResultPrefix = "gossip-fabric-result: "
)

// gossipRunIsolated runs one fabric of n nodes, and memberlist alone, in a
// fresh copy of this test binary and returns their figures.
func gossipRunIsolated(b *testing.B, n int) (fabric, memberlistAlone fabricTimes) {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^BenchmarkGossipFabric$",
		"-test.benchtime=1x", "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), gossipChildEnv+"=1", fmt.Sprintf("GRIDNET_BENCH_NODES=%d", n))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("fabric of %d in a child process: %v\n%s", n, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, gossipResultPrefix); ok {
			var r [2]fabricTimes
			if err := json.Unmarshal([]byte(rest), &r); err != nil {
				b.Fatalf("child result %q: %v", rest, err)
			}
			return r[0], r[1]
		}
	}
	b.Fatalf("fabric of %d: no result from the child process:\n%s", n, out)
	return
}

// fabricTimes are one run's figures. MeshCPU is the CPU time (user and
// system) the whole process spent from the first start to the full mesh:
// every node's admissions, sessions and gossip, and the watcher's reads.
// InitiationsPerPair are the WireGuard handshake initiations all nodes
// sent until the full mesh per pair of nodes (1.0: one handshake per
// pair, none crossing, none retried), AdmissionsPerPair the admissions.
type fabricTimes struct {
	Mesh, Removal, Revocation, MeshCPU    time.Duration
	InitiationsPerPair, AdmissionsPerPair float64
	// Detection is the fabric's own failure detection: the time until no
	// node's memberlist held the crashed node alive; RemovalAfter the
	// longest a node then kept its tunnel (both zero for memberlist
	// alone).
	Detection, RemovalAfter time.Duration
}

func (a fabricTimes) max(b fabricTimes) fabricTimes {
	return fabricTimes{max(a.Mesh, b.Mesh), max(a.Removal, b.Removal), max(a.Revocation, b.Revocation), max(a.MeshCPU, b.MeshCPU),
		max(a.InitiationsPerPair, b.InitiationsPerPair), max(a.AdmissionsPerPair, b.AdmissionsPerPair),
		max(a.Detection, b.Detection), max(a.RemovalAfter, b.RemovalAfter)}
}

// processCPU is the CPU time this process used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var benchLog *slog.Logger
var benchDiag = func() string { return "" }

func init() {
	if p := os.Getenv("GRIDNET_BENCH_LOG"); p != "" {
		f, err := os.Create(p)
		if err == nil {
			benchLog = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
	}
}

func benchGossipOnce(b *testing.B, n int) fabricTimes {
	ca, err := nodetest.NewLocalCA("bench-ca", "bench.gridnet")
	if err != nil {
		b.Fatal(err)
	}
	var nodes []*node.Node
	crash := map[*node.Node]func() error{} // each node's crash (no leave notice)
	var stats []func() overlay.Stats       // each node's overlay counters
	defer func() { closeAll(nodes) }()
	stopProfile := startMeshProfile(b)
	defer stopProfile()
	start, startCPU := time.Now(), processCPU(b)
	for i := 1; i <= n; i++ {
		opts, err := ca.NodeOptions(fmt.Sprintf("n%d", i), overlayPrefix(i), nil, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		opts.Gossip = &node.GossipOptions{}
		opts.HandshakeRate, opts.HandshakeBurst, opts.HalfOpenPerSource = 1e6, 1e5, 1<<16
		opts.Firewall = mustRules(b, allowAll)
		if benchLog != nil {
			opts.Logger = benchLog
		}
		if len(nodes) > 0 {
			opts.Peers = append(opts.Peers, underlay(nodes[0]))
		}
		x, err := nodetest.Start(b.Context(), opts, nodetest.Switches{})
		if err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, x.Node)
		crash[x.Node] = x.Crash
		stats = append(stats, x.OverlayStats)
	}
	bound := 120 * time.Second
	benchDiag = func() string {
		var admittedNoSession, unknown, knownNotAdmitted, dead int
		for _, a := range nodes {
			peers := map[string]bool{}
			for _, p := range a.Peers() {
				peers[p.Name] = !p.LastHandshake.IsZero()
			}
			members := map[string]string{}
			for _, m := range a.Members() {
				members[m.Name] = m.State
			}
			for _, x := range nodes {
				name := x.Identity().Name
				if x == a || peers[name] {
					continue
				}
				if _, ok := peers[name]; ok {
					admittedNoSession++
				} else if st, ok := members[name]; !ok {
					unknown++
				} else if st != "alive" {
					dead++
				} else {
					knownNotAdmitted++
				}
			}
		}
		return fmt.Sprintf("admitted-no-session=%d unknown=%d not-alive=%d alive-not-admitted=%d", admittedNoSession, unknown, dead, knownNotAdmitted)
	}
	watch := meshWatcher{nodes: nodes, until: time.Now().Add(bound), done: map[*node.Node]bool{}}
	benchWait(b, bound, func() string {
		p := watch.problem()
		if p != "" && time.Now().After(watch.until) {
			p += "; " + stuckPairs(nodes) // the bound has passed: say why
		}
		return p
	})
	benchDiag = func() string { return "" }
	mesh := time.Since(start)
	meshCPU := processCPU(b) - startCPU
	stopProfile()
	var initiations, admissions uint64
	for _, st := range stats {
		s := st()
		initiations += s.Initiations
		admissions += s.Completed // both ends count an admission
	}
	pairs := float64(n * (n - 1) / 2)

	crashed := nodes[n-1]
	crash[crashed]()
	rest := nodes[:n-1]
	// The fabric's memberlist declares the crashed node dead first; the
	// overlay then probes it through its tunnel before it removes it.
	var detection time.Duration
	crashedAt := time.Now()
	removal := benchWait(b, bound, func() string {
		if detection == 0 && !anyHoldsAlive(rest, crashed.Identity().Name) {
			detection = time.Since(crashedAt)
		}
		return anyHas(rest, crashed.Identity().Name)
	})
	if detection == 0 {
		detection = removal // the tunnels went with the member
	}

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
	return fabricTimes{Mesh: mesh, Removal: removal, Revocation: time.Since(t0), MeshCPU: meshCPU,
		InitiationsPerPair: float64(initiations) / pairs, AdmissionsPerPair: float64(admissions) / 2 / pairs,
		Detection: detection, RemovalAfter: removal - detection}
}

// startMeshProfile starts a CPU profile of the mesh's assembly into the
// file GRIDNET_BENCH_PROFILE names, if it names one; the function it
// returns stops it, and does nothing when called again.
func startMeshProfile(b *testing.B) (stop func()) {
	path := os.Getenv("GRIDNET_BENCH_PROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatalf("mesh profile: %v", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		b.Fatalf("mesh profile: %v", err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			pprof.StopCPUProfile()
			f.Close()
		})
	}
}

// anyHoldsAlive reports whether a node among nodes holds the member called
// name alive.
func anyHoldsAlive(nodes []*node.Node, name string) bool {
	for _, x := range nodes {
		for _, m := range x.Members() {
			if m.Name == name && m.State == "alive" {
				return true
			}
		}
	}
	return false
}

// anyHas names a node among nodes that still has the peer called name,
// with how it sees name as a member.
func anyHas(nodes []*node.Node, name string) string {
	for _, x := range nodes {
		for _, p := range x.Peers() {
			if p.Name == name {
				member := "not a member"
				for _, m := range x.Members() {
					if m.Name == name {
						member = fmt.Sprintf("member %s (record learned by %s)", m.State, m.LearnedFrom)
					}
				}
				return fmt.Sprintf("%s still has %s, admitted %v ago, %s", x.Identity().Name, name,
					time.Since(p.AdmittedAt).Round(time.Second), member)
			}
		}
	}
	return ""
}

func benchWait(b *testing.B, bound time.Duration, cond func() string) time.Duration {
	start := time.Now()
	dumped := false
	for {
		problem := cond()
		if problem == "" {
			return time.Since(start)
		}
		if benchLog != nil && time.Since(start) > 5*time.Second && !dumped {
			dumped = true
			if f, err := os.Create(os.Getenv("GRIDNET_BENCH_LOG") + ".stacks"); err == nil {
				pprof.Lookup("goroutine").WriteTo(f, 2)
				f.Close()
			}
		}
		if benchLog != nil {
			benchLog.Info("bench wait", "t", time.Since(start).Round(time.Second), "problem", problem, "diag", benchDiag())
			time.Sleep(time.Second)
		}
		if time.Since(start) > bound {
			b.Fatalf("not within %v: %s", bound, problem)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// closeAll closes nodes in parallel: each leaves the fabric gracefully,
// which waits up to a second for the leave to spread.
func closeAll(nodes []*node.Node) {
	var wg sync.WaitGroup
	for _, x := range nodes {
		wg.Go(func() { x.Close() })
	}
	wg.Wait()
}

// meshWatcher checks for a full mesh incrementally: a node that has a
// session with every other is not read again until all are, then one full
// check confirms. Reading a node's peer table reads its WireGuard device,
// and polling all of them often would take CPU from the fabric measured.
// A reading stops at until: on a fabric far beyond what the machine
// carries (200 nodes in one process on two cores), one node's device dump
// can wait seconds behind its configuration, and a reading of every node
// would outlast the benchmark's bound by minutes.
type meshWatcher struct {
	nodes   []*node.Node
	until   time.Time
	done    map[*node.Node]bool
	last    time.Time // of the last reading
	prev    string    // its result
	missing int       // ordered pairs without a session at the last complete reading
	readAll bool      // a reading has gone through every node
}

// meshReadEvery spaces the watcher's readings: the figure's resolution.
// While many pairs still lack a session (meshFarPairs: the fabric cannot
// complete them within meshReadFar), readings are spaced by meshReadFar.
const (
	meshReadEvery = 200 * time.Millisecond
	meshReadFar   = 500 * time.Millisecond
	meshFarPairs  = 1000
)

func (w *meshWatcher) problem() string {
	every := meshReadEvery
	if w.missing >= meshFarPairs {
		every = meshReadFar
	}
	if time.Since(w.last) < every && w.prev != "" {
		return w.prev
	}
	w.last = time.Now()
	w.prev = w.read()
	return w.prev
}

func (w *meshWatcher) read() string {
	missing := 0
	for i, a := range w.nodes {
		if w.done[a] {
			continue
		}
		if !w.until.IsZero() && time.Now().After(w.until) {
			n := len(w.nodes)
			p := fmt.Sprintf("the reading under way stopped at the bound after %d of %d nodes, with %d ordered pairs (of %d) without a session so far", i, n, missing, n*(n-1))
			if w.readAll {
				p += fmt.Sprintf("; the last complete reading: %d without a session", w.missing)
			}
			return p
		}
		sessions := map[string]bool{}
		for _, p := range a.Peers() {
			sessions[p.Name] = !p.LastHandshake.IsZero()
		}
		lacks := 0
		for _, b := range w.nodes {
			if b != a && !sessions[b.Identity().Name] {
				lacks++
			}
		}
		if lacks == 0 {
			w.done[a] = true
		}
		missing += lacks
	}
	w.missing, w.readAll = missing, true
	if missing > 0 {
		n := len(w.nodes)
		return fmt.Sprintf("%d of %d ordered pairs without a session", missing, n*(n-1))
	}
	if p := meshProblem(w.nodes); p != "" {
		clear(w.done)
		return p
	}
	return ""
}

// stuckPairs describes, for up to five pairs without a session, what each
// side holds: whether the other is admitted, its WireGuard endpoint and
// last handshake, and its gossip state.
func stuckPairs(nodes []*node.Node) string {
	type view struct {
		peer   map[string]overlay.PeerStatus
		member map[string]node.MemberView
	}
	// Views are read as needed: the first five stuck pairs need a few
	// nodes' tables, not every node's.
	views := map[*node.Node]view{}
	viewOf := func(x *node.Node) view {
		if v, ok := views[x]; ok {
			return v
		}
		v := view{peer: map[string]overlay.PeerStatus{}, member: map[string]node.MemberView{}}
		for _, p := range x.Peers() {
			v.peer[p.Name] = p
		}
		for _, m := range x.Members() {
			v.member[m.Name] = m
		}
		views[x] = v
		return v
	}
	side := func(a, b *node.Node) string {
		v := viewOf(a)
		name := b.Identity().Name
		p, ok := v.peer[name]
		if !ok {
			return fmt.Sprintf("%s: not admitted, member %q", a.Identity().Name, v.member[name].State)
		}
		return fmt.Sprintf("%s: admitted %s ago, endpoint %v, handshake %v, member %q", a.Identity().Name,
			time.Since(p.AdmittedAt).Round(time.Second), p.Endpoint, p.LastHandshake, v.member[name].State)
	}
	var out []string
	for _, a := range nodes {
		if len(out) >= 5 {
			break
		}
		for _, b := range nodes {
			if a == b || len(out) >= 5 {
				continue
			}
			if p, ok := viewOf(a).peer[b.Identity().Name]; !ok || p.LastHandshake.IsZero() {
				out = append(out, "["+side(a, b)+" | "+side(b, a)+"]")
			}
		}
	}
	return strings.Join(out, " ")
}
