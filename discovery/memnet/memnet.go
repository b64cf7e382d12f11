// Package memnet is an in-memory stand-in for the overlay network, for tests
// of the discovery package and of anything built on it (the node package
// reuses it).
//
// A Hub routes UDP datagrams (through buffered channels, dropped when full as
// real UDP would) and TCP streams (net.Pipe pairs) between hosts identified by
// a netip.Addr. Tests can kill a host (all its traffic vanishes, as for a
// process that got SIGKILL behind a WireGuard tunnel: dials time out, they are
// not refused), revive it, and partition the hub into two halves and heal it.
// Every host counts the bytes it sends, for bandwidth benchmarks.
package memnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// PacketQueueLen is how many datagrams a UDP socket buffers before new ones
// are dropped; 1024 is about what a default Linux socket buffer holds of
// small gossip packets.
const PacketQueueLen = 1024

// firstEphemeralPort is where dialers' local ports start, as on Linux.
const firstEphemeralPort = 32768

// ErrClosed is returned by operations on closed sockets.
var ErrClosed = net.ErrClosed

// Hub connects in-memory hosts. The zero value is not usable; use NewHub.
type Hub struct {
	mu        sync.Mutex
	hosts     map[netip.Addr]*Host
	partition map[netip.Addr]bool // one side of a partition; nil when healed
}

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{hosts: make(map[netip.Addr]*Host)}
}

// Host returns the host with the given address, creating it on first use.
// A Host implements the discovery.Network interface.
func (h *Hub) Host(addr netip.Addr) *Host {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ht, ok := h.hosts[addr]; ok {
		return ht
	}
	ht := &Host{
		hub:       h,
		addr:      addr,
		udp:       make(map[uint16]*PacketConn),
		tcp:       make(map[uint16]*Listener),
		conns:     make(map[*Conn]struct{}),
		ephemeral: firstEphemeralPort,
	}
	h.hosts[addr] = ht
	return ht
}

// Kill makes a host silent: everything it sends and everything sent to it is
// dropped, its open streams break, and dials to it hang until their context
// ends. Its sockets stay open, like those of a frozen process.
func (h *Hub) Kill(addr netip.Addr) {
	ht := h.Host(addr)
	ht.down.Store(true)
	ht.closeConns(func(*Conn) bool { return true })
}

// Revive undoes Kill.
func (h *Hub) Revive(addr netip.Addr) {
	h.Host(addr).down.Store(false)
}

// Partition splits the hub in two: the given addresses on one side, every
// other host on the other. Traffic across the cut is dropped and streams
// across it break. A new Partition replaces the previous one.
func (h *Hub) Partition(side ...netip.Addr) {
	p := make(map[netip.Addr]bool, len(side))
	for _, a := range side {
		p[a] = true
	}
	h.mu.Lock()
	h.partition = p
	hosts := make([]*Host, 0, len(h.hosts))
	for _, ht := range h.hosts {
		hosts = append(hosts, ht)
	}
	h.mu.Unlock()
	for _, ht := range hosts {
		ht.closeConns(func(c *Conn) bool { return !h.reachable(c.local.Addr(), c.remote.Addr()) })
	}
}

// Heal removes the partition.
func (h *Hub) Heal() {
	h.mu.Lock()
	h.partition = nil
	h.mu.Unlock()
}

// reachable reports whether a packet from a to b would be delivered.
func (h *Hub) reachable(a, b netip.Addr) bool {
	h.mu.Lock()
	src, dst := h.hosts[a], h.hosts[b]
	cut := h.partition != nil && h.partition[a] != h.partition[b]
	h.mu.Unlock()
	return src != nil && dst != nil && !src.down.Load() && !dst.down.Load() && !cut
}

func (h *Hub) lookup(a netip.Addr) *Host {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hosts[a]
}

// Host is one node's view of the hub. It implements discovery.Network.
type Host struct {
	hub  *Hub
	addr netip.Addr
	down atomic.Bool

	sentBytes atomic.Uint64

	mu        sync.Mutex
	udp       map[uint16]*PacketConn
	tcp       map[uint16]*Listener
	conns     map[*Conn]struct{}
	ephemeral uint16
}

