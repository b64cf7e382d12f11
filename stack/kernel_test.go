package stack

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"
)

// netnsEnv marks the re-executed test process running inside the test's
// own network namespace; its value is the namespace name.
const netnsEnv = "GRIDNET_STACK_TEST_NETNS"

const kernelSkipReason = "needs root and /dev/net/tun to create a kernel TUN"

// TestKernelMode creates a kernel-mode stack inside a network namespace the
// test creates, by re-executing the test binary under `ip netns exec`, so
// the host's interfaces are never touched.
func TestKernelMode(t *testing.T) {
	if ns := os.Getenv(netnsEnv); ns != "" {
		kernelChild(t, ns)
		return
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil || os.Geteuid() != 0 {
		t.Skip(kernelSkipReason)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip command to create a network namespace")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var r [4]byte
	rand.Read(r[:])
	ns := "gridnet-test-" + hex.EncodeToString(r[:])
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace (%v: %s); %s", err, out, kernelSkipReason)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", ns, err, out)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, exe, "-test.run=^TestKernelMode$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsEnv+"="+ns)
	out, err := cmd.CombinedOutput()
	t.Logf("child in netns %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("kernel-mode child failed: %v", err)
	}
}

// ipJSON runs `ip -j args...` and decodes the output.
func ipJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-j"}, args...)...).Output()
	if err != nil {
		t.Fatalf("ip %v: %v", args, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("ip %v: decode %q: %v", args, out, err)
	}
}

func kernelChild(t *testing.T, ns string) {
	// Refuse to run in the initial namespace: this process must be the one
	// `ip netns exec` started.
	self, err1 := os.Readlink("/proc/self/ns/net")
	nsFile, err2 := os.Stat("/run/netns/" + ns)
	selfStat, err3 := os.Stat("/proc/self/ns/net")
	if err := errors.Join(err1, err2, err3); err != nil || !os.SameFile(nsFile, selfStat) {
		t.Fatalf("not inside netns %s (self %s): %v", ns, self, err)
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	const name = "gridnet-t0"
	v4 := netip.MustParsePrefix("100.64.0.2/10")
	v6 := netip.MustParsePrefix("fd7a:115c:a1e0::2/48")
	// The interface is configured through netlink, not by running ip: a
	// host without iproute2 (a minimal container image) must work. PATH
	// is emptied for New only (this process is the test's own child);
	// the checks below use ip again.
	path := os.Getenv("PATH")
	os.Setenv("PATH", t.TempDir())
	s, err := New(Config{Mode: Kernel, Addresses: []netip.Prefix{v4, v6}, MTU: 1380, TUNName: name, Logger: quiet})
	os.Setenv("PATH", path)
	if err != nil {
		t.Fatalf("New kernel: %v", err)
	}
	// wireguard-go turns the TUN's virtio-net header on wherever the
	// kernel has it (every kernel that runs Go's supported releases).
	if !s.SegmentationOffload() {
		t.Errorf("kernel TUN without segmentation offload (batch size %d)", s.Device().BatchSize())
	}
	closed := false
	defer func() {
		if !closed {
			s.Close()
		}
	}()

	var links []struct {
		Name     string   `json:"ifname"`
		MTU      int      `json:"mtu"`
		Flags    []string `json:"flags"`
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
			NoDAD     bool   `json:"nodad"`
		} `json:"addr_info"`
	}
	ipJSON(t, &links, "addr", "show", "dev", name)
	if len(links) != 1 || links[0].MTU != 1380 {
		t.Fatalf("interface %s: %+v, want MTU 1380", name, links)
	}
	up := false
	for _, f := range links[0].Flags {
		up = up || f == "UP"
	}
	found := map[string]bool{}
	for _, a := range links[0].AddrInfo {
		p := netip.PrefixFrom(netip.MustParseAddr(a.Local), a.PrefixLen)
		found[p.String()] = true
		if p == v6 && !a.NoDAD {
			t.Errorf("IPv6 address %s added with duplicate address detection (want nodad)", p)
		}
	}
	if !up || !found[v4.String()] || !found[v6.String()] {
		t.Fatalf("interface %s: up=%v addresses %v, want %v and %v", name, up, found, v4, v6)
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	ipJSON(t, &routes, "route", "show", "dev", name)
	if len(routes) == 0 || routes[0].Dst != "100.64.0.0/10" {
		t.Fatalf("routes via %s: %+v, want 100.64.0.0/10", name, routes)
	}

	// Datapath: a peer at 100.64.0.9 "behind WireGuard" answers echo
	// requests read from the hooked device by writing replies back.
	peer := netip.MustParseAddr("100.64.0.9")
	go answerEchoes(s, peer)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rtt, err := s.Ping(ctx, peer, 56)
	if err != nil || rtt <= 0 {
		t.Fatalf("kernel Ping via TUN = %v, %v", rtt, err)
	}
	c := s.Counters()
	if c.Outbound.AcceptedPackets == 0 || c.Inbound.AcceptedPackets != 1 {
		t.Fatalf("counters after ping: %+v", c)
	}
	// An outbound drop hook stops the echo requests.
	s.SetHooks(Hooks{Outbound: FilterFunc(func(p []byte) Verdict {
		if _, dst, _ := PacketAddrs(p); dst == peer {
			return Drop
		}
		return Accept
	})})
	short, cancel2 := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel2()
	if _, err := s.Ping(short, peer, 8); err == nil {
		t.Fatal("Ping succeeded through an outbound drop hook")
	}
	if s.Counters().Outbound.DroppedPackets == 0 {
		t.Fatal("outbound drops not counted")
	}

	// Dial/Listen use the host stack bound to the overlay address.
	l, err := s.ListenTCP(0)
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Write([]byte("kernel"))
			c.Close()
		}
	}()
	conn, err := s.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("Dial %s: %v", l.Addr(), err)
	}
	got, _ := io.ReadAll(conn)
	conn.Close()
	l.Close()
	if string(got) != "kernel" || netip.MustParseAddrPort(conn.LocalAddr().String()).Addr() != v4.Addr() {
		t.Fatalf("TCP over overlay address: got %q from local %v", got, conn.LocalAddr())
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closed = true
	if out, err := exec.Command("ip", "link", "show", "dev", name).CombinedOutput(); err == nil {
		t.Fatalf("interface %s still exists after Close:\n%s", name, out)
	}
}

