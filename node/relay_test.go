package node

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	xproxy "golang.org/x/net/proxy"

	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/policy"
	"github.com/aigrid/gridnet/stack/relay"
)

// relayDeadline bounds every wait of the relay tests: generous, only a
// hang or a missing mechanism misses it.
const relayDeadline = 60 * time.Second

// fabricCA is one throwaway CA for the nodes of a test.
type fabricCA struct {
	t  *testing.T
	ca *localCA
}

func newFabricCA(t *testing.T) *fabricCA {
	t.Helper()
	ca, err := newLocalCA("ca", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	return &fabricCA{t: t, ca: ca}
}

// node starts node name at 100.64.0.host/10 with the given firewall rules
// (YAML, "" for the default), static peers and option changes.
func (f *fabricCA) node(name string, host int, rules string, mod func(*Options), peers ...*Node) *Node {
	f.t.Helper()
	opts, err := f.ca.NodeOptions(name, netip.MustParsePrefix(fmt.Sprintf("100.64.0.%d/10", host)), nil, time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	if rules != "" {
		if opts.Firewall, err = policy.ParseConfig([]byte(rules)); err != nil {
			f.t.Fatal(err)
		}
	}
	for _, p := range peers {
		opts.Peers = append(opts.Peers, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p.UnderlayPort()))
	}
	if mod != nil {
		mod(&opts)
	}
	n, err := Start(context.Background(), opts)
	if err != nil {
		f.t.Fatalf("start %s: %v", name, err)
	}
	f.t.Cleanup(func() { n.Close() })
	return n
}

// waitSession waits until a holds a WireGuard session with the node
// called name.
func waitSession(t *testing.T, a *Node, name string) {
	t.Helper()
	waitUntil(t, relayDeadline, a.Identity().Name+"'s session with "+name, func() bool {
		for _, p := range a.Peers() {
			if p.Name == name && p.State == overlay.PeerConnected {
				return true
			}
		}
		return false
	})
}

// overlayHTTP serves HTTP on n's overlay port: "hello from NAME PATH".
func overlayHTTP(t *testing.T, n *Node, port uint16) {
	t.Helper()
	ln, err := n.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: helloHandler(n.Identity().Name)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func helloHandler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s %s", name, r.URL.Path)
	})
}

// localHTTP serves HTTP on a loopback port of this host and returns its
// address.
func localHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// echoOn serves TCP echo on ln until the test ends.
func echoOn(t *testing.T, ln net.Listener) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); io.Copy(c, c) }()
		}
	}()
}

func addrOf(t *testing.T, n *Node, key string) string {
	t.Helper()
	a, err := n.relayAddr(key)
	if err != nil {
		t.Fatal(err)
	}
	return a.String()
}

// socksClient is an HTTP client that dials through the SOCKS5 proxy at
// addr, names resolved by the proxy (as curl --socks5-hostname).
func socksClient(t *testing.T, addr string) *http.Client {
	t.Helper()
	d, err := xproxy.SOCKS5("tcp", addr, nil, &net.Dialer{Timeout: relayDeadline})
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: relayDeadline, Transport: &http.Transport{DialContext: d.(xproxy.ContextDialer).DialContext, DisableKeepAlives: true}}
}

// httpProxyClient is an HTTP client whose requests go through the HTTP
// proxy at addr.
func httpProxyClient(addr string) *http.Client {
	return &http.Client{Timeout: relayDeadline, Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr}), DisableKeepAlives: true}}
}

