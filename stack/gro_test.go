package stack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"testing"
)

// coalesce runs the planner and builder on pkts (at offset) and returns
// the output packets and, for each, the input indices it stands for.
func coalesce(pkts [][]byte, offset int) (out [][]byte, members [][]int) {
	var g groBatch
	for start := 0; start < len(pkts); start += groWindow {
		win := pkts[start:min(start+groWindow, len(pkts))]
		g.plan(win, offset)
		for j := range g.nout {
			b := make([]byte, g.size(win, offset, j))
			g.build(b, win, offset, j)
			out = append(out, b)
			var m []int
			for i := g.out[j]; i >= 0; i = g.next[i] {
				m = append(m, start+int(i))
			}
			members = append(members, m)
		}
	}
	return out, members
}

// flowKey is a packet's addresses and ports (or "other" for non-TCP).
func flowKey(p []byte) string {
	if len(p) < 40 || (p[0]>>4 != 4 && p[0]>>4 != 6) {
		return "other"
	}
	ipLen, v6 := refIPLen(p)
	if len(p) < ipLen+4 || (v6 && p[6] != 6) || (!v6 && p[9] != 6) {
		return "other"
	}
	if v6 {
		return string(p[8:40]) + string(p[ipLen:ipLen+4])
	}
	return string(p[12:20]) + string(p[ipLen:ipLen+4])
}

// checkCoalesce returns an error unless out/members is a correct
// coalescing of in: every packet in exactly one output, members in order;
// a lone packet unchanged; a merged packet made of candidates (checked by
// the reference implementation) with consecutive sequence numbers, the
// first member's headers (but for lengths, checksums and PSH), every
// member's payload in order, and a valid checksum exactly when every member
// had one; and per-flow order kept across outputs.
func checkCoalesce(in [][]byte, offset int, out [][]byte, members [][]int) error {
	seen := make([]int, len(in))
	for i := range seen {
		seen[i] = -1
	}
	for j, m := range members {
		for k, i := range m {
			if seen[i] >= 0 {
				return fmt.Errorf("input %d in outputs %d and %d", i, seen[i], j)
			}
			if k > 0 && i <= m[k-1] {
				return fmt.Errorf("output %d: members %v out of order", j, m)
			}
			seen[i] = j
		}
		if len(m) == 1 {
			if !bytes.Equal(out[j], in[m[0]][offset:]) {
				return fmt.Errorf("output %d: lone packet %d changed", j, m[0])
			}
			continue
		}
		head := in[m[0]][offset:]
		ipLen, v6 := refIPLen(head)
		hdrLen, seq, _, _, _ := tcpFields(head)
		valid := true
		var payload []byte
		var lastFlags byte
		for k, i := range m {
			p := in[i][offset:]
			h, s, _, flags, pl := tcpFields(p)
			if h != hdrLen || s != seq+uint32(len(payload)) || len(pl) == 0 {
				return fmt.Errorf("output %d: member %d (seq %d, %d header bytes) does not follow", j, i, s, h)
			}
			if flags&^tcpPSH != tcpACK || (flags&tcpPSH != 0 && k != len(m)-1) {
				return fmt.Errorf("output %d: member %d has flags %#x", j, i, flags)
			}
			if !v6 && (ipLen != 20 || binary.BigEndian.Uint16(p[6:])&0x3fff != 0) {
				return fmt.Errorf("output %d: member %d has IPv4 options or is a fragment", j, i)
			}
			if refTCPSum(p) != 0xffff {
				valid = false
			}
			payload = append(payload, pl...)
			lastFlags = flags
		}
		o := out[j]
		h, s, _, flags, pl := tcpFields(o)
		if h != hdrLen || s != seq || !bytes.Equal(pl, payload) {
			return fmt.Errorf("output %d: header length %d seq %d or payload (%d bytes, want %d) wrong", j, h, s, len(pl), len(payload))
		}
		if flags != head[ipLen+13]|lastFlags&tcpPSH {
			return fmt.Errorf("output %d: flags %#x", j, flags)
		}
		skip := [][2]int{{ipLen + 13, ipLen + 14}, {ipLen + 16, ipLen + 18}}
		if v6 {
			skip = append(skip, [2]int{4, 6})
		} else {
			skip = append(skip, [2]int{2, 4}, [2]int{10, 12})
		}
		if !sameExcept(head[:hdrLen], o[:hdrLen], skip...) {
			return fmt.Errorf("output %d: headers differ from the first member's", j)
		}
		err := refCheckPacket(o)
		if valid && err != nil {
			return fmt.Errorf("output %d: %w", j, err)
		}
		if !valid && err == nil {
			return fmt.Errorf("output %d: valid checksum over a member with a wrong one", j)
		}
	}
	for i, j := range seen {
		if j < 0 && len(in[i]) > offset {
			return fmt.Errorf("input %d missing from the output", i)
		}
	}
	// Per-flow order: a later packet of a flow never comes out before an
	// earlier one.
	last := map[string]int{}
	for i := range in {
		if len(in[i]) <= offset || seen[i] < 0 {
			continue
		}
		k := flowKey(in[i][offset:])
		if k == "other" {
			continue
		}
		if j, ok := last[k]; ok && seen[i] < j {
			return fmt.Errorf("input %d (output %d) delivered before an earlier packet of its flow (output %d)", i, seen[i], j)
		}
		last[k] = seen[i]
	}
	return nil
}

