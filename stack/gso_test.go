package stack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// checkSplit returns an error unless pkts is exactly the split of the
// segment in into packets of at most mss payload bytes (see tcpSplitter):
// every packet consistent with valid checksums (checked by the reference
// implementation), headers copied but for lengths, IPv4 ID, sequence number,
// flags and checksums, and the payloads, put back together, equal to in's.
func checkSplit(in []byte, mss int, pkts [][]byte) error {
	ipLen, v6 := refIPLen(in)
	hdrLen, seq0, _, flags0, payload := tcpFields(in)
	want := max(1, (len(payload)+mss-1)/mss)
	if len(pkts) != want {
		return fmt.Errorf("%d packets, want %d", len(pkts), want)
	}
	id0 := binary.BigEndian.Uint16(in[4:])
	var got []byte
	for i, p := range pkts {
		if err := refCheckPacket(p); err != nil {
			return fmt.Errorf("packet %d: %w", i, err)
		}
		h, seq, _, flags, pl := tcpFields(p)
		if h != hdrLen {
			return fmt.Errorf("packet %d: headers of %d bytes, want %d", i, h, hdrLen)
		}
		if len(pl) > mss || (i < len(pkts)-1 && len(pl) != mss) {
			return fmt.Errorf("packet %d: %d payload bytes with MSS %d", i, len(pl), mss)
		}
		if seq != seq0+uint32(len(got)) {
			return fmt.Errorf("packet %d: seq %d, want %d", i, seq, seq0+uint32(len(got)))
		}
		wantFlags := flags0
		if i != len(pkts)-1 {
			wantFlags &^= tcpFIN | tcpPSH
		}
		if i != 0 {
			wantFlags &^= tcpCWR
		}
		if flags != wantFlags {
			return fmt.Errorf("packet %d: flags %#x, want %#x", i, flags, wantFlags)
		}
		skip := [][2]int{{ipLen + 4, ipLen + 8}, {ipLen + 13, ipLen + 14}, {ipLen + 16, ipLen + 18}}
		if v6 {
			skip = append(skip, [2]int{4, 6})
		} else {
			if id := binary.BigEndian.Uint16(p[4:]); id != id0+uint16(i) {
				return fmt.Errorf("packet %d: IPv4 ID %d, want %d", i, id, id0+uint16(i))
			}
			skip = append(skip, [2]int{2, 6}, [2]int{10, 12})
		}
		if !sameExcept(in[:hdrLen], p[:hdrLen], skip...) {
			return fmt.Errorf("packet %d: headers differ beyond lengths, ID, seq, flags and checksums", i)
		}
		got = append(got, pl...)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("reassembled payload differs (%d bytes, want %d)", len(got), len(payload))
	}
	return nil
}

// splitAll runs splitSegment with enough buffers and returns the packets.
func splitAll(t testing.TB, in []byte, mss int) [][]byte {
	t.Helper()
	const n = 64
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, testOffset+MaxMTU)
	}
	sizes := make([]int, n)
	k, ok := splitSegment(in, mss, out, sizes, testOffset)
	if !ok {
		t.Fatalf("splitSegment refused a %d-byte segment (mss %d)", len(in), mss)
	}
	pkts := make([][]byte, k)
	for i := range k {
		pkts[i] = out[i][testOffset : testOffset+sizes[i]]
	}
	return pkts
}

func TestSplitSegment(t *testing.T) {
	const mss = 1228 // 1280 MTU, IPv4, timestamps
	for _, v6 := range []bool{false, true} {
		for _, o := range []struct {
			name string
			opts []byte
		}{{"no-options", nil}, {"timestamps", tsOpts(1000, 2000)}, {"40-byte-options", maxOpts()}} {
			hdr := 20 + 20 + len(o.opts)
			if v6 {
				hdr += 20
			}
			for _, size := range []int{0, 1, mss - 1, mss, mss + 1, 3*mss + 17, 65535 - hdr} {
				for _, flags := range []byte{tcpACK, tcpACK | tcpPSH, tcpACK | tcpPSH | tcpFIN, tcpACK | tcpCWR | tcpECE | tcpPSH} {
					name := fmt.Sprintf("v6=%v/%s/%d/flags=%#x", v6, o.name, size, flags)
					t.Run(name, func(t *testing.T) {
						s := seg{v6: v6, id: 65530, seq: 0xfffff000, ack: 77, flags: flags, win: 512, opts: o.opts, payload: pattern(size, 3)}
						in := s.build()
						// gVisor leaves a partial checksum; the splitter must
						// not rely on the field.
						binary.BigEndian.PutUint16(in[hdr-len(o.opts)-20+16:], 0xbeef)
						if err := checkSplit(in, mss, splitAll(t, in, mss)); err != nil {
							t.Fatal(err)
						}
					})
				}
			}
		}
	}
}

