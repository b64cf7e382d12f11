package policy

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var (
	selfV4 = netip.MustParseAddr("100.64.0.1")
	selfV6 = netip.MustParseAddr("fd00::1")
)

// pk describes a test packet.
type pk struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
	flags        uint8 // TCP flags
	icmpType     uint8
	icmpID       uint16
	payload      int
}

// build returns the packet bytes (checksums are not computed: the firewall
// does not read them).
func (p pk) build() []byte {
	var l4 []byte
	switch p.proto {
	case protoTCP:
		l4 = make([]byte, 20+p.payload)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		l4[12] = 5 << 4
		l4[13] = p.flags
	case protoUDP:
		l4 = make([]byte, 8+p.payload)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	case protoICMP, protoICMPv6:
		l4 = make([]byte, 8+p.payload)
		l4[0] = p.icmpType
		binary.BigEndian.PutUint16(l4[4:], p.icmpID)
	default:
		l4 = make([]byte, p.payload)
	}
	if p.src.Is4() {
		b := make([]byte, 20+len(l4))
		b[0] = 0x45
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		b[8] = 64
		b[9] = p.proto
		s, d := p.src.As4(), p.dst.As4()
		copy(b[12:], s[:])
		copy(b[16:], d[:])
		copy(b[20:], l4)
		return b
	}
	b := make([]byte, 40+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(l4)))
	b[6] = p.proto
	b[7] = 64
	s, d := p.src.As16(), p.dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	copy(b[40:], l4)
	return b
}

func tcpIn(src netip.Addr, sport, dport uint16) []byte {
	return pk{src: src, dst: selfV4, proto: protoTCP, sport: sport, dport: dport, flags: tcpSYN}.build()
}

// testFW builds a firewall from YAML with an injected clock.
func testFW(t testing.TB, yml string, peers ...PeerInfo) (*Firewall, *fakeClock) {
	t.Helper()
	cfg, err := ParseConfig([]byte(yml))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	clk := newClock()
	f, err := New(cfg, Options{Now: clk.Now, Self: PeerInfo{Name: "self", Domain: localDomain, Addresses: []netip.Addr{selfV4, selfV6}}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(f.Close)
	for _, p := range peers {
		f.SetPeer(p)
	}
	return f, clk
}

// localDomain is the test firewall's own domain, and that of peerInfo's
// peers.
const localDomain = "corp.example"

func peerInfo(name string, n byte, groups ...string) PeerInfo {
	return PeerInfo{Name: name, Domain: localDomain, CAName: "corp-ca", CAFingerprint: "AA:BB:CC",
		Groups: groups, Addresses: []netip.Addr{netip.AddrFrom4([4]byte{100, 64, 1, n}), netip.AddrFrom16([16]byte{0: 0xfd, 15: n})}}
}

func v4(n byte) netip.Addr { return netip.AddrFrom4([4]byte{100, 64, 1, n}) }
func v6(n byte) netip.Addr { return netip.AddrFrom16([16]byte{0: 0xfd, 15: n}) }
