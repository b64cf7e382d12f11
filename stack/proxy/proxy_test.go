package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	xproxy "golang.org/x/net/proxy"

	"github.com/aigrid/gridnet/stack/relay"
)

// deadline bounds every wait: generous, only a hang misses it.
const deadline = 30 * time.Second

var overlay = []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}

// fakeOverlay maps overlay addresses to loopback listeners, so the proxies
// can be tested without nodes. It records every address dialled.
type fakeOverlay struct {
	mu      sync.Mutex
	targets map[netip.AddrPort]string // overlay address → loopback address
	denied  map[netip.AddrPort]bool   // a rule forbids the flow
	silent  map[netip.AddrPort]bool   // never answers (dropped SYNs)
	dialled []netip.AddrPort
	udp     map[netip.AddrPort]string // overlay UDP address → loopback
}

func newFakeOverlay() *fakeOverlay {
	return &fakeOverlay{targets: map[netip.AddrPort]string{}, denied: map[netip.AddrPort]bool{}, silent: map[netip.AddrPort]bool{}, udp: map[netip.AddrPort]string{}}
}

func (f *fakeOverlay) DialContext(ctx context.Context, network string, ap netip.AddrPort) (net.Conn, error) {
	f.mu.Lock()
	f.dialled = append(f.dialled, ap)
	target, ok := f.targets[ap]
	denied, silent := f.denied[ap], f.silent[ap]
	f.mu.Unlock()
	switch {
	case denied:
		return nil, fmt.Errorf("%w: outbound firewall refuses tcp port %d", ErrNotAllowed, ap.Port())
	case silent:
		<-ctx.Done()
		return nil, ctx.Err()
	case !ok && ap.Addr() == netip.MustParseAddr("100.64.9.9"):
		return nil, fmt.Errorf("%w: no admitted node has %v", ErrUnreachable, ap.Addr())
	case !ok:
		return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, target)
}

func (f *fakeOverlay) ListenPacket(context.Context) (net.PacketConn, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &fakeUDP{PacketConn: pc, f: f}, nil
}

// fakeUDP translates overlay UDP addresses to loopback ones and back.
type fakeUDP struct {
	net.PacketConn
	f *fakeOverlay
}

func (u *fakeUDP) WriteTo(b []byte, to net.Addr) (int, error) {
	u.f.mu.Lock()
	target, ok := u.f.udp[to.(*net.UDPAddr).AddrPort()]
	u.f.mu.Unlock()
	if !ok {
		return 0, ErrUnreachable
	}
	ua, _ := net.ResolveUDPAddr("udp", target)
	return u.PacketConn.WriteTo(b, ua)
}

func (u *fakeUDP) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := u.PacketConn.ReadFrom(b)
	if err != nil {
		return n, from, err
	}
	u.f.mu.Lock()
	defer u.f.mu.Unlock()
	for ov, lo := range u.f.udp {
		if lo == from.String() {
			return n, net.UDPAddrFromAddrPort(ov), nil
		}
	}
	return n, from, nil
}

func (f *fakeOverlay) dialledAny() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]netip.AddrPort(nil), f.dialled...)
}

// names is the fake Resolver: web1 and web1.corp.example.
type names map[string]netip.Addr

func (n names) LookupName(_ context.Context, name string) (netip.Addr, error) {
	if a, ok := n[strings.ToLower(strings.TrimSuffix(name, "."))]; ok {
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("%w: no node named %q", ErrUnknownName, name)
}

var web1 = netip.MustParseAddr("100.64.0.2")

// echoServer is a loopback TCP echo server.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return l.Addr().String()
}

// webServer is a loopback HTTP server answering "hello from web1 PATH".
func webServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from web1 %s host=%s proxy-auth=%q", r.URL.Path, r.Host, r.Header.Get("Proxy-Authorization"))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

type setup struct {
	f      *fakeOverlay
	srv    *Server
	socks  string
	http   string
	served sync.WaitGroup
}

// start runs a Server with the fake overlay on fresh loopback listeners.
func start(t *testing.T, mod func(*Config)) *setup {
	t.Helper()
	s := &setup{f: newFakeOverlay()}
	cfg := Config{Dialer: s.f, Resolver: names{"web1": web1, "web1.corp.example": web1}, Networks: overlay,
		Limits: relay.Limits{ConnectTimeout: 2 * time.Second}}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.srv = srv
	for _, l := range []struct {
		addr  *string
		serve func(net.Listener) error
	}{{&s.socks, srv.ServeSOCKS5}, {&s.http, srv.ServeHTTPProxy}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		*l.addr = ln.Addr().String()
		s.served.Add(1)
		go func() {
			defer s.served.Done()
			if err := l.serve(ln); err != nil {
				t.Errorf("serve: %v", err)
			}
		}()
	}
	t.Cleanup(func() { srv.Close(); s.served.Wait() })
	return s
}

