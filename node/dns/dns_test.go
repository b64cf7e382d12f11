package dns

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// deadline bounds every wait: generous, only a hang misses it.
const deadline = 30 * time.Second

// fakeResolver knows a fixed set of nodes and records every name it was
// asked for.
type fakeResolver struct {
	zones []string
	nodes map[string][]netip.Addr

	mu    sync.Mutex
	asked []string
}

func (f *fakeResolver) Zones() []string { return f.zones }

func (f *fakeResolver) LookupNode(name string) ([]netip.Addr, bool) {
	f.mu.Lock()
	f.asked = append(f.asked, name)
	f.mu.Unlock()
	a, ok := f.nodes[name]
	return a, ok
}

func (f *fakeResolver) wasAsked(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.asked, name)
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func newFake() *fakeResolver {
	many := make([]netip.Addr, 40)
	for i := range many {
		many[i] = netip.AddrFrom4([4]byte{100, 64, 1, byte(i + 1)})
	}
	return &fakeResolver{
		zones: []string{"corp.example", "Partner.Example.", "eu.dc.corp.example"},
		nodes: map[string][]netip.Addr{
			"web1.corp.example":          addrs("100.64.0.2", "fd7a:115c:a1e0::2"),
			"v4only.corp.example":        addrs("100.64.0.3"),
			"v6only.corp.example":        addrs("fd7a:115c:a1e0::4"),
			"db.partner.example":         addrs("::ffff:100.64.0.9"),
			"many.corp.example":          many,
			"api.eu.dc.corp.example":     addrs("100.64.0.5"),
			"partner-gw.partner.example": addrs("100.64.0.6"),
		},
	}
}

// server serves f on UDP and TCP ports of 127.0.0.1 and returns their
// addresses.
func server(t *testing.T, f Resolver) (s *Server, udp, tcp string) {
	t.Helper()
	s, err := New(Config{Resolver: f})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() { errs <- s.ServeUDP(pc) }()
	go func() { errs <- s.ServeTCP(ln) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("serve returned %v after Close", err)
			}
		}
	})
	return s, pc.LocalAddr().String(), ln.Addr().String()
}

func exchange(t *testing.T, network, addr string, m *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: network, Timeout: deadline}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s: %v", network, questionString(m), err)
	}
	if r.Id != m.Id || !r.Response {
		t.Fatalf("%s: reply id %d response %v", questionString(m), r.Id, r.Response)
	}
	if r.RecursionAvailable {
		t.Errorf("%s: RA set; the responder never recurses", questionString(m))
	}
	return r
}

func query(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype) // RD set, as stubs send it
	return m
}

func answers(r *mdns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *mdns.A:
			out = append(out, v.Hdr.Name+" A "+v.A.String())
		case *mdns.AAAA:
			out = append(out, v.Hdr.Name+" AAAA "+v.AAAA.String())
		case *mdns.SOA:
			out = append(out, v.Hdr.Name+" SOA")
		default:
			out = append(out, rr.String())
		}
	}
	return out
}

// negative checks an authoritative negative answer: rcode, no answer,
// the zone's SOA in the authority section with the negative TTL.
func negative(t *testing.T, r *mdns.Msg, rcode int, zone string) {
	t.Helper()
	if r.Rcode != rcode || !r.Authoritative || len(r.Answer) != 0 {
		t.Errorf("%s: rcode %s AA %v answers %v; want %s, AA, no answer", questionString(r), mdns.RcodeToString[r.Rcode], r.Authoritative, answers(r), mdns.RcodeToString[rcode])
	}
	if len(r.Ns) != 1 {
		t.Fatalf("%s: authority %v, want the SOA of %s", questionString(r), r.Ns, zone)
	}
	soa, ok := r.Ns[0].(*mdns.SOA)
	if !ok || soa.Hdr.Name != zone || soa.Minttl != uint32(NegativeTTL/time.Second) || soa.Hdr.Ttl != soa.Minttl {
		t.Errorf("%s: authority %v, want the SOA of %s with minimum %v", questionString(r), r.Ns[0], zone, NegativeTTL)
	}
}

