package stack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Outbound segmentation offload (GSO).
//
// With offload on, the userspace stack's link endpoint tells gVisor that the
// "hardware" segments TCP (gstack.HostGSOSupported). gVisor's TCP then
// builds segments of up to gsoMaxSize bytes and leaves the checksum partial
// (the pseudo-header sum in the TCP checksum field, pkt.GSOOptions.NeedsCsum),
// exactly as it does towards a Linux NIC with TSO. netstackDev.Read splits
// each such segment into MTU-sized packets written straight into
// wireguard-go's buffers (tcpSplitter), completing every checksum, so one
// trip through gVisor's TCP and IP layers carries up to ~50 packets.
//
// gstack.GVisorGSOSupported is not used: with it gVisor splits segments
// itself, in its TCP sender, allocating one packet buffer per MSS; the
// per-packet cost stays where it was.

// gsoMaxSize is the largest segment, headers included, gVisor builds when
// offload is on: 64 KiB, gVisor's own software GSO limit. gVisor keeps the
// TCP payload below it by the largest header size, so the IPv4 total length
// and IPv6 payload length fields never overflow.
const gsoMaxSize = gstack.GVisorGSOMaxSize

// gsoEndpoint is the userspace stack's link endpoint: a channel.Endpoint
// (outbound queue, InjectInbound) that advertises host GSO when offload is
// on and none otherwise.
type gsoEndpoint struct {
	*channel.Endpoint
	offload bool
}

var _ gstack.GSOEndpoint = (*gsoEndpoint)(nil)

// GSOMaxSize implements gstack.GSOEndpoint: the largest segment gVisor may
// hand the device.
func (e *gsoEndpoint) GSOMaxSize() uint32 {
	if !e.offload {
		return 0
	}
	return gsoMaxSize
}

// SupportedGSO implements gstack.GSOEndpoint: host GSO (the device splits
// and checksums) when offload is on.
func (e *gsoEndpoint) SupportedGSO() gstack.SupportedGSO {
	if !e.offload {
		return gstack.GSONotSupported
	}
	return gstack.HostGSOSupported
}

// byteCursor reads a packet's bytes in order, either from a gVisor view list
// (the netstack path) or from a flat slice (tests), without allocating.
type byteCursor struct {
	flat []byte       // remaining bytes when v is nil
	v    *buffer.View // current view, nil at the end or in flat mode
	off  int          // read offset in v
}

// viewCursor returns a cursor over the views starting at v, skipping the
// first skip bytes (as PacketBuffer.AsViewList reports them).
func viewCursor(v *buffer.View, skip int) byteCursor {
	c := byteCursor{v: v}
	c.skip(skip)
	return c
}

// read copies the next len(dst) bytes (fewer at the end) into dst and
// returns how many it copied.
func (c *byteCursor) read(dst []byte) int {
	if c.v == nil {
		n := copy(dst, c.flat)
		c.flat = c.flat[n:]
		return n
	}
	n := 0
	for n < len(dst) && c.v != nil {
		s := c.v.AsSlice()
		m := copy(dst[n:], s[c.off:])
		n += m
		c.off += m
		if c.off >= len(s) {
			c.v, c.off = c.v.Next(), 0
		}
	}
	return n
}

// skip advances the cursor by n bytes (fewer at the end).
func (c *byteCursor) skip(n int) {
	if c.v == nil {
		n = min(n, len(c.flat))
		c.flat = c.flat[n:]
		return
	}
	for n > 0 && c.v != nil {
		left := len(c.v.AsSlice()) - c.off
		if n < left {
			c.off += n
			return
		}
		n -= left
		c.v, c.off = c.v.Next(), 0
	}
}

// tcpSplitter cuts one large TCP segment (IPv4 or IPv6) into packets of at
// most mss payload bytes. Each packet gets the segment's IP and TCP headers
// (options included) with:
//   - IPv4: total length, ID incremented per packet from the segment's ID
//     (as Linux TSO does; the packets are atomic datagrams, RFC 6864) and the
//     header checksum recomputed; IPv6: payload length;
//   - TCP: sequence number advanced by the bytes before it, FIN and PSH only
//     on the last packet, CWR only on the first, and the checksum computed
//     over the packet (the segment's checksum field, full or partial, is
//     ignored).
//
// A segment of at most mss payload bytes (a pure ACK, a small write) comes
// out as one packet with a completed checksum. The splitter keeps its state
// between calls so that a segment can span several Read batches.
type tcpSplitter struct {
	hdr    [ipv4MaxHeaderLen + tcpMaxHeaderLen]byte
	ipLen  int // IP header length
	hdrLen int // IP and TCP header length
	v6     bool
	mss    int
	left   int    // payload bytes not yet emitted
	i      int    // packets emitted
	seq    uint32 // sequence number of the next packet
	src    byteCursor
	busy   bool                 // packets remain
	pkt    *gstack.PacketBuffer // the segment's buffer (netstack path), released when done
}

