package stack

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// configure sets the interface's MTU, adds its addresses (each with its
// overlay prefix, so the kernel installs the connected route for the
// prefix through the device) and brings it up, all through rtnetlink: the
// host needs no iproute2.
func (k *kernel) configure(addrs []netip.Prefix, mtu int) error {
	link, err := netlink.LinkByName(k.name)
	if err != nil {
		return netlinkError(k.name, "look up the interface", err)
	}
	if err := netlink.LinkSetMTU(link, mtu); err != nil {
		return netlinkError(k.name, fmt.Sprintf("set MTU %d", mtu), err)
	}
	for _, p := range addrs {
		if err := netlink.AddrAdd(link, netlinkAddr(p)); err != nil {
			return netlinkError(k.name, "add address "+p.String(), err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return netlinkError(k.name, "set link up", err)
	}
	return nil
}

// netlinkAddr is the address p (host address and overlay prefix length)
// as netlink adds it: IPv6 without duplicate address detection (nobody
// else owns addresses on a point-to-point overlay link, and DAD would
// leave the address unusable for about a second), IPv4 without a
// broadcast address (as `ip addr add` does; a TUN link has no broadcast).
func netlinkAddr(p netip.Prefix) *netlink.Addr {
	ip := p.Addr()
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(p.Bits(), ip.BitLen())}}
	if ip.Is6() {
		a.Flags = unix.IFA_F_NODAD
	} else {
		a.Broadcast = net.IPv4zero // netlink leaves out a zero broadcast address
	}
	return a
}

// netlinkError is the error of a failed netlink request on interface
// name, explained when the kernel refused it for lack of privilege.
func netlinkError(name, op string, err error) error {
	err = fmt.Errorf("configure TUN %s: %s: %w", name, op, err)
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w (%s)", err, needsNetAdmin)
	}
	return err
}