// TestAnswersNodes: A and AAAA of known nodes, authoritative, in any
// case, over UDP and TCP.
func TestAnswersNodes(t *testing.T) {
	_, udp, tcp := server(t, newFake())
	for _, tc := range []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"web1.corp.example.", mdns.TypeA, []string{"web1.corp.example. A 100.64.0.2"}},
		{"web1.corp.example.", mdns.TypeAAAA, []string{"web1.corp.example. AAAA fd7a:115c:a1e0::2"}},
		{"WEB1.Corp.EXAMPLE.", mdns.TypeA, []string{"WEB1.Corp.EXAMPLE. A 100.64.0.2"}},
		{"db.partner.example.", mdns.TypeA, []string{"db.partner.example. A 100.64.0.9"}},
		{"api.eu.dc.corp.example.", mdns.TypeA, []string{"api.eu.dc.corp.example. A 100.64.0.5"}},
		{"web1.corp.example.", mdns.TypeANY, []string{"web1.corp.example. A 100.64.0.2", "web1.corp.example. AAAA fd7a:115c:a1e0::2"}},
	} {
		for _, network := range []string{"udp", "tcp"} {
			addr := udp
			if network == "tcp" {
				addr = tcp
			}
			r := exchange(t, network, addr, query(tc.name, tc.qtype))
			if r.Rcode != mdns.RcodeSuccess || !r.Authoritative || r.Truncated || !slices.Equal(answers(r), tc.want) {
				t.Errorf("%s %s %s: rcode %s AA %v TC %v answers %v; want NOERROR, AA, %v", network, tc.name, mdns.TypeToString[tc.qtype],
					mdns.RcodeToString[r.Rcode], r.Authoritative, r.Truncated, answers(r), tc.want)
			}
			for _, rr := range r.Answer {
				if rr.Header().Ttl != uint32(TTL/time.Second) {
					t.Errorf("%s: TTL %d, want %v", rr, rr.Header().Ttl, TTL)
				}
			}
		}
	}
}

// TestNegativeAnswers: NXDOMAIN for unknown names in a zone, NODATA for
// a node without an address of the family asked for, for other types, at
// a zone's apex and above a zone; each with the zone's SOA.
func TestNegativeAnswers(t *testing.T) {
	_, udp, _ := server(t, newFake())
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		zone  string
	}{
		{"nosuch.corp.example.", mdns.TypeA, mdns.RcodeNameError, "corp.example."},
		{"NoSuch.Partner.Example.", mdns.TypeAAAA, mdns.RcodeNameError, "partner.example."},
		{"www.web1.corp.example.", mdns.TypeA, mdns.RcodeNameError, "corp.example."},
		{"web1.eu.dc.corp.example.", mdns.TypeA, mdns.RcodeNameError, "eu.dc.corp.example."},
		{"v6only.corp.example.", mdns.TypeA, mdns.RcodeSuccess, "corp.example."},
		{"v4only.corp.example.", mdns.TypeAAAA, mdns.RcodeSuccess, "corp.example."},
		{"web1.corp.example.", mdns.TypeMX, mdns.RcodeSuccess, "corp.example."},
		{"web1.corp.example.", mdns.TypePTR, mdns.RcodeSuccess, "corp.example."},
		{"corp.example.", mdns.TypeA, mdns.RcodeSuccess, "corp.example."},
		{"dc.corp.example.", mdns.TypeA, mdns.RcodeSuccess, "corp.example."},
	} {
		r := exchange(t, "udp", udp, query(tc.name, tc.qtype))
		negative(t, r, tc.rcode, tc.zone)
	}
	r := exchange(t, "udp", udp, query("Corp.Example.", mdns.TypeSOA))
	if r.Rcode != mdns.RcodeSuccess || !r.Authoritative || !slices.Equal(answers(r), []string{"corp.example. SOA"}) {
		t.Errorf("SOA at the apex: %s %v", mdns.RcodeToString[r.Rcode], answers(r))
	}
}