// socksDial connects through the SOCKS5 proxy with golang.org/x/net/proxy.
func (s *setup) socksDial(t *testing.T, auth *xproxy.Auth, target string) (net.Conn, error) {
	t.Helper()
	d, err := xproxy.SOCKS5("tcp", s.socks, auth, &net.Dialer{Timeout: deadline})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	return d.(xproxy.ContextDialer).DialContext(ctx, "tcp", target)
}

func echoRoundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(deadline))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo %q, %v", got, err)
	}
}

// TestSOCKS5ConnectByNameAndAddress: CONNECT reaches the overlay service
// by NAME, NAME.DOMAIN (any case, final dot) and address.
func TestSOCKS5ConnectByNameAndAddress(t *testing.T) {
	s := start(t, nil)
	s.f.targets[netip.AddrPortFrom(web1, 7)] = echoServer(t)
	for _, target := range []string{"web1:7", "web1.corp.example:7", "WEB1.corp.example.:7", "100.64.0.2:7"} {
		c, err := s.socksDial(t, nil, target)
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		echoRoundTrip(t, c, "hello "+target)
		c.Close()
	}
}

// socksReply sends a raw SOCKS5 CONNECT for dst (a name or an address)
// without authentication and returns the reply code.
func socksReply(t *testing.T, proxyAddr string, dst Destination) byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	c.Write([]byte{5, 1, 0})
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil || m != [2]byte{5, 0} {
		t.Fatalf("method reply %v, %v", m, err)
	}
	c.Write(appendAddr([]byte{5, cmdConnect, 0}, dst))
	var rep [3]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		t.Fatalf("no reply: %v", err)
	}
	return rep[1]
}

// TestSOCKS5RefusesNonOverlayDestinations: an address outside the
// overlay (loopback, the internet) is refused with 0x02 and is never
// dialled; a listener on 127.0.0.1 sees no connection.
func TestSOCKS5RefusesNonOverlayDestinations(t *testing.T) {
	s := start(t, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var reached atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			reached.Add(1)
			c.Close()
		}
	}()
	local := l.Addr().(*net.TCPAddr).AddrPort()
	for _, dst := range []Destination{
		{Addr: local.Addr(), Port: local.Port()},
		{Name: local.String()[:strings.LastIndex(local.String(), ":")], Port: local.Port()},
		{Addr: netip.MustParseAddr("93.184.216.34"), Port: 80},
		{Addr: netip.MustParseAddr("::ffff:127.0.0.1"), Port: local.Port()},
		{Addr: netip.MustParseAddr("::1"), Port: local.Port()},
	} {
		if got := socksReply(t, s.socks, dst); got != repNotAllowed {
			t.Errorf("%v: reply %#x, want 0x02 (not allowed by ruleset)", dst, got)
		}
	}
	if d := s.f.dialledAny(); len(d) != 0 {
		t.Errorf("the overlay dialer was asked for %v", d)
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("the loopback listener got %d connections", n)
	}
}

// TestSOCKS5Refusals: each failure has its reply code, at once (or after
// the connect timeout for a silent destination): unknown name 0x04,
// firewall 0x02, no node 0x04, closed port 0x05, no answer 0x04.
func TestSOCKS5Refusals(t *testing.T) {
	s := start(t, nil)
	s.f.denied[netip.AddrPortFrom(web1, 81)] = true
	s.f.silent[netip.AddrPortFrom(web1, 82)] = true
	for _, tc := range []struct {
		dst  Destination
		want byte
	}{
		{Destination{Name: "nobody", Port: 80}, repHostUnreachable},
		{Destination{Name: "web1", Port: 81}, repNotAllowed},
		{Destination{Addr: netip.MustParseAddr("100.64.9.9"), Port: 80}, repHostUnreachable},
		{Destination{Addr: web1, Port: 83}, repConnectionRefused},
		{Destination{Name: "web1", Port: 82}, repHostUnreachable},
	} {
		if got := socksReply(t, s.socks, tc.dst); got != tc.want {
			t.Errorf("%v: reply %#x, want %#x", tc.dst, got, tc.want)
		}
	}
}