// LocalAddr returns the host's address.
func (ht *Host) LocalAddr() netip.Addr { return ht.addr }

// SentBytes returns how many payload bytes the host has sent (datagrams and
// stream writes), delivered or not.
func (ht *Host) SentBytes() uint64 { return ht.sentBytes.Load() }

// ListenUDP opens a UDP socket on the host's address.
func (ht *Host) ListenUDP(port uint16) (net.PacketConn, error) {
	ht.mu.Lock()
	defer ht.mu.Unlock()
	if _, busy := ht.udp[port]; busy || port == 0 {
		return nil, fmt.Errorf("memnet: listen udp %s:%d: %w", ht.addr, port, errInUse(port))
	}
	pc := &PacketConn{
		host:   ht,
		local:  netip.AddrPortFrom(ht.addr, port),
		queue:  make(chan datagram, PacketQueueLen),
		closed: make(chan struct{}),
	}
	ht.udp[port] = pc
	return pc, nil
}

// ListenTCP opens a TCP listener on the host's address.
func (ht *Host) ListenTCP(port uint16) (net.Listener, error) {
	ht.mu.Lock()
	defer ht.mu.Unlock()
	if _, busy := ht.tcp[port]; busy || port == 0 {
		return nil, fmt.Errorf("memnet: listen tcp %s:%d: %w", ht.addr, port, errInUse(port))
	}
	l := &Listener{
		host:    ht,
		local:   netip.AddrPortFrom(ht.addr, port),
		accepts: make(chan *Conn),
		closed:  make(chan struct{}),
	}
	ht.tcp[port] = l
	return l, nil
}

func errInUse(port uint16) error {
	if port == 0 {
		return errors.New("port 0 is not supported")
	}
	return errors.New("address in use")
}

// DialContext opens a stream to address ("tcp", "ip:port"). If the target is
// unreachable (killed or cut off) it waits for ctx, as a dial into a
// silent WireGuard peer does; if nothing listens there it fails at once.
func (ht *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, fmt.Errorf("memnet: dial %s: unsupported network", network)
	}
	dst, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("memnet: dial %s: %w", address, err)
	}
	if !ht.hub.reachable(ht.addr, dst.Addr()) {
		<-ctx.Done()
		return nil, fmt.Errorf("memnet: dial %s: %w", address, ctx.Err())
	}
	peer := ht.hub.lookup(dst.Addr())
	peer.mu.Lock()
	l := peer.tcp[dst.Port()]
	peer.mu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("memnet: dial %s: connection refused", address)
	}
	ht.mu.Lock()
	ht.ephemeral++
	if ht.ephemeral == 0 {
		ht.ephemeral = firstEphemeralPort
	}
	local := netip.AddrPortFrom(ht.addr, ht.ephemeral)
	ht.mu.Unlock()

	a, b := net.Pipe()
	client := &Conn{Conn: a, host: ht, local: local, remote: dst}
	server := &Conn{Conn: b, host: peer, local: dst, remote: local}
	ht.track(client)
	peer.track(server)
	select {
	case l.accepts <- server:
		return client, nil
	case <-l.closed:
	case <-ctx.Done():
	}
	client.Close()
	server.Close()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("memnet: dial %s: %w", address, ctx.Err())
	}
	return nil, fmt.Errorf("memnet: dial %s: connection refused", address)
}

func (ht *Host) track(c *Conn) {
	ht.mu.Lock()
	ht.conns[c] = struct{}{}
	ht.mu.Unlock()
}

func (ht *Host) untrack(c *Conn) {
	ht.mu.Lock()
	delete(ht.conns, c)
	ht.mu.Unlock()
}

func (ht *Host) closeConns(match func(*Conn) bool) {
	ht.mu.Lock()
	var victims []*Conn
	for c := range ht.conns {
		if match(c) {
			victims = append(victims, c)
		}
	}
	ht.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
}

type datagram struct {
	buf  []byte
	from netip.AddrPort
}

// PacketConn is an in-memory UDP socket.
type PacketConn struct {
	host  *Host
	local netip.AddrPort
	queue chan datagram

	closeOnce sync.Once
	closed    chan struct{}

	mu       sync.Mutex
	deadline time.Time
}

