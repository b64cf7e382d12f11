package integration

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The kernel-mode throughput benchmark: two namespaces on a veth, iperf3
// across the tunnel, gridnet against raw wireguard-go on the same topology
// in the same run. Both tunnels use MTU 1420 (wireguard-go's default), so
// the comparison is of the software, not of packet sizes.
const (
	netnsBenchMTU  = 1420
	rawWGPort      = "51820"
	rawWGAddrA     = "10.77.0.1"
	rawWGAddrB     = "10.77.0.2"
	clockTicksPerS = 100 // USER_HZ: /proc/PID/stat counts CPU time in these
)

// netnsBenchSeconds is the length of one iperf3 round: 8 s, or
// GRIDNET_BENCH_SECONDS.
func netnsBenchSeconds(b *testing.B) int {
	if s := os.Getenv("GRIDNET_BENCH_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 120 {
			b.Fatalf("GRIDNET_BENCH_SECONDS=%q: want 1..120", s)
		}
		return n
	}
	return 8
}

// netnsBenchRounds is how many rounds each tunnel runs per stream count:
// 3, or GRIDNET_BENCH_ROUNDS. Rounds alternate between the two tunnels,
// so that a slow spell of the machine hits both.
func netnsBenchRounds(b *testing.B) int {
	if s := os.Getenv("GRIDNET_BENCH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 20 {
			b.Fatalf("GRIDNET_BENCH_ROUNDS=%q: want 1..20", s)
		}
		return n
	}
	return 3
}

// wireguardGoBinary builds wireguard-go at the version go.mod pins.
func wireguardGoBinary(b *testing.B) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "wireguard-go")
	out, err := exec.Command("go", "build", "-o", path, "golang.zx2c4.com/wireguard").CombinedOutput()
	if err != nil {
		b.Fatalf("go build wireguard-go: %v\n%s", err, out)
	}
	return path
}

// tunnelProc is one tunnel process under measurement.
type tunnelProc struct {
	cmd  *exec.Cmd
	logs *bytes.Buffer
}

// cpuSeconds is the user+system CPU time the process has used so far.
func cpuSeconds(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces; fields count from its ")".
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat of %d: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("stat of %d: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("stat of %d: utime %q stime %q", pid, f[11], f[12])
	}
	return (utime + stime) / clockTicksPerS, nil
}

// procRSSMiB is the resident set in MiB of the process /proc/proc names
// (a PID, or "self").
func procRSSMiB(proc string) (float64, error) {
	f, err := os.Open("/proc/" + proc + "/status")
	if err != nil {
		return 0, fmt.Errorf("open status of %s: %w", proc, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err != nil {
				return 0, fmt.Errorf("status of %s: VmRSS %q", proc, v)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("status of %s: no VmRSS", proc)
}

// startRawWireGuard runs wireguard-go in each namespace with an interface
// of its own name, configures keys and endpoints through its UAPI socket
// and addresses with ip, and returns the two processes.
func startRawWireGuard(b *testing.B, wgBin, nsA, nsB string) [2]*tunnelProc {
	b.Helper()
	var tag [3]byte
	rand.Read(tag[:])
	names := [2]string{"wgb" + hex.EncodeToString(tag[:]) + "a", "wgb" + hex.EncodeToString(tag[:]) + "b"}
	nss := [2]string{nsA, nsB}
	underlays := [2]string{underlayA, underlayB}
	addrs := [2]string{rawWGAddrA, rawWGAddrB}
	var priv [2]*ecdh.PrivateKey
	for i := range priv {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		priv[i] = k
	}
	var procs [2]*tunnelProc
	for i := range 2 {
		p := &tunnelProc{logs: &bytes.Buffer{}}
		p.cmd = exec.Command("ip", "netns", "exec", nss[i], wgBin, "-f", names[i])
		p.cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
		p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
		if err := p.cmd.Start(); err != nil {
			b.Fatalf("start wireguard-go: %v", err)
		}
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		b.Cleanup(func() {
			p.cmd.Process.Signal(os.Interrupt)
			select {
			case <-done:
			case <-time.After(processWait):
				p.cmd.Process.Kill()
				<-done
			}
		})
		procs[i] = p
	}
	for i := range 2 {
		other := 1 - i
		conf := fmt.Sprintf("set=1\nprivate_key=%s\nlisten_port=%s\nreplace_peers=true\npublic_key=%s\nendpoint=%s:%s\nreplace_allowed_ips=true\nallowed_ip=%s/32\n\n",
			hex.EncodeToString(priv[i].Bytes()), rawWGPort, hex.EncodeToString(priv[other].PublicKey().Bytes()),
			underlays[other], rawWGPort, addrs[other])
		uapiSet(b, "/var/run/wireguard/"+names[i]+".sock", conf, procs[i])
		runCmd(b, "ip", "-n", nss[i], "addr", "add", addrs[i]+"/24", "dev", names[i])
		runCmd(b, "ip", "-n", nss[i], "link", "set", names[i], "mtu", strconv.Itoa(netnsBenchMTU), "up")
	}
	return procs
}

// uapiSet writes one set operation to a wireguard-go UAPI socket, waiting
// for the socket to appear, and checks the errno it answers.
func uapiSet(b *testing.B, sock, conf string, p *tunnelProc) {
	b.Helper()
	deadline := time.Now().Add(processWait)
	var c net.Conn
	var err error
	for {
		c, err = net.Dial("unix", sock)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("wireguard-go UAPI %s: %v\n%s", sock, err, p.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(netnsDeadline))
	if _, err := c.Write([]byte(conf)); err != nil {
		b.Fatalf("wireguard-go UAPI write: %v", err)
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || strings.TrimSpace(reply) != "errno=0" {
		b.Fatalf("wireguard-go UAPI set: %q %v\n%s", reply, err, p.logs)
	}
}

// iperfResult is what one iperf3 run reports.
type iperfResult struct {
	bitsPerSecond float64
	bytes         float64
	retransmits   int
}

// runIperf runs an iperf3 client from nsA to server for secs seconds with
// streams parallel streams; a server in nsB answers one test.
func runIperf(b *testing.B, nsA, nsB, server string, secs, streams int) iperfResult {
	b.Helper()
	srv := exec.Command("ip", "netns", "exec", nsB, "iperf3", "-s", "-1", "-B", server)
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	var res struct {
		End struct {
			SumSent struct {
				Bytes       float64 `json:"bytes"`
				Retransmits int     `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	var last string
	for range 50 { // the server needs a moment to listen
		out, err := exec.Command("ip", "netns", "exec", nsA, "iperf3", "-c", server,
			"-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams), "-J").CombinedOutput()
		last = string(out)
		if err == nil && json.Unmarshal(out, &res) == nil && res.End.SumReceived.BitsPerSecond > 0 {
			return iperfResult{res.End.SumReceived.BitsPerSecond, res.End.SumSent.Bytes, res.End.SumSent.Retransmits}
		}
		time.Sleep(200 * time.Millisecond)
	}
	b.Fatalf("iperf3 to %s failed: %s\nserver: %s", server, last, srvOut.String())
	return iperfResult{}
}

// tunnelRound is one measured iperf3 run over one tunnel.
type tunnelRound struct {
	gbps, cpuPerGB float64
	retransmits    int
}

// measureRound runs iperf3 once and charges the CPU time of both tunnel
// processes to the bytes it moved.
func measureRound(b *testing.B, procs [2]*tunnelProc, nsA, nsB, server string, secs, streams int) tunnelRound {
	b.Helper()
	var before [2]float64
	for i, p := range procs {
		c, err := cpuSeconds(p.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		before[i] = c
	}
	r := runIperf(b, nsA, nsB, server, secs, streams)
	cpu := 0.0
	for i, p := range procs {
		c, err := cpuSeconds(p.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		cpu += c - before[i]
	}
	return tunnelRound{gbps: r.bitsPerSecond / 1e9, cpuPerGB: cpu / (r.bytes / 1e9), retransmits: r.retransmits}
}

// BenchmarkNetnsKernelThroughput: gridnet in kernel TUN mode against raw
// wireguard-go, each between the same two namespaces on one veth, iperf3
// with one stream and with four, rounds alternating between the two
// tunnels. It reports medians: throughput of each, gridnet's share of raw
// wireguard-go's throughput (gridnet/raw), CPU-seconds per GB of each
// (both ends' processes), iperf3's retransmits and each gridnet node's
// RSS after the run. `make bench-netns` runs it; it needs root, iproute2,
// iperf3 and /dev/net/tun. GRIDNET_BENCH_LOG=FILE writes the gridnet
// nodes' output there after the run.
func BenchmarkNetnsKernelThroughput(b *testing.B) {
	requireNetns(b)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		b.Skip("needs /dev/net/tun for kernel TUN devices")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("needs iperf3 (.ci/run installs it)")
	}
	secs, rounds := netnsBenchSeconds(b), netnsBenchRounds(b)
	bin := gridnetBinary(b)
	wgBin := wireguardGoBinary(b)
	nsA, nsB := netnsPair(b)

	raw := startRawWireGuard(b, wgBin, nsA, nsB)
	dir := b.TempDir()
	nodes := fabricFiles(b, bin, dir, "kernel", []string{"alpha", "beta"}, []string{"100.64.0.1", "100.64.0.2"}, []string{underlayA, underlayB})
	var grid [2]*tunnelProc
	for i, n := range nodes {
		n.ns = []string{nsA, nsB}[i]
		cfg, err := os.ReadFile(n.config)
		if err != nil {
			b.Fatal(err)
		}
		cfg = bytes.Replace(cfg, []byte("  name: gridnet0\n"), []byte(fmt.Sprintf("  name: gridnet0\n  mtu: %d\n", netnsBenchMTU)), 1)
		// Debug logs cost CPU per admission only, but keep the node as
		// a user would run it.
		cfg = bytes.Replace(cfg, []byte("  level: debug\n"), []byte("  level: info\n"), 1)
		if err := os.WriteFile(n.config, cfg, 0o600); err != nil {
			b.Fatal(err)
		}
		n.start(b, bin)
		grid[i] = &tunnelProc{cmd: n.cmd, logs: n.logs}
	}
	nodes[0].waitPeer(b, bin, "beta")
	nodes[1].waitPeer(b, bin, "alpha")
	// Idle: both tunnels up, no traffic yet (reported after the run:
	// ResetTimer drops metrics reported before it).
	gridIdle, rawIdle := readRSS(b, grid), readRSS(b, raw)

	b.ResetTimer()
	for range b.N {
		for _, streams := range []int{1, 4} {
			var rawGbps, gridGbps, rawCPU, gridCPU, ratios []float64
			rawRetr, gridRetr := 0, 0
			for range rounds {
				r := measureRound(b, raw, nsA, nsB, rawWGAddrB, secs, streams)
				g := measureRound(b, grid, nsA, nsB, "100.64.0.2", secs, streams)
				b.Logf("%d stream(s): raw wireguard-go %.2f Gbit/s %.2f CPU-s/GB %d retr; gridnet %.2f Gbit/s %.2f CPU-s/GB %d retr",
					streams, r.gbps, r.cpuPerGB, r.retransmits, g.gbps, g.cpuPerGB, g.retransmits)
				rawGbps, gridGbps = append(rawGbps, r.gbps), append(gridGbps, g.gbps)
				rawCPU, gridCPU = append(rawCPU, r.cpuPerGB), append(gridCPU, g.cpuPerGB)
				ratios = append(ratios, g.gbps/r.gbps)
				rawRetr += r.retransmits
				gridRetr += g.retransmits
			}
			unit := func(s string) string { return fmt.Sprintf("%s/P%d", s, streams) }
			b.ReportMetric(median(gridGbps), unit("gridnet-Gbit/s"))
			b.ReportMetric(median(rawGbps), unit("raw-wg-Gbit/s"))
			b.ReportMetric(median(ratios), unit("gridnet/raw"))
			b.ReportMetric(median(gridCPU), unit("gridnet-CPU-s/GB"))
			b.ReportMetric(median(rawCPU), unit("raw-wg-CPU-s/GB"))
			b.ReportMetric(float64(gridRetr), unit("gridnet-retr"))
			b.ReportMetric(float64(rawRetr), unit("raw-wg-retr"))
		}
	}
	b.StopTimer()
	for i, n := range nodes {
		// The data path as the node saw it: offloads and how often the
		// backlog bound made a reader wait or stepped aside.
		st := n.waitPeer(b, bin, []string{"beta", "alpha"}[i])
		b.Logf("gridnet%d data path: %+v", i, st.DataPath)
	}
	if path := os.Getenv("GRIDNET_BENCH_LOG"); path != "" {
		// The nodes' own output (with GODEBUG=gctrace=1 in the
		// environment, the garbage collector's trace too).
		var all bytes.Buffer
		for i, p := range grid {
			fmt.Fprintf(&all, "=== gridnet%d\n%s", i, p.logs.Bytes())
		}
		if err := os.WriteFile(path, all.Bytes(), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	reportRSS(b, gridIdle, "gridnet%d-idle-RSS-MiB")
	reportRSS(b, rawIdle, "raw-wg%d-idle-RSS-MiB")
	reportRSS(b, readRSS(b, grid), "gridnet%d-RSS-MiB")
	reportRSS(b, readRSS(b, raw), "raw-wg%d-RSS-MiB")
}

// readRSS reads each process's resident set in MiB.
func readRSS(b *testing.B, procs [2]*tunnelProc) [2]float64 {
	b.Helper()
	var rss [2]float64
	for i, p := range procs {
		r, err := procRSSMiB(strconv.Itoa(p.cmd.Process.Pid))
		if err != nil {
			b.Fatal(err)
		}
		rss[i] = r
	}
	return rss
}

// reportRSS reports each resident set as the metric named by format
// (with the process's index).
func reportRSS(b *testing.B, rss [2]float64, format string) {
	for i, r := range rss {
		b.ReportMetric(r, fmt.Sprintf(format, i))
	}
}
