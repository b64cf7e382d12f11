// Package dns is a node's DNS responder: it answers A and AAAA queries
// for NAME.DOMAIN of the nodes its Resolver knows, authoritatively, and
// nothing else. It never forwards and never recurses: a name outside
// every zone it serves is refused (REFUSED, RA clear), whatever it is.
//
// The responder is meant for split DNS: a stub resolver (systemd-resolved,
// for instance) sends it only the queries for the overlay's domains.
// Parsing is miekg/dns's; this package decides the answer.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// Resolver is what the responder knows of the overlay's names.
type Resolver interface {
	// Zones returns the domains the responder is authoritative for (for
	// gridnet, the governance domains of the trusted CAs), without a
	// final dot. Names outside every zone are refused.
	Zones() []string
	// LookupNode returns the overlay addresses of the node whose fully
	// qualified name is name (NAME.DOMAIN, lower case, without a final
	// dot), and false when no such node is known.
	LookupNode(name string) ([]netip.Addr, bool)
}

// Answer bounds and timers.
const (
	// TTL is the time to live of A and AAAA answers: short, so that a
	// revoked or renumbered node drops out of caches quickly.
	TTL = 30 * time.Second
	// NegativeTTL is how long a stub may cache that a name does not
	// exist (the SOA minimum, RFC 2308): a node that joins is found within
	// seconds.
	NegativeTTL = 5 * time.Second
	// EDNSSize is the UDP payload size the responder reads and
	// advertises, and the most it sends over UDP to an EDNS client: it
	// fits the overlay's smallest MTU (1280) without fragmentation.
	EDNSSize = 1232
	// MaxTCPConns caps the responder's open TCP connections.
	MaxTCPConns = 64
	// MaxTCPConnsPerSource caps one source address's open TCP
	// connections, so that one peer cannot take them all.
	MaxTCPConnsPerSource = 8
	// maxTCPQueries is how many queries one TCP connection may carry.
	maxTCPQueries = 64
	// tcpIdle closes a TCP connection that sends no query for this long.
	tcpIdle = 5 * time.Second
	// shutdownWait bounds how long Close waits for queries in flight.
	shutdownWait = 5 * time.Second
)

// ErrClosed is returned when a closed Server is asked to serve.
var ErrClosed = errors.New("dns: server closed")

// Config configures a Server.
type Config struct {
	// Resolver names the nodes; required.
	Resolver Resolver
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// AllowSource, when set, says which source addresses may ask: a query
	// from any other address gets no answer at all (a TCP connection from
	// it is closed). A node sets it to its overlay networks, so that a
	// listener on a host address (kernel mode) answers no one who reaches
	// that address from outside the overlay, and cannot be used to
	// reflect answers to a forged source.
	AllowSource func(netip.Addr) bool
}

// Server answers DNS queries over any number of UDP sockets and TCP
// listeners. It is safe for concurrent use.
type Server struct {
	res   Resolver
	log   *slog.Logger
	allow func(netip.Addr) bool

	mu      sync.Mutex
	closed  bool
	running []*running
}

// running is one miekg/dns server over one socket or listener.
type running struct {
	srv     *mdns.Server
	started chan struct{}
	done    chan struct{}
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Resolver == nil {
		return nil, errors.New("dns: no resolver")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{res: cfg.Resolver, log: log, allow: cfg.AllowSource}, nil
}

// ServeUDP answers queries arriving on pc until Close. It closes pc.
func (s *Server) ServeUDP(pc net.PacketConn) error {
	return s.serve(&mdns.Server{PacketConn: pc, UDPSize: EDNSSize}, pc.Close)
}

// ServeTCP answers queries on connections accepted from ln until Close
// (at most MaxTCPConns at once, MaxTCPConnsPerSource from one address).
// It closes ln.
func (s *Server) ServeTCP(ln net.Listener) error {
	return s.serve(&mdns.Server{
		Listener:      newLimitListener(ln, MaxTCPConns, MaxTCPConnsPerSource),
		MaxTCPQueries: maxTCPQueries,
		IdleTimeout:   func() time.Duration { return tcpIdle },
	}, ln.Close)
}

func (s *Server) serve(srv *mdns.Server, closeConn func() error) error {
	r := &running{srv: srv, started: make(chan struct{}), done: make(chan struct{})}
	srv.Handler = s
	srv.MsgAcceptFunc = acceptQuery
	srv.NotifyStartedFunc = func() { close(r.started) }
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		closeConn()
		return ErrClosed
	}
	s.running = append(s.running, r)
	s.mu.Unlock()
	defer close(r.done)
	err := srv.ActivateAndServe()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dns: serve: %w", err)
	}
	return nil
}