// ReadFrom receives one datagram; the source is a *net.UDPAddr.
func (pc *PacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	pc.mu.Lock()
	dl := pc.deadline
	pc.mu.Unlock()
	var timeout <-chan time.Time
	if !dl.IsZero() {
		t := time.NewTimer(time.Until(dl))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case d := <-pc.queue:
		n := copy(p, d.buf)
		return n, net.UDPAddrFromAddrPort(d.from), nil
	case <-pc.closed:
		return 0, nil, ErrClosed
	case <-timeout:
		return 0, nil, os.ErrDeadlineExceeded
	}
}

// WriteTo sends one datagram to a *net.UDPAddr (or any address whose String
// is ip:port). Undeliverable datagrams are dropped silently.
func (pc *PacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	select {
	case <-pc.closed:
		return 0, ErrClosed
	default:
	}
	var dst netip.AddrPort
	if ua, ok := addr.(*net.UDPAddr); ok {
		dst = ua.AddrPort()
	} else {
		var err error
		if dst, err = netip.ParseAddrPort(addr.String()); err != nil {
			return 0, fmt.Errorf("memnet: write to %s: %w", addr, err)
		}
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	pc.host.sentBytes.Add(uint64(len(p)))
	if !pc.host.hub.reachable(pc.local.Addr(), dst.Addr()) {
		return len(p), nil
	}
	peer := pc.host.hub.lookup(dst.Addr())
	peer.mu.Lock()
	target := peer.udp[dst.Port()]
	peer.mu.Unlock()
	if target == nil {
		return len(p), nil
	}
	d := datagram{buf: append([]byte(nil), p...), from: pc.local}
	select {
	case target.queue <- d:
	default: // receive buffer full: dropped, as UDP does
	}
	return len(p), nil
}

// Close closes the socket and frees its port.
func (pc *PacketConn) Close() error {
	pc.closeOnce.Do(func() {
		close(pc.closed)
		pc.host.mu.Lock()
		if pc.host.udp[pc.local.Port()] == pc {
			delete(pc.host.udp, pc.local.Port())
		}
		pc.host.mu.Unlock()
	})
	return nil
}

// LocalAddr returns the socket's *net.UDPAddr.
func (pc *PacketConn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(pc.local) }

// SetDeadline sets the read deadline (writes never block).
func (pc *PacketConn) SetDeadline(t time.Time) error { return pc.SetReadDeadline(t) }

// SetReadDeadline sets the deadline for future ReadFrom calls.
func (pc *PacketConn) SetReadDeadline(t time.Time) error {
	pc.mu.Lock()
	pc.deadline = t
	pc.mu.Unlock()
	return nil
}

// SetWriteDeadline is a no-op: writes never block.
func (pc *PacketConn) SetWriteDeadline(time.Time) error { return nil }

// Listener is an in-memory TCP listener.
type Listener struct {
	host      *Host
	local     netip.AddrPort
	accepts   chan *Conn
	closeOnce sync.Once
	closed    chan struct{}
}

// Accept waits for the next inbound stream.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accepts:
		return c, nil
	case <-l.closed:
		return nil, ErrClosed
	}
}

// Close stops accepting and frees the port.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.closed)
		l.host.mu.Lock()
		if l.host.tcp[l.local.Port()] == l {
			delete(l.host.tcp, l.local.Port())
		}
		l.host.mu.Unlock()
	})
	return nil
}

// Addr returns the listener's *net.TCPAddr.
func (l *Listener) Addr() net.Addr { return net.TCPAddrFromAddrPort(l.local) }

// Conn is one end of an in-memory stream, with TCP-like addresses.
type Conn struct {
	net.Conn
	host          *Host
	local, remote netip.AddrPort
	closeOnce     sync.Once
}

// Write sends on the stream and counts the bytes.
func (c *Conn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.host.sentBytes.Add(uint64(n))
	return n, err
}

// Close closes the stream and forgets it.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.Conn.Close()
		c.host.untrack(c)
	})
	return err
}

// LocalAddr returns the local *net.TCPAddr.
func (c *Conn) LocalAddr() net.Addr { return net.TCPAddrFromAddrPort(c.local) }

// RemoteAddr returns the remote *net.TCPAddr.
func (c *Conn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }
