package proxy

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/aigrid/gridnet/stack/relay"
)

// maxUDPPayload is the largest UDP payload; read buffers have room for it.
const maxUDPPayload = 65535

// socksUDP runs a UDP ASSOCIATE (RFC 1928, section 7): a UDP socket on
// the address the client reached the proxy at, whose datagrams (each
// with a SOCKS5 UDP header naming its destination) go out of an overlay
// UDP socket, and whose answers come back with a header naming their
// source. Only datagrams from the control connection's IP address (and
// from the port the request named, if any) are taken; the first one
// fixes the client's port. Fragments (FRAG != 0) are dropped, as RFC 1928
// allows. The association ends with the control connection, after the
// idle timeout without a datagram, or when the Server closes.
func (s *Server) socksUDP(g *relay.Group, c net.Conn, want Destination) {
	defer c.Close()
	pd, ok := s.cfg.Dialer.(PacketDialer)
	if !ok {
		c.Write(reply(repCommandUnsupported, netip.AddrPort{}))
		return
	}
	client := relay.SourceAddr(c.RemoteAddr())
	local := addrPortOf(c.LocalAddr()).Addr()
	uc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		s.log.Warn("socks5: UDP associate: no local socket", "err", err)
		c.Write(reply(repGeneralFailure, netip.AddrPort{}))
		return
	}
	ctx, cancel := context.WithCancel(g.Context())
	defer cancel()
	ov, err := pd.ListenPacket(ctx)
	if err != nil {
		uc.Close()
		s.log.Warn("socks5: UDP associate: no overlay socket", "err", err)
		c.Write(reply(repGeneralFailure, netip.AddrPort{}))
		return
	}
	for _, cl := range []interface{ Close() error }{uc, ov} {
		untrack, err := g.Track(cl)
		if err != nil {
			uc.Close()
			ov.Close()
			return
		}
		defer untrack()
	}
	defer uc.Close()
	defer ov.Close()
	if _, err := c.Write(reply(repSucceeded, addrPortOf(uc.LocalAddr()))); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	a := &association{s: s, ctx: ctx, uc: uc, ov: ov, client: client, wantPort: want.Port}
	a.idle = relay.NewIdle(s.cfg.Limits.IdleTimeout, cancel)
	defer a.idle.Stop()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); watchControl(ctx, c, cancel) }()
	go func() { defer wg.Done(); defer cancel(); a.fromOverlay() }()
	go func() { defer wg.Done(); defer cancel(); a.fromClient() }()
	<-ctx.Done()
	c.Close()
	uc.Close()
	ov.Close()
	wg.Wait()
}

// association is one UDP ASSOCIATE.
type association struct {
	s        *Server
	ctx      context.Context
	uc       *net.UDPConn   // the client's side
	ov       net.PacketConn // the overlay side
	client   netip.Addr     // the control connection's IP
	wantPort uint16         // the port the request named; 0: any
	idle     *relay.Idle

	mu     sync.Mutex
	locked netip.AddrPort // the client's address once known
}

// accept reports whether a datagram from from belongs to the client.
func (a *association) accept(from netip.AddrPort) bool {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if from.Addr() != a.client || (a.wantPort != 0 && from.Port() != a.wantPort) {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.locked.IsValid() {
		a.locked = from
	}
	return a.locked == from
}

func (a *association) clientAddr() netip.AddrPort {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.locked
}

// fromClient sends the client's datagrams to their destinations.
func (a *association) fromClient() {
	buf := make([]byte, maxUDPPayload)
	for {
		n, from, err := a.uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if !a.accept(from) {
			continue
		}
		frag, dst, data, err := parseUDP(buf[:n])
		if err != nil || frag != 0 {
			continue
		}
		ap, err := a.s.resolve(a.ctx, dst)
		if err != nil {
			a.s.log.Debug("socks5: UDP datagram dropped", "to", dst.String(), "err", err)
			continue
		}
		a.idle.Touch()
		if _, err := a.ov.WriteTo(data, net.UDPAddrFromAddrPort(ap)); err != nil {
			a.s.log.Debug("socks5: UDP datagram not sent", "to", ap, "err", err)
		}
	}
}

// fromOverlay returns answers to the client with a header naming their
// source.
func (a *association) fromOverlay() {
	buf := make([]byte, udpHeaderMax+maxUDPPayload)
	for {
		n, from, err := a.ov.ReadFrom(buf[udpHeaderMax:])
		if err != nil {
			return
		}
		to := a.clientAddr()
		if !to.IsValid() {
			continue
		}
		a.idle.Touch()
		src := addrPortOf(from)
		hdr := appendAddr([]byte{0, 0, 0}, Destination{Addr: src.Addr(), Port: src.Port()})
		start := udpHeaderMax - len(hdr)
		copy(buf[start:], hdr)
		a.uc.WriteToUDPAddrPort(buf[start:udpHeaderMax+n], to)
	}
}
