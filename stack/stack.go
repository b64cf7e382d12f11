package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// Mode selects the network stack behind the virtual interface.
type Mode uint8

const (
	// Userspace runs gVisor's netstack in-process, on a channel link
	// endpoint owned by this package. No privileges needed; only this
	// process can use the overlay, through
	// Stack.DialContext/ListenTCP/ListenUDP/Ping.
	Userspace Mode = iota
	// Kernel creates a real TUN device; every process on the host can use
	// the overlay addresses. Needs CAP_NET_ADMIN and /dev/net/tun.
	Kernel
)

// String returns "userspace" or "kernel".
func (m Mode) String() string {
	switch m {
	case Userspace:
		return "userspace"
	case Kernel:
		return "kernel"
	default:
		return fmt.Sprintf("mode(%d)", uint8(m))
	}
}

// MTU limits and defaults.
const (
	// DefaultMTU is the overlay MTU used when Config.MTU is 0. 1280 is the
	// IPv6 minimum link MTU, so it is valid for IPv6 overlays, and once
	// WireGuard's 60 (IPv4) / 80 (IPv6) bytes of outer headers are added the
	// encrypted packets stay ≤ 1360 bytes: they fit through clouds with
	// 1460/1500 MTUs, PPPoE, and nested tunnels (VPN-in-VPN) without
	// fragmentation. Tailscale and NetBird made the same choice.
	DefaultMTU = 1280
	// MinMTU is the smallest accepted MTU: 576 is the minimum datagram size
	// every IPv4 host must accept (RFC 791).
	MinMTU = 576
	// MinMTUIPv6 is the minimum MTU when any overlay address is IPv6: IPv6
	// links must carry 1280-byte packets (RFC 8200).
	MinMTUIPv6 = 1280
	// MaxMTU is the largest accepted MTU: jumbo frames. Anything larger
	// cannot cross a real network after WireGuard encapsulation.
	MaxMTU = 9000
	// DefaultTUNName is the kernel interface name when Config.TUNName is "".
	DefaultTUNName = "gridnet0"
)

// Errors returned by the package, to be tested with errors.Is.
var (
	// ErrInvalidConfig reports a rejected Config.
	ErrInvalidConfig = errors.New("stack: invalid config")
	// ErrNotOverlay reports a destination outside the overlay prefixes: the
	// overlay stack never carries traffic to other networks.
	ErrNotOverlay = errors.New("stack: destination is not an overlay address")
	// ErrClosed reports use of a closed Stack.
	ErrClosed = errors.New("stack: closed")
)

// Config configures a Stack.
type Config struct {
	// Mode selects the userspace (gVisor) or kernel (TUN) stack.
	Mode Mode
	// Addresses are the node's overlay addresses, each with the overlay
	// prefix length, e.g. 100.64.0.2/10 and optionally an IPv6 one. At least
	// one is required, at most one per address family.
	Addresses []netip.Prefix
	// MTU of the virtual interface; 0 means DefaultMTU. Valid range is
	// MinMTU..MaxMTU, and at least MinMTUIPv6 with an IPv6 address.
	MTU int
	// TUNName is the kernel interface name (Kernel mode); "" means
	// DefaultTUNName.
	TUNName string
	// Logger receives lifecycle logs; nil means slog.Default().
	Logger *slog.Logger
	// NoOffload turns off TCP segmentation offload and receive coalescing
	// inside the userspace device (see the package documentation); it is
	// there for comparison and troubleshooting. Kernel mode ignores it.
	NoOffload bool
	// Tuning overrides the userspace stack's measured defaults (see
	// Tuning); the zero value keeps them. Kernel mode ignores it.
	Tuning Tuning
}

// backend is what a mode provides beyond the raw tun.Device.
type backend interface {
	dialTCP(ctx context.Context, network string, local netip.Addr, remote netip.AddrPort) (net.Conn, error)
	dialUDP(ctx context.Context, network string, local netip.Addr, remote netip.AddrPort) (net.Conn, error)
	listenTCP(local netip.AddrPort) (net.Listener, error)
	listenUDP(local netip.AddrPort) (net.PacketConn, error)
	ping(ctx context.Context, local, remote netip.Addr, payload []byte) (time.Duration, error)
	// close releases everything but the tun.Device (closed by the Stack).
	close() error
}