// fetch GETs u and returns the status and body; a transport error is
// status 0 and the error's text.
func fetch(c *http.Client, u string) (int, string) {
	resp, err := c.Get(u)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// proxyPair starts alpha (HTTP on overlay port 80, the given inbound
// rules) and beta (both proxies on loopback, outbound rules as given),
// and waits for their session.
func proxyPair(t *testing.T, alphaRules, betaRules string, betaMod func(*Options)) (alpha, beta *Node) {
	t.Helper()
	f := newFabricCA(t)
	alpha = f.node("alpha", 1, alphaRules, nil)
	overlayHTTP(t, alpha, 80)
	beta = f.node("beta", 2, betaRules, func(o *Options) {
		o.Proxy = &ProxyOptions{SOCKS5: "127.0.0.1:0", HTTP: "127.0.0.1:0", Limits: relay.Limits{MaxConns: 1024, ConnectTimeout: 3 * time.Second}}
		if betaMod != nil {
			betaMod(o)
		}
	}, alpha)
	waitSession(t, beta, "alpha")
	return alpha, beta
}

const allowWeb = "inbound:\n  - {proto: tcp, port: 80, host: any}\n"

// TestProxiesReachOverlayServiceByNameAndAddress: a Go HTTP server on
// alpha's overlay address is reached from beta's host through SOCKS5
// (names resolved by the proxy) and through the HTTP proxy, by NAME,
// NAME.DOMAIN and address.
func TestProxiesReachOverlayServiceByNameAndAddress(t *testing.T) {
	_, beta := proxyPair(t, allowWeb, "", nil)
	overlayHTTP(t, beta, 80) // the proxy's own node is reachable too
	for _, c := range []struct {
		how    string
		client *http.Client
	}{{"socks5", socksClient(t, addrOf(t, beta, "socks5"))}, {"http proxy", httpProxyClient(addrOf(t, beta, "http"))}} {
		for host, want := range map[string]string{
			"alpha": "alpha", "alpha.corp.example": "alpha", "ALPHA.corp.example.": "alpha", "100.64.0.1": "alpha",
			"beta": "beta", "beta.corp.example": "beta", "100.64.0.2": "beta",
		} {
			code, body := fetch(c.client, "http://"+host+"/page")
			if code != 200 || body != "hello from "+want+" /page" {
				t.Errorf("%s to %s: %d %q", c.how, host, code, body)
			}
		}
	}
}

// TestProxiesRefuseWhatIsNotOverlay: a destination outside the overlay
// (here a listener on 127.0.0.1) is refused by both proxies with the
// protocol's refusal, and the listener sees no connection; an unknown
// name gets "host unreachable" / 502 with a clear message.
func TestProxiesRefuseWhatIsNotOverlay(t *testing.T) {
	_, beta := proxyPair(t, allowWeb, "", nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var reached atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			reached.Add(1)
			c.Close()
		}
	}()
	local := ln.Addr().String()
	socks, hp := socksClient(t, addrOf(t, beta, "socks5")), httpProxyClient(addrOf(t, beta, "http"))
	for _, u := range []string{"http://" + local + "/", "http://localhost:" + local[strings.LastIndex(local, ":")+1:] + "/"} {
		if code, body := fetch(socks, u); code != 0 || !strings.Contains(body, "not allowed by ruleset") && !strings.Contains(body, "host unreachable") {
			t.Errorf("socks5 to %s: %d %q; want a refusal", u, code, body)
		}
		if code, body := fetch(hp, u); code != 403 && code != 502 {
			t.Errorf("http proxy to %s: %d %q; want 403 or 502", u, code, body)
		}
	}
	if code, body := fetch(socks, "http://"+local+"/"); !strings.Contains(body, "not allowed by ruleset") {
		t.Errorf("socks5 to loopback by address: %d %q; want 0x02 not allowed by ruleset", code, body)
	}
	if code, body := fetch(hp, "http://"+local+"/"); code != 403 || !strings.Contains(body, "not in the overlay") {
		t.Errorf("http proxy to loopback by address: %d %q; want 403 saying why", code, body)
	}
	if code, body := fetch(socks, "http://nobody/"); code != 0 || !strings.Contains(body, "host unreachable") {
		t.Errorf("socks5 to an unknown name: %d %q; want host unreachable", code, body)
	}
	if code, body := fetch(hp, "http://nobody.corp.example/"); code != 502 || !strings.Contains(body, `no node named "nobody.corp.example"`) {
		t.Errorf("http proxy to an unknown name: %d %q; want 502 naming it", code, body)
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("the loopback listener got %d connections through the proxies", n)
	}
}

