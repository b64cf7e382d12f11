package stack

import (
	"bytes"
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// Inbound coalescing (GRO).
//
// netstackDev.Write receives the packets wireguard-go decrypted, in batches
// (one per peer and receive batch). Before injecting them into gVisor it
// merges runs of in-order TCP segments of one flow into one large segment,
// so gVisor's IP and TCP layers run once per run instead of once per
// packet. groBatch plans the merges for a window of up to groWindow packets
// and builds the merged packets; it knows nothing about gVisor.
//
// # What is merged
//
// A packet is a candidate when it is an unfragmented IPv4 packet without IP
// options and with a valid header checksum, or an IPv6 packet whose next
// header is TCP (no extension headers); its IP length covers exactly the
// bytes received; and it carries a TCP segment with payload whose flags are
// ACK, or ACK and PSH (never SYN, FIN, RST, URG, ECE or CWR). A candidate is
// appended to the open merge of its flow (same addresses and ports) when:
//   - its sequence number is the next one expected (no gap, no overlap).
//     A segment that breaks the sequence of its flow's open merge (out of
//     order, or a retransmission) is passed on alone; it does not start a
//     merge either. Order is judged within the batch: the first segment of
//     a flow in a batch may start a merge whatever it follows;
//   - its IP header matches the first segment's (IPv4: TOS, flags and
//     fragment field, TTL; IPv6: traffic class, flow label, hop limit) and
//     so does its TCP header apart from the sequence number and checksum:
//     same ACK number, window, urgent pointer and options byte for byte, so
//     timestamps must be identical too (a TSval that moved starts a new
//     merge; gVisor keeps one per millisecond, so a burst shares it);
//   - its payload is no longer than the first segment's, and the merge has
//     not been closed: a shorter segment or one with PSH is the last of its
//     merge (the merged segment then carries PSH);
//   - the merged packet stays within groMaxSize bytes.
//
// Every other packet is passed on as it came. Per-flow order is kept: a
// packet of a flow with an open merge that cannot join it (FIN, a gap, ...)
// first flushes that merge. Packets whose transport the planner cannot see
// (fragments, IPv6 extension headers) flush every open merge first.
//
// # Checksums
//
// The merged segment's checksum is derived from the members' checksums
// without touching their payload: a member with a valid checksum has a
// payload sum equal to the complement of the sum of its pseudo-header and
// TCP header (checksum field included), and payload sums add up (byte-swapped
// at odd offsets). gVisor then verifies the merged segment as it verifies
// any packet, so every byte is checksummed exactly once, by gVisor. A member
// whose checksum was wrong makes the merged checksum wrong and gVisor drops
// the whole merge (TCP retransmits it); two wrong members could only hide
// each other by compensating errors, which the same 16-bit sum cannot tell
// apart within one packet either. WireGuard's AEAD has already
// authenticated every byte, so a wrong checksum can only come from a broken
// peer stack. RX checksum offload (gstack.CapabilityRXChecksumOffload) is
// not used: gVisor applies it per NIC, to every packet, including those
// (UDP, fragments, IPv4 headers of non-candidates) nobody verified.
const (
	// groWindow is the number of packets planned together; Write handles
	// longer batches window by window.
	groWindow = 128
	// groMaxFlows is the number of merges open at once in a window; a new
	// flow beyond it flushes the oldest.
	groMaxFlows = 8
	// groMaxSize bounds a merged packet: the IPv4 total length field, and
	// the largest buffer gVisor pools.
	groMaxSize = 65535
)

// groKind classifies a packet for the planner.
type groKind uint8

const (
	groOther     groKind = iota // not TCP: passed on, no effect on merges
	groUnknown                  // transport not visible: flushes every merge
	groTCP                      // TCP, not mergeable: flushes its flow's merge
	groCandidate                // mergeable TCP segment
)

// groSeg is what the planner needs of a TCP packet.
type groSeg struct {
	v6      bool
	ipLen   int // IP header length
	hdrLen  int // IP and TCP header length
	payload int // TCP payload length
	flags   byte
	seq     uint32
}

// parseGROSeg classifies p (an IP packet) and, for TCP, returns its layout.
func parseGROSeg(p []byte) (groSeg, groKind) {
	var s groSeg
	switch ipVersion(p) {
	case 4:
		if len(p) < ipv4MinHeaderLen {
			return s, groUnknown
		}
		s.ipLen = int(p[0]&0x0f) * 4
		frag := binary.BigEndian.Uint16(p[ipv4FlagsOff:])&0x3fff != 0 // MF or offset
		if p[ipv4ProtoOff] != protoTCP {
			return s, groOther
		}
		if frag || s.ipLen < ipv4MinHeaderLen || len(p) < s.ipLen+tcpMinHeaderLen {
			return s, groUnknown
		}
		if s.ipLen != ipv4MinHeaderLen || int(binary.BigEndian.Uint16(p[ipv4TotalLenOff:])) != len(p) ||
			checksum.Checksum(p[:ipv4MinHeaderLen], 0) != 0xffff {
			return s, groTCP
		}
	case 6:
		if len(p) < ipv6HeaderLen {
			return s, groUnknown
		}
		switch p[ipv6NextHdrOff] {
		case protoTCP:
		case 17, 58: // UDP, ICMPv6
			return s, groOther
		default:
			return s, groUnknown
		}
		s.v6, s.ipLen = true, ipv6HeaderLen
		if len(p) < s.ipLen+tcpMinHeaderLen {
			return s, groUnknown
		}
		if ipv6HeaderLen+int(binary.BigEndian.Uint16(p[ipv6PayloadOff:])) != len(p) {
			return s, groTCP
		}
	default:
		return s, groUnknown
	}
	tcp := p[s.ipLen:]
	s.hdrLen = s.ipLen + int(tcp[tcpDataOffOff]>>4)*4
	s.flags = tcp[tcpFlagsOff]
	s.seq = binary.BigEndian.Uint32(tcp[tcpSeqOff:])
	if s.hdrLen < s.ipLen+tcpMinHeaderLen || s.hdrLen >= len(p) || s.flags&^tcpPSH != tcpACK {
		return s, groTCP
	}
	s.payload = len(p) - s.hdrLen
	return s, groCandidate
}

// sameFlow reports whether TCP packets a and b (IP headers of aIP and bIP
// bytes) share version, addresses and ports.
func sameFlow(a, b []byte, aIP, bIP int) bool {
	if a[0]>>4 != b[0]>>4 {
		return false
	}
	if a[0]>>4 == 4 {
		if !bytes.Equal(a[ipv4SrcOff:ipv4SrcOff+8], b[ipv4SrcOff:ipv4SrcOff+8]) {
			return false
		}
	} else if !bytes.Equal(a[ipv6SrcOff:ipv6SrcOff+32], b[ipv6SrcOff:ipv6SrcOff+32]) {
		return false
	}
	return bytes.Equal(a[aIP:aIP+4], b[bIP:bIP+4])
}

// sameHeaders reports whether candidate p may follow h in a merge as far as
// their headers go (s describes p; both have s.hdrLen bytes of headers).
func sameHeaders(h, p []byte, s groSeg) bool {
	if s.v6 {
		// Version, traffic class, flow label; next header, hop limit.
		if !bytes.Equal(h[:4], p[:4]) || !bytes.Equal(h[ipv6NextHdrOff:ipv6NextHdrOff+2], p[ipv6NextHdrOff:ipv6NextHdrOff+2]) {
			return false
		}
	} else if h[1] != p[1] || !bytes.Equal(h[ipv4FlagsOff:ipv4CsumOff], p[ipv4FlagsOff:ipv4CsumOff]) {
		// TOS; flags and fragment offset, TTL, protocol.
		return false
	}
	ht, pt := h[s.ipLen:s.hdrLen], p[s.ipLen:s.hdrLen]
	return bytes.Equal(ht[tcpAckOff:tcpFlagsOff], pt[tcpAckOff:tcpFlagsOff]) && // ACK number, data offset
		bytes.Equal(ht[tcpWindowOff:tcpCsumOff], pt[tcpWindowOff:tcpCsumOff]) &&
		bytes.Equal(ht[tcpUrgentOff:], pt[tcpUrgentOff:]) // urgent pointer, options
}

// groFlow is an open merge: a chain of packets of one flow.
type groFlow struct {
	head, tail int16  // window indices of the first and last member
	nextSeq    uint32 // sequence number the next member must have
	segLen     int    // payload length of the first member
	hdrLen     int    // IP and TCP header length of every member
	total      int    // size of the merged packet so far
	closed     bool   // no member may follow
}

// groBatch plans the coalescing of one window of packets. The plan is a
// list of outputs (out) in delivery order; each output is a chain of window
// indices linked by next (-1 ends a chain), one packet passed on as it came
// or several merged by build. It lives on the caller's stack: no allocation.
type groBatch struct {
	next   [groWindow]int16
	out    [groWindow]int16
	nout   int
	flows  [groMaxFlows]groFlow
	nflows int
}

// plan fills out and next for pkts (at most groWindow of them; the packet of
// each is pkts[i][offset:], offset ≤ len(pkts[i])). Empty packets are left
// out of the plan.
func (g *groBatch) plan(pkts [][]byte, offset int) {
	g.nout, g.nflows = 0, 0
	for i := range pkts[:min(len(pkts), groWindow)] {
		p := pkts[i][offset:]
		if len(p) == 0 {
			continue
		}
		g.next[i] = -1
		s, kind := parseGROSeg(p)
		switch kind {
		case groOther:
		case groUnknown:
			for g.nflows > 0 {
				g.flush(0)
			}
		case groTCP:
			if f := g.find(pkts, offset, p, s.ipLen); f >= 0 {
				g.flush(f)
			}
		case groCandidate:
			f := g.find(pkts, offset, p, s.ipLen)
			if f < 0 {
				g.open(i, s)
				continue
			}
			if g.add(f, pkts[g.flows[f].head][offset:], p, s, i) {
				continue
			}
			inOrder := s.seq == g.flows[f].nextSeq
			g.flush(f)
			if inOrder {
				g.open(i, s)
				continue
			}
			// Out of order or retransmitted: passed on alone.
		}
		g.out[g.nout] = int16(i)
		g.nout++
	}
	for g.nflows > 0 {
		g.flush(0)
	}
}

// find returns the open merge of p's flow, or -1.
func (g *groBatch) find(pkts [][]byte, offset int, p []byte, ipLen int) int {
	for f := range g.flows[:g.nflows] {
		h := pkts[g.flows[f].head][offset:]
		if sameFlow(h, p, headerLen(h), ipLen) {
			return f
		}
	}
	return -1
}

// headerLen is the IP header length of a packet the planner accepted.
func headerLen(p []byte) int {
	if p[0]>>4 == 6 {
		return ipv6HeaderLen
	}
	return int(p[0]&0x0f) * 4
}

// add appends candidate p (window index i) to merge f whose first member is
// h, if the rules allow it.
func (g *groBatch) add(f int, h, p []byte, s groSeg, i int) bool {
	fl := &g.flows[f]
	if fl.closed || s.seq != fl.nextSeq || s.payload > fl.segLen || fl.total+s.payload > groMaxSize ||
		s.hdrLen != fl.hdrLen || !sameHeaders(h, p, s) {
		return false
	}
	g.next[fl.tail] = int16(i)
	fl.tail = int16(i)
	fl.total += s.payload
	fl.nextSeq += uint32(s.payload)
	fl.closed = s.payload < fl.segLen || s.flags&tcpPSH != 0
	return true
}

// open starts a merge with candidate p (window index i), flushing the
// oldest merge when all are in use.
func (g *groBatch) open(i int, s groSeg) {
	if g.nflows == groMaxFlows {
		g.flush(0)
	}
	g.flows[g.nflows] = groFlow{
		head: int16(i), tail: int16(i),
		nextSeq: s.seq + uint32(s.payload),
		segLen:  s.payload,
		hdrLen:  s.hdrLen,
		total:   s.hdrLen + s.payload,
		closed:  s.flags&tcpPSH != 0,
	}
	g.nflows++
}

// flush ends merge f: its chain becomes the next output.
func (g *groBatch) flush(f int) {
	g.out[g.nout] = g.flows[f].head
	g.nout++
	copy(g.flows[f:g.nflows], g.flows[f+1:g.nflows])
	g.nflows--
}

// merged reports whether output j merges several packets.
func (g *groBatch) merged(j int) bool { return g.next[g.out[j]] >= 0 }

// size returns the length of output j's packet.
func (g *groBatch) size(pkts [][]byte, offset, j int) int {
	head := g.out[j]
	h := pkts[head][offset:]
	if g.next[head] < 0 {
		return len(h)
	}
	s, _ := parseGROSeg(h)
	n := s.hdrLen
	for i := head; i >= 0; i = g.next[i] {
		n += len(pkts[i][offset:]) - s.hdrLen
	}
	return n
}

// build writes output j's packet into dst, whose length is size(j). For a
// merged output it is the first member's headers with the lengths, the IPv4
// header checksum, PSH (from the last member) and the TCP checksum (derived
// from the members', see the file comment) updated, then every member's
// payload in order.
func (g *groBatch) build(dst []byte, pkts [][]byte, offset, j int) {
	head := g.out[j]
	h := pkts[head][offset:]
	if g.next[head] < 0 {
		copy(dst, h)
		return
	}
	n := g.headerLen(pkts, offset, j)
	g.buildMerged(dst[:n], dst[n:], pkts, offset, j)
}

// headerLen returns the IP and TCP header length of merged output j.
func (g *groBatch) headerLen(pkts [][]byte, offset, j int) int {
	s, _ := parseGROSeg(pkts[g.out[j]][offset:])
	return s.hdrLen
}

// buildMerged writes merged output j as build does, its headers into hdr
// (headerLen(j) bytes) and its payload into payload (the rest of size(j)),
// which need not be contiguous.
func (g *groBatch) buildMerged(hdr, payload []byte, pkts [][]byte, offset, j int) {
	head := g.out[j]
	h := pkts[head][offset:]
	s, _ := parseGROSeg(h)
	copy(hdr, h[:s.hdrLen])
	pos := 0
	var sum uint16 // payload sum of the merged segment
	var last byte
	for i := head; i >= 0; i = g.next[i] {
		p := pkts[i][offset:]
		ps := ^checksum.Combine(tcpPseudoSum(p, s.v6, len(p)-s.ipLen), checksum.Checksum(p[s.ipLen:s.hdrLen], 0))
		if pos&1 != 0 {
			ps = swapSum(ps)
		}
		sum = checksum.Combine(sum, ps)
		pos += copy(payload[pos:], p[s.hdrLen:])
		last = p[s.ipLen+tcpFlagsOff]
	}
	total := s.hdrLen + pos
	if s.v6 {
		binary.BigEndian.PutUint16(hdr[ipv6PayloadOff:], uint16(total-ipv6HeaderLen))
	} else {
		binary.BigEndian.PutUint16(hdr[ipv4TotalLenOff:], uint16(total))
		setIPv4Checksum(hdr[:s.ipLen])
	}
	tcp := hdr[s.ipLen:s.hdrLen]
	tcp[tcpFlagsOff] |= last & tcpPSH
	tcp[tcpCsumOff], tcp[tcpCsumOff+1] = 0, 0
	sum = checksum.Combine(checksum.Checksum(tcp, sum), tcpPseudoSum(hdr, s.v6, total-s.ipLen))
	binary.BigEndian.PutUint16(tcp[tcpCsumOff:], ^sum)
}