// Stack is the node's virtual network interface: a hooked tun.Device for
// wireguard-go plus the network stack applications use to reach the overlay.
// All methods are safe for concurrent use.
type Stack struct {
	cfg   Config
	mtu   int
	log   *slog.Logger
	dev   *hookedDevice
	be    backend
	close sync.Once
	done  chan struct{}
	err   error
}

// New validates cfg and creates the stack and its device.
func New(cfg Config) (*Stack, error) {
	mtu, err := validate(&cfg)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "stack", "mode", cfg.Mode.String())
	s := &Stack{cfg: cfg, mtu: mtu, log: log, done: make(chan struct{})}
	var inner tun.Device
	switch cfg.Mode {
	case Userspace:
		inner, s.be, err = newUserspace(cfg.Addresses, mtu, !cfg.NoOffload, cfg.Tuning)
	case Kernel:
		inner, s.be, err = newKernel(cfg.TUNName, cfg.Addresses, mtu, log)
	}
	if err != nil {
		return nil, err
	}
	s.dev = newHookedDevice(inner)
	log.Info("stack up", "addresses", cfg.Addresses, "mtu", mtu)
	return s, nil
}

func validate(cfg *Config) (int, error) {
	if cfg.Mode != Userspace && cfg.Mode != Kernel {
		return 0, fmt.Errorf("%w: unknown mode %d", ErrInvalidConfig, cfg.Mode)
	}
	if len(cfg.Addresses) == 0 {
		return 0, fmt.Errorf("%w: no overlay address", ErrInvalidConfig)
	}
	var has4, has6 bool
	for _, p := range cfg.Addresses {
		a := p.Addr()
		switch {
		case !p.IsValid():
			return 0, fmt.Errorf("%w: invalid address prefix %v", ErrInvalidConfig, p)
		case a.Zone() != "" || a.Is4In6():
			return 0, fmt.Errorf("%w: address %v must be plain IPv4 or IPv6", ErrInvalidConfig, p)
		case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback():
			return 0, fmt.Errorf("%w: address %v is not a unicast host address", ErrInvalidConfig, p)
		case a.Is4() && has4, a.Is6() && has6:
			return 0, fmt.Errorf("%w: more than one address of the family of %v", ErrInvalidConfig, p)
		}
		has4 = has4 || a.Is4()
		has6 = has6 || a.Is6()
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if mtu < MinMTU || mtu > MaxMTU {
		return 0, fmt.Errorf("%w: MTU %d outside %d..%d", ErrInvalidConfig, mtu, MinMTU, MaxMTU)
	}
	if has6 && mtu < MinMTUIPv6 {
		return 0, fmt.Errorf("%w: MTU %d below %d required with an IPv6 address", ErrInvalidConfig, mtu, MinMTUIPv6)
	}
	if cfg.TUNName == "" {
		cfg.TUNName = DefaultTUNName
	}
	cfg.Addresses = slices.Clone(cfg.Addresses)
	return mtu, nil
}

// Device returns the hooked tun.Device to hand to wireguard-go's
// device.NewDevice. Closing it closes the underlying device but not the
// rest of the Stack; use Stack.Close.
func (s *Stack) Device() tun.Device { return s.dev }

// SegmentationOffload reports whether packets cross between the stack and
// WireGuard as large TCP segments, split and merged at the boundary: in
// userspace mode, the netstack's segmentation offload (off with
// Config.NoOffload); in kernel mode, the TUN's virtio-net header, through
// which the kernel hands over TCP segments of up to 64 KiB and takes merged
// ones (wireguard-go turns it on where the kernel offers it; then it reads
// and writes batches).
func (s *Stack) SegmentationOffload() bool {
	if s.cfg.Mode == Userspace {
		return !s.cfg.NoOffload
	}
	return s.dev.BatchSize() > 1
}

// SetHooks atomically replaces the packet hooks; batches already in flight
// finish with the previous hooks.
func (s *Stack) SetHooks(h Hooks) {
	s.dev.setHooks(h)
	s.log.Debug("hooks replaced", "inbound", h.Inbound != nil, "outbound", h.Outbound != nil)
}

// Counters returns a snapshot of the per-direction packet counters.
func (s *Stack) Counters() Counters { return s.dev.counters() }

// MTU returns the interface MTU.
func (s *Stack) MTU() int { return s.mtu }

// Mode returns the stack's mode.
func (s *Stack) Mode() Mode { return s.cfg.Mode }

// Addresses returns a copy of the node's overlay addresses with their prefix.
func (s *Stack) Addresses() []netip.Prefix { return slices.Clone(s.cfg.Addresses) }

// Close shuts the stack down: listeners and connections of the userspace
// stack fail, the kernel interface is removed. It is idempotent.
func (s *Stack) Close() error {
	s.close.Do(func() {
		close(s.done)
		errBe := s.be.close()
		errDev := s.dev.Close()
		if err := errors.Join(errBe, errDev); err != nil {
			s.err = fmt.Errorf("stack close: %w", err)
		}
		s.log.Info("stack down")
	})
	return s.err
}

func (s *Stack) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// localFor returns the node address of remote's family, and checks that
// remote is inside an overlay prefix.
func (s *Stack) localFor(remote netip.Addr) (netip.Addr, error) {
	remote = remote.Unmap()
	for _, p := range s.cfg.Addresses {
		if p.Contains(remote) {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: %v not in %v", ErrNotOverlay, remote, s.cfg.Addresses)
}

// DialContext connects to an overlay address. network is "tcp", "tcp4",
// "tcp6", "udp", "udp4" or "udp6"; address is a numeric "ip:port" (no name
// resolution: the overlay has no DNS here) inside an overlay prefix.
func (s *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if s.closed() {
		return nil, fmt.Errorf("dial %s %s: %w", network, address, ErrClosed)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: need numeric ip:port: %w", network, address, err)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	base, fam := strings.CutSuffix(network, "4")
	if !fam {
		base, fam = strings.CutSuffix(network, "6")
		if fam && !ap.Addr().Is6() {
			return nil, fmt.Errorf("dial %s %s: address family mismatch", network, address)
		}
	} else if !ap.Addr().Is4() {
		return nil, fmt.Errorf("dial %s %s: address family mismatch", network, address)
	}
	local, err := s.localFor(ap.Addr())
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, address, err)
	}
	var c net.Conn
	switch base {
	case "tcp":
		c, err = s.be.dialTCP(ctx, network, local, ap)
	case "udp":
		c, err = s.be.dialUDP(ctx, network, local, ap)
	default:
		return nil, fmt.Errorf("dial %s %s: unsupported network", network, address)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, address, err)
	}
	return c, nil
}

// ListenTCP listens for TCP connections on port of every overlay address
// (port 0 picks one port, the same on every address).
func (s *Stack) ListenTCP(port uint16) (net.Listener, error) { return s.ListenTCPOn(nil, port) }

// ListenTCPOn listens for TCP connections on port of the given overlay
// addresses, each one of the interface's own; none means every one. Port 0
// picks a free port on the first address and uses it on the others.
func (s *Stack) ListenTCPOn(addrs []netip.Addr, port uint16) (net.Listener, error) {
	if s.closed() {
		return nil, fmt.Errorf("listen tcp :%d: %w", port, ErrClosed)
	}
	addrs, err := s.ownAddrs(addrs)
	if err != nil {
		return nil, fmt.Errorf("listen tcp: %w", err)
	}
	ls := make([]net.Listener, 0, len(addrs))
	for _, a := range addrs {
		l, err := s.be.listenTCP(netip.AddrPortFrom(a, port))
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, fmt.Errorf("listen tcp %v: %w", netip.AddrPortFrom(a, port), err)
		}
		ls = append(ls, l)
		if port == 0 {
			port = boundPort(l.Addr())
		}
	}
	if len(ls) == 1 {
		return ls[0], nil
	}
	return newMultiListener(ls), nil
}