// TestSOCKS5UnsupportedCommandsAndTypes: BIND gets 0x07, an unknown
// address type 0x08.
func TestSOCKS5UnsupportedCommandsAndTypes(t *testing.T) {
	s := start(t, nil)
	for _, tc := range []struct {
		req  []byte
		want byte
	}{
		{appendAddr([]byte{5, cmdBind, 0}, Destination{Addr: web1, Port: 80}), repCommandUnsupported},
		{[]byte{5, cmdConnect, 0, 9, 1, 2, 3, 4, 0, 80}, repAddressUnsupported},
	} {
		c, err := net.DialTimeout("tcp", s.socks, deadline)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(deadline))
		c.Write([]byte{5, 1, 0})
		var m [2]byte
		io.ReadFull(c, m[:])
		c.Write(tc.req)
		var rep [3]byte
		if _, err := io.ReadFull(c, rep[:]); err != nil || rep[1] != tc.want {
			t.Errorf("request %x: reply %x, %v; want code %#x", tc.req, rep, err, tc.want)
		}
		c.Close()
	}
}

// TestSOCKS5UsernamePassword: with users configured, a client without
// credentials or with a wrong password is refused; the right ones pass.
func TestSOCKS5UsernamePassword(t *testing.T) {
	s := start(t, func(c *Config) { c.Users = []User{{"app", "s3cret"}, {"ops", "other"}} })
	s.f.targets[netip.AddrPortFrom(web1, 7)] = echoServer(t)
	if _, err := s.socksDial(t, nil, "web1:7"); err == nil {
		t.Error("a client without credentials passed")
	}
	if _, err := s.socksDial(t, &xproxy.Auth{User: "app", Password: "wrong"}, "web1:7"); err == nil {
		t.Error("a wrong password passed")
	}
	if _, err := s.socksDial(t, &xproxy.Auth{User: "ops", Password: "s3cret"}, "web1:7"); err == nil {
		t.Error("one user's password passed for another")
	}
	c, err := s.socksDial(t, &xproxy.Auth{User: "app", Password: "s3cret"}, "web1:7")
	if err != nil {
		t.Fatalf("the right credentials: %v", err)
	}
	echoRoundTrip(t, c, "authenticated")
	c.Close()
}

// TestSOCKS5CapRefusesAtOnce: beyond MaxConns a connection is reset at
// once while the open ones are served.
func TestSOCKS5CapRefusesAtOnce(t *testing.T) {
	s := start(t, func(c *Config) { c.Limits.MaxConns = 2 })
	s.f.targets[netip.AddrPortFrom(web1, 7)] = echoServer(t)
	a, err := s.socksDial(t, nil, "web1:7")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := s.socksDial(t, nil, "web1:7")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if c, err := s.socksDial(t, nil, "web1:7"); err == nil {
		c.Close()
		t.Fatal("a third connection passed a cap of 2")
	}
	echoRoundTrip(t, a, "still served")
	echoRoundTrip(t, b, "still served")
	if st := s.srv.Stats(); st.Rejected == 0 {
		t.Errorf("stats %+v: no refusal counted", st)
	}
}

