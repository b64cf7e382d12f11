package stack

import (
	"encoding/binary"
	"math/bits"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Checksum helpers shared by the segmentation (gso.go) and coalescing
// (gro.go) paths. All sums are RFC 1071 ones' complement sums as gVisor's
// checksum package computes them; none of these functions allocates.

// TCP header layout used by the offload paths.
const (
	tcpMinHeaderLen = 20
	tcpMaxHeaderLen = 60
	tcpSeqOff       = 4
	tcpAckOff       = 8
	tcpDataOffOff   = 12
	tcpFlagsOff     = 13
	tcpWindowOff    = 14
	tcpCsumOff      = 16
	tcpUrgentOff    = 18

	ipv4MaxHeaderLen = 60
	ipv4IDOff        = 4
	ipv4FlagsOff     = 6
	ipv4TTLOff       = 8
	ipv4ProtoOff     = 9
	ipv4CsumOff      = 10
	ipv6NextHdrOff   = 6
	ipv6HopLimitOff  = 7

	protoTCP = uint8(header.TCPProtocolNumber)
)

// TCP flag bits (byte 13 of the header).
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80
)

// tcpPseudoSum returns the ones' complement sum of the TCP pseudo-header of
// the IPv4 or IPv6 packet whose IP header starts ip, for a TCP length
// (header and payload) of tcpLen. ip must hold at least the fixed header.
func tcpPseudoSum(ip []byte, v6 bool, tcpLen int) uint16 {
	var s uint16
	if v6 {
		s = checksum.Checksum(ip[ipv6SrcOff:ipv6SrcOff+32], 0)
	} else {
		s = checksum.Checksum(ip[ipv4SrcOff:ipv4SrcOff+8], 0)
	}
	s = checksum.Combine(s, uint16(protoTCP))
	return checksum.Combine(s, uint16(tcpLen))
}

// setIPv4Checksum computes and stores the header checksum of the IPv4
// header h (its full IHL length).
func setIPv4Checksum(h []byte) {
	h[ipv4CsumOff], h[ipv4CsumOff+1] = 0, 0
	binary.BigEndian.PutUint16(h[ipv4CsumOff:], ^checksum.Checksum(h, 0))
}

// setTCPChecksum computes and stores the TCP checksum of the packet pkt
// (IP header of ipLen bytes, then the TCP header and payload to the end of
// pkt).
func setTCPChecksum(pkt []byte, ipLen int, v6 bool) {
	seg := pkt[ipLen:]
	seg[tcpCsumOff], seg[tcpCsumOff+1] = 0, 0
	s := checksum.Checksum(seg, tcpPseudoSum(pkt, v6, len(seg)))
	binary.BigEndian.PutUint16(seg[tcpCsumOff:], ^s)
}

// swapSum is the ones' complement sum of data shifted by one byte: the sum
// of bytes placed at an odd offset is the byte-swapped sum of the same bytes
// at an even offset (RFC 1071, section 2(B)).
func swapSum(s uint16) uint16 { return bits.ReverseBytes16(s) }