// ListenUDP opens a UDP socket on port of every overlay address (port 0
// picks one port, the same on every address). With two addresses, replies
// are sent from the address of the destination's family.
func (s *Stack) ListenUDP(port uint16) (net.PacketConn, error) { return s.ListenUDPOn(nil, port) }

// ListenUDPOn opens a UDP socket on port of the given overlay addresses,
// each one of the interface's own; none means every one. Port 0 picks a
// free port on the first address and uses it on the others.
func (s *Stack) ListenUDPOn(addrs []netip.Addr, port uint16) (net.PacketConn, error) {
	if s.closed() {
		return nil, fmt.Errorf("listen udp :%d: %w", port, ErrClosed)
	}
	addrs, err := s.ownAddrs(addrs)
	if err != nil {
		return nil, fmt.Errorf("listen udp: %w", err)
	}
	cs := make([]net.PacketConn, 0, len(addrs))
	for _, a := range addrs {
		c, err := s.be.listenUDP(netip.AddrPortFrom(a, port))
		if err != nil {
			for _, c := range cs {
				c.Close()
			}
			return nil, fmt.Errorf("listen udp %v: %w", netip.AddrPortFrom(a, port), err)
		}
		cs = append(cs, c)
		if port == 0 {
			port = boundPort(c.LocalAddr())
		}
	}
	if len(cs) == 1 {
		return cs[0], nil
	}
	return newMultiPacketConn(cs), nil
}