// TestSplitSegmentIPv4Options checks that IPv4 options are copied to every
// packet.
func TestSplitSegmentIPv4Options(t *testing.T) {
	in := seg{ipOpts: 8, flags: tcpACK | tcpPSH, payload: pattern(5000, 9)}.build()
	if err := checkSplit(in, 1000, splitAll(t, in, 1000)); err != nil {
		t.Fatal(err)
	}
}

// TestSplitSegmentRefuses checks the cases the splitter must refuse rather
// than emit garbage.
func TestSplitSegmentRefuses(t *testing.T) {
	udp := mkPacket(addrA, addrB, 1, 100)
	good := seg{payload: pattern(3000, 1)}.build()
	badOff := bytes.Clone(good)
	badOff[20+12] = 0xf0 // TCP data offset 60 beyond nothing: still parses
	short := good[:30]
	out := [][]byte{make([]byte, 2000), make([]byte, 2000)}
	sizes := make([]int, 2)
	for name, c := range map[string]struct {
		seg []byte
		mss int
		out [][]byte
	}{
		"udp":          {udp, 1000, out},
		"truncated":    {short, 1000, out},
		"zero-mss":     {good, 0, out},
		"few-buffers":  {good, 1000, out[:2]},
		"small-buffer": {good, 1000, [][]byte{make([]byte, 100), make([]byte, 2000), make([]byte, 2000)}},
		"empty":        {nil, 1000, out},
	} {
		if _, ok := splitSegment(c.seg, c.mss, c.out, sizes, 0); ok {
			t.Errorf("%s: accepted", name)
		}
	}
}

// gsoPacket builds a gVisor packet buffer holding seg as the stack hands it
// to the link endpoint with offload on: headers pushed, the payload in
// several views, GSO options set and the TCP checksum left partial.
func gsoPacket(segment []byte, mss int, views int) *gstack.PacketBuffer {
	hdrLen, _, _, _, payload := tcpFields(segment)
	ipLen, v6 := refIPLen(segment)
	var buf buffer.Buffer
	step := max(1, len(payload)/max(1, views))
	for off := 0; off < len(payload); off += step {
		buf.Append(buffer.NewViewWithData(payload[off:min(off+step, len(payload))]))
	}
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{ReserveHeaderBytes: hdrLen, Payload: buf})
	copy(pkt.TransportHeader().Push(hdrLen-ipLen), segment[ipLen:hdrLen])
	copy(pkt.NetworkHeader().Push(ipLen), segment[:ipLen])
	pkt.GSOOptions = gstack.GSO{Type: gstack.GSOTCPv4, NeedsCsum: true, MSS: uint16(mss), L3HdrLen: uint16(ipLen)}
	if v6 {
		pkt.GSOOptions.Type = gstack.GSOTCPv6
	}
	return pkt
}

