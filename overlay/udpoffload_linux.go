package overlay

import (
	"net"

	"golang.org/x/sys/unix"
)

// probeUDPOffload reports whether the kernel offers UDP segmentation
// offload (GSO: one send of many datagrams) and receive coalescing (GRO)
// on a socket like the underlay's, as wireguard-go tests them before it
// uses them. wireguard-go turns GSO off for the rest of the run if a send
// with it fails (some NICs); that is not visible from here.
func probeUDPOffload() (gso, gro bool) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return false, false
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return false, false
	}
	rc.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		gso = err == nil
		if unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil {
			on, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO)
			gro = err == nil && on == 1
		}
	})
	return gso, gro
}