func TestCoalesce(t *testing.T) {
	const mss = 1000
	ts := tsOpts(1, 2)
	// d returns data segment i of a flow: sequence number 1000*i.
	d := func(i int) seg {
		return seg{seq: uint32(mss * i), ack: 5, flags: tcpACK, win: 100, opts: ts, payload: pattern(mss, byte(i))}
	}
	with := func(s seg, f func(*seg)) seg { f(&s); return s }
	var big []seg
	for i := range 70 {
		big = append(big, d(i))
	}
	udp := mkPacket(addrA, addrB, 1, 200)
	for _, c := range []struct {
		name  string
		segs  []seg
		extra map[int][]byte // raw packets inserted at these positions
		want  [][]int
	}{
		{name: "in-order", segs: []seg{d(0), d(1), d(2), d(3)}, want: [][]int{{0, 1, 2, 3}}},
		{name: "1-byte", segs: []seg{
			with(d(0), func(s *seg) { s.payload = []byte{1} }),
			with(d(0), func(s *seg) { s.seq, s.payload = 1, []byte{2} }),
			with(d(0), func(s *seg) { s.seq, s.payload = 2, []byte{3} }),
		}, want: [][]int{{0, 1, 2}}},
		{name: "mss-1-ends-merge", segs: []seg{d(0), with(d(1), func(s *seg) { s.payload = s.payload[:mss-1] }), with(d(2), func(s *seg) { s.seq-- })},
			want: [][]int{{0, 1}, {2}}},
		{name: "mss+1-not-merged", segs: []seg{d(0), with(d(1), func(s *seg) { s.payload = pattern(mss+1, 1) })}, want: [][]int{{0}, {1}}},
		{name: "psh-ends-merge", segs: []seg{d(0), with(d(1), func(s *seg) { s.flags |= tcpPSH }), d(2), d(3)}, want: [][]int{{0, 1}, {2, 3}}},
		{name: "psh-first", segs: []seg{with(d(0), func(s *seg) { s.flags |= tcpPSH }), d(1)}, want: [][]int{{0}, {1}}},
		{name: "out-of-order", segs: []seg{d(0), d(2), d(1), d(3)}, want: [][]int{{0}, {1}, {2}, {3}}},
		{name: "gap", segs: []seg{d(0), d(1), d(3), d(4)}, want: [][]int{{0, 1}, {2}, {3}}},
		{name: "retransmitted", segs: []seg{d(0), d(1), d(1), d(2)}, want: [][]int{{0, 1}, {2}, {3}}},
		{name: "overlap", segs: []seg{d(0), with(d(1), func(s *seg) { s.seq -= 10 })}, want: [][]int{{0}, {1}}},
		{name: "fin", segs: []seg{d(0), d(1), with(d(2), func(s *seg) { s.flags |= tcpFIN })}, want: [][]int{{0, 1}, {2}}},
		{name: "syn-rst-urg-ece-cwr", segs: []seg{
			d(0), with(d(1), func(s *seg) { s.flags |= tcpSYN }),
			d(2), with(d(3), func(s *seg) { s.flags |= tcpRST }),
			d(4), with(d(5), func(s *seg) { s.flags |= tcpURG }),
			d(6), with(d(7), func(s *seg) { s.flags |= tcpECE }),
			d(8), with(d(9), func(s *seg) { s.flags |= tcpCWR }),
		}, want: [][]int{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}}},
		{name: "no-ack-flag", segs: []seg{with(d(0), func(s *seg) { s.flags = 0 }), with(d(1), func(s *seg) { s.flags = 0 })}, want: [][]int{{0}, {1}}},
		{name: "pure-ack-between", segs: []seg{d(0), with(d(1), func(s *seg) { s.payload = nil }), d(1)}, want: [][]int{{0}, {1}, {2}}},
		{name: "timestamp-moved", segs: []seg{d(0), with(d(1), func(s *seg) { s.opts = tsOpts(2, 2) }), with(d(2), func(s *seg) { s.opts = tsOpts(2, 2) })},
			want: [][]int{{0}, {1, 2}}},
		{name: "options-differ-in-length", segs: []seg{d(0), with(d(1), func(s *seg) { s.opts = nil })}, want: [][]int{{0}, {1}}},
		{name: "ack-moved", segs: []seg{d(0), with(d(1), func(s *seg) { s.ack++ })}, want: [][]int{{0}, {1}}},
		{name: "window-moved", segs: []seg{d(0), with(d(1), func(s *seg) { s.win++ })}, want: [][]int{{0}, {1}}},
		{name: "tos-differs", segs: []seg{d(0), with(d(1), func(s *seg) { s.tos = 4 })}, want: [][]int{{0}, {1}}},
		{name: "ipv4-options", segs: []seg{with(d(0), func(s *seg) { s.ipOpts = 4 }), with(d(1), func(s *seg) { s.ipOpts = 4 })}, want: [][]int{{0}, {1}}},
		{name: "fragments", segs: []seg{with(d(0), func(s *seg) { s.frag = 0x2000 }), with(d(1), func(s *seg) { s.frag = 0x2000 })}, want: [][]int{{0}, {1}}},
		{name: "two-flows", segs: []seg{d(0), with(d(0), func(s *seg) { s.sport = 1 }), d(1), with(d(1), func(s *seg) { s.sport = 1 }), d(2)},
			want: [][]int{{0, 2, 4}, {1, 3}}},
		{name: "ipv6", segs: []seg{with(d(0), func(s *seg) { s.v6 = true }), with(d(1), func(s *seg) { s.v6 = true }), with(d(2), func(s *seg) { s.v6 = true })},
			want: [][]int{{0, 1, 2}}},
		{name: "ipv4-and-ipv6-same-ports", segs: []seg{d(0), with(d(1), func(s *seg) { s.v6 = true }), d(1)}, want: [][]int{{0, 2}, {1}}},
		{name: "64KiB-cap", segs: big, want: [][]int{seq(0, 65), seq(65, 70)}},
		{name: "udp-between", segs: []seg{d(0), d(1)}, extra: map[int][]byte{1: udp}, want: [][]int{{0, 2}, {1}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var in [][]byte
			for _, s := range c.segs {
				if p, ok := c.extra[len(in)]; ok {
					in = append(in, withOffset(p, testOffset, 0))
				}
				in = append(in, withOffset(s.build(), testOffset, 0))
			}
			out, members := coalesce(in, testOffset)
			if err := checkCoalesce(in, testOffset, out, members); err != nil {
				t.Fatal(err)
			}
			got := slices.Clone(members)
			slices.SortFunc(got, func(a, b []int) int { return a[0] - b[0] })
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Fatalf("merged %v, want %v", got, c.want)
			}
		})
	}
}