// TestProxiesRefuseFirewallDeniedFlows: a flow beta's outbound rules
// forbid is refused at once (0x02 / 403, naming the firewall); one
// alpha's inbound rules drop (a SYN that is never answered) is refused
// after the connect timeout (0x04 / 504), not left hanging.
func TestProxiesRefuseFirewallDeniedFlows(t *testing.T) {
	betaRules := "outbound:\n  - {proto: tcp, port: 80-82, host: any}\n  - {action: deny, proto: tcp, port: 81, host: alpha}\n"
	alpha, beta := proxyPair(t, allowWeb, betaRules, nil)
	ln, err := alpha.Listen("tcp", ":82") // listening, but alpha's firewall drops it
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	socks, hp := socksClient(t, addrOf(t, beta, "socks5")), httpProxyClient(addrOf(t, beta, "http"))
	if code, body := fetch(socks, "http://alpha:81/"); code != 0 || !strings.Contains(body, "not allowed by ruleset") {
		t.Errorf("socks5, outbound deny: %d %q", code, body)
	}
	if code, body := fetch(hp, "http://alpha:81/"); code != 403 || !strings.Contains(body, "outbound firewall") {
		t.Errorf("http proxy, outbound deny: %d %q", code, body)
	}
	if code, body := fetch(socks, "http://alpha:82/"); code != 0 || !strings.Contains(body, "host unreachable") {
		t.Errorf("socks5, dropped by alpha's inbound rules: %d %q", code, body)
	}
	if code, body := fetch(hp, "http://alpha:82/"); code != 504 {
		t.Errorf("http proxy, dropped by alpha's inbound rules: %d %q; want 504", code, body)
	}
	// The allowed port still works.
	if code, body := fetch(socks, "http://alpha/"); code != 200 {
		t.Errorf("socks5 to the allowed port: %d %q", code, body)
	}
}

// TestServeAndForwardEndToEnd: alpha serves a local HTTP server on its
// overlay port 80 (serve); beta carries a local port to it (forward); an
// unmodified HTTP client on beta's host reaches it. A serve port that
// alpha's inbound firewall does not allow is not reachable.
func TestServeAndForwardEndToEnd(t *testing.T) {
	f := newFabricCA(t)
	web := localHTTP(t, helloHandler("alpha's local web server"))
	alpha := f.node("alpha", 1, allowWeb, func(o *Options) {
		o.Serve = []ServeOptions{{Port: 80, To: web}, {Port: 81, To: web}}
	})
	beta := f.node("beta", 2, "", func(o *Options) {
		o.Forward = []ForwardOptions{
			{Listen: "127.0.0.1:0", To: "alpha:80"},
			{Listen: "127.0.0.1:0", To: "alpha.corp.example:81", Limits: relay.Limits{ConnectTimeout: 2 * time.Second}},
			{Listen: "127.0.0.1:0", To: "100.64.0.1:80"},
		}
	}, alpha)
	waitSession(t, beta, "alpha")
	c := &http.Client{Timeout: relayDeadline}
	for _, key := range []string{"forward[0]", "forward[2]"} {
		if code, body := fetch(c, "http://"+addrOf(t, beta, key)+"/x"); code != 200 || body != "hello from alpha's local web server /x" {
			t.Errorf("%s: %d %q", key, code, body)
		}
	}
	// Port 81 is served but alpha's firewall has no rule for it.
	if code, body := fetch(c, "http://"+addrOf(t, beta, "forward[1]")+"/"); code == 200 {
		t.Errorf("a serve port the inbound firewall denies answered: %q", body)
	}

	t.Run("curl", func(t *testing.T) {
		curl, err := exec.LookPath("curl")
		if err != nil {
			t.Skip("curl is not installed (CI installs it: .ci/run)")
		}
		out, err := exec.Command(curl, "-sS", "--max-time", "60", "http://"+addrOf(t, beta, "forward[0]")+"/curl").CombinedOutput()
		if err != nil || string(out) != "hello from alpha's local web server /curl" {
			t.Errorf("curl through forward: %v %q", err, out)
		}
	})
}

// TestCurlThroughProxies: curl, unmodified, through SOCKS5 with names
// resolved by the proxy and through the HTTP proxy.
func TestCurlThroughProxies(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed (CI installs it: .ci/run)")
	}
	_, beta := proxyPair(t, allowWeb, "", nil)
	for _, args := range [][]string{
		{"--socks5-hostname", addrOf(t, beta, "socks5"), "http://alpha/s"},
		{"--socks5-hostname", addrOf(t, beta, "socks5"), "http://alpha.corp.example/s"},
		{"--socks5", addrOf(t, beta, "socks5"), "http://100.64.0.1/s"},
		{"-x", "http://" + addrOf(t, beta, "http"), "http://alpha.corp.example/h"},
		{"-x", "http://" + addrOf(t, beta, "http"), "http://100.64.0.1/h"},
	} {
		out, err := exec.Command(curl, append([]string{"-sS", "--max-time", "60"}, args...)...).CombinedOutput()
		want := "hello from alpha /" + args[2][len(args[2])-1:]
		if err != nil || string(out) != want {
			t.Errorf("curl %v: %v %q, want %q", args, err, out, want)
		}
	}
	// A refused destination: curl fails with the proxy's reason.
	out, err := exec.Command(curl, "-sS", "--max-time", "60", "--socks5-hostname", addrOf(t, beta, "socks5"), "http://127.0.0.1:9/").CombinedOutput()
	// curl names the reply code ("(2)") or its meaning, by version.
	if err == nil || !strings.Contains(strings.ToLower(string(out)), "not allowed") && !strings.Contains(string(out), "(2)") {
		t.Errorf("curl to loopback through SOCKS5: %v %q; want a refusal", err, out)
	}
}

