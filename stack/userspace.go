package stack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// userspace is the gVisor netstack backend.
type userspace struct {
	net *netstack.Net
}

// newUserspace creates wireguard-go's netstack TUN. It assigns the node
// addresses (as /32 and /128: netstack routes everything else to its single
// NIC through default routes, which is what an overlay with one interface
// needs) and derives TCP MSS from mtu.
func newUserspace(addrs []netip.Prefix, mtu int) (tun.Device, backend, error) {
	local := make([]netip.Addr, len(addrs))
	for i, p := range addrs {
		local[i] = p.Addr()
	}
	dev, tnet, err := netstack.CreateNetTUN(local, nil, mtu)
	if err != nil {
		return nil, nil, fmt.Errorf("create netstack: %w", err)
	}
	return dev, &userspace{net: tnet}, nil
}

func (u *userspace) dialTCP(ctx context.Context, _ string, _ netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	c, err := u.net.DialContextTCPAddrPort(ctx, remote)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (u *userspace) dialUDP(_ context.Context, _ string, local netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	c, err := u.net.DialUDPAddrPort(netip.AddrPortFrom(local, 0), remote)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (u *userspace) listenTCP(local netip.AddrPort) (net.Listener, error) {
	l, err := u.net.ListenTCPAddrPort(local)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (u *userspace) listenUDP(local netip.AddrPort) (net.PacketConn, error) {
	c, err := u.net.ListenUDPAddrPort(local)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (u *userspace) ping(ctx context.Context, local, remote netip.Addr, payload []byte) (time.Duration, error) {
	pc, err := u.net.DialPingAddr(local, remote)
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	// gVisor's ping endpoint replaces the identifier with its own port.
	return roundTrip(ctx, pc, netstack.PingAddrFromAddr(remote), remote.Is6(), payload, false)
}

func (u *userspace) close() error { return nil }

// drainTimeout bounds how long Close keeps draining the netstack device.
const drainTimeout = 5 * time.Second

// drain keeps reading (and discarding) outbound packets from the netstack
// device until it is closed. wireguard-go's netstack hands each outbound
// packet over an unbuffered channel: without a reader (WireGuard already
// stopped, or never started) a netstack goroutine blocks there while holding
// endpoint locks, and closing the stack would deadlock. The goroutine ends
// when the device's Read reports an error (os.ErrClosed once closed); the
// deadline only guards against a device that keeps producing packets.
func (u *userspace) drain(dev tun.Device) {
	go func() {
		deadline := time.Now().Add(drainTimeout)
		bufs := [][]byte{make([]byte, MaxMTU)}
		sizes := []int{0}
		for time.Now().Before(deadline) {
			if _, err := dev.Read(bufs, sizes, 0); err != nil {
				return // os.ErrClosed once the device is closed
			}
		}
	}()
}
