package node

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	xproxy "golang.org/x/net/proxy"

	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/policy"
	"github.com/aigrid/gridnet/stack/relay"
)

// benchRules let beta's benchmark traffic into alpha without the flood
// limits getting in the way of thousands of short connections.
const benchRules = "inbound:\n  - {proto: tcp, port: 5201-5202, host: any}\nflood: {new_flows_per_sec: 1000000, max_flows_per_peer: 1000000, max_flows: 1000000}\n"

// benchPair starts alpha (a sink on overlay port 5201, an echo on 5202)
// and beta (SOCKS5 proxy and a forward to alpha:5201 on loopback).
func benchPair(b *testing.B) (alpha, beta *Node) {
	b.Helper()
	ca, err := newLocalCA("ca", "corp.example")
	if err != nil {
		b.Fatal(err)
	}
	start := func(name string, host int, rules string, mod func(*Options)) *Node {
		opts, err := ca.NodeOptions(name, netip.MustParsePrefix(fmt.Sprintf("100.64.0.%d/10", host)), nil, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		if rules != "" {
			if opts.Firewall, err = policy.ParseConfig([]byte(rules)); err != nil {
				b.Fatal(err)
			}
		}
		if mod != nil {
			mod(&opts)
		}
		n, err := Start(context.Background(), opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { n.Close() })
		return n
	}
	alpha = start("alpha", 1, benchRules, nil)
	sink, err := alpha.Listen("tcp", ":5201")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sink.Close() })
	go serveSink(sink)
	echo, err := alpha.Listen("tcp", ":5202")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { echo.Close() })
	go serveEcho(echo)
	beta = start("beta", 2, "", func(o *Options) {
		o.Peers = append(o.Peers, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), alpha.UnderlayPort()))
		o.Proxy = &ProxyOptions{SOCKS5: "127.0.0.1:0", Limits: relay.Limits{MaxConns: 4096}}
		o.Forward = []ForwardOptions{{Listen: "127.0.0.1:0", To: "alpha:5201"}}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !connected(beta, "alpha") {
		if time.Now().After(deadline) {
			b.Fatal("no session between beta and alpha")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return alpha, beta
}

// serveSink reads each connection to its end and answers with the byte
// count (8 bytes, big endian).
func serveSink(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
		}()
	}
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { defer c.Close(); io.Copy(c, c) }()
	}
}

// benchBytes is the bulk size: 1 GiB, or GRIDNET_BENCH_BYTES.
func benchBytes() int64 {
	if s := os.Getenv("GRIDNET_BENCH_BYTES"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 1 << 30
}

// bulk sends size bytes on c, half-closes, and waits for the sink's
// count; it returns the rate in MB/s.
func bulk(b *testing.B, c net.Conn, size int64) float64 {
	b.Helper()
	defer c.Close()
	buf := make([]byte, 64<<10)
	start := time.Now()
	for sent := int64(0); sent < size; {
		n := int64(len(buf))
		if size-sent < n {
			n = size - sent
		}
		w, err := c.Write(buf[:n])
		if err != nil {
			b.Fatalf("write after %d bytes: %v", sent, err)
		}
		sent += int64(w)
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		b.Fatalf("%T cannot half-close", c)
	}
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		b.Fatalf("no count from the sink: %v", err)
	}
	if n := int64(binary.BigEndian.Uint64(got[:])); n != size {
		b.Fatalf("sink got %d bytes, want %d", n, size)
	}
	return float64(size) / time.Since(start).Seconds() / 1e6
}

// socksDialer dials through beta's SOCKS5 proxy.
func socksDialer(b *testing.B, beta *Node) xproxy.ContextDialer {
	b.Helper()
	a, err := beta.relayAddr("socks5")
	if err != nil {
		b.Fatal(err)
	}
	d, err := xproxy.SOCKS5("tcp", a.String(), nil, &net.Dialer{})
	if err != nil {
		b.Fatal(err)
	}
	return d.(xproxy.ContextDialer)
}

// socksTCP is a connection through the proxy whose CloseWrite reaches the
// TCP connection under x/net/proxy's wrapper.
type socksTCP struct {
	net.Conn
	tcp *net.TCPConn
}

func (c socksTCP) CloseWrite() error { return c.tcp.CloseWrite() }

