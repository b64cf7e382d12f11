package stack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

func mkIPv6(src, dst netip.Addr, payload int) []byte {
	p := make([]byte, ipv6HeaderLen+payload)
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(payload))
	p[6] = 17
	p[7] = 64
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	return p
}

func TestPacketAddrs(t *testing.T) {
	v6a, v6b := netip.MustParseAddr("fd7a:115c:a1e0::1"), netip.MustParseAddr("fd7a:115c:a1e0::2")
	withOpts := mkPacket(addrA, addrB, 1, 60)
	withOpts[0] = 0x46 // 24-byte header with options
	badIHL := mkPacket(addrA, addrB, 1, 60)
	badIHL[0] = 0x44
	longTotal := mkPacket(addrA, addrB, 1, 60)
	binary.BigEndian.PutUint16(longTotal[2:], 61)
	ihlPastTotal := mkPacket(addrA, addrB, 1, 30)
	ihlPastTotal[0] = 0x4f // 60-byte header in a 30-byte packet
	cases := []struct {
		name     string
		pkt      []byte
		src, dst netip.Addr
		ok       bool
	}{
		{"ipv4", mkPacket(addrA, addrB, 1, 60), addrA, addrB, true},
		{"ipv4 options", withOpts, addrA, addrB, true},
		{"ipv4 trailing bytes", append(mkPacket(addrB, addrA, 1, 40), 0, 0), addrB, addrA, true},
		{"ipv6", mkIPv6(v6a, v6b, 8), v6a, v6b, true},
		{"ipv6 no payload", mkIPv6(v6b, v6a, 0), v6b, v6a, true},
		{"nil", nil, netip.Addr{}, netip.Addr{}, false},
		{"ipv4 truncated", mkPacket(addrA, addrB, 1, 60)[:19], netip.Addr{}, netip.Addr{}, false},
		{"ipv4 ihl < 5", badIHL, netip.Addr{}, netip.Addr{}, false},
		{"ipv4 total > len", longTotal, netip.Addr{}, netip.Addr{}, false},
		{"ipv4 ihl > total", ihlPastTotal, netip.Addr{}, netip.Addr{}, false},
		{"ipv6 truncated", mkIPv6(v6a, v6b, 0)[:39], netip.Addr{}, netip.Addr{}, false},
		{"ipv6 payload > len", mkIPv6(v6a, v6b, 8)[:45], netip.Addr{}, netip.Addr{}, false},
		{"version 5", bytes.Repeat([]byte{0x50}, 60), netip.Addr{}, netip.Addr{}, false},
	}
	for _, tc := range cases {
		src, dst, ok := PacketAddrs(tc.pkt)
		if ok != tc.ok || src != tc.src || dst != tc.dst {
			t.Errorf("%s: PacketAddrs = %v, %v, %v; want %v, %v, %v", tc.name, src, dst, ok, tc.src, tc.dst, tc.ok)
		}
	}
	pkt := mkPacket(addrA, addrB, 1, 60)
	if a := testing.AllocsPerRun(100, func() { PacketAddrs(pkt) }); a != 0 {
		t.Errorf("PacketAddrs allocates %v times", a)
	}
}

// FuzzPacketAddrs checks that PacketAddrs never panics, and that whenever it
// reports ok the addresses are exactly the header bytes of the version the
// first nibble names and the declared length fits the packet.
func FuzzPacketAddrs(f *testing.F) {
	f.Add(mkPacket(addrA, addrB, 1, 40))
	f.Add(mkIPv6(netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 4))
	f.Add([]byte{0x45})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		src, dst, ok := PacketAddrs(pkt)
		if !ok {
			if src.IsValid() || dst.IsValid() {
				t.Fatalf("not ok but addresses %v %v", src, dst)
			}
			return
		}
		switch pkt[0] >> 4 {
		case 4:
			ihl := int(pkt[0]&0xf) * 4
			total := int(binary.BigEndian.Uint16(pkt[2:]))
			if ihl < 20 || total < ihl || total > len(pkt) {
				t.Fatalf("accepted bad IPv4 header: ihl %d total %d len %d", ihl, total, len(pkt))
			}
			if !src.Is4() || !bytes.Equal(src.AsSlice(), pkt[12:16]) || !bytes.Equal(dst.AsSlice(), pkt[16:20]) {
				t.Fatalf("IPv4 addresses %v %v do not match header", src, dst)
			}
		case 6:
			if len(pkt) < 40 || 40+int(binary.BigEndian.Uint16(pkt[4:])) > len(pkt) {
				t.Fatalf("accepted bad IPv6 header, len %d", len(pkt))
			}
			if !src.Is6() || !bytes.Equal(src.AsSlice(), pkt[8:24]) || !bytes.Equal(dst.AsSlice(), pkt[24:40]) {
				t.Fatalf("IPv6 addresses %v %v do not match header", src, dst)
			}
		default:
			t.Fatalf("accepted version %d", pkt[0]>>4)
		}
	})
}
