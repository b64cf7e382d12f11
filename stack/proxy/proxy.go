package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aigrid/gridnet/stack/relay"
)

// Dialer connects to overlay destinations. The proxies hand it only
// addresses inside Config.Networks.
type Dialer interface {
	// DialContext connects to addr over the overlay; network is "tcp" or
	// "udp". Errors wrap ErrNotAllowed when a rule forbids the flow and
	// ErrUnreachable when no node holds the address.
	DialContext(ctx context.Context, network string, addr netip.AddrPort) (net.Conn, error)
}

// PacketDialer is a Dialer that can also open an unconnected UDP socket
// on the overlay, which SOCKS5 UDP ASSOCIATE needs. Without it UDP
// ASSOCIATE is answered "command not supported".
type PacketDialer interface {
	Dialer
	// ListenPacket opens a UDP socket on the node's overlay address (a
	// free port); WriteTo sends only to overlay addresses.
	ListenPacket(ctx context.Context) (net.PacketConn, error)
}

// Resolver turns node names into overlay addresses.
type Resolver interface {
	// LookupName returns the overlay address of name (NAME or
	// NAME.DOMAIN, any case, with or without a final dot). An unknown
	// name is an error that wraps ErrUnknownName.
	LookupName(ctx context.Context, name string) (netip.Addr, error)
}

// Errors the Dialer and Resolver wrap so that the proxies answer with the
// right refusal.
var (
	// ErrNotAllowed: the destination is outside the overlay, or a rule
	// forbids the flow (SOCKS5 reply 0x02, HTTP 403).
	ErrNotAllowed = errors.New("not allowed")
	// ErrUnknownName: no node has the name (SOCKS5 reply 0x04, HTTP 502).
	ErrUnknownName = errors.New("unknown name")
	// ErrUnreachable: no path to the address (SOCKS5 reply 0x04, HTTP
	// 502).
	ErrUnreachable = errors.New("unreachable")
)

// User is one username and password the proxies accept.
type User struct {
	Name, Password string
}

// Config configures a Server.
type Config struct {
	// Dialer reaches the overlay; required.
	Dialer Dialer
	// Resolver resolves node names; nil: only addresses are accepted.
	Resolver Resolver
	// Networks are the overlay prefixes: any other destination is refused
	// (ErrNotAllowed) before the Dialer sees it. Required.
	Networks []netip.Prefix
	// Users, if any, must authenticate: SOCKS5 with username/password
	// (RFC 1929), the HTTP proxy with Proxy-Authorization: Basic. Without
	// users both proxies are open to whoever can reach their listeners.
	Users []User
	// Limits bound each listener (see relay.Limits): MaxConns,
	// IdleTimeout and ConnectTimeout (MaxConnsPerSource is ignored:
	// clients are local programs).
	Limits relay.Limits
	// HandshakeTimeout bounds the SOCKS5 greeting and request and the
	// HTTP request header; 0 means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Logger gets refusals and failures; nil discards them.
	Logger *slog.Logger
}

// DefaultHandshakeTimeout bounds a client's handshake (SOCKS5 greeting
// and request, HTTP request header) unless Config says otherwise.
const DefaultHandshakeTimeout = 30 * time.Second

// Server is a SOCKS5 and HTTP proxy into the overlay. One Server serves
// any number of listeners of either kind, each within its own Limits.
type Server struct {
	cfg   Config
	log   *slog.Logger
	users []userHash

	mu     sync.Mutex
	closed bool
	groups []*relay.Group
	// closers run at Close (HTTP servers and transports).
	closers  []func()
	handlers sync.WaitGroup
	// rejecting counts connections beyond the HTTP proxy's cap being
	// answered.
	rejecting atomic.Int32
}

// userHash is a user's name and password as SHA-256, compared in
// constant time.
type userHash struct{ name, pass [sha256.Size]byte }

// New checks cfg and makes a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Dialer == nil {
		return nil, errors.New("proxy: no Dialer")
	}
	if len(cfg.Networks) == 0 {
		return nil, errors.New("proxy: no overlay networks")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	cfg.Limits.MaxConnsPerSource = 0
	nets := make([]netip.Prefix, len(cfg.Networks))
	for i, n := range cfg.Networks {
		nets[i] = n.Masked()
	}
	cfg.Networks = nets
	s := &Server{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for _, u := range cfg.Users {
		if u.Name == "" || len(u.Name) > 255 || len(u.Password) > 255 {
			return nil, fmt.Errorf("proxy: user %q: name must have 1 to 255 bytes, password at most 255 (RFC 1929)", u.Name)
		}
		s.users = append(s.users, userHash{sha256.Sum256([]byte(u.Name)), sha256.Sum256([]byte(u.Password))})
	}
	return s, nil
}

// authRequired reports whether clients must authenticate.
func (s *Server) authRequired() bool { return len(s.users) > 0 }

// checkUser reports whether name and pass are a configured user. It takes
// the same time whichever user matches or whether none does.
func (s *Server) checkUser(name, pass string) bool {
	nh, ph := sha256.Sum256([]byte(name)), sha256.Sum256([]byte(pass))
	ok := 0
	for _, u := range s.users {
		ok |= subtle.ConstantTimeCompare(nh[:], u.name[:]) & subtle.ConstantTimeCompare(ph[:], u.pass[:])
	}
	return ok == 1
}

// newGroup makes the Group of one listener, closed by Close.
func (s *Server) newGroup(kind string) (*relay.Group, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, relay.ErrClosed
	}
	g := relay.NewGroup(s.cfg.Limits, s.log.With("proxy", kind))
	s.groups = append(s.groups, g)
	return g, nil
}