// TestNetstackDevSplitsAcrossReads checks the device path: a segment queued
// by the stack comes out of Read as MTU-sized packets, continuing in the
// next Read when a batch has too few buffers, followed by the next packet.
func TestNetstackDevSplitsAcrossReads(t *testing.T) {
	d, err := newNetstackDev([]netip.Addr{addrA}, DefaultMTU, true, Tuning{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const mss4, mss6 = 1228, 1208 // 1280 MTU with timestamps
	segs := [][]byte{
		seg{flags: tcpACK | tcpPSH, opts: tsOpts(5, 6), seq: 100, payload: pattern(10*mss4+5, 1)}.build(),
		seg{v6: true, flags: tcpACK | tcpFIN, opts: tsOpts(5, 6), seq: 9, payload: pattern(2*mss6, 2)}.build(),
		seg{flags: tcpACK, seq: 4, opts: tsOpts(5, 6)}.build(), // pure ACK: checksum completed
	}
	mss := []int{mss4, mss6 + 20, mss4} // the device caps the MSS at what fits the MTU
	var list gstack.PacketBufferList
	for i, s := range segs {
		list.PushBack(gsoPacket(s, mss[i], 3+i))
	}
	if n, err := d.ep.WritePackets(list); n != len(segs) || err != nil {
		t.Fatalf("WritePackets = %d, %v", n, err)
	}
	list.DecRef()
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, testOffset+MaxMTU)
	}
	sizes := make([]int, len(bufs))
	var got [][]byte
	for len(got) < 11+2+1 {
		n, err := d.Read(bufs, sizes, testOffset)
		if err != nil || n == 0 {
			t.Fatalf("Read = %d, %v after %d packets", n, err, len(got))
		}
		for i := range n {
			if sizes[i] > DefaultMTU {
				t.Fatalf("packet of %d bytes over a %d MTU", sizes[i], DefaultMTU)
			}
			got = append(got, bytes.Clone(bufs[i][testOffset:testOffset+sizes[i]]))
		}
	}
	for i, r := range [][2]int{{0, 11}, {11, 13}, {13, 14}} {
		if err := checkSplit(segs[i], []int{mss4, mss6, mss4}[i], got[r[0]:r[1]]); err != nil {
			t.Errorf("segment %d: %v", i, err)
		}
	}
	if d.split.busy || d.split.pkt != nil {
		t.Error("splitter still holds a segment")
	}
}

// FuzzSplitSegment checks that splitSegment never panics on arbitrary bytes,
// and that a well-formed segment built from the input splits into packets
// that pass checkSplit (so they put back together into the input payload).
func FuzzSplitSegment(f *testing.F) {
	f.Add([]byte("hello"), uint16(1228), uint8(12), false, uint8(tcpACK|tcpPSH))
	f.Add(pattern(3000, 1), uint16(1000), uint8(0), true, uint8(tcpACK|tcpFIN|tcpCWR))
	f.Add(seg{payload: pattern(100, 2)}.build(), uint16(7), uint8(40), false, uint8(tcpACK))
	// Buffers reused across inputs: the fuzz function runs one input at a
	// time in a process, and fresh ones would make minimizing slow.
	out := make([][]byte, 64)
	for i := range out {
		out[i] = make([]byte, 100+65535)
	}
	sizes := make([]int, len(out))
	f.Fuzz(func(t *testing.T, data []byte, mss uint16, optLen uint8, v6 bool, flags uint8) {
		splitSegment(data, int(mss), out[:8], sizes, 0) // must not panic

		if mss == 0 {
			return
		}
		opts := make([]byte, int(optLen%41)/4*4)
		for i := range opts {
			opts[i] = 1 // NOP
		}
		s := seg{v6: v6, flags: flags &^ (tcpSYN | tcpRST), seq: binary.LittleEndian.Uint32(append(bytes.Clone(data), 0, 0, 0, 0)), opts: opts, payload: data}
		in := s.build()
		if len(in) > 65535 {
			return
		}
		m := int(mss)
		if (len(data)+m-1)/m > 64 {
			m = (len(data) + 63) / 64
		}
		k, ok := splitSegment(in, m, out, sizes, 0)
		if !ok {
			t.Fatalf("refused a well-formed %d-byte segment, mss %d", len(in), m)
		}
		pkts := make([][]byte, k)
		for i := range k {
			pkts[i] = out[i][:sizes[i]]
		}
		if err := checkSplit(in, m, pkts); err != nil {
			t.Fatal(err)
		}
	})
}

