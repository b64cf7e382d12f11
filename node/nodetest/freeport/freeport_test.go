package freeport

import (
	"net"
	"testing"
)

// TestUDPPortsAreFreeAndOutsideEphemeralRange: the ports are distinct,
// lie below the ephemeral range (when it leaves room) and can be bound.
func TestUDPPortsAreFreeAndOutsideEphemeralRange(t *testing.T) {
	ports := UDP(t, 5)
	if len(ports) != 5 {
		t.Fatalf("%d ports, want 5", len(ports))
	}
	seen := map[uint16]bool{}
	top := ephemeralLow()
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d returned twice", p)
		}
		seen[p] = true
		if top-lowest >= 1000 && (int(p) < lowest || int(p) >= top) {
			t.Fatalf("port %d outside %d–%d", p, lowest, top-1)
		}
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: int(p)})
		if err != nil {
			t.Fatalf("port %d not free: %v", p, err)
		}
		c.Close()
	}
}

// TestHoldRefusesTakenPort: a port some socket holds is not returned.
func TestHoldRefusesTakenPort(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if release, ok := hold(c.LocalAddr().(*net.UDPAddr).Port); ok {
		release()
		t.Fatal("a port bound on 127.0.0.1 was held as free")
	}
}