// start reads and checks the headers of a segment of size bytes from src
// and prepares its split into packets of at most mss payload bytes and
// maxPkt bytes in all. It reports false (and stays idle) when the headers
// are not an IPv4 (any IHL) or IPv6 (no extension headers) header followed
// by a TCP header, or when no payload fits in maxPkt.
func (s *tcpSplitter) start(src byteCursor, size, mss, maxPkt int) bool {
	s.busy, s.pkt = false, nil
	s.src = src
	if size < ipv4MinHeaderLen || s.src.read(s.hdr[:ipv4MinHeaderLen]) != ipv4MinHeaderLen {
		return false
	}
	switch s.hdr[0] >> 4 {
	case 4:
		s.v6 = false
		s.ipLen = int(s.hdr[0]&0x0f) * 4
		if s.ipLen < ipv4MinHeaderLen || s.hdr[ipv4ProtoOff] != protoTCP {
			return false
		}
	case 6:
		s.v6 = true
		s.ipLen = ipv6HeaderLen
		if s.hdr[ipv6NextHdrOff] != protoTCP {
			return false
		}
	default:
		return false
	}
	if size < s.ipLen+tcpMinHeaderLen {
		return false
	}
	if s.src.read(s.hdr[ipv4MinHeaderLen:s.ipLen+tcpMinHeaderLen]) != s.ipLen+tcpMinHeaderLen-ipv4MinHeaderLen {
		return false
	}
	tcpLen := int(s.hdr[s.ipLen+tcpDataOffOff]>>4) * 4
	s.hdrLen = s.ipLen + tcpLen
	if tcpLen < tcpMinHeaderLen || size < s.hdrLen {
		return false
	}
	if s.src.read(s.hdr[s.ipLen+tcpMinHeaderLen:s.hdrLen]) != tcpLen-tcpMinHeaderLen {
		return false
	}
	s.mss = min(mss, maxPkt-s.hdrLen)
	if s.mss <= 0 {
		return false
	}
	s.left = size - s.hdrLen
	s.i = 0
	s.seq = binary.BigEndian.Uint32(s.hdr[s.ipLen+tcpSeqOff:])
	s.busy = true
	return true
}

// packets returns the number of packets the segment started last splits
// into.
func (s *tcpSplitter) packets() int { return max(1, (s.left+s.mss-1)/s.mss) }

// next writes the next packet into dst and returns its length. When dst is
// too small the packet is skipped and next returns 0. Once the last packet
// is out, busy is false.
func (s *tcpSplitter) next(dst []byte) int {
	n := min(s.left, s.mss)
	total := s.hdrLen + n
	i, seq := s.i, s.seq
	last := n == s.left
	s.i++
	s.left -= n
	s.seq += uint32(n)
	s.busy = !last
	if total > len(dst) {
		s.src.skip(n)
		return 0
	}
	p := dst[:total]
	copy(p, s.hdr[:s.hdrLen])
	if s.src.read(p[s.hdrLen:]) != n {
		// The segment is shorter than its size said: stop here.
		s.left, s.busy = 0, false
		return 0
	}
	if s.v6 {
		binary.BigEndian.PutUint16(p[ipv6PayloadOff:], uint16(total-ipv6HeaderLen))
	} else {
		binary.BigEndian.PutUint16(p[ipv4TotalLenOff:], uint16(total))
		id := binary.BigEndian.Uint16(s.hdr[ipv4IDOff:])
		binary.BigEndian.PutUint16(p[ipv4IDOff:], id+uint16(i))
		setIPv4Checksum(p[:s.ipLen])
	}
	tcp := p[s.ipLen:]
	binary.BigEndian.PutUint32(tcp[tcpSeqOff:], seq)
	if !last {
		tcp[tcpFlagsOff] &^= tcpFIN | tcpPSH
	}
	if i > 0 {
		tcp[tcpFlagsOff] &^= tcpCWR
	}
	setTCPChecksum(p, s.ipLen, s.v6)
	return total
}

// completeTCPChecksum computes and stores the TCP checksum of pkt, an IPv4
// (any IHL) or IPv6 (no extension headers) TCP packet that fits in one
// packet, whose IP header gVisor completed. It reports false when pkt is not
// such a packet.
func completeTCPChecksum(pkt []byte) bool {
	var ipLen int
	switch ipVersion(pkt) {
	case 4:
		ipLen = int(pkt[0]&0x0f) * 4
		if ipLen < ipv4MinHeaderLen || len(pkt) < ipLen+tcpMinHeaderLen || pkt[ipv4ProtoOff] != protoTCP {
			return false
		}
	case 6:
		ipLen = ipv6HeaderLen
		if len(pkt) < ipLen+tcpMinHeaderLen || pkt[ipv6NextHdrOff] != protoTCP {
			return false
		}
	default:
		return false
	}
	setTCPChecksum(pkt, ipLen, ipLen == ipv6HeaderLen)
	return true
}

// splitSegment splits the contiguous segment seg into packets of at most
// mss payload bytes written to out[k][offset:], with their lengths in
// sizes[k]. It returns the number of packets, and false when seg is not a
// segment tcpSplitter handles or out has too few buffers (or one too small)
// for all of it. The netstack path uses tcpSplitter on gVisor's views
// directly; this is the same code on a flat buffer.
func splitSegment(seg []byte, mss int, out [][]byte, sizes []int, offset int) (int, bool) {
	var s tcpSplitter
	if !s.start(byteCursor{flat: seg}, len(seg), mss, mss+ipv4MaxHeaderLen+tcpMaxHeaderLen) {
		return 0, false
	}
	k := 0
	for s.busy {
		if k >= len(out) || k >= len(sizes) || offset > len(out[k]) {
			return k, false
		}
		m := s.next(out[k][offset:])
		if m == 0 {
			return k, false
		}
		sizes[k] = m
		k++
	}
	return k, true
}