// TestRefusesOutsideItsZones: a name outside every zone is refused, not
// forwarded: the reply is REFUSED without RA or answers, and the
// resolver is not even asked. The Server has no upstream to forward to.
func TestRefusesOutsideItsZones(t *testing.T) {
	f := newFake()
	_, udp, tcp := server(t, f)
	for _, name := range []string{"example.com.", "www.example.com.", ".", "com.", "example.", "corp.example.com.", "xcorp.example.", "web1.", "localhost.", "2.0.64.100.in-addr.arpa."} {
		for _, network := range []string{"udp", "tcp"} {
			addr := udp
			if network == "tcp" {
				addr = tcp
			}
			r := exchange(t, network, addr, query(name, mdns.TypeA))
			if r.Rcode != mdns.RcodeRefused || r.Authoritative || len(r.Answer)+len(r.Ns) != 0 {
				t.Errorf("%s %s: rcode %s AA %v answer %v authority %v; want REFUSED and nothing else", network, name, mdns.RcodeToString[r.Rcode], r.Authoritative, r.Answer, r.Ns)
			}
			if f.wasAsked(strings.TrimSuffix(name, ".")) {
				t.Errorf("%s: the resolver was asked for a name outside its zones", name)
			}
		}
	}
	// Another class, and zone transfers, are refused in the zones too.
	chaos := query("version.bind.", mdns.TypeTXT)
	chaos.Question[0].Qclass = mdns.ClassCHAOS
	inZone := query("web1.corp.example.", mdns.TypeA)
	inZone.Question[0].Qclass = mdns.ClassCHAOS
	for _, m := range []*mdns.Msg{chaos, inZone, query("corp.example.", mdns.TypeAXFR), query("corp.example.", mdns.TypeIXFR)} {
		if r := exchange(t, "tcp", tcp, m); r.Rcode != mdns.RcodeRefused || len(r.Answer) != 0 {
			t.Errorf("%s: rcode %s answers %v; want REFUSED", questionString(m), mdns.RcodeToString[r.Rcode], answers(r))
		}
	}
}

// TestMalformedQueries: bad messages get FORMERR or NOTIMP or nothing,
// and the server goes on answering.
func TestMalformedQueries(t *testing.T) {
	s, udp, tcp := server(t, newFake())
	two := query("web1.corp.example.", mdns.TypeA)
	two.Question = append(two.Question, mdns.Question{Name: "v4only.corp.example.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET})
	none := query("web1.corp.example.", mdns.TypeA)
	none.Question = nil
	withAnswer := query("web1.corp.example.", mdns.TypeA)
	withAnswer.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: "web1.corp.example.", Rrtype: mdns.TypeA, Class: mdns.ClassINET}, A: net.IPv4(1, 2, 3, 4)}}
	update := query("corp.example.", mdns.TypeSOA)
	update.Opcode = mdns.OpcodeUpdate
	notify := query("corp.example.", mdns.TypeSOA)
	notify.Opcode = mdns.OpcodeNotify
	for _, tc := range []struct {
		m     *mdns.Msg
		rcode int
	}{{two, mdns.RcodeFormatError}, {none, mdns.RcodeFormatError}, {withAnswer, mdns.RcodeFormatError}, {update, mdns.RcodeNotImplemented}, {notify, mdns.RcodeNotImplemented}} {
		for _, network := range []string{"udp", "tcp"} {
			addr := udp
			if network == "tcp" {
				addr = tcp
			}
			r := exchange(t, network, addr, tc.m)
			if r.Rcode != tc.rcode || len(r.Answer) != 0 {
				t.Errorf("%s %d questions, opcode %s: rcode %s answers %v; want %s", network, len(tc.m.Question), mdns.OpcodeToString[tc.m.Opcode], mdns.RcodeToString[r.Rcode], answers(r), mdns.RcodeToString[tc.rcode])
			}
		}
		// The handler itself says the same when handed such a message.
		if r := s.Respond(tc.m, true); r == nil || r.Rcode != tc.rcode {
			t.Errorf("Respond(%d questions, opcode %s) = %v; want %s", len(tc.m.Question), mdns.OpcodeToString[tc.m.Opcode], r, mdns.RcodeToString[tc.rcode])
		}
	}
	// A response is never answered.
	resp := query("web1.corp.example.", mdns.TypeA)
	resp.Response = true
	if r := s.Respond(resp, true); r != nil {
		t.Errorf("a response was answered: %v", r)
	}
	if acceptQuery(mdns.Header{Bits: 1 << 15, Qdcount: 1}) != mdns.MsgIgnore {
		t.Error("a response passes the accept function")
	}
	// Garbage over UDP and TCP does not stop the server.
	c, err := net.Dial("udp", udp)
	if err != nil {
		t.Fatal(err)
	}
	for _, junk := range [][]byte{{}, {0}, {1, 2, 3}, []byte(strings.Repeat("\xff", 600)), {0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63}} {
		c.Write(junk)
	}
	c.Close()
	tc, err := net.Dial("tcp", tcp)
	if err != nil {
		t.Fatal(err)
	}
	tc.Write([]byte{0, 5, 1, 2, 3, 4, 5, 0, 3})
	tc.Close()
	if r := exchange(t, "udp", udp, query("web1.corp.example.", mdns.TypeA)); len(r.Answer) != 1 {
		t.Errorf("after junk: answers %v", answers(r))
	}
	if r := exchange(t, "tcp", tcp, query("web1.corp.example.", mdns.TypeA)); len(r.Answer) != 1 {
		t.Errorf("after junk over TCP: answers %v", answers(r))
	}
}

