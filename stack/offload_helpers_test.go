package stack

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Reference implementations for the offload tests. They share no code with
// csum.go, gso.go or gro.go (nor gVisor's checksum package), so a checksum
// or header bug in the code under test cannot hide itself.

// refSum adds b to the 32-bit running sum s as big-endian 16-bit words (an
// odd last byte padded with zero).
func refSum(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func refFold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// refIPLen returns the IP header length of p and whether it is IPv6.
func refIPLen(p []byte) (int, bool) {
	if p[0]>>4 == 6 {
		return 40, true
	}
	return int(p[0]&0xf) * 4, false
}

// refTCPSum returns the folded sum over p's TCP pseudo-header, header and
// payload (0xffff when the checksum is valid).
func refTCPSum(p []byte) uint16 {
	ipLen, v6 := refIPLen(p)
	var s uint32
	if v6 {
		s = refSum(p[8:40], 0)
	} else {
		s = refSum(p[12:20], 0)
	}
	s += 6 + uint32(len(p)-ipLen)
	return refFold(refSum(p[ipLen:], s))
}

// refSetTCPChecksum stores p's correct TCP checksum.
func refSetTCPChecksum(p []byte) {
	ipLen, _ := refIPLen(p)
	p[ipLen+16], p[ipLen+17] = 0, 0
	binary.BigEndian.PutUint16(p[ipLen+16:], ^refTCPSum(p))
}

// refSetIPv4Checksum stores p's correct IPv4 header checksum.
func refSetIPv4Checksum(p []byte) {
	ipLen, _ := refIPLen(p)
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:], ^refFold(refSum(p[:ipLen], 0)))
}

// refCheckPacket returns an error unless p is a consistent IPv4/IPv6 TCP
// packet: lengths match len(p), and the IPv4 header and TCP checksums are
// valid.
func refCheckPacket(p []byte) error {
	if len(p) < 40 {
		return fmt.Errorf("packet of %d bytes", len(p))
	}
	ipLen, v6 := refIPLen(p)
	if v6 {
		if pl := int(binary.BigEndian.Uint16(p[4:])); pl+40 != len(p) {
			return fmt.Errorf("IPv6 payload length %d, packet %d bytes", pl, len(p))
		}
	} else {
		if tl := int(binary.BigEndian.Uint16(p[2:])); tl != len(p) {
			return fmt.Errorf("IPv4 total length %d, packet %d bytes", tl, len(p))
		}
		if s := refFold(refSum(p[:ipLen], 0)); s != 0xffff {
			return fmt.Errorf("IPv4 header checksum invalid (sum %#x)", s)
		}
	}
	if s := refTCPSum(p); s != 0xffff {
		return fmt.Errorf("TCP checksum invalid (sum %#x)", s)
	}
	return nil
}

// seg describes a TCP segment to build for the tests.
type seg struct {
	v6      bool
	ipOpts  int // IPv4 option bytes (NOPs), a multiple of 4
	id      uint16
	frag    uint16 // IPv4 flags and fragment offset field
	tos     byte
	sport   uint16
	dport   uint16
	seq     uint32
	ack     uint32
	flags   byte
	win     uint16
	opts    []byte // TCP options, a multiple of 4 bytes
	payload []byte
}

var (
	segSrc4 = [4]byte{100, 64, 0, 1}
	segDst4 = [4]byte{100, 64, 0, 2}
	segSrc6 = [16]byte{0xfd, 0x7a, 15: 1}
	segDst6 = [16]byte{0xfd, 0x7a, 15: 2}
)

// build returns the segment as a packet with valid checksums.
func (s seg) build() []byte {
	ipLen := 20 + s.ipOpts
	if s.v6 {
		ipLen = 40
	}
	tcpLen := 20 + len(s.opts)
	p := make([]byte, ipLen+tcpLen+len(s.payload))
	if s.v6 {
		p[0] = 0x60
		binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
		p[6], p[7] = 6, 64
		copy(p[8:], segSrc6[:])
		copy(p[24:], segDst6[:])
	} else {
		p[0] = 0x40 | byte(ipLen/4)
		p[1] = s.tos
		binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		binary.BigEndian.PutUint16(p[4:], s.id)
		binary.BigEndian.PutUint16(p[6:], s.frag)
		p[8], p[9] = 64, 6
		copy(p[12:], segSrc4[:])
		copy(p[16:], segDst4[:])
		for i := 20; i < ipLen; i++ {
			p[i] = 1 // NOP
		}
		refSetIPv4Checksum(p)
	}
	t := p[ipLen:]
	sport, dport := s.sport, s.dport
	if sport == 0 {
		sport = 40000
	}
	if dport == 0 {
		dport = 5201
	}
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], s.seq)
	binary.BigEndian.PutUint32(t[8:], s.ack)
	t[12] = byte(tcpLen/4) << 4
	t[13] = s.flags
	binary.BigEndian.PutUint16(t[14:], s.win)
	copy(t[20:], s.opts)
	copy(t[tcpLen:], s.payload)
	refSetTCPChecksum(p)
	return p
}

// tsOpts returns TCP options with a timestamp (NOP, NOP, TS).
func tsOpts(val, echo uint32) []byte {
	o := []byte{1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(o[4:], val)
	binary.BigEndian.PutUint32(o[8:], echo)
	return o
}

// maxOpts returns 40 bytes of TCP options: timestamps and SACK blocks.
func maxOpts() []byte {
	o := append(tsOpts(7, 9), 1, 1, 5, 26)
	for i := range 24 {
		o = append(o, byte(i))
	}
	return o
}

// pattern returns n bytes of a position-dependent pattern (salted), so a
// misplaced byte shows.
func pattern(n int, salt byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>8) ^ salt
	}
	return b
}

// tcpFields returns the TCP header fields of p the tests compare.
func tcpFields(p []byte) (hdrLen int, seq, ack uint32, flags byte, payload []byte) {
	ipLen, _ := refIPLen(p)
	t := p[ipLen:]
	hdrLen = ipLen + int(t[12]>>4)*4
	return hdrLen, binary.BigEndian.Uint32(t[4:]), binary.BigEndian.Uint32(t[8:]), t[13], p[hdrLen:]
}

// sameExcept reports whether a and b (headers of equal length) differ only
// in the listed byte ranges.
func sameExcept(a, b []byte, skip ...[2]int) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = bytes.Clone(a), bytes.Clone(b)
	for _, r := range skip {
		for i := r[0]; i < r[1] && i < len(a); i++ {
			a[i], b[i] = 0, 0
		}
	}
	return bytes.Equal(a, b)
}