// TestSOCKS5UDPAssociate: datagrams with a SOCKS5 UDP header reach the
// overlay service by name, the answer comes back with a header naming its
// source; a datagram for a non-overlay address goes nowhere; closing the
// control connection ends the association.
func TestSOCKS5UDPAssociate(t *testing.T) {
	s := start(t, nil)
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	var strays atomic.Int32
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			if strings.HasPrefix(string(buf[:n]), "stray") {
				strays.Add(1)
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	s.f.udp[netip.AddrPortFrom(web1, 53)] = echo.LocalAddr().String()

	ctl, err := net.DialTimeout("tcp", s.socks, deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	ctl.SetDeadline(time.Now().Add(deadline))
	ctl.Write([]byte{5, 1, 0})
	var m [2]byte
	io.ReadFull(ctl, m[:])
	ctl.Write(appendAddr([]byte{5, cmdUDP, 0}, Destination{Addr: netip.IPv4Unspecified()}))
	var hdr [3]byte
	if _, err := io.ReadFull(ctl, hdr[:]); err != nil || hdr[1] != repSucceeded {
		t.Fatalf("UDP associate reply %x, %v", hdr, err)
	}
	bnd, err := readAddr(ctl, mustByte(t, ctl))
	if err != nil {
		t.Fatal(err)
	}
	uc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(bnd.Addr, bnd.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	// A datagram to loopback (not the overlay) is dropped.
	uc.Write(append(appendAddr([]byte{0, 0, 0}, Destination{Addr: netip.MustParseAddr("127.0.0.1"), Port: uint16(echo.LocalAddr().(*net.UDPAddr).Port)}), "stray"...))
	buf := make([]byte, 2048)
	var got []byte
	for end := time.Now().Add(deadline); got == nil && time.Now().Before(end); {
		uc.Write(append(appendAddr([]byte{0, 0, 0}, Destination{Name: "web1", Port: 53}), "query"...))
		uc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := uc.Read(buf); err == nil {
			got = buf[:n]
		}
	}
	frag, src, data, err := parseUDP(got)
	if err != nil || frag != 0 || string(data) != "query" || src.Addr != web1 || src.Port != 53 {
		t.Fatalf("answer %x: frag %d src %v data %q err %v", got, frag, src, data, err)
	}
	if n := strays.Load(); n != 0 {
		t.Errorf("%d datagrams for loopback left the proxy", n)
	}
	// The association ends with its control connection.
	ctl.Close()
	for end := time.Now().Add(deadline); ; time.Sleep(20 * time.Millisecond) {
		uc.Write(append(appendAddr([]byte{0, 0, 0}, Destination{Name: "web1", Port: 53}), "late"...))
		uc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := uc.Read(buf); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// No answer: either ended, or an answer is late. Check
				// that the socket is gone: writes then get refused.
				continue
			}
		} else if errors.Is(err, syscall.ECONNREFUSED) {
			return // the relay socket is closed
		}
		if time.Now().After(end) {
			t.Fatal("the association outlived its control connection")
		}
	}
}

func mustByte(t *testing.T, r io.Reader) byte {
	t.Helper()
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		t.Fatal(err)
	}
	return b[0]
}

// httpClient uses the HTTP proxy for every request.
func (s *setup) httpClient(user *url.Userinfo) *http.Client {
	u := &url.URL{Scheme: "http", Host: s.http, User: user}
	return &http.Client{Timeout: deadline, Transport: &http.Transport{Proxy: http.ProxyURL(u), DisableKeepAlives: true}}
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHTTPProxyPlainRequests: absolute-form requests reach the service
// by name, NAME.DOMAIN and address, with the Host the client asked for
// and without the proxy's credentials; refusals have their status.
func TestHTTPProxyPlainRequests(t *testing.T) {
	s := start(t, nil)
	s.f.targets[netip.AddrPortFrom(web1, 80)] = webServer(t)
	s.f.denied[netip.AddrPortFrom(web1, 81)] = true
	c := s.httpClient(nil)
	for _, host := range []string{"web1", "web1.corp.example", "100.64.0.2"} {
		code, body := get(t, c, "http://"+host+"/x")
		if code != 200 || body != `hello from web1 /x host=`+host+` proxy-auth=""` {
			t.Errorf("%s: %d %q", host, code, body)
		}
	}
	for _, tc := range []struct {
		url  string
		code int
		say  string
	}{
		{"http://127.0.0.1:1/", 403, "not in the overlay"},
		{"http://example.com/", 502, "no node named"},
		{"http://web1:81/", 403, "firewall"},
		{"http://web1:83/", 502, "refused"},
	} {
		code, body := get(t, c, tc.url)
		if code != tc.code || !strings.Contains(body, tc.say) {
			t.Errorf("%s: %d %q; want %d saying %q", tc.url, code, body, tc.code, tc.say)
		}
	}
	// Not a proxy request.
	code, _ := get(t, &http.Client{Timeout: deadline}, "http://"+s.http+"/")
	if code != 400 {
		t.Errorf("origin-form request: %d, want 400", code)
	}
}

// TestHTTPProxyConnect: CONNECT tunnels to any port; bytes the client
// sent right after the request are not lost; refusals have their status.
func TestHTTPProxyConnect(t *testing.T) {
	s := start(t, nil)
	s.f.targets[netip.AddrPortFrom(web1, 7)] = echoServer(t)
	c, err := net.DialTimeout("tcp", s.http, deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	// The request and the first bytes of the tunnel in one write.
	io.WriteString(c, "CONNECT web1.corp.example:7 HTTP/1.1\r\nHost: web1.corp.example:7\r\n\r\nearly bytes")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	got := make([]byte, len("early bytes"))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "early bytes" {
		t.Fatalf("tunnel echo %q, %v", got, err)
	}
	for _, tc := range []struct {
		target string
		code   int
	}{{"127.0.0.1:22", 403}, {"nobody:22", 502}, {"web1:83", 502}} {
		c, err := net.DialTimeout("tcp", s.http, deadline)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(deadline))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", tc.target, tc.target)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != tc.code {
			t.Errorf("CONNECT %s: %v %v, want %d", tc.target, resp, err, tc.code)
		}
		c.Close()
	}
}

