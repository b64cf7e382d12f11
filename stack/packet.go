package stack

import (
	"encoding/binary"
	"net/netip"
)

// IP header layout constants used by the allocation-free parsers below.
const (
	// ipv4MinHeaderLen is the size of an IPv4 header without options.
	ipv4MinHeaderLen = 20
	// ipv6HeaderLen is the size of the fixed IPv6 header.
	ipv6HeaderLen = 40

	ipv4TotalLenOff = 2
	ipv4SrcOff      = 12
	ipv4DstOff      = 16
	ipv6PayloadOff  = 4
	ipv6SrcOff      = 8
	ipv6DstOff      = 24
)

// ipVersion returns the IP version nibble of pkt, or 0 if pkt is empty.
func ipVersion(pkt []byte) uint8 {
	if len(pkt) == 0 {
		return 0
	}
	return pkt[0] >> 4
}

// wellFormed reports whether pkt starts with a plausible IPv4 or IPv6 header
// whose declared length fits in pkt. It is the gate the hook layer applies
// before any Filter sees a packet, so filters may index the fixed header
// without bounds worries.
func wellFormed(pkt []byte) bool {
	switch ipVersion(pkt) {
	case 4:
		if len(pkt) < ipv4MinHeaderLen {
			return false
		}
		ihl := int(pkt[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(pkt[ipv4TotalLenOff:]))
		return ihl >= ipv4MinHeaderLen && ihl <= total && total <= len(pkt)
	case 6:
		if len(pkt) < ipv6HeaderLen {
			return false
		}
		payload := int(binary.BigEndian.Uint16(pkt[ipv6PayloadOff:]))
		return ipv6HeaderLen+payload <= len(pkt)
	default:
		return false
	}
}

// PacketAddrs returns the source and destination addresses of the IPv4 or
// IPv6 packet pkt (starting at the IP header). ok is false when pkt is not a
// well-formed IP packet: unknown version, truncated header, an IPv4 header
// length outside [20, total length], or a declared total/payload length that
// exceeds len(pkt). It never allocates and never panics, whatever pkt holds.
func PacketAddrs(pkt []byte) (src, dst netip.Addr, ok bool) {
	if !wellFormed(pkt) {
		return netip.Addr{}, netip.Addr{}, false
	}
	if ipVersion(pkt) == 4 {
		src = netip.AddrFrom4([4]byte(pkt[ipv4SrcOff : ipv4SrcOff+4]))
		dst = netip.AddrFrom4([4]byte(pkt[ipv4DstOff : ipv4DstOff+4]))
		return src, dst, true
	}
	src = netip.AddrFrom16([16]byte(pkt[ipv6SrcOff : ipv6SrcOff+16]))
	dst = netip.AddrFrom16([16]byte(pkt[ipv6DstOff : ipv6DstOff+16]))
	return src, dst, true
}