// TestForwardCarriesLargeTransferIntact: largeTransferSize bytes (1 GiB
// without the race detector) from a server on alpha's host through serve, the overlay and beta's forward arrive unchanged
// (hash compared), and the server's end of stream arrives as EOF.
func TestForwardCarriesLargeTransferIntact(t *testing.T) {
	const size = largeTransferSize
	seed := [32]byte{1, 2, 3}
	src, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	go func() {
		for {
			c, err := src.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.CopyN(c, rand.NewChaCha8(seed), size)
			}()
		}
	}()
	want := sha256.New()
	io.CopyN(want, rand.NewChaCha8(seed), size)

	f := newFabricCA(t)
	alpha := f.node("alpha", 1, "inbound:\n  - {proto: tcp, port: 9000, host: beta}\n", func(o *Options) {
		o.Serve = []ServeOptions{{Port: 9000, To: src.Addr().String()}}
	})
	beta := f.node("beta", 2, "", func(o *Options) {
		o.Forward = []ForwardOptions{{Listen: "127.0.0.1:0", To: "alpha:9000"}}
	}, alpha)
	waitSession(t, beta, "alpha")
	c, err := net.DialTimeout("tcp", addrOf(t, beta, "forward[0]"), relayDeadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * relayDeadline))
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil || n != size {
		t.Fatalf("received %d bytes, %v; want %d then EOF", n, err, size)
	}
	if string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatal("the data changed on the way")
	}
}

// TestProxyManyConcurrentConnections: concurrentConns connections
// through SOCKS5, all open at once, each echoes its own message.
func TestProxyManyConcurrentConnections(t *testing.T) {
	f := newFabricCA(t)
	alpha := f.node("alpha", 1, "inbound:\n  - {proto: tcp, port: 7, host: any}\nflood: {new_flows_per_sec: 100000}\n", nil)
	ln, err := alpha.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	echoOn(t, ln)
	beta := f.node("beta", 2, "", func(o *Options) {
		o.Proxy = &ProxyOptions{SOCKS5: "127.0.0.1:0", Limits: relay.Limits{MaxConns: concurrentConns + 10}}
	}, alpha)
	waitSession(t, beta, "alpha")
	d, err := xproxy.SOCKS5("tcp", addrOf(t, beta, "socks5"), nil, &net.Dialer{Timeout: relayDeadline})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*relayDeadline)
	defer cancel()
	var (
		wg     sync.WaitGroup
		opened sync.WaitGroup // all connections open and echoed once
		failed atomic.Int32
		errMu  sync.Mutex
		first  error
	)
	fail := func(err error) {
		failed.Add(1)
		errMu.Lock()
		if first == nil {
			first = err
		}
		errMu.Unlock()
	}
	release := make(chan struct{})
	opened.Add(concurrentConns)
	for i := range concurrentConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			once := sync.OnceFunc(opened.Done)
			defer once()
			c, err := d.(xproxy.ContextDialer).DialContext(ctx, "tcp", "alpha:7")
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * relayDeadline))
			msg := fmt.Sprintf("connection %d", i)
			for range 2 {
				if _, err := c.Write([]byte(msg)); err != nil {
					fail(err)
					return
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
					fail(fmt.Errorf("echo %q: %v", got, err))
					return
				}
				once()
				select {
				case <-release: // then echo once more, all still open
				case <-ctx.Done():
					fail(ctx.Err())
					return
				}
			}
		}()
	}
	opened.Wait()
	close(release)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d connections failed; first: %v", n, concurrentConns, first)
	}
}

