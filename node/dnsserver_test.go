package node

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/aigrid/gridnet/policy"
)

// allowDNS lets every admitted node query the responder.
const allowDNS = `inbound:
  - {proto: udp, port: 53, host: any}
  - {proto: tcp, port: 53, host: any}
`

// askOverlay sends m from node from to the responder at to's overlay
// address, port 53, over network ("udp" or "tcp"), through the tunnel.
func askOverlay(t *testing.T, from, to *Node, network string, m *mdns.Msg, wait time.Duration) (*mdns.Msg, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	c, err := from.Dial(ctx, network, net.JoinHostPort(to.Addr().String(), "53"))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	co := &mdns.Conn{Conn: c}
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

func dnsQuery(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

// TestDNSResponderNames: a node's responder, asked by a peer through its
// tunnel, answers for itself, its admitted peers and a node it knows only
// from gossip; an unknown name in its domain is NXDOMAIN; any other name
// is refused, never forwarded; the inbound firewall judges the queries.
func TestDNSResponderNames(t *testing.T) {
	ns := gossipNodesWith(t, func(i int, o *Options) {
		if i == 0 {
			o.DNS = &DNSOptions{}
		}
	}, "alpha", "beta", "gamma")
	alpha, beta, gamma := ns[0], ns[1], ns[2]
	waitSession(t, beta, "alpha")

	// Without a rule for port 53, alpha's firewall drops beta's query.
	events := alpha.Firewall().Events(256)
	defer events.Close()
	ctx, cancel := context.WithTimeout(t.Context(), relayDeadline)
	defer cancel()
	c, err := beta.Dial(ctx, "udp", net.JoinHostPort(alpha.Addr().String(), "53"))
	if err != nil {
		t.Fatal(err)
	}
	if err := (&mdns.Conn{Conn: c}).WriteMsg(dnsQuery("alpha.corp.example.", mdns.TypeA)); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(relayDeadline)
	for dropped := false; !dropped; {
		select {
		case e := <-events.C:
			dropped = e.Kind == policy.EventDrop && e.Peer == "beta" && e.DstPort == 53 && e.Proto == uint8(policy.ProtoUDP)
		case <-timeout:
			t.Fatal("alpha's firewall never dropped a DNS query from beta")
		}
	}
	c.Close()
	if err := alpha.ReloadFirewall(mustParseRules(t, allowDNS)); err != nil {
		t.Fatal(err)
	}

	ask := func(network, name string, qtype uint16) *mdns.Msg {
		t.Helper()
		r, err := askOverlay(t, beta, alpha, network, dnsQuery(name, qtype), relayDeadline)
		if err != nil {
			t.Fatalf("%s %s: %v", network, name, err)
		}
		if r.RecursionAvailable {
			t.Errorf("%s: RA set", name)
		}
		return r
	}
	wantA := func(r *mdns.Msg, addr netip.Addr) bool {
		if r.Rcode != mdns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 {
			return false
		}
		a, ok := r.Answer[0].(*mdns.A)
		return ok && a.A.String() == addr.String()
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, n := range []*Node{alpha, beta, gamma} {
			name := n.Identity().Name + ".corp.example."
			if r := ask(network, name, mdns.TypeA); !wantA(r, n.Addr()) {
				t.Errorf("%s %s: %v; want an authoritative A %v", network, name, r, n.Addr())
			}
			if r := ask(network, strings.ToUpper(name), mdns.TypeA); !wantA(r, n.Addr()) {
				t.Errorf("%s %s: %v; want an authoritative A %v", network, strings.ToUpper(name), r, n.Addr())
			}
		}
		if r := ask(network, "beta.corp.example.", mdns.TypeAAAA); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 0 || !r.Authoritative {
			t.Errorf("%s AAAA of an IPv4-only node: %v; want NOERROR without answers", network, r)
		}
		if r := ask(network, "nosuch.corp.example.", mdns.TypeA); r.Rcode != mdns.RcodeNameError || !r.Authoritative {
			t.Errorf("%s unknown node: %v; want an authoritative NXDOMAIN", network, r)
		}
		for _, name := range []string{"example.com.", "beta.", "beta.other.example.", "1.0.64.100.in-addr.arpa."} {
			if r := ask(network, name, mdns.TypeA); r.Rcode != mdns.RcodeRefused || len(r.Answer) != 0 || r.Authoritative {
				t.Errorf("%s %s: %v; want REFUSED", network, name, r)
			}
		}
	}

	// gamma known only from its gossip record: alpha drops its tunnel.
	// Gossip admits gamma again soon, so the answer counts only if gamma
	// was not admitted before and after it.
	for attempt := 0; ; attempt++ {
		for _, p := range alpha.Peers() {
			if p.Name == "gamma" {
				alpha.ov.RemovePeer(p.WireGuardKey, "test")
			}
		}
		_, before := alpha.ov.IdentityByAddr(gamma.Addr())
		r := ask("udp", "gamma.corp.example.", mdns.TypeA)
		_, after := alpha.ov.IdentityByAddr(gamma.Addr())
		if !before && !after {
			if !wantA(r, gamma.Addr()) {
				t.Errorf("gamma, known by gossip only: %v; want A %v", r, gamma.Addr())
			}
			break
		}
		if attempt == 20 {
			t.Fatal("gamma was admitted again before every query: the gossip-only answer was never tested")
		}
	}
}

// TestDNSConfig: the dns section turns the responder on at port 53 by
// default, and a port the gossip or a serve entry uses is refused.
func TestDNSConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte("vault: {path: n.vault}\ndns: {enabled: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if o := dnsOptions(cfg.DNS); o == nil || o.Port != DefaultDNSPort {
		t.Errorf("dns options %+v; want port %d", o, DefaultDNSPort)
	}
	off, err := ParseConfig([]byte("vault: {path: n.vault}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if o := dnsOptions(off.DNS); o != nil {
		t.Errorf("dns on without the section: %+v", o)
	}
	_, err = ParseConfig([]byte("vault: {path: n.vault}\ngossip: {enabled: true, port: 5353}\nserve:\n  - {port: 5353, proto: udp, to: 127.0.0.1:53}\ndns:\n  enabled: true\n  port: 5353\n"))
	if err == nil || !strings.Contains(err.Error(), "line 7: dns.port: 5353 is the gossip port") || !strings.Contains(err.Error(), "line 7: dns.port: udp 5353 is serve[0] too") {
		t.Errorf("conflicting ports: %v", err)
	}
	if _, err := ParseConfig([]byte("vault: {path: n.vault}\ndns: {enabeld: true}\n")); err == nil || !strings.Contains(err.Error(), `did you mean "enabled"`) {
		t.Errorf("misspelt key: %v", err)
	}
}
