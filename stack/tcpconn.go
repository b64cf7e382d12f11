package stack

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TCPConn is a TCP connection of the userspace stack. Besides net.Conn it
// offers what *net.TCPConn offers a relay: CloseWrite (a FIN, reading goes
// on), SetLinger (0 makes Close send a RST) and errors that errors.Is
// recognises as the kernel's (syscall.ECONNRESET, ECONNREFUSED, ...), so
// code written for host sockets treats both alike.
type TCPConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
}

var _ interface {
	net.Conn
	CloseWrite() error
	CloseRead() error
	SetLinger(int) error
} = (*TCPConn)(nil)

// Read reads from the connection; a reset by the peer is syscall.ECONNRESET.
func (c *TCPConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	return n, errnoError(err)
}

// Write writes to the connection; writing after a reset is
// syscall.ECONNRESET, after CloseWrite syscall.EPIPE.
func (c *TCPConn) Write(b []byte) (int, error) {
	n, err := c.TCPConn.Write(b)
	return n, errnoError(err)
}

// SetLinger sets what Close does with unsent data, as for *net.TCPConn:
// sec < 0 (the default) sends it in the background, sec == 0 discards it
// and resets the connection (the peer reads ECONNRESET), sec > 0 lets the
// stack try for that many seconds.
func (c *TCPConn) SetLinger(sec int) error {
	opt := tcpip.LingerOption{}
	if sec >= 0 {
		opt = tcpip.LingerOption{Enabled: true, Timeout: time.Duration(sec) * time.Second}
	}
	c.ep.SocketOptions().SetLinger(opt)
	return nil
}

// errnos maps the texts of gVisor's errors (gonet turns them into plain
// errors) to the errno a kernel socket reports for the same event.
var errnos = map[string]syscall.Errno{
	(&tcpip.ErrConnectionReset{}).String():    syscall.ECONNRESET,
	(&tcpip.ErrConnectionAborted{}).String():  syscall.ECONNABORTED,
	(&tcpip.ErrConnectionRefused{}).String():  syscall.ECONNREFUSED,
	(&tcpip.ErrHostUnreachable{}).String():    syscall.EHOSTUNREACH,
	(&tcpip.ErrNetworkUnreachable{}).String(): syscall.ENETUNREACH,
	(&tcpip.ErrHostDown{}).String():           syscall.EHOSTDOWN,
	(&tcpip.ErrClosedForSend{}).String():      syscall.EPIPE,
	(&tcpip.ErrTimeout{}).String():            syscall.ETIMEDOUT,
	(&tcpip.ErrAborted{}).String():            syscall.ECONNABORTED,
}

// errnoError replaces the error inside a *net.OpError from gonet with the
// matching errno, so errors.Is(err, syscall.ECONNRESET) works as for a
// host socket. Other errors are returned as they are.
func errnoError(err error) error {
	var op *net.OpError
	if err == nil || !errors.As(err, &op) || op.Err == nil {
		return err
	}
	if errno, ok := errnos[op.Err.Error()]; ok {
		e := *op
		e.Err = os.NewSyscallError(op.Op, errno)
		return &e
	}
	return err
}

// dialTCPConn connects a new TCP endpoint of s to remote, as
// gonet.DialContextTCP does, but keeps the endpoint for TCPConn.
func dialTCPConn(ctx context.Context, s *netstackDev, remote tcpip.FullAddress, pn tcpip.NetworkProtocolNumber) (*TCPConn, error) {
	var wq waiter.Queue
	ep, terr := s.stack.NewEndpoint(tcp.ProtocolNumber, pn, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if err := ctx.Err(); err != nil {
		ep.Close()
		return nil, err
	}
	terr = ep.Connect(remote)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctx.Err()
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, errnoError(&net.OpError{Op: "connect", Net: "tcp", Addr: tcpAddr(remote), Err: errors.New(terr.String())})
	}
	return &TCPConn{TCPConn: gonet.NewTCPConn(&wq, ep), ep: ep}, nil
}

func tcpAddr(fa tcpip.FullAddress) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IP(fa.Addr.AsSlice()), Port: int(fa.Port)}
}

// tcpListener is a listening endpoint of the userspace stack whose Accept
// returns *TCPConn.
type tcpListener struct {
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	done chan struct{}
	once sync.Once
}

// listenBacklog is the accept queue length, Linux's default somaxconn.
const listenBacklog = 4096

func listenTCPConn(s *netstackDev, local tcpip.FullAddress, pn tcpip.NetworkProtocolNumber) (*tcpListener, error) {
	wq := new(waiter.Queue)
	ep, terr := s.stack.NewEndpoint(tcp.ProtocolNumber, pn, wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	if terr := ep.Bind(local); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "bind", Net: "tcp", Addr: tcpAddr(local), Err: errors.New(terr.String())}
	}
	if terr := ep.Listen(listenBacklog); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: tcpAddr(local), Err: errors.New(terr.String())}
	}
	return &tcpListener{ep: ep, wq: wq, done: make(chan struct{})}, nil
}

// Accept waits for the next connection; after Close it fails with
// net.ErrClosed.
func (l *tcpListener) Accept() (net.Conn, error) {
	entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	l.wq.EventRegister(&entry)
	defer l.wq.EventUnregister(&entry)
	for {
		select {
		case <-l.done:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
		default:
		}
		ep, wq, terr := l.ep.Accept(nil)
		if terr == nil {
			return &TCPConn{TCPConn: gonet.NewTCPConn(wq, ep), ep: ep}, nil
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: errors.New(terr.String())}
		}
		select {
		case <-notify:
		case <-l.done:
		}
	}
}

// Close stops listening; a blocked Accept returns.
func (l *tcpListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.ep.Close()
	})
	return nil
}

// Addr is the listening address.
func (l *tcpListener) Addr() net.Addr {
	a, err := l.ep.GetLocalAddress()
	if err != nil {
		return &net.TCPAddr{}
	}
	return tcpAddr(a)
}
