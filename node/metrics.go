package node

import (
	"context"
	"fmt"
	"net"
	"runtime/debug"
	"time"

	"github.com/aigrid/gridnet/node/internal/buildinfo"
	"github.com/aigrid/gridnet/node/metrics"
	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/overlay/handshake"
	"github.com/aigrid/gridnet/policy"
)

// MetricsOptions configure the Prometheus endpoint (docs/CONFIG.md,
// `metrics:`).
type MetricsOptions struct {
	// Listen is the endpoint's TCP address, host:port; port 0 picks a
	// free one (see Node.MetricsAddr).
	Listen string
}

// nodeMetrics is the node's running metrics endpoint.
type nodeMetrics struct {
	srv    *metrics.Server
	cancel context.CancelFunc
}

// startMetrics serves the node's metrics when Options.Metrics asks for
// them.
func (n *Node) startMetrics() error {
	mo := n.opts.Metrics
	if mo == nil || mo.Listen == "" {
		return nil
	}
	log := n.log.With("component", "metrics")
	reg := metrics.NewRegistry(metrics.SourceFunc(n.metricsSnapshot), buildInfo())
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := metrics.Serve(ctx, mo.Listen, reg, log)
	if err != nil {
		cancel()
		return err
	}
	n.metrics = &nodeMetrics{srv: srv, cancel: cancel}
	if !isLoopback(srv.Addr()) {
		log.Warn("metrics endpoint listens beyond this host: whoever reaches it learns the peers' names and traffic", "listen", srv.Addr())
	}
	log.Info("metrics endpoint up", "url", fmt.Sprintf("http://%s%s", srv.Addr(), metrics.Path))
	return nil
}

// closeMetrics stops the endpoint (a scrape in progress may finish).
func (n *Node) closeMetrics() {
	if n.metrics == nil {
		return
	}
	if err := n.metrics.srv.Close(); err != nil {
		n.log.Warn("metrics endpoint", "err", err)
	}
	n.metrics.cancel()
}

// MetricsAddr is the address of the node's metrics endpoint, or nil when
// it has none.
func (n *Node) MetricsAddr() net.Addr {
	if n.metrics == nil {
		return nil
	}
	return n.metrics.srv.Addr()
}

// setVaultOpenDuration records how long opening the node's vault took, for
// gridnet_vault_open_duration_seconds.
func (n *Node) setVaultOpenDuration(d time.Duration) { n.vaultOpen.Store(int64(d)) }

// metricsSnapshot reads the node's state for a scrape: the same sources
// as Status, read at scrape time, so that nothing is added to the packet
// path.
func (n *Node) metricsSnapshot() metrics.Snapshot {
	s := metrics.Snapshot{
		CertificateExpiry: n.Identity().NotAfter,
		Admission:         admissionMetrics(n.ov.Stats()),
		VaultOpen:         time.Duration(n.vaultOpen.Load()),
	}
	s.Peers = peerMetrics(n.ov.Peers(), n.fw.Peers())

	fs := n.fw.Stats()
	s.Firewall = metrics.Firewall{Accepted: fs.Accepted, Dropped: fs.Drops, Flows: fs.Flows, FlowsCut: fs.FlowsCut, Quarantined: fs.Quarantined}
	for _, r := range policy.DropReasons() {
		s.Firewall.DropReasons = append(s.Firewall.DropReasons, r.String())
	}

	if n.gossip != nil {
		g := &metrics.Gossip{Members: map[string]int{}, States: []string{"alive", "dead", "left"}}
		for _, m := range n.Members() {
			g.Members[m.State]++
		}
		s.Gossip = g
	}

	for _, ca := range n.pool.CAs() {
		fp := cert.Fingerprint(ca.Raw)
		num := n.pool.CRLNumber(fp)
		if num == nil {
			continue
		}
		s.CRLs = append(s.CRLs, metrics.CRL{CA: ca.Subject.CommonName, CAFingerprint: fp, Number: num, NextUpdate: n.pool.CRLNextUpdate(fp)})
	}
	return s
}

// peerMetrics joins WireGuard's view of the peers (bytes, handshake) with
// the firewall's (packets, trust, quarantine, flows), one entry per
// identity: a peer admitted with two keys at once (a re-keyed node) is
// summed.
func peerMetrics(wg []overlay.PeerStatus, fw []policy.PeerState) []metrics.Peer {
	type peerID struct{ domain, name string }
	fwPeers := make(map[peerID]policy.PeerState, len(fw))
	for _, ps := range fw {
		fwPeers[peerID{ps.Domain, ps.Name}] = ps
	}
	index := make(map[peerID]int, len(wg))
	var out []metrics.Peer
	for _, p := range wg {
		var domain string
		if p.Identity != nil {
			domain = p.Identity.Domain
		}
		id := peerID{domain, p.Name}
		if i, ok := index[id]; ok {
			m := &out[i]
			m.RxBytes += p.RxBytes
			m.TxBytes += p.TxBytes
			if p.LastHandshake.After(m.LastHandshake) {
				m.LastHandshake, m.State = p.LastHandshake, string(p.State)
			}
			continue
		}
		ps := fwPeers[id]
		index[id] = len(out)
		out = append(out, metrics.Peer{
			Name: p.Name, Domain: domain, State: string(p.State),
			RxBytes: p.RxBytes, TxBytes: p.TxBytes,
			RxPackets: ps.InAccepted, TxPackets: ps.OutAccepted, RxDropped: ps.InDropped, TxDropped: ps.OutDropped,
			Trust: ps.Trust, Quarantined: ps.Quarantined, Quarantines: ps.Quarantines, Flows: ps.Flows,
			LastHandshake: p.LastHandshake, CertificateExpiry: p.NotAfter,
		})
	}
	return out
}

// admissionMetrics turns the overlay's counters into the metrics' view:
// every refusal reason and code listed, so each series exists from the
// start.
func admissionMetrics(s overlay.Stats) metrics.Admission {
	a := metrics.Admission{
		Initiated: s.Initiated, Responded: s.Responded, Admitted: s.Completed, Timeouts: s.Timeouts,
		Rejected: map[string]uint64{}, RefusedByPeer: map[string]uint64{},
		Dropped: map[string]uint64{
			"rate_limited":      s.RateLimited,
			"half_open_full":    s.HalfOpenFull,
			"queue_full":        s.QueueFull,
			"junk":              s.Junk,
			"cookie_queue_full": s.CookiesDropped,
		},
		RefusalsSent: s.RefusalsSent, RefusalsSuppressed: s.RefusalsLimited,
		CookiesSent: s.CookiesSent, CookiesReceived: s.CookiesReceived,
		UnderlayDropped: map[string]uint64{"stranger_limited": s.StrangerLimited, "throttled": s.Throttled},
		SessionRestarts: s.Restarted, PeersRevoked: s.Removed,
	}
	for _, r := range overlay.Reasons() {
		a.RejectReasons = append(a.RejectReasons, r.String())
	}
	for r, v := range s.Rejected {
		a.Rejected[r.String()] = v
	}
	for _, c := range handshake.RefusalCodes() {
		a.RefusalCodes = append(a.RefusalCodes, c.String())
	}
	for c, v := range s.RefusedBy {
		a.RefusedByPeer[c.String()] = v
	}
	return a
}

// buildInfo describes this binary for gridnet_build_info, as `gridnet
// version` does.
func buildInfo() metrics.BuildInfo {
	b := metrics.BuildInfo{Version: Version}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.GoVersion = info.GoVersion
	b.Revision = buildinfo.Revision(info)
	return b
}
