package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/aigrid/gridnet/node/internal/control"
	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/policy"
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
	// DataPath says which offloads carry packets and how the backlog
	// inside WireGuard is bounded.
	DataPath DataPathView `json:"data_path"`
}

// DataPathView is the data path in Status (docs/ARCHITECTURE.md,
// "Admission and the data plane").
type DataPathView struct {
	// Mode is the stack's mode: "userspace" or "kernel".
	Mode string `json:"mode"`
	// TCPSegmentation: TCP segments of up to 64 KiB cross between the
	// stack and WireGuard and are split or merged at the boundary
	// (userspace: the netstack's offload; kernel: the TUN's virtio-net
	// header).
	TCPSegmentation bool `json:"tcp_segmentation"`
	// UDPSegmentation and UDPCoalescing: the kernel offers UDP GSO and
	// GRO for the underlay socket, so wireguard-go uses them (it turns GSO
	// off for the rest of the run if a send with it fails, which this does
	// not show).
	UDPSegmentation bool `json:"udp_gso"`
	UDPCoalescing   bool `json:"udp_gro"`
	// BacklogLimit is how many packets may wait inside WireGuard in each
	// direction; BacklogWaits counts the times a reader waited for room,
	// BacklogExpired the packets WireGuard dropped unseen, and
	// BacklogBypasses the times so many went missing that the bound
	// stepped aside for a second.
	BacklogLimit    int    `json:"backlog_limit"`
	BacklogWaits    uint64 `json:"backlog_waits"`
	BacklogExpired  uint64 `json:"backlog_expired"`
	BacklogBypasses uint64 `json:"backlog_bypasses"`
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
	dp := n.ov.DataPath()
	st.DataPath = DataPathView{
		Mode: n.stack.Mode().String(), TCPSegmentation: n.stack.SegmentationOffload(),
		UDPSegmentation: dp.UDPSegmentation, UDPCoalescing: dp.UDPCoalescing,
		BacklogLimit: dp.BacklogLimit, BacklogWaits: dp.BacklogWaits, BacklogExpired: dp.BacklogExpired, BacklogBypasses: dp.BacklogBypasses,
	}
	c := n.stack.Counters()
	st.Interface = CounterView{
		InAccepted: c.Inbound.AcceptedPackets, InDropped: c.Inbound.DroppedPackets,
		OutAccepted: c.Outbound.AcceptedPackets, OutDropped: c.Outbound.DroppedPackets,
	}
	return st
}

// ServeControl serves the node's control API on ln until the returned
// Closer is closed (the node's Close does not stop it): the HTTP API with
// JSON bodies that `gridnet status`, `peers`, `ping`, `events`,
// `crl push` and `reload` use (--socket names ln's unix socket). reload
// answers a reload request (`gridnet reload`); nil refuses them. Whoever
// can connect to ln can push CRLs to the node and reload it: listen on a
// unix socket that only the node's user can open, as `gridnet up` does.
func (n *Node) ServeControl(ln net.Listener, reload func() error) io.Closer {
	if reload == nil {
		reload = func() error { return errors.New("this node does not reload") }
	}
	cs := &controlServer{node: n, log: n.log, reload: reload, ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+control.PathStatus, cs.handleStatus)
	mux.HandleFunc("GET "+control.PathPing, cs.handlePing)
	mux.HandleFunc("POST "+control.PathReload, cs.handleReload)
	mux.HandleFunc("GET "+control.PathEvents, cs.handleEvents)
	mux.HandleFunc("GET "+control.PathPeers, cs.handleMembers)
	mux.HandleFunc("POST "+control.PathCRL, cs.handleCRL)
	cs.srv = &http.Server{Handler: mux, ReadHeaderTimeout: control.Timeout}
	go func() {
		defer close(cs.done)
		if err := cs.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cs.log.Error("control API stopped", "err", err)
		}
	}()
	return cs
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

// Close stops the server, cutting a long ping or events stream rather
// than outliving the node, and removes a unix socket.
func (cs *controlServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := cs.srv.Shutdown(ctx)
	if err != nil {
		// A long ping stream: cut it rather than outlive the node.
		err = cs.srv.Close()
	}
	<-cs.done
	if _, ok := cs.ln.Addr().(*net.UnixAddr); ok {
		_ = os.Remove(cs.ln.Addr().String())
	}
	return err
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (cs *controlServer) handleStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, cs.node.Status())
}

func (cs *controlServer) handleReload(w http.ResponseWriter, _ *http.Request) {
	if err := cs.reload(); err != nil {
		writeJSON(w, http.StatusBadRequest, control.APIError{Error: err.Error()})
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
	body, err := io.ReadAll(io.LimitReader(r.Body, control.MaxCRLBody+1))
	if err != nil || len(body) > control.MaxCRLBody {
		writeJSON(w, http.StatusBadRequest, control.APIError{Error: "CRL missing or larger than 1 MiB"})
		return
	}
	crl, err := cert.ParseCRLPEM(body)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, control.APIError{Error: err.Error()})
		return
	}
	applied, err := cs.node.PushCRL(crl)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, control.APIError{Error: err.Error()})
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
	if err != nil || count < 1 || count > control.MaxPingCount {
		writeJSON(w, http.StatusBadRequest, control.APIError{Error: fmt.Sprintf("count must be 1..%d", control.MaxPingCount)})
		return
	}
	interval, err := time.ParseDuration(q.Get("interval"))
	if err != nil || interval < 10*time.Millisecond {
		interval = time.Second
	}
	addr, err := cs.node.Resolve(target)
	if err != nil {
		writeJSON(w, http.StatusNotFound, control.APIError{Error: cs.node.explainUnresolved(target)})
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

// admissionCounters flattens the handshake counters for Status (the control
// API, the demo): one name per counter, "rejected_REASON" per refusal reason.
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
