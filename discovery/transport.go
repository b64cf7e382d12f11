package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Transport limits.
const (
	// udpBufferSize is memberlist's packet size and our receive buffer:
	// the smallest overlay MTU a node accepts (1280, also the default)
	// minus 40 bytes of IPv6 header and 8 of UDP, so that gossip never
	// needs IP fragmentation inside the tunnel, where losing one fragment
	// loses the whole message.
	udpBufferSize = 1280 - 40 - 8
	// maxInboundStreams caps concurrent inbound streams (push/pull, TCP
	// pings). memberlist refuses push/pulls beyond 128 concurrent; we stop
	// reading earlier, before a flood costs memory.
	maxInboundStreams = 64
	// maxStreamBytes caps what one inbound stream may send: our state limit
	// plus room for memberlist's node list (4096 nodes at well under 1 KiB).
	maxStreamBytes = MaxStateSize + 4<<20
	// packetQueueLen is the depth of the channel to memberlist's packet
	// handler; memberlist queues further internally (HandoffQueueDepth).
	packetQueueLen = 256
	// memberlistCompressMsg is memberlist's message type for LZW-compressed
	// payloads. Members of this package never compress (the tunnel already
	// carries the bytes; compression would only add decompression bombs),
	// so a stream starting with it is refused unread.
	memberlistCompressMsg = 9
)

var errTransportClosed = errors.New("discovery transport closed")

// transport is a memberlist.NodeAwareTransport over a Network: one UDP
// socket and one TCP listener on the node's overlay address.
type transport struct {
	netw   Network
	port   uint16
	log    *slog.Logger
	pc     net.PacketConn
	ln     net.Listener
	ctx    context.Context
	cancel context.CancelFunc

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn

	inbound atomic.Int32
	mu      sync.Mutex
	conns   map[net.Conn]struct{} // open streams, closed at Shutdown
	closed  bool
	wg      sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

func newTransport(netw Network, port uint16, log *slog.Logger) (*transport, error) {
	pc, err := netw.ListenUDP(port)
	if err != nil {
		return nil, fmt.Errorf("discovery: listen udp %d: %w", port, err)
	}
	ln, err := netw.ListenTCP(port)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("discovery: listen tcp %d: %w", port, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &transport{
		netw: netw, port: port, log: log, pc: pc, ln: ln, ctx: ctx, cancel: cancel,
		packetCh: make(chan *memberlist.Packet, packetQueueLen),
		streamCh: make(chan net.Conn),
		conns:    make(map[net.Conn]struct{}),
	}
	t.wg.Add(2)
	go t.readPackets()
	go t.acceptStreams()
	return t, nil
}

func (t *transport) readPackets() {
	defer t.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := t.pc.ReadFrom(buf)
		ts := time.Now()
		if err != nil {
			if t.ctx.Err() != nil {
				return
			}
			t.log.Debug("discovery: udp read", "err", err)
			select {
			case <-t.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond): // don't spin on a broken socket
			}
			continue
		}
		if n < 1 {
			continue
		}
		p := &memberlist.Packet{Buf: append([]byte(nil), buf[:n]...), From: from, Timestamp: ts}
		select {
		case t.packetCh <- p:
		case <-t.ctx.Done():
			return
		}
	}
}

func (t *transport) acceptStreams() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if t.ctx.Err() != nil {
				return
			}
			t.log.Debug("discovery: accept", "err", err)
			select {
			case <-t.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		if t.inbound.Add(1) > maxInboundStreams {
			t.inbound.Add(-1)
			c.Close()
			continue
		}
		sc := &streamConn{Conn: c, t: t, inbound: true, left: maxStreamBytes}
		if !t.track(sc) {
			sc.Close()
			return
		}
		select {
		case t.streamCh <- sc:
		case <-t.ctx.Done():
			sc.Close()
			return
		}
	}
}

func (t *transport) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *transport) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// FinalAdvertiseAddr advertises the overlay address and the gossip port.
func (t *transport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	a := t.netw.LocalAddr().Unmap()
	if !a.IsValid() {
		return nil, 0, errors.New("discovery: network has no overlay address")
	}
	return net.IP(a.AsSlice()), int(t.port), nil
}

func parseAddr(addr string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return ap, fmt.Errorf("discovery: address %q: %w", addr, err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// WriteTo sends one packet to an overlay ip:port.
func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	ap, err := parseAddr(addr)
	if err != nil {
		return time.Time{}, err
	}
	if _, err := t.pc.WriteTo(b, net.UDPAddrFromAddrPort(ap)); err != nil {
		return time.Time{}, fmt.Errorf("discovery: write to %s: %w", addr, err)
	}
	return time.Now(), nil
}

// WriteToAddress sends one packet; names are not needed to route.
func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

// PacketCh delivers inbound packets.
func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout opens a stream to an overlay ip:port.
func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	ap, err := parseAddr(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(t.ctx, timeout)
	defer cancel()
	c, err := t.netw.DialContext(ctx, "tcp", ap.String())
	if err != nil {
		return nil, fmt.Errorf("discovery: dial %s: %w", ap, err)
	}
	sc := &streamConn{Conn: c, t: t, left: maxStreamBytes}
	if !t.track(sc) {
		c.Close()
		return nil, errTransportClosed
	}
	return sc, nil
}

// DialAddressTimeout opens a stream; names are not needed to route.
func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

// StreamCh delivers inbound streams.
func (t *transport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown closes the sockets and every open stream and waits for the
// transport's goroutines.
func (t *transport) Shutdown() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	conns := make([]net.Conn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	t.cancel()
	err := errors.Join(t.pc.Close(), t.ln.Close())
	for _, c := range conns {
		c.Close()
	}
	t.wg.Wait()
	if err != nil {
		return fmt.Errorf("discovery: transport shutdown: %w", err)
	}
	return nil
}

// streamConn guards a stream: a byte budget for inbound data, refusal of
// compressed payloads, and bookkeeping so Shutdown can close it.
type streamConn struct {
	net.Conn
	t       *transport
	inbound bool
	checked bool
	left    int64
	once    sync.Once
}

func (c *streamConn) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, fmt.Errorf("discovery: stream over %d bytes: %w", maxStreamBytes, ErrTooLarge)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.Conn.Read(p)
	c.left -= int64(n)
	if n > 0 && !c.checked {
		c.checked = true
		if p[0] == memberlistCompressMsg {
			c.Close()
			return 0, fmt.Errorf("discovery: compressed stream refused: %w", io.ErrUnexpectedEOF)
		}
	}
	return n, err
}

func (c *streamConn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.Conn.Close()
		c.t.untrack(c)
		if c.inbound {
			c.t.inbound.Add(-1)
		}
	})
	return err
}
