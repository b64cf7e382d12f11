package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"
)

// The namespace tests run real gridnet binaries in two network namespaces
// joined by a veth pair. Underlay addresses come from 198.18.0.0/15, the
// range set aside for network benchmark tests; they exist only inside the
// namespaces the test makes.
const (
	underlayA     = "198.18.0.1"
	underlayB     = "198.18.0.2"
	underlayPort  = "4242"
	processWait   = 30 * time.Second
	netnsDeadline = 60 * time.Second
)

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// gridnetBinary builds the gridnet command once per test run.
func gridnetBinary(t testing.TB) string {
	t.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gridnet-bin-")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "gridnet")
		out, err := exec.Command("go", "build", "-o", binaryPath, "github.com/aigrid/gridnet").CombinedOutput()
		if err != nil {
			binaryErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

// requireNetns skips unless the test can make network namespaces.
func requireNetns(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces, veth pairs and TUN devices (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip command (.ci/run installs it)")
	}
}

func runCmd(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), netnsDeadline)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// netnsPair makes two namespaces joined by veth with the underlay
// addresses, and removes them when the test ends.
func netnsPair(t testing.TB) (string, string) {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	tag := hex.EncodeToString(b[:])
	nsA, nsB := "gn-"+tag+"-a", "gn-"+tag+"-b"
	runCmd(t, "ip", "netns", "add", nsA)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsA).Run() })
	runCmd(t, "ip", "netns", "add", nsB)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsB).Run() })
	runCmd(t, "ip", "link", "add", "veth-a", "netns", nsA, "type", "veth", "peer", "name", "veth-b", "netns", nsB)
	for _, x := range []struct{ ns, dev, addr string }{{nsA, "veth-a", underlayA}, {nsB, "veth-b", underlayB}} {
		runCmd(t, "ip", "-n", x.ns, "addr", "add", x.addr+"/24", "dev", x.dev)
		runCmd(t, "ip", "-n", x.ns, "link", "set", x.dev, "up")
		runCmd(t, "ip", "-n", x.ns, "link", "set", "lo", "up")
	}
	return nsA, nsB
}

// nsNode is one gridnet process in a namespace.
type nsNode struct {
	name, ns, config, socket string
	cmd                      *exec.Cmd
	logs                     *bytes.Buffer
	done                     chan error
}

// fabricFiles makes a CA and one node vault per name with the real CLI
// (key files, one-step issue) and writes a config for each.
func fabricFiles(t testing.TB, bin, dir, tunMode string, names, addrs, underlays []string) []*nsNode {
	t.Helper()
	key := filepath.Join(dir, "vault.key")
	runCmd(t, bin, "vault", "keyfile", key)
	runCmd(t, bin, "ca", "init", "--name", "ns-ca", "--domain", "ns.gridnet", "--vault", filepath.Join(dir, "ca.vault"),
		"--vault-key-file", key, "--out", filepath.Join(dir, "ca.crt"))
	var nodes []*nsNode
	for i, name := range names {
		runCmd(t, bin, "cert", "issue", "--ca-vault", filepath.Join(dir, "ca.vault"), "--ca-vault-key-file", key,
			"--ca-cert", filepath.Join(dir, "ca.crt"), "--name", name, "--out-vault", filepath.Join(dir, name+".vault"),
			"--out-vault-key-file", key, "--ip", addrs[i]+"/10", "--out", filepath.Join(dir, name+".crt"))
		var peers []string
		for j, u := range underlays {
			if j != i {
				peers = append(peers, fmt.Sprintf("%q", u+":"+underlayPort))
			}
		}
		n := &nsNode{name: name, config: filepath.Join(dir, name+".yaml"), socket: filepath.Join(dir, name+".sock")}
		cfg := fmt.Sprintf(`vault:
  path: %s.vault
  key_file: vault.key
crl: crl.pem
listen: 0.0.0.0:%s
peers: [%s]
tun:
  mode: %s
  name: gridnet0
control:
  socket: %s
log:
  level: debug
firewall:
  inbound:
    - {port: any, proto: any, host: any}
`, name, underlayPort, strings.Join(peers, ", "), tunMode, n.socket)
		if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	return nodes
}

// start runs `gridnet up` in the node's namespace; the test's cleanup
// stops it with SIGTERM and checks that it exits cleanly.
func (n *nsNode) start(t testing.TB, bin string) {
	t.Helper()
	n.logs = &bytes.Buffer{}
	n.cmd = exec.Command("ip", "netns", "exec", n.ns, bin, "up", "--config", n.config)
	n.cmd.Stdout = n.logs
	n.cmd.Stderr = n.logs
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.done = make(chan error, 1)
	go func() { n.done <- n.cmd.Wait() }()
	t.Cleanup(func() {
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-n.done:
			if err != nil {
				t.Errorf("%s did not exit cleanly on SIGTERM: %v\n%s", n.name, err, n.logs)
			}
		case <-time.After(processWait):
			n.cmd.Process.Kill()
			<-n.done
			t.Errorf("%s did not stop within %s of SIGTERM\n%s", n.name, processWait, n.logs)
		}
		if t.Failed() {
			t.Logf("%s logs:\n%s", n.name, n.logs)
		}
	})
}

// waitPeer polls `gridnet status --json` until peer is listed with a
// WireGuard session.
func (n *nsNode) waitPeer(t testing.TB, bin, peer string) node.Status {
	t.Helper()
	deadline := time.Now().Add(netnsDeadline)
	var last string
	for time.Now().Before(deadline) {
		out, err := exec.Command(bin, "status", "--json", "--socket", n.socket).CombinedOutput()
		last = string(out)
		if err == nil {
			var st node.Status
			if json.Unmarshal(out, &st) == nil {
				for _, p := range st.Peers {
					if p.Name == peer && !p.LastHandshake.IsZero() {
						return st
					}
				}
			}
		}
		select {
		case err := <-n.done:
			t.Fatalf("%s exited: %v\n%s", n.name, err, n.logs)
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatalf("%s never listed %s; last status: %s\nlogs:\n%s", n.name, peer, last, n.logs)
	return node.Status{}
}

func TestNetnsUserspace(t *testing.T) {
	requireNetns(t)
	bin := gridnetBinary(t)
	nsA, nsB := netnsPair(t)
	dir := t.TempDir()
	nodes := fabricFiles(t, bin, dir, "userspace", []string{"alpha", "beta"}, []string{"100.64.0.1", "100.64.0.2"}, []string{underlayA, underlayB})
	nodes[0].ns, nodes[1].ns = nsA, nsB
	for _, n := range nodes {
		n.start(t, bin)
	}
	st := nodes[0].waitPeer(t, bin, "beta")
	nodes[1].waitPeer(t, bin, "alpha")
	if st.Name != "alpha" || len(st.Addresses) != 1 || st.Addresses[0] != "100.64.0.1/10" {
		t.Errorf("alpha status: %+v", st)
	}
	out := runCmd(t, bin, "ping", "beta", "-c", "3", "--interval", "200ms", "--socket", nodes[0].socket)
	if strings.Count(out, "reply from 100.64.0.2") != 3 {
		t.Errorf("ping output:\n%s", out)
	}
	text := runCmd(t, bin, "status", "--socket", nodes[1].socket)
	if !strings.Contains(text, "alpha") || !strings.Contains(text, underlayA) {
		t.Errorf("beta status:\n%s", text)
	}

	// Renewal without a restart: a new certificate for beta's keys, stored
	// in its vault, picked up by 'gridnet reload'.
	p := func(name string) string { return filepath.Join(dir, name) }
	key := p("vault.key")
	runCmd(t, bin, "cert", "request", "--vault", p("beta.vault"), "--vault-key-file", key, "--csr", p("beta.csr"))
	runCmd(t, bin, "cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", key, "--ca-cert", p("ca.crt"),
		"--csr", p("beta.csr"), "--ip", "100.64.0.2/10", "--duration", "48h", "--out", p("beta2.crt"))
	runCmd(t, bin, "cert", "import", "--vault", p("beta.vault"), "--vault-key-file", key, p("beta2.crt"), p("ca.crt"))
	before := statusOf(t, bin, nodes[1].socket).CertExpiry
	runCmd(t, bin, "reload", "--socket", nodes[1].socket)
	after := statusOf(t, bin, nodes[1].socket).CertExpiry
	if !after.Before(before) || time.Until(after) > 49*time.Hour {
		t.Errorf("after renewal beta's certificate expires %v (before: %v), want about 48h from now", after, before)
	}

	// Revocation: both of beta's certificates go into the CRL; SIGHUP makes
	// alpha apply it and cut beta off at once.
	for _, c := range []string{"beta.crt", "beta2.crt"} {
		runCmd(t, bin, "ca", "revoke", "--ca-vault", p("ca.vault"), "--vault-key-file", key, "--ca-cert", p("ca.crt"),
			"--cert", p(c), "--crl", p("crl.pem"))
	}
	if err := nodes[0].cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := statusOf(t, bin, nodes[0].socket)
		gone := true
		for _, peer := range st.Peers {
			gone = gone && peer.Name != "beta"
		}
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alpha still lists beta 5 s after SIGHUP with a CRL revoking it: %+v", st.Peers)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pingOut, err := exec.Command(bin, "ping", "beta", "-c", "1", "--socket", nodes[0].socket).CombinedOutput(); err == nil {
		t.Errorf("ping to revoked beta succeeded:\n%s", pingOut)
	}
}

// waitMember polls `gridnet peers --json` until peer is an alive member
// of the node's gossip fabric.
func (n *nsNode) waitMember(t testing.TB, bin, peer string) {
	t.Helper()
	deadline := time.Now().Add(netnsDeadline)
	var last string
	for time.Now().Before(deadline) {
		out, err := exec.Command(bin, "peers", "--json", "--socket", n.socket).CombinedOutput()
		last = string(out)
		var members []node.MemberView
		if err == nil && json.Unmarshal(out, &members) == nil {
			for _, m := range members {
				if m.Name == peer && m.State == "alive" {
					return
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: %s is not an alive gossip member after %v: %s", n.name, peer, netnsDeadline, last)
}

func statusOf(t *testing.T, bin, socket string) node.Status {
	t.Helper()
	var st node.Status
	if err := json.Unmarshal([]byte(runCmd(t, bin, "status", "--json", "--socket", socket)), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestNetnsKernelTUN: two `gridnet up` nodes in kernel mode, in two
// namespaces: the interface as configured, ping and iperf3 across it, and
// a large transfer compared byte for byte.
func TestNetnsKernelTUN(t *testing.T) {
	requireNetns(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun for kernel TUN devices")
	}
	for _, tool := range []string{"ping", "iperf3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (.ci/run installs it)", tool)
		}
	}
	bin := gridnetBinary(t)
	nsA, nsB := netnsPair(t)
	dir := t.TempDir()
	nodes := fabricFiles(t, bin, dir, "kernel", []string{"alpha", "beta"}, []string{"100.64.0.1", "100.64.0.2"}, []string{underlayA, underlayB})
	nodes[0].ns, nodes[1].ns = nsA, nsB
	for _, n := range nodes {
		n.start(t, bin)
	}
	nodes[0].waitPeer(t, bin, "beta")
	nodes[1].waitPeer(t, bin, "alpha")

	link := runCmd(t, "ip", "-n", nsA, "-j", "addr", "show", "dev", "gridnet0")
	if !strings.Contains(link, "100.64.0.1") || !strings.Contains(link, `"mtu":1280`) {
		t.Errorf("gridnet0 in %s: %s", nsA, link)
	}
	out := runCmd(t, "ip", "netns", "exec", nsA, "ping", "-c", "3", "-W", "2", "100.64.0.2")
	if !strings.Contains(out, "3 received") {
		t.Errorf("kernel ping:\n%s", out)
	}

	// iperf3 across the TUN devices: bounded to 3 seconds.
	srv := exec.Command("ip", "netns", "exec", nsB, "iperf3", "-s", "-1", "-B", "100.64.0.2")
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	var last string
	for i := 0; i < 20; i++ { // the server needs a moment to listen
		out, err := exec.Command("ip", "netns", "exec", nsA, "iperf3", "-c", "100.64.0.2", "-t", "3", "-J").CombinedOutput()
		last = string(out)
		if err == nil && json.Unmarshal(out, &res) == nil && res.End.SumReceived.BitsPerSecond > 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if res.End.SumReceived.BitsPerSecond <= 0 {
		t.Fatalf("iperf3 across the kernel TUNs failed: %s\nserver: %s", last, srvOut.String())
	}
	t.Logf("iperf3 over gridnet kernel TUNs: %.0f Mbit/s", res.End.SumReceived.BitsPerSecond/1e6)

	// A large transfer arrives intact: every byte through segmentation
	// offload, the backlog bound and the packet hook in both nodes (1 GiB;
	// less with -short, and under -race, where the test's own hashing is
	// the slow part).
	size := int64(1 << 30)
	if testing.Short() || raceEnabled {
		size = 128 << 20
	}
	mbps := transferIntact(t, nsA, nsB, "100.64.0.2:9400", size)
	t.Logf("%d MiB intact across the kernel TUNs at %.0f Mbit/s", size>>20, mbps)
}

// TestNetnsPartitionHeals: two gossiping `gridnet up` nodes in two
// namespaces lose each other when the link between them goes down (each
// declares the other dead and removes its WireGuard peer) and find each
// other again after the link returns, with no operator action.
func TestNetnsPartitionHeals(t *testing.T) {
	requireNetns(t)
	bin := gridnetBinary(t)
	nsA, nsB := netnsPair(t)
	dir := t.TempDir()
	underlays := []string{underlayA, underlayB}
	nodes := fabricFiles(t, bin, dir, "userspace", []string{"alpha", "beta"}, []string{"100.64.0.1", "100.64.0.2"}, underlays)
	nodes[0].ns, nodes[1].ns = nsA, nsB
	for i, n := range nodes {
		f, err := os.OpenFile(n.config, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "gossip:\n  enabled: true\n  advertise: [\"%s:%s\"]\n", underlays[i], underlayPort)
		f.Close()
		n.start(t, bin)
	}
	nodes[0].waitPeer(t, bin, "beta")
	nodes[1].waitPeer(t, bin, "alpha")
	// A session comes before the gossip join through it: cutting the link
	// earlier would leave nothing to declare the other dead.
	nodes[0].waitMember(t, bin, "beta")
	nodes[1].waitMember(t, bin, "alpha")

	runCmd(t, "ip", "-n", nsA, "link", "set", "veth-a", "down")
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := statusOf(t, bin, nodes[0].socket)
		if len(st.Peers) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alpha still lists %+v 60 s after the link went down", st.Peers)
		}
		time.Sleep(500 * time.Millisecond)
	}
	var members []node.MemberView
	if err := json.Unmarshal([]byte(runCmd(t, bin, "peers", "--json", "--socket", nodes[0].socket)), &members); err != nil {
		t.Fatal(err)
	}
	t.Logf("alpha during the partition: %+v", members)

	healStart := time.Now()
	runCmd(t, "ip", "-n", nsA, "link", "set", "veth-a", "up")
	nodes[0].waitPeer(t, bin, "beta")
	nodes[1].waitPeer(t, bin, "alpha")
	t.Logf("healed %v after the link returned", time.Since(healStart).Round(time.Millisecond))
	out := runCmd(t, bin, "ping", "beta", "-c", "1", "--socket", nodes[0].socket)
	if !strings.Contains(out, "reply from 100.64.0.2") {
		t.Errorf("ping after heal:\n%s", out)
	}
}

// TestNetnsSeedChainsMerge: five `gridnet up` processes in five namespaces
// on one bridge, each given one seed (c2 and c3 know c1, c4 knows c2, c5
// knows c3). c3 and c5 start first and form a cluster of their own while
// c1 is not there; c1, c2 and c4 then form another. c3 reaches its seed c1
// and the two clusters must merge: every node ends up listing the four
// others as admitted, alive members.
func TestNetnsSeedChainsMerge(t *testing.T) {
	requireNetns(t)
	bin := gridnetBinary(t)
	var b [3]byte
	rand.Read(b[:])
	tag := hex.EncodeToString(b[:])
	hub := "gn-" + tag + "-hub"
	runCmd(t, "ip", "netns", "add", hub)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", hub).Run() })
	runCmd(t, "ip", "-n", hub, "link", "add", "br0", "type", "bridge")
	runCmd(t, "ip", "-n", hub, "link", "set", "br0", "up")
	names := []string{"c1", "c2", "c3", "c4", "c5"}
	var addrs, underlays []string
	for i, name := range names {
		ns := "gn-" + tag + "-" + name
		runCmd(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		port := "p" + name
		runCmd(t, "ip", "link", "add", "veth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", hub)
		runCmd(t, "ip", "-n", hub, "link", "set", port, "master", "br0")
		runCmd(t, "ip", "-n", hub, "link", "set", port, "up")
		u := fmt.Sprintf("198.18.1.%d", i+1)
		runCmd(t, "ip", "-n", ns, "addr", "add", u+"/24", "dev", "veth0")
		runCmd(t, "ip", "-n", ns, "link", "set", "veth0", "up")
		runCmd(t, "ip", "-n", ns, "link", "set", "lo", "up")
		addrs = append(addrs, fmt.Sprintf("100.64.1.%d", i+1))
		underlays = append(underlays, u)
	}
	dir := t.TempDir()
	nodes := fabricFiles(t, bin, dir, "userspace", names, addrs, underlays)
	seed := map[int]int{1: 0, 2: 0, 3: 1, 4: 2} // index → index of its seed
	for i, n := range nodes {
		n.ns = "gn-" + tag + "-" + names[i]
		b, err := os.ReadFile(n.config)
		if err != nil {
			t.Fatal(err)
		}
		cfg := string(b)
		start := strings.Index(cfg, "peers: [")
		end := start + strings.Index(cfg[start:], "\n")
		peers := "peers: []"
		if s, ok := seed[i]; ok {
			peers = fmt.Sprintf("peers: [%q]", underlays[s]+":"+underlayPort)
		}
		cfg = cfg[:start] + peers + cfg[end:] +
			fmt.Sprintf("gossip:\n  enabled: true\n  advertise: [\"%s:%s\"]\n", underlays[i], underlayPort)
		if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// c3 and c5 first: they form a cluster while c1 is missing.
	nodes[2].start(t, bin)
	nodes[4].start(t, bin)
	nodes[4].waitPeer(t, bin, "c3")
	for _, i := range []int{0, 1, 3} {
		nodes[i].start(t, bin)
	}
	start := time.Now()
	deadline := start.Add(180 * time.Second) // only a fabric that stays split misses it
	for {
		problem := ""
		for _, n := range nodes {
			var members []node.MemberView
			out, err := exec.Command(bin, "peers", "--json", "--socket", n.socket).CombinedOutput()
			if err != nil || json.Unmarshal(out, &members) != nil {
				problem = fmt.Sprintf("%s: peers: %v %s", n.name, err, out)
				break
			}
			ok := 0
			for _, m := range members {
				if m.Name != n.name && m.Admitted && m.State == "alive" {
					ok++
				}
			}
			if ok != len(nodes)-1 {
				problem = fmt.Sprintf("%s lists %d admitted, alive members: %+v", n.name, ok, members)
				break
			}
		}
		if problem == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fabric stayed split: %s", problem)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("one fabric %v after the second group started", time.Since(start).Round(time.Millisecond))
}