// TestSplitZeroAlloc checks that splitting allocates nothing: the flat
// splitter, and the device path (Read of a queued segment, measured against
// queueing it and draining it unread).
func TestSplitZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless with -race (sync.Pool drops objects)")
	}
	in := seg{flags: tcpACK | tcpPSH, opts: tsOpts(1, 2), payload: pattern(60000, 1)}.build()
	out := make([][]byte, 64)
	for i := range out {
		out[i] = make([]byte, testOffset+MaxMTU)
	}
	sizes := make([]int, len(out))
	if a := testing.AllocsPerRun(100, func() {
		if _, ok := splitSegment(in, 1228, out, sizes, testOffset); !ok {
			t.Fatal("refused")
		}
	}); a != 0 {
		t.Errorf("splitSegment: %v allocs per segment, want 0", a)
	}

	d, err := newNetstackDev([]netip.Addr{addrA}, DefaultMTU, true, Tuning{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	queue := func() {
		var list gstack.PacketBufferList
		list.PushBack(gsoPacket(in, 1228, 4))
		d.ep.WritePackets(list)
		list.DecRef()
	}
	withRead := testing.AllocsPerRun(100, func() {
		queue()
		for got := 0; got < 49; {
			n, err := d.Read(out, sizes, testOffset)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	withoutRead := testing.AllocsPerRun(100, func() {
		queue()
		d.ep.Drain()
	})
	if withRead > withoutRead {
		t.Errorf("Read of a split segment: %v allocs, want 0", withRead-withoutRead)
	}
}

// TestCompleteTCPChecksum checks the one-packet path: a segment that fits
// in one packet gets its checksum completed in place, whatever the field
// held; other packets are refused.
func TestCompleteTCPChecksum(t *testing.T) {
	for _, s := range []seg{
		{flags: tcpACK, opts: tsOpts(1, 2)},
		{flags: tcpACK | tcpPSH, payload: pattern(63, 1)},
		{v6: true, flags: tcpACK | tcpFIN, payload: pattern(100, 2)},
		{ipOpts: 4, flags: tcpACK, payload: pattern(1, 3)},
	} {
		p := s.build()
		ipLen, _ := refIPLen(p)
		p[ipLen+16], p[ipLen+17] = 0x12, 0x34
		if !completeTCPChecksum(p) {
			t.Fatalf("refused %d-byte packet", len(p))
		}
		if err := refCheckPacket(p); err != nil {
			t.Fatal(err)
		}
	}
	if completeTCPChecksum(mkPacket(addrA, addrB, 1, 60)) || completeTCPChecksum(nil) || completeTCPChecksum([]byte{0x45, 0}) {
		t.Fatal("accepted a packet that is not TCP")
	}
}

// TestNetstackDevSplitsAtPeersMSS: a segment that would fit the MTU in one
// packet but carries more than the MSS (the peer asked for smaller
// segments) still leaves as packets of at most the MSS.
func TestNetstackDevSplitsAtPeersMSS(t *testing.T) {
	d, err := newNetstackDev([]netip.Addr{addrA}, DefaultMTU, true, Tuning{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const mss = 1000
	s := seg{flags: tcpACK | tcpPSH, opts: tsOpts(5, 6), seq: 7, payload: pattern(1100, 3)}.build()
	if len(s) > DefaultMTU {
		t.Fatalf("test segment of %d bytes does not fit the MTU", len(s))
	}
	var list gstack.PacketBufferList
	list.PushBack(gsoPacket(s, mss, 2))
	if n, err := d.ep.WritePackets(list); n != 1 || err != nil {
		t.Fatalf("WritePackets = %d, %v", n, err)
	}
	list.DecRef()
	bufs := [][]byte{make([]byte, testOffset+MaxMTU), make([]byte, testOffset+MaxMTU)}
	sizes := make([]int, len(bufs))
	n, err := d.Read(bufs, sizes, testOffset)
	if err != nil || n != 2 {
		t.Fatalf("Read = %d packets, %v; want the segment split in 2", n, err)
	}
	var got [][]byte
	for i := range n {
		got = append(got, bytes.Clone(bufs[i][testOffset:testOffset+sizes[i]]))
	}
	if err := checkSplit(s, mss, got); err != nil {
		t.Error(err)
	}
}
