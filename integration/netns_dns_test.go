package integration

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// dialInNetns connects (network "udp" or "tcp") to addr from inside the
// network namespace ns, as a program running there would: the socket is
// made on a thread that has entered ns, and keeps ns after the thread
// leaves it.
func dialInNetns(ns, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked if it cannot return to its own
		// namespace: the runtime then ends it with this goroutine.
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- result{err: err}
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("enter netns %s: %w", ns, err)}
			return
		}
		c, err := net.DialTimeout(network, addr, netnsDeadline)
		if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
			if c != nil {
				c.Close()
			}
			done <- result{err: fmt.Errorf("leave netns %s: %w", ns, rerr)}
			return
		}
		runtime.UnlockOSThread()
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// TestNetnsKernelDNS: with kernel TUNs, a node's DNS responder answers
// programs on its own host at its overlay address, and peers through
// the tunnel: names of the node and its peer, NXDOMAIN for an unknown
// name of the domain, REFUSED for any other name.
func TestNetnsKernelDNS(t *testing.T) {
	requireNetns(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun for kernel TUN devices")
	}
	bin := gridnetBinary(t)
	nsA, nsB := netnsPair(t)
	dir := t.TempDir()
	nodes := fabricFiles(t, bin, dir, "kernel", []string{"alpha", "beta"}, []string{"100.64.0.1", "100.64.0.2"}, []string{underlayA, underlayB})
	nodes[0].ns, nodes[1].ns = nsA, nsB
	f, err := os.OpenFile(nodes[0].config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("dns:\n  enabled: true\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, n := range nodes {
		n.start(t, bin)
	}
	nodes[0].waitPeer(t, bin, "beta")
	nodes[1].waitPeer(t, bin, "alpha")

	ask := func(ns, network, name string, qtype uint16) *mdns.Msg {
		t.Helper()
		c, err := dialInNetns(ns, network, "100.64.0.1:53")
		if err != nil {
			t.Fatalf("%s: dial the responder: %v", ns, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(netnsDeadline))
		m := new(mdns.Msg)
		m.SetQuestion(name, qtype)
		co := &mdns.Conn{Conn: c}
		if err := co.WriteMsg(m); err != nil {
			t.Fatalf("%s %s %s: %v", ns, network, name, err)
		}
		r, err := co.ReadMsg()
		if err != nil {
			t.Fatalf("%s %s %s: %v\nalpha's log:\n%s", ns, network, name, err, nodes[0].logs)
		}
		if r.Id != m.Id || r.RecursionAvailable {
			t.Errorf("%s: id %d (want %d), RA %v", name, r.Id, m.Id, r.RecursionAvailable)
		}
		return r
	}
	a := func(r *mdns.Msg) string {
		if len(r.Answer) != 1 {
			return fmt.Sprint(r.Answer)
		}
		if rr, ok := r.Answer[0].(*mdns.A); ok {
			return rr.A.String()
		}
		return r.Answer[0].String()
	}
	for _, ns := range []string{nsA, nsB} { // nsA: a program on alpha's host; nsB: beta's host, through the tunnel
		for _, network := range []string{"udp", "tcp"} {
			for name, want := range map[string]string{"alpha.ns.gridnet.": "100.64.0.1", "Beta.NS.gridnet.": "100.64.0.2"} {
				if r := ask(ns, network, name, mdns.TypeA); r.Rcode != mdns.RcodeSuccess || !r.Authoritative || a(r) != want {
					t.Errorf("%s %s %s: %s AA %v %s; want %s", ns, network, name, mdns.RcodeToString[r.Rcode], r.Authoritative, a(r), want)
				}
			}
			if r := ask(ns, network, "nosuch.ns.gridnet.", mdns.TypeA); r.Rcode != mdns.RcodeNameError || !r.Authoritative {
				t.Errorf("%s %s unknown node: %s AA %v; want NXDOMAIN, AA", ns, network, mdns.RcodeToString[r.Rcode], r.Authoritative)
			}
			if r := ask(ns, network, "example.com.", mdns.TypeA); r.Rcode != mdns.RcodeRefused || len(r.Answer) != 0 {
				t.Errorf("%s %s example.com: %s %v; want REFUSED", ns, network, mdns.RcodeToString[r.Rcode], r.Answer)
			}
		}
	}
}