// Close stops every socket and listener and waits (a few seconds at
// most) for the queries in flight.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	rs := s.running
	s.running = nil
	s.mu.Unlock()
	var errs []error
	for _, r := range rs {
		select {
		case <-r.started:
			ctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
			if err := r.srv.ShutdownContext(ctx); err != nil {
				errs = append(errs, fmt.Errorf("dns: shut down: %w", err))
			}
			cancel()
		case <-r.done:
		}
	}
	return errors.Join(errs...)
}

// acceptQuery lets only standard queries reach the handler: responses are
// dropped (no reply to a reply), other opcodes get NOTIMP, and a message
// with other than one question or with records where a query has none
// gets FORMERR, before its records are parsed.
func acceptQuery(dh mdns.Header) mdns.MsgAcceptAction {
	if dh.Bits&(1<<15) != 0 { // QR
		return mdns.MsgIgnore
	}
	if opcode := int(dh.Bits>>11) & 0xF; opcode != mdns.OpcodeQuery {
		return mdns.MsgRejectNotImplemented
	}
	if dh.Qdcount != 1 || dh.Ancount != 0 || dh.Nscount != 0 || dh.Arcount > 2 {
		return mdns.MsgReject
	}
	return mdns.MsgAccept
}

// ServeDNS answers one query; it implements miekg/dns's Handler.
func (s *Server) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	udp := !strings.HasPrefix(w.LocalAddr().Network(), "tcp")
	if s.allow != nil && !s.allow(sourceAddr(w.RemoteAddr())) {
		s.log.Debug("dns query from outside the allowed sources dropped", "from", w.RemoteAddr())
		if !udp {
			w.Close()
		}
		return
	}
	resp := s.Respond(req, udp)
	if resp == nil {
		return
	}
	if resp.Rcode != mdns.RcodeSuccess && resp.Rcode != mdns.RcodeNameError {
		s.log.Debug("dns query not answered", "from", w.RemoteAddr(), "question", questionString(req), "rcode", mdns.RcodeToString[resp.Rcode])
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("dns reply not sent", "to", w.RemoteAddr(), "err", err)
	}
}

func questionString(m *mdns.Msg) string {
	if len(m.Question) == 0 {
		return ""
	}
	q := m.Question[0]
	return q.Name + " " + mdns.ClassToString[q.Qclass] + " " + mdns.TypeToString[q.Qtype]
}