// answerEchoes reads packets from the stack's device and answers IPv4 echo
// requests addressed to peer, until the device is closed.
func answerEchoes(s *Stack, peer netip.Addr) {
	dev := s.Device()
	n := dev.BatchSize()
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	for i := range bufs {
		bufs[i] = make([]byte, testOffset+65536)
	}
	for {
		k, err := dev.Read(bufs, sizes, testOffset)
		for i := 0; i < k; i++ {
			pkt := bufs[i][testOffset : testOffset+sizes[i]]
			_, dst, ok := PacketAddrs(pkt)
			ihl := int(pkt[0]&0xf) * 4
			if !ok || dst != peer || pkt[9] != protoICMPv4 || len(pkt) < ihl+8 || pkt[ihl] != 8 {
				continue
			}
			var a [4]byte
			copy(a[:], pkt[12:16])
			copy(pkt[12:16], pkt[16:20])
			copy(pkt[16:20], a[:])
			icmpMsg := pkt[ihl:]
			icmpMsg[0] = 0 // echo reply
			icmpMsg[2], icmpMsg[3] = 0, 0
			binary.BigEndian.PutUint16(icmpMsg[2:], inetChecksum(icmpMsg))
			reply := make([]byte, testOffset+len(pkt))
			copy(reply[testOffset:], pkt)
			dev.Write([][]byte{reply}, testOffset)
		}
		if err != nil {
			return
		}
	}
}

// inetChecksum is the RFC 1071 Internet checksum of b.
func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