// onClose registers f to run at Close.
func (s *Server) onClose(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closers = append(s.closers, f)
}

// Close stops every listener and ends every proxied connection; it waits
// for the Server's goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	groups, closers := s.groups, s.closers
	s.groups, s.closers = nil, nil
	s.mu.Unlock()
	for _, f := range closers {
		f()
	}
	for _, g := range groups {
		g.Close()
	}
	s.handlers.Wait()
	// Handlers that ended just now may have put connections back in an
	// HTTP transport's idle pool: close those too.
	for _, f := range closers {
		f()
	}
	return nil
}

// Stats sums the counters of the Server's listeners.
func (s *Server) Stats() relay.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st relay.Stats
	for _, g := range s.groups {
		gs := g.Stats()
		st.Active += gs.Active
		st.Accepted += gs.Accepted
		st.Rejected += gs.Rejected
	}
	return st
}

// Destination is where a client asks to go: a name or an address, and a
// port.
type Destination struct {
	// Name is the host name the client sent; "" when it sent an address.
	Name string
	// Addr is the address the client sent (zero when it sent a name).
	Addr netip.Addr
	Port uint16
}

// String is "name:port" or "addr:port".
func (d Destination) String() string {
	host := d.Name
	if host == "" {
		host = d.Addr.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(d.Port)))
}

// resolve turns d into an overlay address and port: a name through the
// Resolver (a name that is an IP literal as that address), and any
// address outside the overlay networks is refused.
func (s *Server) resolve(ctx context.Context, d Destination) (netip.AddrPort, error) {
	addr := d.Addr
	if d.Name != "" {
		if a, err := netip.ParseAddr(d.Name); err == nil {
			addr = a
		} else if s.cfg.Resolver == nil {
			return netip.AddrPort{}, fmt.Errorf("%s: %w: this proxy resolves no names", d.Name, ErrUnknownName)
		} else if addr, err = s.cfg.Resolver.LookupName(ctx, d.Name); err != nil {
			return netip.AddrPort{}, err
		}
	}
	addr = addr.Unmap().WithZone("")
	if !s.inOverlay(addr) {
		return netip.AddrPort{}, fmt.Errorf("%s: %w: %v is not in the overlay (%v); the proxy never sends traffic elsewhere", d, ErrNotAllowed, addr, s.cfg.Networks)
	}
	return netip.AddrPortFrom(addr, d.Port), nil
}

func (s *Server) inOverlay(a netip.Addr) bool {
	for _, p := range s.cfg.Networks {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// connect resolves d and dials it within ConnectTimeout.
func (s *Server) connect(ctx context.Context, network string, d Destination) (net.Conn, error) {
	ap, err := s.resolve(ctx, d)
	if err != nil {
		return nil, err
	}
	if t := s.cfg.Limits.ConnectTimeout; t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	c, err := s.cfg.Dialer.DialContext(ctx, network, ap)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("%s: no answer within %v: %w", d, s.cfg.Limits.ConnectTimeout, err)
		}
		return nil, fmt.Errorf("%s: %w", d, err)
	}
	return c, nil
}

// refusal classifies a connect error.
type refusal uint8

const (
	refusedOther refusal = iota
	refusedNotAllowed
	refusedUnknownName
	refusedUnreachable
	refusedNetUnreachable
	refusedConnRefused
	refusedTimeout
)

func classify(err error) refusal {
	var ne net.Error
	switch {
	case errors.Is(err, ErrNotAllowed):
		return refusedNotAllowed
	case errors.Is(err, ErrUnknownName):
		return refusedUnknownName
	case errors.Is(err, ErrUnreachable), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return refusedUnreachable
	case errors.Is(err, syscall.ENETUNREACH):
		return refusedNetUnreachable
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		return refusedConnRefused
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &ne) && ne.Timeout():
		return refusedTimeout
	}
	return refusedOther
}
