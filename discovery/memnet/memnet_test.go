package memnet

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

var (
	a = netip.MustParseAddr("100.64.0.1")
	b = netip.MustParseAddr("100.64.0.2")
)

func TestPacketsAndStreams(t *testing.T) {
	h := NewHub()
	ha, hb := h.Host(a), h.Host(b)
	pa, err := ha.ListenUDP(1000)
	if err != nil {
		t.Fatal(err)
	}
	defer pa.Close()
	pb, _ := hb.ListenUDP(1000)
	defer pb.Close()
	if _, err := hb.ListenUDP(1000); err == nil {
		t.Fatal("port reused")
	}
	pa.WriteTo([]byte("hi"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(b, 1000)))
	buf := make([]byte, 10)
	n, from, err := pb.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hi" || from.String() != "100.64.0.1:1000" {
		t.Fatalf("got %q from %v, %v", buf[:n], from, err)
	}

	ln, _ := hb.ListenTCP(2000)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	c, err := ha.DialContext(context.Background(), "tcp", "100.64.0.2:2000")
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("echo"))
	io.ReadFull(c, buf[:4])
	if string(buf[:4]) != "echo" || c.RemoteAddr().String() != "100.64.0.2:2000" {
		t.Fatalf("echo %q remote %v", buf[:4], c.RemoteAddr())
	}
	if ha.SentBytes() != 6 {
		t.Fatalf("sent %d bytes, want 6", ha.SentBytes())
	}

	// Kill: the stream breaks, datagrams vanish, dials hang until ctx ends.
	h.Kill(b)
	if _, err := c.Read(buf); err == nil {
		t.Fatal("stream survived kill")
	}
	pa.WriteTo([]byte("lost"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(b, 1000)))
	pb.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, _, err := pb.ReadFrom(buf); err == nil {
		t.Fatal("datagram delivered to a killed host")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := ha.DialContext(ctx, "tcp", "100.64.0.2:2000"); err == nil {
		t.Fatal("dial to a killed host succeeded")
	}

	// Partition: same, until healed.
	h.Revive(b)
	h.Partition(a)
	pa.WriteTo([]byte("cut"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(b, 1000)))
	pb.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, _, err := pb.ReadFrom(buf); err == nil {
		t.Fatal("datagram crossed a partition")
	}
	h.Heal()
	pa.WriteTo([]byte("ok"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(b, 1000)))
	pb.SetReadDeadline(time.Time{})
	if n, _, err := pb.ReadFrom(buf); err != nil || string(buf[:n]) != "ok" {
		t.Fatalf("after heal: %q %v", buf[:n], err)
	}
	if _, err := ha.DialContext(context.Background(), "tcp", "100.64.0.2:9"); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
}