// TestServeCapPerPeer: a peer that opens connections without limit to a
// served port gets max_conns_per_peer of them, the next ones are reset,
// and another peer is still served.
func TestServeCapPerPeer(t *testing.T) {
	const perPeer = 4
	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoOn(t, echoLn)
	f := newFabricCA(t)
	alpha := f.node("alpha", 1, "inbound:\n  - {proto: tcp, port: 7, host: any}\n", func(o *Options) {
		o.Serve = []ServeOptions{{Port: 7, To: echoLn.Addr().String(), Limits: relay.Limits{MaxConns: 100, MaxConnsPerSource: perPeer}}}
	})
	greedy := f.node("greedy", 2, "", nil, alpha)
	honest := f.node("honest", 3, "", nil, alpha)
	waitSession(t, greedy, "alpha")
	waitSession(t, honest, "alpha")
	talk := func(n *Node, msg string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), relayDeadline)
		defer cancel()
		c, err := n.Dial(ctx, "tcp", "alpha:7")
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(relayDeadline))
		if _, err := c.Write([]byte(msg)); err != nil {
			c.Close()
			return nil, err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	refused := 0
	for i := 0; i < 50 && refused < 5; i++ {
		c, err := talk(greedy, "more")
		if err != nil {
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
				t.Fatalf("connection %d: %v, want a reset", i, err)
			}
			refused++
			continue
		}
		open = append(open, c)
	}
	if len(open) != perPeer || refused == 0 {
		t.Fatalf("greedy got %d connections and %d refusals; want %d and some", len(open), refused, perPeer)
	}
	c, err := talk(honest, "me too")
	if err != nil {
		t.Fatalf("another peer was not served: %v", err)
	}
	c.Close()
	// The greedy peer's open connections still work.
	for _, c := range open {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(bufio.NewReader(c), make([]byte, 1)); err != nil {
			t.Fatalf("an admitted connection stopped working: %v", err)
		}
	}
}

// TestServeAndForwardUDP: datagrams to beta's forward reach a UDP echo
// server on alpha's host through alpha's serve entry, and come back.
func TestServeAndForwardUDP(t *testing.T) {
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(append([]byte("echo "), buf[:n]...), from)
		}
	}()
	f := newFabricCA(t)
	alpha := f.node("alpha", 1, "inbound:\n  - {proto: udp, port: 53, host: any}\n", func(o *Options) {
		o.Serve = []ServeOptions{{Proto: "udp", Port: 53, To: echo.LocalAddr().String()}}
	})
	beta := f.node("beta", 2, "", func(o *Options) {
		o.Forward = []ForwardOptions{{Proto: "udp", Listen: "127.0.0.1:0", To: "alpha:53"}}
	}, alpha)
	waitSession(t, beta, "alpha")
	c, err := net.Dial("udp", addrOf(t, beta, "forward[0]"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for end := time.Now().Add(relayDeadline); ; {
		c.Write([]byte("query"))
		c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			if got := string(buf[:n]); got != "echo query" {
				t.Fatalf("answer %q", got)
			}
			return
		}
		if time.Now().After(end) {
			t.Fatalf("no answer through forward and serve: %v", err)
		}
	}
}