// BenchmarkRelayBulk: bulk TCP from beta's host to alpha through the
// SOCKS5 proxy and through a forward entry, against a direct Dial of
// beta's node on the same pair, in three rounds that each run the three
// paths, starting with a different one; the figures are medians, the
// ratios are of medians.
func BenchmarkRelayBulk(b *testing.B) {
	_, beta := benchPair(b)
	size := benchBytes()
	fwd, err := beta.relayAddr("forward[0]")
	if err != nil {
		b.Fatal(err)
	}
	paths := []struct {
		name string
		dial func() net.Conn
	}{
		{"direct", func() net.Conn {
			c, err := beta.Dial(context.Background(), "tcp", "alpha:5201")
			if err != nil {
				b.Fatal(err)
			}
			return c
		}},
		{"socks5", func() net.Conn {
			// Dial the proxy ourselves to keep the TCP connection for
			// CloseWrite; x/net/proxy then runs the handshake on it.
			raw, err := net.Dial("tcp", socksAddr(b, beta))
			if err != nil {
				b.Fatal(err)
			}
			d, err := xproxy.SOCKS5("tcp", "", nil, connDialer{raw})
			if err != nil {
				b.Fatal(err)
			}
			c, err := d.Dial("tcp", "alpha:5201")
			if err != nil {
				b.Fatal(err)
			}
			return socksTCP{Conn: c, tcp: raw.(*net.TCPConn)}
		}},
		{"forward", func() net.Conn {
			c, err := net.Dial("tcp", fwd.String())
			if err != nil {
				b.Fatal(err)
			}
			return c
		}},
	}
	rates := map[string][]float64{}
	for b.Loop() {
		for round := range 3 {
			// Each round starts with another path, so that none always
			// follows the same one.
			for i := range paths {
				p := paths[(round+i)%len(paths)]
				rates[p.name] = append(rates[p.name], bulk(b, p.dial(), size))
			}
		}
	}
	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	direct := med(rates["direct"])
	b.ReportMetric(direct, "direct-MB/s")
	b.ReportMetric(med(rates["socks5"]), "socks5-MB/s")
	b.ReportMetric(med(rates["forward"]), "forward-MB/s")
	b.ReportMetric(med(rates["socks5"])/direct, "socks5/direct")
	b.ReportMetric(med(rates["forward"])/direct, "forward/direct")
	b.ReportMetric(0, "ns/op")
}

func socksAddr(b *testing.B, n *Node) string {
	a, err := n.relayAddr("socks5")
	if err != nil {
		b.Fatal(err)
	}
	return a.String()
}

// connDialer hands x/net/proxy a connection already made.
type connDialer struct{ c net.Conn }

func (d connDialer) Dial(string, string) (net.Conn, error) { return d.c, nil }

// BenchmarkProxyConnect: connection setup through the SOCKS5 proxy
// against a direct Dial of beta's node: each connection is made, echoes
// one byte and is closed, one after another, alternating the two. It
// reports both rates (connections/s) and the added latency of the proxy
// at the median and the 99th percentile.
func BenchmarkProxyConnect(b *testing.B) {
	_, beta := benchPair(b)
	socks := socksDialer(b, beta)
	const rounds = 2000
	one := func(c net.Conn, err error) {
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{1}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
	}
	var direct, proxied []time.Duration
	ctx := context.Background()
	for b.Loop() {
		for range rounds {
			t0 := time.Now()
			one(beta.Dial(ctx, "tcp", "alpha:5202"))
			direct = append(direct, time.Since(t0))
			t0 = time.Now()
			one(socks.DialContext(ctx, "tcp", "alpha:5202"))
			proxied = append(proxied, time.Since(t0))
		}
	}
	q := func(v []time.Duration, p float64) time.Duration {
		v = slices.Clone(v)
		slices.Sort(v)
		return v[int(p*float64(len(v)-1))]
	}
	sum := func(v []time.Duration) (s time.Duration) {
		for _, d := range v {
			s += d
		}
		return s
	}
	b.ReportMetric(float64(len(direct))/sum(direct).Seconds(), "direct-conns/s")
	b.ReportMetric(float64(len(proxied))/sum(proxied).Seconds(), "socks5-conns/s")
	b.ReportMetric(float64(q(direct, 0.5).Microseconds()), "direct-p50-µs")
	b.ReportMetric(float64(q(proxied, 0.5).Microseconds()), "socks5-p50-µs")
	b.ReportMetric(float64((q(proxied, 0.5) - q(direct, 0.5)).Microseconds()), "added-p50-µs")
	b.ReportMetric(float64((q(proxied, 0.99) - q(direct, 0.99)).Microseconds()), "added-p99-µs")
	b.ReportMetric(0, "ns/op")
}

// connected reports whether n holds a WireGuard session with name.
func connected(n *Node, name string) bool {
	for _, p := range n.Peers() {
		if p.Name == name && p.State == overlay.PeerConnected {
			return true
		}
	}
	return false
}
