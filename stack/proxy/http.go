package proxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/aigrid/gridnet/stack/relay"
)

// ServeHTTPProxy serves an HTTP proxy on l until l fails or the Server is
// closed (then it returns nil): CONNECT to any port (a tunnel, relayed as
// SOCKS5 CONNECT is) and absolute-form plain HTTP requests
// (GET http://web1/ HTTP/1.1), forwarded with hop-by-hop headers removed
// and without X-Forwarded-For. Refusals are HTTP statuses with a
// text/plain reason: 403 for a destination outside the overlay or one a
// rule forbids, 502 for an unknown name, an unreachable node or a refused
// connection, 504 for no answer within the connect timeout, 407 without
// valid credentials when Config.Users is set, 400 for a request that is
// not a proxy request. Connections beyond Limits.MaxConns get 503 at once.
func (s *Server) ServeHTTPProxy(l net.Listener) error {
	g, err := s.newGroup("http")
	if err != nil {
		l.Close()
		return nil
	}
	ln, err := g.Listen(l, s.reject503)
	if err != nil {
		return nil
	}
	h := &httpProxy{s: s, g: g}
	h.transport = &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			d, err := parseHostPort(addr, 80)
			if err != nil {
				return nil, err
			}
			return s.connect(ctx, "tcp", d)
		},
		MaxIdleConns:          100,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Responses are passed on as the origin sends them.
		DisableCompression: true,
	}
	h.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.Host = pr.In.Host
		},
		Transport:    h.transport,
		ErrorHandler: h.upstreamError,
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		IdleTimeout:       s.cfg.Limits.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return g.Context() },
	}
	s.onClose(func() {
		srv.Close()
		h.transport.CloseIdleConnections()
	})
	err = srv.Serve(ln)
	if g.Context().Err() != nil || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Bounds of the answers to connections beyond the cap.
const (
	// rejectWait is how long a refused connection may take to send its
	// request header before it gets the 503.
	rejectWait = time.Second
	// maxRejecting bounds the refused connections being answered at
	// once; beyond it they are closed without an answer.
	maxRejecting = 64
)

// reject503 answers a connection beyond the cap with 503, after its
// request header (a response before the request confuses clients), and
// closes it. It takes at most rejectWait, in its own goroutine; when many
// are being answered already the connection is just closed.
func (s *Server) reject503(c net.Conn) {
	if s.rejecting.Add(1) > maxRejecting {
		s.rejecting.Add(-1)
		c.Close()
		return
	}
	go func() {
		defer s.rejecting.Add(-1)
		defer c.Close()
		c.SetDeadline(time.Now().Add(rejectWait))
		br := bufio.NewReaderSize(io.LimitReader(c, 8<<10), 1024)
		for {
			line, err := br.ReadSlice('\n')
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				return
			}
			if len(line) <= 2 && err == nil { // the empty line ends the header
				break
			}
		}
		const body = "gridnet proxy: too many connections\n"
		io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	}()
}

type httpProxy struct {
	s         *Server
	g         *relay.Group
	transport *http.Transport
	rp        *httputil.ReverseProxy
}

// ServeHTTP handles one proxy request.
func (h *httpProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.s.handlers.Add(1)
	defer h.s.handlers.Done()
	if h.s.authRequired() && !h.authorized(r) {
		w.Header().Set("Proxy-Authenticate", `Basic realm="gridnet"`)
		httpError(w, http.StatusProxyAuthRequired, "proxy authentication required")
		return
	}
	if r.Method == http.MethodConnect {
		h.connect(w, r)
		return
	}
	if !r.URL.IsAbs() || r.URL.Host == "" {
		httpError(w, http.StatusBadRequest, "this is a proxy: send absolute-form requests (GET http://host/path) or CONNECT host:port")
		return
	}
	if r.URL.Scheme != "http" {
		httpError(w, http.StatusBadRequest, fmt.Sprintf("scheme %q: the proxy forwards plain http; use CONNECT for %s", r.URL.Scheme, r.URL.Scheme))
		return
	}
	d, err := parseHostPort(r.URL.Host, 80)
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	// Resolve first: a refusal is then an answer of its own, not a
	// transport failure.
	if _, err := h.s.resolve(r.Context(), d); err != nil {
		h.refuse(w, r, d, err)
		return
	}
	h.rp.ServeHTTP(w, r)
}