// TestHTTPProxyAuthentication: with users, 407 without or with wrong
// credentials; the credentials do not travel on to the service.
func TestHTTPProxyAuthentication(t *testing.T) {
	s := start(t, func(c *Config) { c.Users = []User{{"app", "s3cret"}} })
	s.f.targets[netip.AddrPortFrom(web1, 80)] = webServer(t)
	if code, _ := get(t, s.httpClient(nil), "http://web1/"); code != 407 {
		t.Errorf("no credentials: %d, want 407", code)
	}
	if code, _ := get(t, s.httpClient(url.UserPassword("app", "nope")), "http://web1/"); code != 407 {
		t.Errorf("wrong password: %d, want 407", code)
	}
	code, body := get(t, s.httpClient(url.UserPassword("app", "s3cret")), "http://web1/")
	if code != 200 || !strings.Contains(body, `proxy-auth=""`) {
		t.Errorf("right credentials: %d %q", code, body)
	}
}

// TestHTTPProxyCapAnswers503: beyond MaxConns a connection gets 503 at
// once while the open one is served.
func TestHTTPProxyCapAnswers503(t *testing.T) {
	s := start(t, func(c *Config) { c.Limits.MaxConns = 1 })
	s.f.targets[netip.AddrPortFrom(web1, 7)] = echoServer(t)
	c, err := net.DialTimeout("tcp", s.http, deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	io.WriteString(c, "CONNECT web1:7 HTTP/1.1\r\nHost: web1:7\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	code, _ := get(t, s.httpClient(nil), "http://web1/")
	if code != 503 {
		t.Errorf("second connection: %d, want 503", code)
	}
	io.WriteString(c, "still")
	got := make([]byte, 5)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "still" {
		t.Errorf("the open tunnel: %q, %v", got, err)
	}
}

func TestParseHostPort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		def  uint16
		want Destination
		bad  bool
	}{
		{in: "web1:80", want: Destination{Name: "web1", Port: 80}},
		{in: "web1", def: 80, want: Destination{Name: "web1", Port: 80}},
		{in: "[fd00::1]:443", want: Destination{Addr: netip.MustParseAddr("fd00::1"), Port: 443}},
		{in: "[fd00::1]", def: 80, want: Destination{Addr: netip.MustParseAddr("fd00::1"), Port: 80}},
		{in: "100.64.0.2", def: 80, want: Destination{Addr: web1, Port: 80}},
		{in: "web1", bad: true},
		{in: ":80", bad: true},
		{in: "web1:99999", bad: true},
	} {
		got, err := parseHostPort(tc.in, tc.def)
		if (err != nil) != tc.bad || (!tc.bad && got != tc.want) {
			t.Errorf("parseHostPort(%q, %d) = %+v, %v", tc.in, tc.def, got, err)
		}
	}
}

func TestNewChecksConfig(t *testing.T) {
	if _, err := New(Config{Networks: overlay}); err == nil {
		t.Error("no Dialer accepted")
	}
	if _, err := New(Config{Dialer: newFakeOverlay()}); err == nil {
		t.Error("no networks accepted")
	}
	if _, err := New(Config{Dialer: newFakeOverlay(), Networks: overlay, Users: []User{{"", "x"}}}); err == nil {
		t.Error("an empty user name accepted")
	}
}

// TestServeAfterCloseReleasesTheListener: a listener handed to a closed
// Server is closed, not left holding its port.
func TestServeAfterCloseReleasesTheListener(t *testing.T) {
	srv, err := New(Config{Dialer: newFakeOverlay(), Networks: overlay})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	for _, serve := range []func(net.Listener) error{srv.ServeSOCKS5, srv.ServeHTTPProxy} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := serve(l); err != nil {
			t.Errorf("serve on a closed Server: %v", err)
		}
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("the listener is still open: %v", err)
		}
	}
}
