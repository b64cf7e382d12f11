package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/aigrid/gridnet/stack/relay"
)

// ServeSOCKS5 serves SOCKS5 (RFC 1928) on l until l fails or the Server
// is closed (then it returns nil): CONNECT, and UDP ASSOCIATE when the
// Dialer is a PacketDialer; BIND is answered 0x07 (command not
// supported). Clients authenticate with no method, or with
// username/password (RFC 1929) when Config.Users is set. Connections
// beyond Limits.MaxConns are reset at once.
func (s *Server) ServeSOCKS5(l net.Listener) error {
	g, err := s.newGroup("socks5")
	if err != nil {
		l.Close()
		return nil
	}
	ln, err := g.Listen(l, nil)
	if err != nil {
		return nil
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) && g.Context().Err() != nil {
				return nil
			}
			return err
		}
		if !g.Go(func() { s.socks(g, c) }) {
			c.Close()
			return nil
		}
	}
}

// socks runs one client connection.
func (s *Server) socks(g *relay.Group, c net.Conn) {
	c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	req, ok := s.socksHandshake(g, c)
	if !ok {
		c.Close()
		return
	}
	switch req.cmd {
	case cmdConnect:
		s.socksConnect(g, c, req.dst)
	case cmdUDP:
		s.socksUDP(g, c, req.dst)
	default:
		c.Write(reply(repCommandUnsupported, netip.AddrPort{}))
		c.Close()
	}
}

// socksHandshake negotiates the method, authenticates and reads the
// request. On failure it has answered what the protocol allows, and the
// caller closes c.
func (s *Server) socksHandshake(g *relay.Group, c net.Conn) (request, bool) {
	methods, err := readGreeting(c)
	if err != nil {
		s.log.Debug("socks5: bad greeting", "from", c.RemoteAddr(), "err", err)
		return request{}, false
	}
	want := byte(methodNone)
	if s.authRequired() {
		want = methodUser
	}
	if !slices.Contains(methods, want) {
		c.Write([]byte{socksVersion, methodNoneOK})
		g.Warn("socks5: client offers no acceptable authentication method", "from", c.RemoteAddr(), "offered", methods, "want", want)
		return request{}, false
	}
	if _, err := c.Write([]byte{socksVersion, want}); err != nil {
		return request{}, false
	}
	if want == methodUser {
		user, pass, err := readUserPass(c)
		if err != nil {
			s.log.Debug("socks5: bad authentication request", "from", c.RemoteAddr(), "err", err)
			return request{}, false
		}
		if !s.checkUser(user, pass) {
			c.Write([]byte{userPassVer, userPassFail})
			g.Warn("socks5: authentication failed", "from", c.RemoteAddr(), "user", user)
			return request{}, false
		}
		if _, err := c.Write([]byte{userPassVer, userPassOK}); err != nil {
			return request{}, false
		}
	}
	req, err := readRequest(c)
	if err != nil {
		if errors.Is(err, errAddressType) {
			c.Write(reply(repAddressUnsupported, netip.AddrPort{}))
		}
		s.log.Debug("socks5: bad request", "from", c.RemoteAddr(), "err", err)
		return request{}, false
	}
	return req, true
}

// socksCode is the reply code for a connect error.
func socksCode(err error) byte {
	switch classify(err) {
	case refusedNotAllowed:
		return repNotAllowed
	case refusedUnknownName, refusedUnreachable, refusedTimeout:
		return repHostUnreachable
	case refusedNetUnreachable:
		return repNetworkUnreachable
	case refusedConnRefused:
		return repConnectionRefused
	}
	return repGeneralFailure
}

// socksConnect connects to dst, answers, and relays.
func (s *Server) socksConnect(g *relay.Group, c net.Conn, dst Destination) {
	c.SetDeadline(time.Time{}) // the connect has its own timeout
	out, err := s.connect(g.Context(), "tcp", dst)
	if err != nil {
		s.log.Debug("socks5: connect refused", "from", c.RemoteAddr(), "to", dst.String(), "err", err)
		c.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
		c.Write(reply(socksCode(err), netip.AddrPort{}))
		c.Close()
		return
	}
	untrack, err := g.Track(out)
	if err != nil {
		c.Close()
		return
	}
	defer untrack()
	c.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if _, err := c.Write(reply(repSucceeded, addrPortOf(out.LocalAddr()))); err != nil {
		out.Close()
		c.Close()
		return
	}
	c.SetWriteDeadline(time.Time{})
	g.Pipe(c, out)
}

// addrPortOf is a's address and port (zero for other kinds of address).
func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

// Context of a UDP association: its control connection ends it.
func watchControl(ctx context.Context, c net.Conn, cancel context.CancelFunc) {
	defer cancel()
	buf := make([]byte, 64)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
		if ctx.Err() != nil {
			return
		}
	}
}