// TestRelayStartFailuresStopTheNode: a listen address in use or a
// forward target outside the overlay make Start fail, naming the entry.
func TestRelayStartFailuresStopTheNode(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	f := newFabricCA(t)
	for _, tc := range []struct {
		mod  func(*Options)
		want string
	}{
		{func(o *Options) { o.Proxy = &ProxyOptions{SOCKS5: busy.Addr().String()} }, "socks5 proxy"},
		{func(o *Options) { o.Forward = []ForwardOptions{{Listen: busy.Addr().String(), To: "alpha:80"}} }, "forward[0]"},
		{func(o *Options) { o.Forward = []ForwardOptions{{Listen: "127.0.0.1:0", To: "10.0.0.1:80"}} }, "not in the overlay"},
		{func(o *Options) { o.Serve = []ServeOptions{{Port: 80, To: "nowhere"}} }, "serve[0]"},
	} {
		opts, err := f.ca.NodeOptions("alpha", netip.MustParsePrefix("100.64.0.1/10"), nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		tc.mod(&opts)
		n, err := Start(context.Background(), opts)
		if err == nil {
			n.Close()
			t.Errorf("%s: started", tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %q does not name %q", err, tc.want)
		}
	}
}

// TestNamesFromGossipRecords: a node known only from its gossip record
// (no tunnel at the moment) resolves by NAME and NAME.DOMAIN, and a
// proxied connection to it waits for its admission instead of failing.
func TestNamesFromGossipRecords(t *testing.T) {
	alpha, beta := gossipPair(t)
	overlayHTTP(t, alpha, 80)
	if err := alpha.ReloadFirewall(mustParseRules(t, allowWeb)); err != nil {
		t.Fatal(err)
	}
	// beta drops its tunnel to alpha once gossip holds alpha's record
	// (gossipPair waits for the seed's view only).
	deadline := time.Now().Add(relayDeadline)
	for !slices.ContainsFunc(beta.gossipIdentities(), func(id *cert.Identity) bool { return id.Name == "alpha" }) {
		if time.Now().After(deadline) {
			t.Fatal("beta's gossip never held alpha's record")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var key [32]byte
	for _, p := range beta.Peers() {
		if p.Name == "alpha" {
			key = p.WireGuardKey
		}
	}
	beta.ov.RemovePeer(key, "test")
	if _, ok := beta.ov.IdentityByAddr(alpha.Addr()); ok {
		t.Fatal("alpha is still admitted")
	}
	for _, name := range []string{"alpha", "alpha.corp.example"} {
		a, err := nodeResolver{beta}.LookupName(context.Background(), name)
		if err != nil || a != alpha.Addr() {
			t.Errorf("LookupName(%q) = %v, %v; want %v from the gossip record", name, a, err, alpha.Addr())
		}
	}
	if _, err := (nodeResolver{beta}).LookupName(context.Background(), "alpha.other.example"); err == nil {
		t.Error("a name in another domain resolved")
	}
	// Node.Resolve (Dial, Ping) resolves the same names as the proxies.
	for _, name := range []string{"alpha", "ALPHA.corp.example"} {
		if a, err := beta.Resolve(name); err != nil || a != alpha.Addr() {
			t.Errorf("Resolve(%q) = %v, %v; want %v from the gossip record", name, a, err, alpha.Addr())
		}
	}
	if _, err := beta.Resolve("alpha.other.example"); err == nil {
		t.Error("Resolve: a name in another domain resolved")
	}
	// A connection waits until gossip admits alpha again.
	ctx, cancel := context.WithTimeout(context.Background(), relayDeadline)
	defer cancel()
	c, err := nodeDialer{beta}.DialContext(ctx, "tcp", netip.AddrPortFrom(alpha.Addr(), 80))
	if err != nil {
		t.Fatalf("dial to a node known by gossip: %v", err)
	}
	c.Close()
}

func mustParseRules(t *testing.T, yaml string) *policy.Config {
	t.Helper()
	c, err := policy.ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestForwardPassesHalfCloseAndReset: through forward, the overlay and
// serve, a client's half-close reaches the server, which still answers;
// a server's reset reaches the client as a reset.
func TestForwardPassesHalfCloseAndReset(t *testing.T) {
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				c.SetDeadline(time.Now().Add(relayDeadline))
				req, _ := io.ReadAll(c) // until the client's FIN
				if string(req) == "reset me" {
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
					return
				}
				c.Write(append([]byte("answer to "), req...))
				c.Close()
			}()
		}
	}()
	f := newFabricCA(t)
	alpha := f.node("alpha", 1, "inbound:\n  - {proto: tcp, port: 9000, host: any}\n", func(o *Options) {
		o.Serve = []ServeOptions{{Port: 9000, To: srv.Addr().String()}}
	})
	beta := f.node("beta", 2, "", func(o *Options) {
		o.Forward = []ForwardOptions{{Listen: "127.0.0.1:0", To: "alpha:9000"}}
	}, alpha)
	waitSession(t, beta, "alpha")
	ask := func(msg string) (string, error) {
		c, err := net.DialTimeout("tcp", addrOf(t, beta, "forward[0]"), relayDeadline)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(relayDeadline))
		c.Write([]byte(msg))
		c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if got, err := ask("question"); err != nil || got != "answer to question" {
		t.Errorf("half-close: %q, %v; want the answer sent after the FIN, then EOF", got, err)
	}
	if got, err := ask("reset me"); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("reset: %q, %v; want ECONNRESET", got, err)
	}
}