// seq returns the integers [from, to).
func seq(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

// TestCoalesceBadChecksums checks what the coalescer does with packets
// whose checksums are wrong: a wrong IPv4 header checksum or trailing bytes
// keep a packet out of any merge, and a member with a wrong TCP checksum
// makes the merged checksum wrong, so gVisor drops the merge.
func TestCoalesceBadChecksums(t *testing.T) {
	mk := func(i int) []byte {
		return seg{seq: uint32(100 * i), flags: tcpACK, payload: pattern(100, byte(i))}.build()
	}
	badIP := mk(1)
	badIP[5]++ // ID changed (merges ignore it), header checksum not updated
	trailing := append(mk(1), 0, 0)
	badTCP := mk(1)
	badTCP[len(badTCP)-1]++
	for name, c := range map[string]struct {
		pkt       []byte
		merged    bool
		wantValid bool
	}{
		"ipv4-header": {badIP, false, false},
		"trailing":    {trailing, false, false},
		"tcp":         {badTCP, true, false},
		"good":        {mk(1), true, true},
	} {
		in := [][]byte{mk(0), c.pkt, mk(2)}
		out, members := coalesce(in, 0)
		if err := checkCoalesce(in, 0, out, members); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if merged := len(members) == 1; merged != c.merged {
			t.Fatalf("%s: merged %v, want %v", name, members, c.merged)
		}
		if c.merged && (refCheckPacket(out[0]) == nil) != c.wantValid {
			t.Fatalf("%s: merged checksum valid = %v", name, !c.wantValid)
		}
	}
}

// FuzzCoalesce checks that the coalescer never panics on arbitrary packets
// and that its output passes checkCoalesce (so the outputs put back
// together are exactly the input packets and payloads). The input drives
// both raw packets (length-prefixed chunks of data) and a flow of
// well-formed segments cut from data, perturbed by ops.
func FuzzCoalesce(f *testing.F) {
	f.Add(pattern(5000, 1), []byte{0, 0, 0, 0, 0})
	f.Add(pattern(3000, 2), []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add(seg{payload: pattern(50, 3), flags: tcpACK}.build(), []byte{9, 9, 9})
	f.Fuzz(func(t *testing.T, data []byte, ops []byte) {
		// Raw packets: each chunk is [len byte][bytes].
		var raw [][]byte
		for rest := data; len(rest) > 0 && len(raw) < 300; {
			n := min(int(rest[0])*4, len(rest)-1)
			raw = append(raw, rest[1:1+n])
			rest = rest[1+n:]
		}
		out, members := coalesce(raw, 0)
		if err := checkCoalesce(raw, 0, out, members); err != nil {
			t.Fatalf("raw packets: %v", err)
		}

		// A flow cut from data, one segment per op.
		var segs [][]byte
		var seqNo uint32 = 7
		pos := 0
		for i, op := range ops {
			if i >= 200 {
				break
			}
			n := int(op>>3) * 37 % 1400
			n = min(n, len(data)-pos)
			s := seg{v6: op&1 != 0 && i%7 == 0, seq: seqNo, flags: tcpACK, ack: 1, win: 9, opts: tsOpts(1, 1), payload: data[pos : pos+n]}
			switch op & 7 {
			case 1:
				s.flags |= tcpPSH
			case 2:
				s.seq -= 50 // overlap
			case 3:
				s.seq += 50 // gap
			case 4:
				s.flags |= tcpFIN
			case 5:
				s.opts = tsOpts(uint32(i), 1)
			case 6:
				s.sport = 7
			}
			p := s.build()
			if op == 0xff && len(p) > 60 {
				p[len(p)-1]++ // wrong checksum
			}
			segs = append(segs, p)
			pos += n
			seqNo = s.seq + uint32(n)
		}
		out, members = coalesce(segs, 0)
		if err := checkCoalesce(segs, 0, out, members); err != nil {
			t.Fatalf("segments: %v", err)
		}
	})
}

// TestCoalesceZeroAlloc checks that coalescing allocates nothing: planning
// and building, and the device's Write of a mergeable batch (merged into a
// pooled gVisor buffer; the stack drops it, as it is not addressed to it).
func TestCoalesceZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless with -race (sync.Pool drops objects)")
	}
	var in [][]byte
	for i := range 40 {
		s := seg{seq: uint32(1228 * i), flags: tcpACK, opts: tsOpts(1, 2), payload: pattern(1228, byte(i))}
		in = append(in, withOffset(s.build(), testOffset, 0))
	}
	dst := make([]byte, 65535)
	var g groBatch
	if a := testing.AllocsPerRun(200, func() {
		g.plan(in, testOffset)
		for j := range g.nout {
			g.build(dst[:g.size(in, testOffset, j)], in, testOffset, j)
		}
	}); a != 0 {
		t.Errorf("plan and build: %v allocs per batch, want 0", a)
	}
	d, err := newNetstackDev([]netip.Addr{netip.MustParseAddr("100.64.0.9")}, DefaultMTU, true, Tuning{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if a := testing.AllocsPerRun(200, func() { d.Write(in, testOffset) }); a != 0 {
		t.Errorf("Write: %v allocs per batch, want 0", a)
	}
}