// TestEDNSAndTruncation: without EDNS a UDP reply fits 512 bytes (TC set
// when records had to go), with EDNS it fits the client's size up to
// EDNSSize, over TCP it is whole; EDNS versions above 0 get BADVERS; two
// OPT records are a format error.
func TestEDNSAndTruncation(t *testing.T) {
	s, udp, tcp := server(t, newFake())
	plain := query("many.corp.example.", mdns.TypeA)
	edns := query("many.corp.example.", mdns.TypeA)
	edns.SetEdns0(4096, false)
	small := query("many.corp.example.", mdns.TypeA)
	small.SetEdns0(100, false) // below 512: treated as 512
	for _, tc := range []struct {
		what    string
		network string
		m       *mdns.Msg
		limit   int
		whole   bool
	}{
		{"UDP without EDNS", "udp", plain, mdns.MinMsgSize, false},
		{"UDP with EDNS 100", "udp", small, mdns.MinMsgSize, false},
		{"UDP with EDNS 4096", "udp", edns, EDNSSize, true},
		{"TCP", "tcp", plain, mdns.MaxMsgSize, true},
	} {
		addr := udp
		if tc.network == "tcp" {
			addr = tcp
		}
		r := exchange(t, tc.network, addr, tc.m)
		r.Compress = true // as the server sent it
		packed, err := r.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if len(packed) > tc.limit {
			t.Errorf("%s: %d bytes, more than %d", tc.what, len(packed), tc.limit)
		}
		if got := len(r.Answer) == 40; got != tc.whole || r.Truncated == tc.whole {
			t.Errorf("%s: %d answers, TC %v; want all 40: %v", tc.what, len(r.Answer), r.Truncated, tc.whole)
		}
		if len(r.Answer) == 0 {
			t.Errorf("%s: no answer at all", tc.what)
		}
		if (tc.m.IsEdns0() != nil) != (r.IsEdns0() != nil) {
			t.Errorf("%s: OPT in reply %v, in query %v", tc.what, r.IsEdns0() != nil, tc.m.IsEdns0() != nil)
		}
		if o := r.IsEdns0(); o != nil && o.UDPSize() != EDNSSize {
			t.Errorf("%s: advertised size %d, want %d", tc.what, o.UDPSize(), EDNSSize)
		}
	}
	v1 := query("web1.corp.example.", mdns.TypeA)
	v1.SetEdns0(1232, false)
	v1.IsEdns0().SetVersion(1)
	if r := exchange(t, "udp", udp, v1); r.Rcode != mdns.RcodeBadVers || len(r.Answer) != 0 {
		t.Errorf("EDNS version 1: rcode %s, answers %v; want BADVERS", mdns.RcodeToString[r.Rcode], answers(r))
	}
	twoOPT := query("web1.corp.example.", mdns.TypeA)
	twoOPT.SetEdns0(1232, false)
	twoOPT.SetEdns0(1232, false)
	if r := s.Respond(twoOPT, true); r == nil || r.Rcode != mdns.RcodeFormatError {
		t.Errorf("two OPT records: %v; want FORMERR", r)
	}
}

// TestTCPConnectionCaps: beyond the per-source cap, and beyond the cap
// in all, a new connection is closed at once; a freed slot serves again.
func TestTCPConnectionCaps(t *testing.T) {
	for _, tc := range []struct {
		name                string
		maxConns, perSource int
	}{{"per source", 3, 2}, {"in all", 2, 5}} {
		t.Run(tc.name, func(t *testing.T) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ln := newLimitListener(inner, tc.maxConns, tc.perSource)
			defer ln.Close()
			accepted := make(chan net.Conn, 10)
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						close(accepted)
						return
					}
					accepted <- c
				}
			}()
			dial := func() net.Conn {
				c, err := net.DialTimeout("tcp", inner.Addr().String(), deadline)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}
			closedAtOnce := func(c net.Conn) bool {
				c.SetReadDeadline(time.Now().Add(deadline))
				_, err := c.Read(make([]byte, 1))
				return errors.Is(err, io.EOF) || strings.Contains(fmt.Sprint(err), "reset")
			}
			capacity := min(tc.maxConns, tc.perSource)
			var held []net.Conn
			for range capacity {
				dial()
				held = append(held, <-accepted)
			}
			if !closedAtOnce(dial()) {
				t.Error("a connection beyond the cap was not closed")
			}
			held[0].Close()
			dial()
			select {
			case c := <-accepted:
				c.Close()
			case <-time.After(deadline):
				t.Fatal("a freed slot did not serve again")
			}
			for _, c := range held[1:] {
				c.Close()
			}
			ln.mu.Lock()
			open, sources := ln.open, len(ln.bySrc)
			ln.mu.Unlock()
			if open != 0 || sources != 0 {
				t.Errorf("%d slots of %d sources taken after every connection closed", open, sources)
			}
		})
	}
}

