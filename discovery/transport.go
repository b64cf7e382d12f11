package discovery

import (
	"bufio"
	"bytes"
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
	// maxStreamsPerPeer caps the inbound streams of one member: a member
	// has at most a push/pull or join, a pull, a pull answer, a CRL and
	// a TCP ping open towards a node at once, and 8 leaves room; a member
	// holding streams idle cannot take the slots of the others.
	maxStreamsPerPeer = 8
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
	netw Network
	port uint16
	// d applies the rules of guard.go to what members send.
	d *Discovery
	// firstMessage bounds the wait for an inbound stream's first message
	// (memberlist's TCP timeout): idle and trickling streams are closed.
	firstMessage time.Duration
	log          *slog.Logger
	pc           net.PacketConn
	ln           net.Listener
	ctx          context.Context
	cancel       context.CancelFunc

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn

	inbound atomic.Int32
	mu      sync.Mutex
	conns   map[net.Conn]struct{} // open streams, closed at Shutdown
	perPeer map[string]int        // open inbound streams per member
	closed  bool
	wg      sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

func newTransport(netw Network, port uint16, d *Discovery, firstMessage time.Duration, log *slog.Logger) (*transport, error) {
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
		netw: netw, port: port, d: d, firstMessage: firstMessage, log: log, pc: pc, ln: ln, ctx: ctx, cancel: cancel,
		packetCh: make(chan *memberlist.Packet, packetQueueLen),
		streamCh: make(chan net.Conn),
		conns:    make(map[net.Conn]struct{}),
		perPeer:  make(map[string]int),
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
		src, ok := netAddrPort(from)
		if !ok {
			continue
		}
		out := t.d.filterPacket(src, buf[:n])
		if out == nil {
			continue
		}
		p := &memberlist.Packet{Buf: bytes.Clone(out), From: from, Timestamp: ts}
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
		src, ok := netAddrPort(c.RemoteAddr())
		sender := ""
		if ok {
			sender, ok = t.d.cfg.PeerName(src.Addr())
		}
		if !ok || !t.takeSlot(sender) {
			t.d.stats.streamsRefused.Add(1)
			c.Close()
			continue
		}
		sc := &streamConn{Conn: c, t: t, inbound: true, peer: sender, left: maxStreamBytes}
		if !t.track(sc) {
			sc.Close()
			return
		}
		t.wg.Add(1)
		go t.serveStream(sc, sender, src)
	}
}

// takeSlot takes an inbound stream slot for sender, if one is free under
// both caps (maxInboundStreams, maxStreamsPerPeer).
func (t *transport) takeSlot(sender string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.perPeer[sender] >= maxStreamsPerPeer || t.inbound.Load() >= maxInboundStreams {
		return false
	}
	t.perPeer[sender]++
	t.inbound.Add(1)
	return true
}

// releaseSlot frees an inbound stream slot of sender.
func (t *transport) releaseSlot(sender string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.perPeer[sender]--; t.perPeer[sender] <= 0 {
		delete(t.perPeer, sender)
	}
	t.inbound.Add(-1)
}

// serveStream reads an inbound stream's first message under the rules
// (see readFirst), within firstMessage, and hands memberlist what it may
// see of the stream.
func (t *transport) serveStream(sc *streamConn, sender string, src netip.AddrPort) {
	defer t.wg.Done()
	sc.SetDeadline(time.Now().Add(t.firstMessage))
	br := bufio.NewReader(sc)
	replay, consumed, err := t.d.readFirst(br, sender, src, false)
	if err != nil || consumed {
		if err != nil {
			t.d.stats.filtered.Add(1)
			t.d.badLog.log(t.log, sender, "stream", err)
		}
		sc.Close()
		return
	}
	sc.SetDeadline(time.Time{})
	rc := &replayConn{streamConn: sc, r: io.MultiReader(bytes.NewReader(replay), br)}
	select {
	case t.streamCh <- rc:
	case <-t.ctx.Done():
		sc.Close()
	}
}

// netAddrPort converts a UDP or TCP address (or anything printing as
// ip:port) to an unmapped netip.AddrPort.
func netAddrPort(a net.Addr) (netip.AddrPort, bool) {
	var ap netip.AddrPort
	switch v := a.(type) {
	case *net.UDPAddr:
		ap = v.AddrPort()
	case *net.TCPAddr:
		ap = v.AddrPort()
	default:
		if a == nil {
			return ap, false
		}
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return ap, false
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
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
	sender, ok := t.d.cfg.PeerName(ap.Addr())
	if !ok {
		return nil, fmt.Errorf("discovery: dial %s: no admitted peer holds the address", ap)
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
	return &replayConn{streamConn: sc, sender: sender, remote: ap}, nil
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
	peer    string // the member of an inbound stream (its slot)
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
			c.t.releaseSlot(c.peer)
		}
	})
	return err
}

// replayConn is a stream as memberlist sees it: the first message as the
// rules let it through (replay), then the rest of the stream. On an
// inbound stream the transport read the first message before handing the
// stream over; on one this node opened, the first Read reads the other
// side's answer under the rules.
type replayConn struct {
	*streamConn
	r io.Reader
	// sender and remote are set on streams this node opened, until the
	// first Read.
	sender string
	remote netip.AddrPort
}

// Read reads what memberlist may see of the stream (see replayConn).
func (c *replayConn) Read(p []byte) (int, error) {
	if c.r == nil {
		br := bufio.NewReader(c.streamConn)
		replay, consumed, err := c.t.d.readFirst(br, c.sender, c.remote, true)
		if err != nil || consumed {
			if err != nil {
				c.t.d.stats.filtered.Add(1)
				c.t.d.badLog.log(c.t.log, c.sender, "stream", err)
			}
			c.streamConn.Close()
			c.r = eofReader{}
		} else {
			c.r = io.MultiReader(bytes.NewReader(replay), br)
		}
	}
	return c.r.Read(p)
}

// eofReader is a stream whose first message was refused: at its end.
type eofReader struct{}

// Read returns io.EOF.
func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
