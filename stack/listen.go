package stack

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// acceptResult is one Accept outcome of a member listener.
type acceptResult struct {
	c   net.Conn
	err error
}

// multiListener merges listeners on several overlay addresses (IPv4 and
// IPv6) into one net.Listener.
type multiListener struct {
	ls      []net.Listener
	results chan acceptResult
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

func newMultiListener(ls []net.Listener) *multiListener {
	m := &multiListener{ls: ls, results: make(chan acceptResult), done: make(chan struct{})}
	for _, l := range ls {
		m.wg.Add(1)
		go m.acceptLoop(l)
	}
	return m
}

func (m *multiListener) acceptLoop(l net.Listener) {
	defer m.wg.Done()
	for {
		c, err := l.Accept()
		select {
		case m.results <- acceptResult{c, err}:
		case <-m.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil {
			return
		}
	}
}

// Accept returns the next connection from any member listener.
func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case r := <-m.results:
		return r.c, r.err
	case <-m.done:
		return nil, net.ErrClosed
	}
}

// Close closes all member listeners and waits for their accept loops.
func (m *multiListener) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		for _, l := range m.ls {
			err = errors.Join(err, l.Close())
		}
		m.wg.Wait()
	})
	return err
}

// Addr returns the address of the first member listener.
func (m *multiListener) Addr() net.Addr { return m.ls[0].Addr() }

// packetResult is one datagram received by a member PacketConn.
type packetResult struct {
	b    []byte
	addr net.Addr
	err  error
}

// multiPacketConn merges UDP sockets on several overlay addresses. Reads
// come from any member; writes go out of the member of the destination's
// address family.
type multiPacketConn struct {
	cs      []net.PacketConn
	results chan packetResult
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	mu       sync.Mutex
	deadline *time.Timer
	expired  chan struct{}
}

// udpReadBuf is large enough for any datagram within MaxMTU.
const udpReadBuf = MaxMTU

func newMultiPacketConn(cs []net.PacketConn) *multiPacketConn {
	m := &multiPacketConn{cs: cs, results: make(chan packetResult), done: make(chan struct{}), expired: make(chan struct{})}
	for _, c := range cs {
		m.wg.Add(1)
		go m.readLoop(c)
	}
	return m
}

func (m *multiPacketConn) readLoop(c net.PacketConn) {
	defer m.wg.Done()
	for {
		buf := make([]byte, udpReadBuf)
		n, addr, err := c.ReadFrom(buf)
		select {
		case m.results <- packetResult{buf[:n], addr, err}:
		case <-m.done:
			return
		}
		if err != nil {
			return
		}
	}
}

// ReadFrom returns the next datagram received on any member socket.
func (m *multiPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	m.mu.Lock()
	expired := m.expired
	m.mu.Unlock()
	select {
	case r := <-m.results:
		return copy(p, r.b), r.addr, r.err
	case <-m.done:
		return 0, nil, net.ErrClosed
	case <-expired:
		return 0, nil, os.ErrDeadlineExceeded
	}
}

// WriteTo sends p from the member socket of addr's family.
func (m *multiPacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: errors.New("not a *net.UDPAddr")}
	}
	dst := ua.AddrPort().Addr().Unmap()
	for _, c := range m.cs {
		if la, ok := c.LocalAddr().(*net.UDPAddr); ok && la.AddrPort().Addr().Unmap().Is4() == dst.Is4() {
			return c.WriteTo(p, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, ua.AddrPort().Port())))
		}
	}
	return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: ErrNotOverlay}
}

// Close closes all member sockets and waits for their read loops.
func (m *multiPacketConn) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		for _, c := range m.cs {
			err = errors.Join(err, c.Close())
		}
		m.wg.Wait()
		m.mu.Lock()
		if m.deadline != nil {
			m.deadline.Stop()
		}
		m.mu.Unlock()
	})
	return err
}

// LocalAddr returns the address of the first member socket.
func (m *multiPacketConn) LocalAddr() net.Addr { return m.cs[0].LocalAddr() }

// SetDeadline sets the read and write deadlines.
func (m *multiPacketConn) SetDeadline(t time.Time) error {
	if err := m.SetReadDeadline(t); err != nil {
		return err
	}
	return m.SetWriteDeadline(t)
}

// SetReadDeadline makes ReadFrom fail with a timeout after t; zero clears it.
func (m *multiPacketConn) SetReadDeadline(t time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.deadline != nil {
		m.deadline.Stop()
		m.deadline = nil
	}
	expired := make(chan struct{})
	m.expired = expired
	if !t.IsZero() {
		m.deadline = time.AfterFunc(time.Until(t), func() { close(expired) })
	}
	return nil
}

// SetWriteDeadline sets the write deadline of every member socket.
func (m *multiPacketConn) SetWriteDeadline(t time.Time) error {
	var err error
	for _, c := range m.cs {
		err = errors.Join(err, c.SetWriteDeadline(t))
	}
	return err
}
