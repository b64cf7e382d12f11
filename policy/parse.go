package policy

import "encoding/binary"

// IP protocol numbers the parser understands.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// Header sizes and bounds used by the allocation-free parser.
const (
	ipv4MinHeaderLen = 20 // IPv4 header without options
	ipv6HeaderLen    = 40 // fixed IPv6 header
	tcpMinHeaderLen  = 20 // a first fragment must carry the whole TCP header (tiny-fragment attack)
	udpHeaderLen     = 8
	icmpHeaderLen    = 8 // type, code, checksum, identifier, sequence
	// maxExtHeaders bounds the IPv6 extension header walk so a chain of
	// empty options headers cannot make the parser loop long.
	maxExtHeaders = 8
)

// TCP flag bits (byte 13 of the TCP header).
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// Fragment positions of a parsed packet.
const (
	fragNone  = iota // not fragmented
	fragFirst        // offset 0 with more fragments: carries the ports
	fragLater        // offset > 0: no transport header
)

// parseErr says why a packet is malformed (0 = fine).
type parseErr uint8

const (
	parseOK parseErr = iota
	errShort
	errVersion
	errHeaderLen
	errTotalLen
	errExtHeaders
	errTransport
)

// packet is the parsed view of one IP packet. It is filled in place by parse
// and never escapes to the heap.
type packet struct {
	src, dst  [16]byte // IPv4 addresses are stored IPv4-mapped
	v6        bool
	proto     uint8 // transport protocol (after IPv6 extension headers)
	frag      uint8 // fragNone, fragFirst or fragLater
	tcpFlags  uint8
	icmpType  uint8
	icmpCode  uint8
	srcPort   uint16 // TCP/UDP source port; ICMP echo identifier
	dstPort   uint16 // TCP/UDP destination port; ICMP echo identifier
	fragID    uint32
	length    int // bytes the packet occupies (IPv4 total length / 40 + payload length)
	l4        int // offset of the transport header (when frag != fragLater)
	icmpEcho  bool
	icmpError bool
}

// v4mapped is the 12-byte prefix of an IPv4-mapped IPv6 address.
var v4mapped = [12]byte{10: 0xff, 11: 0xff}

// parse fills p from the IP packet b. It never panics and never allocates.
// When inner is true, b is the copy of an offending packet inside an ICMP
// error: the declared length may exceed b and only the first 8 bytes of the
// transport header are required.
func parse(b []byte, p *packet, inner bool) parseErr {
	*p = packet{}
	if len(b) < 1 {
		return errShort
	}
	switch b[0] >> 4 {
	case 4:
		return parse4(b, p, inner)
	case 6:
		return parse6(b, p, inner)
	default:
		return errVersion
	}
}

func parse4(b []byte, p *packet, inner bool) parseErr {
	if len(b) < ipv4MinHeaderLen {
		return errShort
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < ipv4MinHeaderLen || ihl > len(b) {
		return errHeaderLen
	}
	if total < ihl {
		return errTotalLen
	}
	if total > len(b) {
		if !inner {
			return errTotalLen
		}
		total = len(b)
	}
	copy(p.src[:12], v4mapped[:])
	copy(p.src[12:], b[12:16])
	copy(p.dst[:12], v4mapped[:])
	copy(p.dst[12:], b[16:20])
	p.proto = b[9]
	p.length = total
	off := int(binary.BigEndian.Uint16(b[6:8]) & 0x1fff)
	more := b[6]&0x20 != 0
	if off != 0 {
		p.frag = fragLater
		p.fragID = uint32(binary.BigEndian.Uint16(b[4:6]))
		return parseOK
	}
	if more {
		p.frag = fragFirst
		p.fragID = uint32(binary.BigEndian.Uint16(b[4:6]))
	}
	return parseL4(b[ihl:total], ihl, p, inner)
}

func parse6(b []byte, p *packet, inner bool) parseErr {
	if len(b) < ipv6HeaderLen {
		return errShort
	}
	payload := int(binary.BigEndian.Uint16(b[4:6]))
	total := ipv6HeaderLen + payload
	if payload == 0 && !inner {
		// Jumbograms (payload length 0 with a hop-by-hop option) never
		// cross an overlay with an MTU below 64 KiB.
		if len(b) > ipv6HeaderLen {
			return errTotalLen
		}
	}
	if total > len(b) {
		if !inner {
			return errTotalLen
		}
		total = len(b)
	}
	p.v6 = true
	copy(p.src[:], b[8:24])
	copy(p.dst[:], b[24:40])
	p.length = total
	next := b[6]
	off := ipv6HeaderLen
	for i := 0; ; i++ {
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if i >= maxExtHeaders {
				return errExtHeaders
			}
			if off+8 > total {
				return errExtHeaders
			}
			n := (int(b[off+1]) + 1) * 8
			next = b[off]
			off += n
		case 51: // authentication header: length in 4-byte units minus 2
			if i >= maxExtHeaders {
				return errExtHeaders
			}
			if off+8 > total {
				return errExtHeaders
			}
			n := (int(b[off+1]) + 2) * 4
			next = b[off]
			off += n
		case 44: // fragment header
			if i >= maxExtHeaders {
				return errExtHeaders
			}
			if off+8 > total {
				return errExtHeaders
			}
			fo := binary.BigEndian.Uint16(b[off+2:off+4]) >> 3
			more := b[off+3]&1 != 0
			id := binary.BigEndian.Uint32(b[off+4 : off+8])
			next = b[off]
			off += 8
			if fo != 0 {
				p.proto = next
				p.frag = fragLater
				p.fragID = id
				return parseOK
			}
			if more {
				p.frag = fragFirst
				p.fragID = id
			}
		default:
			if off > total {
				return errExtHeaders
			}
			p.proto = next
			return parseL4(b[off:total], off, p, inner)
		}
		if off > total {
			return errExtHeaders
		}
	}
}

// parseL4 reads ports, TCP flags and ICMP type from the transport header t,
// which starts at offset off of the packet.
func parseL4(t []byte, off int, p *packet, inner bool) parseErr {
	p.l4 = off
	switch p.proto {
	case protoTCP:
		need := tcpMinHeaderLen
		if inner {
			need = 8
		}
		if len(t) < need {
			return errTransport
		}
		p.srcPort = binary.BigEndian.Uint16(t[0:2])
		p.dstPort = binary.BigEndian.Uint16(t[2:4])
		if !inner {
			p.tcpFlags = t[13]
		}
	case protoUDP:
		if len(t) < udpHeaderLen {
			return errTransport
		}
		p.srcPort = binary.BigEndian.Uint16(t[0:2])
		p.dstPort = binary.BigEndian.Uint16(t[2:4])
	case protoICMP, protoICMPv6:
		if len(t) < icmpHeaderLen {
			return errTransport
		}
		p.icmpType, p.icmpCode = t[0], t[1]
		if p.proto == protoICMP {
			p.icmpEcho = p.icmpType == 0 || p.icmpType == 8
			p.icmpError = p.icmpType == 3 || p.icmpType == 4 || p.icmpType == 5 || p.icmpType == 11 || p.icmpType == 12
		} else {
			p.icmpEcho = p.icmpType == 128 || p.icmpType == 129
			p.icmpError = p.icmpType >= 1 && p.icmpType <= 4
		}
		if p.icmpEcho {
			id := binary.BigEndian.Uint16(t[4:6])
			p.srcPort, p.dstPort = id, id
		}
	}
	return parseOK
}

// isICMP reports whether proto is ICMP or ICMPv6 (rule proto "icmp" covers
// both).
func isICMP(proto uint8) bool { return proto == protoICMP || proto == protoICMPv6 }
