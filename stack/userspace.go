package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// userspace is the gVisor netstack backend. It owns the gVisor stack through
// its device (netstackDev); sockets are gVisor endpoints wrapped by gonet.
type userspace struct {
	dev *netstackDev
}

// newUserspace creates the gVisor stack and its device. It assigns the node
// addresses (as /32 and /128: the stack routes everything else to its single
// NIC through default routes, which is what an overlay with one interface
// needs); gVisor derives the TCP MSS from mtu. offload turns segmentation
// offload and coalescing on (netstackDev); tuning overrides defaults.
func newUserspace(addrs []netip.Prefix, mtu int, offload bool, tuning Tuning) (tun.Device, backend, error) {
	local := make([]netip.Addr, len(addrs))
	for i, p := range addrs {
		local[i] = p.Addr()
	}
	dev, err := newNetstackDev(local, mtu, offload, tuning)
	if err != nil {
		return nil, nil, fmt.Errorf("create netstack: %w", err)
	}
	return dev, &userspace{dev: dev}, nil
}

// fullAddr converts ap to gVisor's address on the stack's NIC and returns
// the network protocol of its family.
func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	pn := ipv4.ProtocolNumber
	if ap.Addr().Is6() {
		pn = ipv6.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: netstackNIC, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}, pn
}

func (u *userspace) dialTCP(ctx context.Context, _ string, _ netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	fa, pn := fullAddr(remote)
	c, err := dialTCPConn(ctx, u.dev, fa, pn)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (u *userspace) dialUDP(_ context.Context, _ string, local netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	la, pn := fullAddr(netip.AddrPortFrom(local, 0))
	ra, _ := fullAddr(remote)
	c, err := gonet.DialUDP(u.dev.stack, &la, &ra, pn)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (u *userspace) listenTCP(local netip.AddrPort) (net.Listener, error) {
	fa, pn := fullAddr(local)
	l, err := listenTCPConn(u.dev, fa, pn)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (u *userspace) listenUDP(local netip.AddrPort) (net.PacketConn, error) {
	fa, pn := fullAddr(local)
	c, err := gonet.DialUDP(u.dev.stack, &fa, nil, pn)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (u *userspace) ping(ctx context.Context, local, remote netip.Addr, payload []byte) (time.Duration, error) {
	pc, err := u.dialPing(local, remote)
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	// gVisor's ping endpoint replaces the identifier with its own port.
	return roundTrip(ctx, pc, &net.IPAddr{IP: remote.AsSlice()}, remote.Is6(), payload, false)
}

// close releases nothing: the gVisor stack belongs to the device, which the
// Stack closes.
func (u *userspace) close() error { return nil }

// netstackPing is an ICMP echo ("ping") socket on the gVisor stack: the
// requests written are sent as ICMP messages with the socket's port as echo
// identifier, and echo replies to that identifier are read back.
type netstackPing struct {
	wq waiter.Queue
	ep tcpip.Endpoint
	v6 bool

	mu       sync.Mutex
	deadline time.Time     // read deadline, zero for none
	wake     chan struct{} // closed (and replaced) when deadline changes

	closeOnce sync.Once
	done      chan struct{} // closed by Close
}

var _ pingConn = (*netstackPing)(nil)

// dialPing opens a ping socket bound to local and connected to remote.
func (u *userspace) dialPing(local, remote netip.Addr) (*netstackPing, error) {
	tn, pn := icmp.ProtocolNumber4, ipv4.ProtocolNumber
	if remote.Is6() {
		tn, pn = icmp.ProtocolNumber6, ipv6.ProtocolNumber
	}
	p := &netstackPing{v6: remote.Is6(), wake: make(chan struct{}), done: make(chan struct{})}
	ep, terr := u.dev.stack.NewEndpoint(tn, pn, &p.wq)
	if terr != nil {
		return nil, fmt.Errorf("ping socket: %v", terr)
	}
	p.ep = ep
	la, _ := fullAddr(netip.AddrPortFrom(local, 0))
	if terr := ep.Bind(la); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("ping socket: bind %v: %v", local, terr)
	}
	ra, _ := fullAddr(netip.AddrPortFrom(remote, 0))
	if terr := ep.Connect(ra); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("ping socket: connect %v: %v", remote, terr)
	}
	return p, nil
}

// WriteTo sends the ICMP message b (type, code, checksum, identifier, ...;
// gVisor fills in identifier and checksum) to addr, a *net.IPAddr of the
// socket's family. It does not block.
func (p *netstackPing) WriteTo(b []byte, addr net.Addr) (int, error) {
	ipa, ok := addr.(*net.IPAddr)
	if !ok {
		return 0, fmt.Errorf("ping write: unsupported address %T", addr)
	}
	dst, ok := netip.AddrFromSlice(ipa.IP)
	if !ok {
		return 0, fmt.Errorf("ping write: invalid address %v", ipa)
	}
	dst = dst.Unmap()
	if dst.Is6() != p.v6 {
		return 0, errors.New("ping write: address family mismatch")
	}
	to, _ := fullAddr(netip.AddrPortFrom(dst, 0))
	n, terr := p.ep.Write(bytes.NewReader(b), tcpip.WriteOptions{To: &to})
	if terr != nil {
		return int(n), fmt.Errorf("ping write: %v", terr)
	}
	return int(n), nil
}

// ReadFrom reads one ICMP message (echo replies to the socket's identifier)
// into b. Unlike a read that waits for a wake-up before looking, it first
// tries to read, so a reply that arrived before the call is not missed. It
// fails with os.ErrDeadlineExceeded after the read deadline and with
// net.ErrClosed after Close.
func (p *netstackPing) ReadFrom(b []byte) (int, net.Addr, error) {
	entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventErr | waiter.EventHUp)
	p.wq.EventRegister(&entry)
	defer p.wq.EventUnregister(&entry)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-p.done:
			return 0, nil, net.ErrClosed
		default:
		}
		w := tcpip.SliceWriter(b)
		res, terr := p.ep.Read(&w, tcpip.ReadOptions{NeedRemoteAddr: true})
		if terr == nil {
			from, _ := netip.AddrFromSlice(res.RemoteAddr.Addr.AsSlice())
			return res.Count, &net.IPAddr{IP: from.AsSlice()}, nil
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			return 0, nil, fmt.Errorf("ping read: %v", terr)
		}
		p.mu.Lock()
		deadline, wake := p.deadline, p.wake
		p.mu.Unlock()
		var expired <-chan time.Time
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			expired = timer.C
		}
		select {
		case <-notify:
		case <-wake: // deadline changed: look again
		case <-expired:
		case <-p.done:
		}
	}
}

// SetReadDeadline sets the deadline of current and future ReadFrom calls; a
// zero t means none.
func (p *netstackPing) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	p.deadline = t
	close(p.wake)
	p.wake = make(chan struct{})
	p.mu.Unlock()
	return nil
}

// Close closes the socket; blocked and later ReadFrom calls fail.
func (p *netstackPing) Close() error {
	p.closeOnce.Do(func() {
		close(p.done)
		p.ep.Close()
	})
	return nil
}
