package stack

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"golang.org/x/net/icmp"
	"golang.zx2c4.com/wireguard/tun"
)

// kernel is the host-stack backend over a real TUN device.
type kernel struct {
	name string
	log  *slog.Logger
}

// newKernel creates the TUN device and configures it through netlink (no
// ip command needed): addresses (each with its overlay prefix, so the
// kernel installs the connected route for the prefix through the device),
// MTU and link up.
// The interface disappears when the device is closed.
func newKernel(name string, addrs []netip.Prefix, mtu int, log *slog.Logger) (tun.Device, backend, error) {
	if runtime.GOOS != "linux" {
		return nil, nil, fmt.Errorf("kernel mode on %s: %w", runtime.GOOS, errors.ErrUnsupported)
	}
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, nil, explainTUNError(fmt.Errorf("create TUN %q: %w", name, err))
	}
	ifname, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, nil, fmt.Errorf("TUN %q name: %w", name, err)
	}
	k := &kernel{name: ifname, log: log}
	if err := k.configure(addrs, mtu); err != nil {
		dev.Close()
		return nil, nil, err
	}
	log.Debug("TUN configured", "interface", ifname, "addresses", addrs, "mtu", mtu)
	return dev, k, nil
}

// needsNetAdmin says what kernel mode needs from the host.
const needsNetAdmin = "kernel mode needs CAP_NET_ADMIN and read-write access to /dev/net/tun: " +
	"run as root, or give the binary the capability (setcap cap_net_admin+ep, or " +
	"AmbientCapabilities=CAP_NET_ADMIN in a systemd unit); userspace mode needs neither"

// explainTUNError adds what kernel mode needs to an error that says the
// process may not create or configure a TUN device (EPERM, EACCES), or
// that the host has no /dev/net/tun. Other errors are returned as they are.
func explainTUNError(err error) error {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w (%s)", err, needsNetAdmin)
	case errors.Is(err, fs.ErrNotExist) || strings.Contains(err.Error(), "/dev/net/tun does not exist"):
		return fmt.Errorf("%w (kernel mode needs the TUN device /dev/net/tun: load the tun module, "+
			"or pass the device into the container; userspace mode needs neither)", err)
	}
	return err
}

func (k *kernel) dialTCP(ctx context.Context, network string, local netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))}
	return d.DialContext(ctx, network, remote.String())
}

func (k *kernel) dialUDP(ctx context.Context, network string, local netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0))}
	return d.DialContext(ctx, network, remote.String())
}

func (k *kernel) listenTCP(local netip.AddrPort) (net.Listener, error) {
	return net.ListenTCP(tcpNet(local.Addr()), net.TCPAddrFromAddrPort(local))
}

func (k *kernel) listenUDP(local netip.AddrPort) (net.PacketConn, error) {
	return net.ListenUDP(udpNet(local.Addr()), net.UDPAddrFromAddrPort(local))
}

// ping uses a raw ICMP socket (root) and falls back to an unprivileged ping
// socket (net.ipv4.ping_group_range) when raw sockets are not permitted.
func (k *kernel) ping(ctx context.Context, local, remote netip.Addr, payload []byte) (time.Duration, error) {
	rawNet, dgramNet := "ip4:icmp", "udp4"
	if remote.Is6() {
		rawNet, dgramNet = "ip6:ipv6-icmp", "udp6"
	}
	var dst net.Addr = &net.IPAddr{IP: remote.AsSlice()}
	raw := true
	c, err := icmp.ListenPacket(rawNet, local.String())
	if err != nil {
		var errDgram error
		c, errDgram = icmp.ListenPacket(dgramNet, local.String())
		if errDgram != nil {
			return 0, fmt.Errorf("open ICMP socket: %w", errors.Join(err, errDgram))
		}
		dst, raw = &net.UDPAddr{IP: remote.AsSlice()}, false
	}
	defer c.Close()
	return roundTrip(ctx, c, dst, remote.Is6(), payload, raw)
}

func (k *kernel) close() error { return nil }

func tcpNet(a netip.Addr) string {
	if a.Is4() {
		return "tcp4"
	}
	return "tcp6"
}

func udpNet(a netip.Addr) string {
	if a.Is4() {
		return "udp4"
	}
	return "udp6"
}