// TestCloseStopsServing: Close ends ServeUDP and ServeTCP (they return
// nil) and a closed server refuses to serve.
func TestCloseStopsServing(t *testing.T) {
	s, err := New(Config{Resolver: newFake()})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() { errs <- s.ServeUDP(pc) }()
	go func() { errs <- s.ServeTCP(ln) }()
	exchange(t, "udp", pc.LocalAddr().String(), query("web1.corp.example.", mdns.TypeA))
	exchange(t, "tcp", ln.Addr().String(), query("web1.corp.example.", mdns.TypeA))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("serve after Close: %v", err)
			}
		case <-time.After(deadline):
			t.Fatal("serve did not return after Close")
		}
	}
	pc2, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ServeUDP(pc2); !errors.Is(err, ErrClosed) {
		t.Errorf("ServeUDP on a closed server: %v", err)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New without a resolver succeeded")
	}
}

// FuzzRespond: whatever bytes arrive, a message miekg/dns parses gets a
// reply that packs, carries the query's id, never claims recursion, uses
// only the rcodes this responder gives and fits the UDP limit; only a
// response goes unanswered. Seeds: testdata/fuzz/FuzzRespond.
func FuzzRespond(f *testing.F) {
	for _, m := range []*mdns.Msg{query("web1.corp.example.", mdns.TypeA), query("example.com.", mdns.TypeAAAA), query("many.corp.example.", mdns.TypeANY)} {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	s, err := New(Config{Resolver: newFake()})
	if err != nil {
		f.Fatal(err)
	}
	allowed := []int{mdns.RcodeSuccess, mdns.RcodeNameError, mdns.RcodeRefused, mdns.RcodeFormatError, mdns.RcodeNotImplemented, mdns.RcodeBadVers}
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(mdns.Msg)
		if err := req.Unpack(b); err != nil {
			return
		}
		for _, udp := range []bool{true, false} {
			r := s.Respond(req.Copy(), udp)
			if r == nil {
				if !req.Response {
					t.Fatalf("no reply to a query: %v", req)
				}
				continue
			}
			r.Compress = true
			packed, err := r.Pack()
			if err != nil {
				t.Fatalf("reply does not pack: %v\n%v", err, r)
			}
			if r.Id != req.Id || !r.Response || r.RecursionAvailable || !slices.Contains(allowed, r.Rcode) {
				t.Fatalf("reply %v to %v", r, req)
			}
			limit := mdns.MinMsgSize
			if o := req.IsEdns0(); o != nil {
				limit = max(limit, min(int(o.UDPSize()), EDNSSize))
			}
			if udp && len(packed) > limit {
				t.Fatalf("UDP reply of %d bytes, more than %d", len(packed), limit)
			}
		}
	})
}

// TestAllowSourceDropsOthers: with AllowSource set, a query from another
// address gets no answer over UDP and its TCP connection is closed, while
// an allowed source is answered as usual.
func TestAllowSourceDropsOthers(t *testing.T) {
	for _, allowLoopback := range []bool{true, false} {
		s, err := New(Config{Resolver: newFake(), AllowSource: func(a netip.Addr) bool { return allowLoopback || !a.IsLoopback() }})
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go s.ServeUDP(pc)
		go s.ServeTCP(ln)
		q := query("web1.corp.example.", mdns.TypeA)
		if allowLoopback {
			exchange(t, "udp", pc.LocalAddr().String(), q)
			exchange(t, "tcp", ln.Addr().String(), q)
		} else {
			for _, network := range []string{"udp", "tcp"} {
				addr := pc.LocalAddr().String()
				if network == "tcp" {
					addr = ln.Addr().String()
				}
				// No answer may come; waiting a second for none only
				// lets a broken filter slip through on a slow machine,
				// never fails a working one.
				c := &mdns.Client{Net: network, Timeout: time.Second}
				if r, _, err := c.Exchange(q, addr); err == nil {
					t.Errorf("%s: a source outside AllowSource got an answer: %v", network, r)
				}
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