// authorized checks Proxy-Authorization: Basic.
func (h *httpProxy) authorized(r *http.Request) bool {
	v := r.Header.Get("Proxy-Authorization")
	scheme, cred, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return false
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	return ok && h.s.checkUser(user, pass)
}

// connect answers CONNECT: dial, 200, then relay the raw bytes.
func (h *httpProxy) connect(w http.ResponseWriter, r *http.Request) {
	d, err := parseHostPort(r.Host, 0)
	if err != nil || d.Port == 0 {
		httpError(w, http.StatusBadRequest, "CONNECT needs host:port")
		return
	}
	out, err := h.s.connect(h.g.Context(), "tcp", d)
	if err != nil {
		h.refuse(w, r, d, err)
		return
	}
	untrack, err := h.g.Track(out)
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "proxy shutting down")
		return
	}
	defer untrack()
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		out.Close()
		httpError(w, http.StatusInternalServerError, "cannot take over the connection")
		return
	}
	c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		out.Close()
		c.Close()
		return
	}
	h.g.Pipe(withBuffered(c, brw.Reader), out)
}

// refuse answers a request the proxy cannot carry.
func (h *httpProxy) refuse(w http.ResponseWriter, r *http.Request, d Destination, err error) {
	h.s.log.Debug("http proxy: refused", "from", r.RemoteAddr, "to", d.String(), "err", err)
	httpError(w, httpStatus(err), err.Error())
}

// upstreamError answers a plain request whose forwarding failed.
func (h *httpProxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away
	}
	h.s.log.Debug("http proxy: forwarding failed", "from", r.RemoteAddr, "url", r.URL.String(), "err", err)
	httpError(w, httpStatus(err), err.Error())
}

// httpStatus is the status for a connect error.
func httpStatus(err error) int {
	switch classify(err) {
	case refusedNotAllowed:
		return http.StatusForbidden
	case refusedTimeout:
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Connection", "close")
	http.Error(w, "gridnet proxy: "+msg, code)
}

// parseHostPort splits "host:port" (a port-less host gets defPort; 0
// means the port is required) into a Destination: an IP literal
// (brackets removed) as Addr, a host name (letters, digits, '-', '_' and
// dots) as Name.
func parseHostPort(hostport string, defPort uint16) (Destination, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		if defPort == 0 {
			return Destination{}, fmt.Errorf("bad host:port %q", hostport)
		}
		host, portStr = hostport, strconv.Itoa(int(defPort))
		if b, ok := strings.CutPrefix(host, "["); ok {
			if host, ok = strings.CutSuffix(b, "]"); !ok {
				return Destination{}, fmt.Errorf("bad host %q", hostport)
			}
			if _, err := netip.ParseAddr(host); err != nil {
				return Destination{}, fmt.Errorf("bad address in %q", hostport)
			}
		} else if strings.Contains(host, ":") {
			return Destination{}, fmt.Errorf("bad host %q", hostport)
		}
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return Destination{}, fmt.Errorf("bad port in %q", hostport)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return Destination{Addr: a, Port: uint16(port)}, nil
	}
	if !validName(host) {
		return Destination{}, fmt.Errorf("bad host name in %q", hostport)
	}
	return Destination{Name: host, Port: uint16(port)}, nil
}

// validName reports whether s can be a host name: 1 to 255 letters,
// digits, '-', '_' and dots.
func validName(s string) bool {
	if s == "" || len(s) > maxDomainName {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// bufferedConn reads what the HTTP server had buffered after the CONNECT
// request before reading the connection, and passes CloseWrite and
// SetLinger on.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func withBuffered(c net.Conn, br *bufio.Reader) net.Conn {
	if br == nil || br.Buffered() == 0 {
		return c
	}
	b, _ := br.Peek(br.Buffered())
	return &bufferedConn{Conn: c, r: io.MultiReader(strings.NewReader(string(b)), c)}
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// errNoHalfClose: the connection cannot close one direction alone.
var errNoHalfClose = errors.New("proxy: connection has no CloseWrite")

func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errNoHalfClose
}

func (c *bufferedConn) SetLinger(sec int) error {
	if l, ok := c.Conn.(interface{ SetLinger(int) error }); ok {
		return l.SetLinger(sec)
	}
	return errNoHalfClose
}
