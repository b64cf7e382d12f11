package node

import (
	"context"

	"encoding/json"
	"errors"
	"fmt"
	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/policy"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// The control API is HTTP with JSON bodies on a unix socket that only the
// node's user can open (0600). The CLI commands status and ping use it.
const (
	pathStatus = "/v1/status"
	pathPing   = "/v1/ping"
	pathReload = "/v1/reload"
	pathEvents = "/v1/events"
	pathPeers  = "/v1/members"
	pathCRL    = "/v1/crl"
	// maxCRLBody bounds a pushed CRL (discovery refuses larger ones too).
	maxCRLBody = 1 << 20
	// maxPingCount bounds one ping request.
	maxPingCount = 1000
	// controlTimeout bounds a control request that is not a stream.
	controlTimeout = 10 * time.Second
)

// Status is the control API's view of a node.
type Status struct {
	Name         string            `json:"name"`
	Domain       string            `json:"domain"`
	Addresses    []string          `json:"addresses"`
	UnderlayPort uint16            `json:"underlay_port"`
	CertExpiry   time.Time         `json:"cert_expiry"`
	Peers        []PeerView        `json:"peers"`
	Interface    CounterView       `json:"interface"`
	Admission    map[string]uint64 `json:"admission"`
	Firewall     FirewallView      `json:"firewall"`
	// Refusals are the last refusal by each peer that refused this node
	// since it was last admitted there, newest first.
	Refusals []RefusalView `json:"refusals,omitempty"`
}

// FirewallView is the firewall's counters in Status.
type FirewallView struct {
	Accepted    uint64            `json:"accepted"`
	Dropped     uint64            `json:"dropped"`
	Drops       map[string]uint64 `json:"drops,omitempty"`
	Flows       int               `json:"flows"`
	Quarantined int               `json:"quarantined"`
	FlowsCut    uint64            `json:"flows_cut"`
}

// PeerView is one peer in Status.
type PeerView struct {
	Name          string    `json:"name"`
	Domain        string    `json:"domain"`
	Addresses     []string  `json:"addresses"`
	Endpoint      string    `json:"endpoint"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
	State         string    `json:"state"`
	CertExpiry    time.Time `json:"cert_expiry"`
	Trust         float64   `json:"trust"`
	Quarantined   bool      `json:"quarantined,omitempty"`
	Dropped       uint64    `json:"dropped"`
}

// CounterView is the virtual interface's packet counters.
type CounterView struct {
	InAccepted  uint64 `json:"in_accepted"`
	InDropped   uint64 `json:"in_dropped"`
	OutAccepted uint64 `json:"out_accepted"`
	OutDropped  uint64 `json:"out_dropped"`
}

// PingReply is one line of the ping stream.
type PingReply struct {
	Seq   int     `json:"seq"`
	To    string  `json:"to"`
	RTTms float64 `json:"rtt_ms,omitempty"`
	Error string  `json:"error,omitempty"`
	// Hint says why there was no reply, as far as this node knows.
	Hint string `json:"hint,omitempty"`
}

// Status reports the node and its peers.
func (n *Node) Status() Status {
	id := n.Identity()
	st := Status{
		Name:         id.Name,
		Domain:       id.Domain,
		UnderlayPort: n.ov.Port(),
		CertExpiry:   id.NotAfter,
		Admission:    admissionCounters(n.ov.Stats()),
		Refusals:     refusalViews(n.ov.Refusals()),
	}
	for _, a := range id.Addresses {
		st.Addresses = append(st.Addresses, a.String())
	}
	type peerID struct{ domain, name string } // names are unique per domain
	fwPeers := map[peerID]policy.PeerState{}
	for _, ps := range n.fw.Peers() {
		fwPeers[peerID{ps.Domain, ps.Name}] = ps
	}
	for _, p := range n.ov.Peers() {
		var domain string
		if p.Identity != nil {
			domain = p.Identity.Domain
		}
		ps := fwPeers[peerID{domain, p.Name}]
		pv := PeerView{
			Trust: ps.Trust, Quarantined: ps.Quarantined, Dropped: ps.Dropped,
			Name: p.Name, Endpoint: p.Endpoint.String(),
			LastHandshake: p.LastHandshake, RxBytes: p.RxBytes, TxBytes: p.TxBytes,
			State: string(p.State), CertExpiry: p.NotAfter,
		}
		if p.Identity != nil {
			pv.Domain = p.Identity.Domain
		}
		for _, a := range p.Addresses {
			pv.Addresses = append(pv.Addresses, a.String())
		}
		st.Peers = append(st.Peers, pv)
	}
	fs := n.fw.Stats()
	st.Firewall = FirewallView{Accepted: fs.Accepted, Dropped: fs.Dropped, Drops: fs.Drops, Flows: fs.Flows, Quarantined: fs.Quarantined, FlowsCut: fs.FlowsCut}
	c := n.stack.Counters()
	st.Interface = CounterView{
		InAccepted: c.Inbound.AcceptedPackets, InDropped: c.Inbound.DroppedPackets,
		OutAccepted: c.Outbound.AcceptedPackets, OutDropped: c.Outbound.DroppedPackets,
	}
	return st
}

// controlServer serves the control API for one node.
type controlServer struct {
	node   *Node
	log    *slog.Logger
	reload func() error
	srv    *http.Server
	ln     net.Listener
	done   chan struct{}
}

// serveControl listens on the unix socket at path (replacing a stale one)
// and serves the control API until Close. reload is called by
// POST /v1/reload.
func serveControl(n *Node, path string, reload func() error, log *slog.Logger) (*controlServer, error) {
	ln, err := listenControl(path)
	if err != nil {
		return nil, err
	}
	return startControl(n, ln, reload, log), nil
}

// listenControl creates the control socket at path, 0600, replacing only
// a stale socket: a running node's socket (one that accepts a connection)
// and any file that is not a socket are refused. `up` calls it before the
// node starts, so a second instance on the same socket fails before it
// joins the fabric. Closing the listener removes the socket.
func listenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	if err := checkSocketDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("control socket %s: a file that is not a socket is in the way", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s is in use by another gridnet (a node runs with it; stop it, or give this one another control.socket)", path)
		}
		// A stale socket from a node that did not shut down cleanly.
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket: %w", err)
		}
	}
	// Create the socket 0600 from the start: no moment where others could
	// connect.
	oldMask := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(oldMask)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// startControl serves the control API for n on ln until Close.
func startControl(n *Node, ln net.Listener, reload func() error, log *slog.Logger) *controlServer {
	cs := &controlServer{node: n, log: log, reload: reload, ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+pathStatus, cs.handleStatus)
	mux.HandleFunc("GET "+pathPing, cs.handlePing)
	mux.HandleFunc("POST "+pathReload, cs.handleReload)
	mux.HandleFunc("GET "+pathEvents, cs.handleEvents)
	mux.HandleFunc("GET "+pathPeers, cs.handleMembers)
	mux.HandleFunc("POST "+pathCRL, cs.handleCRL)
	cs.srv = &http.Server{Handler: mux, ReadHeaderTimeout: controlTimeout}
	go func() {
		defer close(cs.done)
		if err := cs.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("control API stopped", "err", err)
		}
	}()
	return cs
}

func (cs *controlServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := cs.srv.Shutdown(ctx)
	if err != nil {
		// A long ping stream: cut it rather than outlive the node.
		err = cs.srv.Close()
	}
	<-cs.done
	_ = os.Remove(cs.ln.Addr().String())
	return err
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

type apiError struct {
	Error string `json:"error"`
}

func (cs *controlServer) handleStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, cs.node.Status())
}

func (cs *controlServer) handleReload(w http.ResponseWriter, _ *http.Request) {
	if err := cs.reload(); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// handleMembers lists the gossip members (or, without gossip, the
// admitted peers as members).
func (cs *controlServer) handleMembers(w http.ResponseWriter, _ *http.Request) {
	members := cs.node.Members()
	if cs.node.gossip == nil {
		for _, p := range cs.node.ov.Peers() {
			v := MemberView{Name: p.Name, State: "alive", CertExpiry: p.NotAfter, LearnedFrom: "static", Updated: p.AdmittedAt, Admitted: true}
			if len(p.Addresses) > 0 {
				v.Addr = p.Addresses[0].Addr().String()
			}
			members = append(members, v)
		}
	}
	writeJSON(w, http.StatusOK, members)
}

// CRLResult answers a CRL push.
type CRLResult struct {
	Applied bool   `json:"applied"`
	Number  string `json:"number"`
	Removed int    `json:"revoked_entries"`
}

// handleCRL applies a pushed CRL (PEM or DER) and spreads it by gossip.
func (cs *controlServer) handleCRL(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxCRLBody+1))
	if err != nil || len(body) > maxCRLBody {
		writeJSON(w, http.StatusBadRequest, apiError{"CRL missing or larger than 1 MiB"})
		return
	}
	crl, err := cert.ParseCRLPEM(body)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
		return
	}
	applied, err := cs.node.PushCRL(crl)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, CRLResult{Applied: applied, Number: crl.Number.String(), Removed: len(crl.RevokedCertificateEntries)})
}

// handleEvents returns the recent firewall events as one JSON line each;
// with follow=1 it then streams new ones until the client goes away.
func (cs *controlServer) handleEvents(w http.ResponseWriter, r *http.Request) {
	follow := r.URL.Query().Get("follow") == "1"
	var (
		ch     <-chan EventView
		cancel = func() {}
	)
	if follow {
		ch, cancel = cs.node.events.follow()
	}
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	for _, e := range cs.node.events.recent() {
		if enc.Encode(e) != nil {
			return
		}
	}
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	if !follow {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case e, ok := <-ch:
			if !ok || enc.Encode(e) != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}

// handlePing streams one JSON PingReply per line.
func (cs *controlServer) handlePing(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	target := q.Get("target")
	count, err := strconv.Atoi(q.Get("count"))
	if err != nil || count < 1 || count > maxPingCount {
		writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("count must be 1..%d", maxPingCount)})
		return
	}
	interval, err := time.ParseDuration(q.Get("interval"))
	if err != nil || interval < 10*time.Millisecond {
		interval = time.Second
	}
	addr, err := cs.node.Resolve(target)
	if err != nil {
		writeJSON(w, http.StatusNotFound, apiError{cs.node.explainUnresolved(target)})
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	for seq := 1; seq <= count; seq++ {
		reply := cs.node.pingOnce(r.Context(), addr, seq)
		if enc.Encode(reply) != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
		if seq < count {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(interval):
			}
		}
	}
}

// controlClient talks to a node's control API.
type controlClient struct {
	http *http.Client
}

func newControlClient(socket string) *controlClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", socket)
			if err != nil {
				// The *net.OpError repeats the socket path ("dial unix
				// PATH: connect: ..."); keep only its cause.
				var op *net.OpError
				if errors.As(err, &op) {
					err = op.Err
				}
				return nil, fmt.Errorf("control socket %s (is 'gridnet up' running?): %w", socket, err)
			}
			return c, nil
		},
	}
	return &controlClient{http: &http.Client{Transport: tr}}
}

// get fetches path and returns the body, or the API's error.
func (c *controlClient) get(ctx context.Context, path string) (io.ReadCloser, error) {
	return c.do(ctx, http.MethodGet, path)
}

// getJSON fetches path within controlTimeout and decodes its one JSON
// value into v.
func (c *controlClient) getJSON(ctx context.Context, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	body, err := c.get(ctx, path)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := json.NewDecoder(body).Decode(v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

func (c *controlClient) do(ctx context.Context, method, path string) (io.ReadCloser, error) {
	return c.send(ctx, method, path, nil)
}

func (c *controlClient) send(ctx context.Context, method, path string, body io.Reader) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://gridnet"+path, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// Do wraps every error in a *url.Error, which only adds the method
		// and the internal URL ("Get "http://gridnet/v1/status": ..."):
		// nothing for the user. The cause names the socket.
		if cause := errors.Unwrap(err); cause != nil {
			err = cause
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e apiError
		if json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("control API: %s", resp.Status)
	}
	return resp.Body, nil
}

// admissionCounters flattens the handshake counters for the control API and
// the demo: one name per counter, "rejected_REASON" per refusal reason.
func admissionCounters(s overlay.Stats) map[string]uint64 {
	m := map[string]uint64{
		"initiated":        s.Initiated,
		"resent":           s.Resent,
		"repeats_answered": s.RepeatsAnswered,
		"responded":        s.Responded,
		"completed":        s.Completed,
		"rate_limited":     s.RateLimited,
		"junk":             s.Junk,
		"half_open_full":   s.HalfOpenFull,
		"queue_full":       s.QueueFull,
		"timeouts":         s.Timeouts,
		"removed":          s.Removed,
		"stranger_limited": s.StrangerLimited,
		"throttled":        s.Throttled,
		"restarted":        s.Restarted,
		"refusals_sent":    s.RefusalsSent,
		"refusals_limited": s.RefusalsLimited,
		"cookies_sent":     s.CookiesSent,
		"cookies_dropped":  s.CookiesDropped,
		"cookies_received": s.CookiesReceived,
	}
	for r, v := range s.Rejected {
		m["rejected_"+r.String()] = v
	}
	for c, v := range s.RefusedBy {
		m["refused_by_peer_"+c.String()] = v
	}
	return m
}

// checkSocketDir refuses a control socket directory that another user
// could replace the socket in: one owned by someone else than this user
// or root, or one that others may write to without the sticky bit (as
// /tmp has it, where nobody can remove another's file).
func checkSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("control socket directory %s belongs to uid %d: another user could replace the socket; use a directory of this user (control.socket)", dir, st.Uid)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("control socket directory %s is writable by other users (mode %v) without the sticky bit: they could replace the socket; use a directory only this user writes (control.socket)", dir, fi.Mode().Perm())
	}
	return nil
}