// Respond returns the response to req, or nil when req gets none (it is
// itself a response). udp says whether the response goes over UDP,
// where it must fit 512 bytes, or the client's EDNS size up to EDNSSize
// (TC set when records had to go). It never consults anything but the
// Resolver.
func (s *Server) Respond(req *mdns.Msg, udp bool) *mdns.Msg {
	if req.Response {
		return nil
	}
	resp := new(mdns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = false
	if req.Opcode != mdns.OpcodeQuery {
		resp.Rcode = mdns.RcodeNotImplemented
		return resp
	}
	if len(req.Question) != 1 || len(req.Answer) != 0 || len(req.Ns) != 0 {
		resp.Rcode = mdns.RcodeFormatError
		return resp
	}
	size := mdns.MinMsgSize
	var (
		opts int
		opt  *mdns.OPT
	)
	for _, rr := range req.Extra {
		if o, ok := rr.(*mdns.OPT); ok {
			opt = o
			opts++
		}
	}
	switch {
	case opts > 1:
		// RFC 6891 section 6.1.1: more than one OPT is a format error.
		resp.Rcode = mdns.RcodeFormatError
		return resp
	case opt != nil:
		resp.SetEdns0(EDNSSize, false)
		if opt.Version() != 0 {
			resp.Rcode = mdns.RcodeBadVers
			return resp
		}
		size = max(mdns.MinMsgSize, min(int(opt.UDPSize()), EDNSSize))
	}
	s.answer(req.Question[0], resp)
	if !udp {
		size = mdns.MaxMsgSize
	}
	resp.Truncate(size)
	return resp
}

// answer fills resp for question q.
func (s *Server) answer(q mdns.Question, resp *mdns.Msg) {
	if q.Qclass != mdns.ClassINET || q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR {
		resp.Rcode = mdns.RcodeRefused
		return
	}
	name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
	zones := s.res.Zones()
	zone := ""
	for _, z := range zones {
		z = strings.ToLower(strings.TrimSuffix(z, "."))
		if z != "" && (name == z || strings.HasSuffix(name, "."+z)) && len(z) > len(zone) {
			zone = z
		}
	}
	if zone == "" {
		resp.Rcode = mdns.RcodeRefused
		return
	}
	resp.Authoritative = true
	if addrs, ok := s.res.LookupNode(name); ok {
		for _, a := range addrs {
			a = a.Unmap()
			hdr := mdns.RR_Header{Name: q.Name, Class: mdns.ClassINET, Ttl: uint32(TTL / time.Second)}
			switch {
			case a.Is4() && (q.Qtype == mdns.TypeA || q.Qtype == mdns.TypeANY):
				hdr.Rrtype = mdns.TypeA
				resp.Answer = append(resp.Answer, &mdns.A{Hdr: hdr, A: a.AsSlice()})
			case a.Is6() && (q.Qtype == mdns.TypeAAAA || q.Qtype == mdns.TypeANY):
				hdr.Rrtype = mdns.TypeAAAA
				resp.Answer = append(resp.Answer, &mdns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
			}
		}
		if len(resp.Answer) == 0 {
			resp.Ns = []mdns.RR{soa(zone)} // NODATA
		}
		return
	}
	if name == zone && q.Qtype == mdns.TypeSOA {
		resp.Answer = []mdns.RR{soa(zone)}
		return
	}
	resp.Ns = []mdns.RR{soa(zone)}
	if name == zone || isAboveZone(name, zones) {
		return // NODATA: the name exists (a zone's apex, or above one)
	}
	resp.Rcode = mdns.RcodeNameError
}

// isAboveZone reports whether name is an empty non-terminal: some zone
// lies below it (with zones corp.example and eu.dc.corp.example,
// dc.corp.example exists but holds no records).
func isAboveZone(name string, zones []string) bool {
	for _, z := range zones {
		if strings.HasSuffix(strings.ToLower(strings.TrimSuffix(z, ".")), "."+name) {
			return true
		}
	}
	return false
}

// soa is the zone's start of authority: it carries the negative TTL.
// The responder is the zone's only server and serves no transfers, so
// the timers other than the minimum mean nothing.
func soa(zone string) *mdns.SOA {
	ttl := uint32(NegativeTTL / time.Second)
	return &mdns.SOA{
		Hdr:     mdns.RR_Header{Name: mdns.Fqdn(zone), Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: ttl},
		Ns:      mdns.Fqdn(zone),
		Mbox:    "hostmaster." + mdns.Fqdn(zone),
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  ttl,
	}
}

// limitListener caps open connections in all and per source address;
// a connection beyond a cap is closed at once.
type limitListener struct {
	net.Listener
	maxConns, perSource int

	mu    sync.Mutex
	open  int
	bySrc map[netip.Addr]int
}

func newLimitListener(ln net.Listener, maxConns, perSource int) *limitListener {
	return &limitListener{Listener: ln, maxConns: maxConns, perSource: perSource, bySrc: map[netip.Addr]int{}}
}

// Accept returns the next connection within the caps.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceAddr(c.RemoteAddr())
		l.mu.Lock()
		if l.open >= l.maxConns || l.bySrc[src] >= l.perSource {
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.open++
		l.bySrc[src]++
		l.mu.Unlock()
		return &limitConn{Conn: c, l: l, src: src}, nil
	}
}

func (l *limitListener) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.bySrc[src]--; l.bySrc[src] <= 0 {
		delete(l.bySrc, src)
	}
}

// limitConn gives its slot back when closed.
type limitConn struct {
	net.Conn
	l    *limitListener
	src  netip.Addr
	once sync.Once
}

// Close closes the connection and frees its slot.
func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}

// sourceAddr is the IP address of a UDP or TCP peer (unmapped), or the
// zero Addr for anything else.
func sourceAddr(a net.Addr) netip.Addr {
	switch v := a.(type) {
	case *net.UDPAddr:
		return v.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return v.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}
