// Package freeport picks ports for tests that must name a node's port
// before the node binds it, such as a seed that other nodes are told
// about before it starts.
//
// A port found by binding port 0 and closing the socket is free only for
// a moment: the kernel hands the same range out to every socket bound to
// port 0, so any test running alongside may take it before the node
// binds it. The ports here come from below the kernel's ephemeral range
// instead, which only sockets that ask for them by number get.
package freeport

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// lowest is the lowest port UDP returns; ports below it are left to
// well-known and registered services.
const lowest = 20000

// UDP returns n distinct ports on which UDP and TCP, IPv4 and IPv6, can
// all be bound on every address right now, from below the ephemeral
// range when the range leaves room for that. It fails tb if it finds
// none.
func UDP(tb testing.TB, n int) []uint16 {
	tb.Helper()
	top := ephemeralLow()
	var held []func()
	defer func() {
		for _, release := range held {
			release()
		}
	}()
	var out []uint16
	if top-lowest < 1000 {
		// No room below the range: fall back to the kernel's choice.
		for range n {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				tb.Fatalf("freeport: %v", err)
			}
			held = append(held, func() { c.Close() })
			out = append(out, uint16(c.LocalAddr().(*net.UDPAddr).Port))
		}
		return out
	}
	start := lowest + rand.IntN(top-lowest)
	for i := 0; i < top-lowest && len(out) < n; i++ {
		port := lowest + (start-lowest+i)%(top-lowest)
		if release, ok := hold(port); ok {
			held = append(held, release)
			out = append(out, uint16(port))
		}
	}
	if len(out) < n {
		tb.Fatalf("freeport: found %d free ports in %d–%d, want %d", len(out), lowest, top-1, n)
	}
	return out
}

// hold binds port for UDP and TCP on every IPv4 and IPv6 address and
// returns the release of those sockets. A host without IPv6 is checked
// on IPv4 alone.
func hold(port int) (release func(), ok bool) {
	var held []io.Closer
	release = func() {
		for _, c := range held {
			c.Close()
		}
	}
	addr := ":" + strconv.Itoa(port)
	for _, network := range []string{"udp4", "udp6", "tcp4", "tcp6"} {
		var c io.Closer
		var err error
		if strings.HasPrefix(network, "udp") {
			c, err = net.ListenPacket(network, addr)
		} else {
			c, err = net.Listen(network, addr)
		}
		switch {
		case err == nil:
			held = append(held, c)
		case strings.HasSuffix(network, "6") && noIPv6(err):
		default:
			release()
			return nil, false
		}
	}
	return release, true
}

// noIPv6 reports whether err says the host has no IPv6.
func noIPv6(err error) bool {
	return errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL)
}

// ephemeralLow is the lowest port of the kernel's ephemeral range (the
// ports it gives sockets bound to port 0): Linux's setting, or the IANA
// range's start where there is none.
func ephemeralLow() int {
	const iana = 49152
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return iana
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return iana
	}
	if low, err := strconv.Atoi(f[0]); err == nil {
		return low
	}
	return iana
}