// ownAddrs checks that every address in addrs is one of the interface's;
// none means all of them.
func (s *Stack) ownAddrs(addrs []netip.Addr) ([]netip.Addr, error) {
	if len(addrs) == 0 {
		out := make([]netip.Addr, 0, len(s.cfg.Addresses))
		for _, p := range s.cfg.Addresses {
			out = append(out, p.Addr())
		}
		return out, nil
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		a = a.Unmap()
		if !slices.ContainsFunc(s.cfg.Addresses, func(p netip.Prefix) bool { return p.Addr() == a }) {
			return nil, fmt.Errorf("%w: %v is not an address of this interface (%v)", ErrNotOverlay, a, s.cfg.Addresses)
		}
		out = append(out, a)
	}
	return out, nil
}

// boundPort is the port of a bound socket's address (0 if it has none).
func boundPort(a net.Addr) uint16 {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return 0
	}
	return ap.Port()
}

// maxPingPayload is the largest echo payload that fits the MTU: the IP
// header (IPv4 20, IPv6 40 bytes) and the 8-byte ICMP echo header.
func (s *Stack) maxPingPayload(dst netip.Addr) int {
	if dst.Is4() {
		return s.mtu - ipv4MinHeaderLen - icmpEchoHeaderLen
	}
	return s.mtu - ipv6HeaderLen - icmpEchoHeaderLen
}

// Ping sends one ICMP echo request of payloadSize bytes to dst over the
// overlay and returns the round-trip time of the matching reply. It fails
// when ctx ends first.
func (s *Stack) Ping(ctx context.Context, dst netip.Addr, payloadSize int) (time.Duration, error) {
	if s.closed() {
		return 0, fmt.Errorf("ping %v: %w", dst, ErrClosed)
	}
	dst = dst.Unmap()
	local, err := s.localFor(dst)
	if err != nil {
		return 0, fmt.Errorf("ping %v: %w", dst, err)
	}
	if payloadSize < 0 || payloadSize > s.maxPingPayload(dst) {
		return 0, fmt.Errorf("ping %v: payload size %d outside 0..%d", dst, payloadSize, s.maxPingPayload(dst))
	}
	payload := make([]byte, payloadSize)
	for i := range payload {
		payload[i] = byte(i)
	}
	rtt, err := s.be.ping(ctx, local, dst, payload)
	if err != nil {
		return 0, fmt.Errorf("ping %v: %w", dst, err)
	}
	return rtt, nil
}
