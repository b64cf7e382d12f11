// Package metrics exposes a node's counters and state to Prometheus.
//
// A Collector reads a Snapshot from its Source at every scrape: nothing is
// counted on the packet path for metrics' sake, the node's own counters
// (WireGuard's per-peer bytes, the firewall's and the admission
// handshake's counters, gossip's member table, the trust pool's CRLs) are
// read when Prometheus asks. Each node has its own registry (NewRegistry),
// so several nodes in one process do not share state.
package metrics

import (
	"math/big"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Source gives the collector the node's state. It is called once per
// scrape, possibly from several scrapes at once.
type Source interface {
	MetricsSnapshot() Snapshot
}

// SourceFunc adapts a function to Source.
type SourceFunc func() Snapshot

// MetricsSnapshot calls f.
func (f SourceFunc) MetricsSnapshot() Snapshot { return f() }

// Snapshot is the node's state at one scrape.
type Snapshot struct {
	// CertificateExpiry is the node's own certificate's NotAfter.
	CertificateExpiry time.Time
	// Peers are the admitted peers, one per (name, domain).
	Peers []Peer
	// Admission holds the admission handshake's counters.
	Admission Admission
	// Firewall holds the firewall's node-wide counters.
	Firewall Firewall
	// Gossip is nil when gossip is off.
	Gossip *Gossip
	// CRLs are the CRLs applied, one per trusted CA that has one.
	CRLs []CRL
	// VaultOpen is how long the last opening of the node's vault took
	// (key derivation included); 0 when the node has no vault (a node
	// embedded in a Go program) and the metric is left out.
	VaultOpen time.Duration
}

// Peer is one admitted peer.
type Peer struct {
	// Name and Domain are the peer's certificate name and domain.
	Name, Domain string
	// State is the WireGuard session state: admitted, idle or connected.
	State string
	// RxBytes and TxBytes are WireGuard's byte counters for the peer
	// (encrypted datagrams, keepalives and handshakes included).
	RxBytes, TxBytes uint64
	// RxPackets and TxPackets are the overlay packets from and to the
	// peer that the firewall accepted; RxDropped and TxDropped those it
	// dropped.
	RxPackets, TxPackets, RxDropped, TxDropped uint64
	// Trust is the peer's trust score (0 to 1).
	Trust float64
	// Quarantined is true while the peer is in quarantine.
	Quarantined bool
	// Quarantines counts the times the peer was put in quarantine.
	Quarantines uint64
	// Flows is the number of flows the firewall tracks for the peer.
	Flows int
	// LastHandshake is WireGuard's last handshake; zero if none yet.
	LastHandshake time.Time
	// CertificateExpiry is the peer certificate's NotAfter.
	CertificateExpiry time.Time
}

// Admission holds the admission handshake's counters.
type Admission struct {
	// Initiated counts first messages sent (every attempt, retries
	// included); Responded counts second messages sent.
	Initiated, Responded uint64
	// Admitted counts completed admissions (either role).
	Admitted uint64
	// Rejected counts handshakes this node refused, by reason.
	Rejected map[string]uint64
	// RejectReasons are every reason Rejected may name; each is exposed,
	// 0 until it happens.
	RejectReasons []string
	// RefusedByPeer counts refusals this node received, by code.
	RefusedByPeer map[string]uint64
	// RefusalCodes are every code RefusedByPeer may name.
	RefusalCodes []string
	// Timeouts counts initiator attempts that got no answer in time.
	Timeouts uint64
	// Dropped counts handshake datagrams dropped before any
	// cryptography, by reason (rate_limited, half_open_full, queue_full,
	// junk, cookie_queue_full).
	Dropped map[string]uint64
	// RefusalsSent counts refusals this node sent, RefusalsSuppressed
	// those the refusal limits held back.
	RefusalsSent, RefusalsSuppressed uint64
	// CookiesSent and CookiesReceived count cookie replies.
	CookiesSent, CookiesReceived uint64
	// UnderlayDropped counts WireGuard datagrams dropped before
	// decryption, by reason (stranger_limited, throttled).
	UnderlayDropped map[string]uint64
	// SessionRestarts counts WireGuard sessions this node restarted.
	SessionRestarts uint64
	// PeersRevoked counts admitted peers removed when a CRL or a
	// certificate's expiry ended their admission.
	PeersRevoked uint64
}

// Firewall holds the firewall's node-wide counters.
type Firewall struct {
	// Accepted counts accepted packets, both directions.
	Accepted uint64
	// Dropped counts dropped packets by reason.
	Dropped map[string]uint64
	// DropReasons are every reason Dropped may name.
	DropReasons []string
	// Flows is the number of tracked flows.
	Flows int
	// FlowsCut counts established flows cut by rule reloads.
	FlowsCut uint64
	// Quarantined is the number of peers in quarantine.
	Quarantined int
}

// Gossip is the member table as this node sees it.
type Gossip struct {
	// Members counts members by state (alive, dead, left, ...); the node
	// itself is an alive member.
	Members map[string]int
	// States are every state exposed, 0 when no member is in it.
	States []string
}

// CRL is the CRL applied for one trusted CA.
type CRL struct {
	// CA is the CA certificate's common name, CAFingerprint the SHA-256
	// of its DER in hex (two CAs may share a name).
	CA, CAFingerprint string
	// Number is the CRL number.
	Number *big.Int
	// NextUpdate is the CRL's NextUpdate; zero if it has none.
	NextUpdate time.Time
}

// BuildInfo describes the binary for gridnet_build_info.
type BuildInfo struct {
	Version, Revision, GoVersion string
}

// NewRegistry returns a registry with the node's collector, the build
// info, and the Go runtime and process collectors.
func NewRegistry(src Source, build BuildInfo) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewCollector(src),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "gridnet_build_info",
			Help:        "Always 1; the labels describe the gridnet binary.",
			ConstLabels: prometheus.Labels{"version": build.Version, "revision": build.Revision, "goversion": build.GoVersion},
		}, func() float64 { return 1 }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Collector is a prometheus.Collector reading a Source at every scrape.
type Collector struct {
	src Source
	d   descs

	// high is the highest value exposed of each node-wide firewall
	// counter. The firewall moves a removed peer's counts into its totals
	// a moment after the peer left its table, so a scrape in that moment
	// reads a total that is short; Prometheus would take the dip for a
	// reset. Per-peer counters are not held: they do start again when a
	// peer is admitted again.
	mu   sync.Mutex
	high map[string]uint64
}

// descs are the collector's metric descriptions.
type descs struct {
	certExpiry *prometheus.Desc

	peers, peerRxBytes, peerTxBytes, peerRxPackets, peerTxPackets *prometheus.Desc
	peerDropped, peerTrust, peerQuarantined, peerQuarantines      *prometheus.Desc
	peerFlows, peerLastHandshake, peerCertExpiry                  *prometheus.Desc

	handshakes, admissions, handshakeDrops, refusalsSent, refusalsSuppressed *prometheus.Desc
	cookies, underlayDrops, sessionRestarts, peersRevoked                    *prometheus.Desc

	fwAccepted, fwDropped, fwFlows, fwFlowsCut, fwQuarantined *prometheus.Desc

	gossipMembers, crlNumber, crlNextUpdate, vaultOpen *prometheus.Desc
}

// NewCollector returns a collector for src.
func NewCollector(src Source) *Collector {
	peer := []string{"peer", "domain"}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &Collector{src: src, high: map[string]uint64{}, d: descs{
		certExpiry: d("gridnet_certificate_expiry_timestamp_seconds", "When this node's certificate expires, in seconds since the Unix epoch."),

		peers:             d("gridnet_peers", "Admitted peers by WireGuard session state (admitted: no handshake yet, idle: no recent handshake, connected).", "state"),
		peerRxBytes:       d("gridnet_peer_receive_bytes_total", "Bytes WireGuard received from the peer (encrypted datagrams, overhead included) since it was admitted.", peer...),
		peerTxBytes:       d("gridnet_peer_transmit_bytes_total", "Bytes WireGuard sent to the peer (encrypted datagrams, overhead included) since it was admitted.", peer...),
		peerRxPackets:     d("gridnet_peer_receive_packets_total", "Overlay packets from the peer that the firewall accepted since it was admitted.", peer...),
		peerTxPackets:     d("gridnet_peer_transmit_packets_total", "Overlay packets to the peer that the firewall accepted since it was admitted.", peer...),
		peerDropped:       d("gridnet_peer_dropped_packets_total", "Overlay packets from (inbound) or to (outbound) the peer that the firewall dropped since it was admitted.", "peer", "domain", "direction"),
		peerTrust:         d("gridnet_peer_trust_score", "The peer's trust score, from 0 to 1.", peer...),
		peerQuarantined:   d("gridnet_peer_quarantined", "1 while the peer is in quarantine, else 0.", peer...),
		peerQuarantines:   d("gridnet_peer_quarantines_total", "Times the peer was put in quarantine since it was admitted.", peer...),
		peerFlows:         d("gridnet_peer_flows", "Flows the firewall tracks for the peer.", peer...),
		peerLastHandshake: d("gridnet_peer_last_handshake_timestamp_seconds", "WireGuard's last handshake with the peer, in seconds since the Unix epoch (absent before the first).", peer...),
		peerCertExpiry:    d("gridnet_peer_certificate_expiry_timestamp_seconds", "When the peer's certificate expires, in seconds since the Unix epoch.", peer...),

		handshakes:         d("gridnet_handshakes_started_total", "Admission handshakes started: first messages sent (initiator, retries included) and answered (responder).", "role"),
		admissions:         d("gridnet_admissions_total", "Admission handshakes that ended, by result (admitted, rejected: this node refused the peer, refused: the peer refused this node, timeout) and reason.", "result", "reason"),
		handshakeDrops:     d("gridnet_handshake_dropped_datagrams_total", "Admission handshake datagrams dropped before any cryptography, by reason.", "reason"),
		refusalsSent:       d("gridnet_handshake_refusals_sent_total", "Refusals this node sent to peers it refused."),
		refusalsSuppressed: d("gridnet_handshake_refusals_suppressed_total", "Refusals this node did not send because of the refusal rate limits."),
		cookies:            d("gridnet_handshake_cookie_replies_total", "Cookie replies sent under load (sent) and received as initiator (received).", "direction"),
		underlayDrops:      d("gridnet_underlay_dropped_datagrams_total", "WireGuard datagrams dropped before decryption, by reason (stranger_limited: from an address that is no peer's endpoint, over its limit; throttled: from a peer over its budget).", "reason"),
		sessionRestarts:    d("gridnet_session_restarts_total", "WireGuard sessions this node started that did not come up in time and were started again."),
		peersRevoked:       d("gridnet_peer_revalidation_removals_total", "Admitted peers removed because a new CRL revoked them or their certificate no longer verified."),

		fwAccepted:    d("gridnet_firewall_accepted_packets_total", "Packets the firewall accepted, both directions."),
		fwDropped:     d("gridnet_firewall_dropped_packets_total", "Packets the firewall dropped, both directions, by reason.", "reason"),
		fwFlows:       d("gridnet_firewall_flows", "Flows the firewall tracks."),
		fwFlowsCut:    d("gridnet_firewall_flows_cut_total", "Established flows cut because reloaded rules no longer allow them."),
		fwQuarantined: d("gridnet_firewall_quarantined_peers", "Peers in quarantine."),

		gossipMembers: d("gridnet_gossip_members", "Gossip members by state, this node included (only with gossip on).", "state"),
		crlNumber:     d("gridnet_crl_number", "Number of the CRL applied for the CA (a float: exact up to 2^53).", "ca", "ca_sha256"),
		crlNextUpdate: d("gridnet_crl_next_update_timestamp_seconds", "NextUpdate of the CRL applied for the CA, in seconds since the Unix epoch.", "ca", "ca_sha256"),
		vaultOpen:     d("gridnet_vault_open_duration_seconds", "How long the last opening of the node's vault took, key derivation included."),
	}}
}

// Describe sends every description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	d := &c.d
	for _, x := range []*prometheus.Desc{
		d.certExpiry,
		d.peers, d.peerRxBytes, d.peerTxBytes, d.peerRxPackets, d.peerTxPackets,
		d.peerDropped, d.peerTrust, d.peerQuarantined, d.peerQuarantines,
		d.peerFlows, d.peerLastHandshake, d.peerCertExpiry,
		d.handshakes, d.admissions, d.handshakeDrops, d.refusalsSent, d.refusalsSuppressed,
		d.cookies, d.underlayDrops, d.sessionRestarts, d.peersRevoked,
		d.fwAccepted, d.fwDropped, d.fwFlows, d.fwFlowsCut, d.fwQuarantined,
		d.gossipMembers, d.crlNumber, d.crlNextUpdate, d.vaultOpen,
	} {
		ch <- x
	}
}

// Collect reads a snapshot and sends its metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.MetricsSnapshot()
	d := &c.d
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	if !s.CertificateExpiry.IsZero() {
		gauge(d.certExpiry, unixSeconds(s.CertificateExpiry))
	}

	states := map[string]int{"admitted": 0, "idle": 0, "connected": 0}
	seen := make(map[[2]string]bool, len(s.Peers))
	for _, p := range s.Peers {
		// Two entries for one identity would make the scrape fail; the
		// node merges them, this only guards the exposition.
		id := [2]string{p.Name, p.Domain}
		if seen[id] {
			continue
		}
		seen[id] = true
		states[p.State]++
		counter(d.peerRxBytes, p.RxBytes, p.Name, p.Domain)
		counter(d.peerTxBytes, p.TxBytes, p.Name, p.Domain)
		counter(d.peerRxPackets, p.RxPackets, p.Name, p.Domain)
		counter(d.peerTxPackets, p.TxPackets, p.Name, p.Domain)
		counter(d.peerDropped, p.RxDropped, p.Name, p.Domain, "inbound")
		counter(d.peerDropped, p.TxDropped, p.Name, p.Domain, "outbound")
		gauge(d.peerTrust, p.Trust, p.Name, p.Domain)
		gauge(d.peerQuarantined, boolValue(p.Quarantined), p.Name, p.Domain)
		counter(d.peerQuarantines, p.Quarantines, p.Name, p.Domain)
		gauge(d.peerFlows, float64(p.Flows), p.Name, p.Domain)
		if !p.LastHandshake.IsZero() {
			gauge(d.peerLastHandshake, unixSeconds(p.LastHandshake), p.Name, p.Domain)
		}
		if !p.CertificateExpiry.IsZero() {
			gauge(d.peerCertExpiry, unixSeconds(p.CertificateExpiry), p.Name, p.Domain)
		}
	}
	for st, n := range states {
		gauge(d.peers, float64(n), st)
	}

	a := &s.Admission
	counter(d.handshakes, a.Initiated, "initiator")
	counter(d.handshakes, a.Responded, "responder")
	counter(d.admissions, a.Admitted, "admitted", "")
	counter(d.admissions, a.Timeouts, "timeout", "")
	labelled(a.Rejected, a.RejectReasons, func(r string, v uint64) { counter(d.admissions, v, "rejected", r) })
	labelled(a.RefusedByPeer, a.RefusalCodes, func(r string, v uint64) { counter(d.admissions, v, "refused", r) })
	labelled(a.Dropped, nil, func(r string, v uint64) { counter(d.handshakeDrops, v, r) })
	counter(d.refusalsSent, a.RefusalsSent)
	counter(d.refusalsSuppressed, a.RefusalsSuppressed)
	counter(d.cookies, a.CookiesSent, "sent")
	counter(d.cookies, a.CookiesReceived, "received")
	labelled(a.UnderlayDropped, nil, func(r string, v uint64) { counter(d.underlayDrops, v, r) })
	counter(d.sessionRestarts, a.SessionRestarts)
	counter(d.peersRevoked, a.PeersRevoked)

	f := &s.Firewall
	c.mu.Lock()
	counter(d.fwAccepted, c.monotonic("accepted", f.Accepted))
	labelled(f.Dropped, f.DropReasons, func(r string, v uint64) { counter(d.fwDropped, c.monotonic("dropped/"+r, v), r) })
	counter(d.fwFlowsCut, c.monotonic("flows_cut", f.FlowsCut))
	c.mu.Unlock()
	gauge(d.fwFlows, float64(f.Flows))
	gauge(d.fwQuarantined, float64(f.Quarantined))

	if g := s.Gossip; g != nil {
		members := make(map[string]uint64, len(g.Members))
		for st, n := range g.Members {
			members[st] = uint64(n)
		}
		labelled(members, g.States, func(st string, n uint64) { gauge(d.gossipMembers, float64(n), st) })
	}
	for _, crl := range s.CRLs {
		if crl.Number != nil {
			v, _ := new(big.Float).SetInt(crl.Number).Float64()
			gauge(d.crlNumber, v, crl.CA, crl.CAFingerprint)
		}
		if !crl.NextUpdate.IsZero() {
			gauge(d.crlNextUpdate, unixSeconds(crl.NextUpdate), crl.CA, crl.CAFingerprint)
		}
	}
	if s.VaultOpen > 0 {
		gauge(d.vaultOpen, s.VaultOpen.Seconds())
	}
}

// monotonic returns the highest of v and the values exposed before under
// key. c.mu is held.
func (c *Collector) monotonic(key string, v uint64) uint64 {
	if h := c.high[key]; h > v {
		return h
	}
	c.high[key] = v
	return v
}

// labelled calls emit for every label in all (0 when m lacks it) and for
// every other label of m, each once.
func labelled(m map[string]uint64, all []string, emit func(label string, v uint64)) {
	done := make(map[string]bool, len(all))
	for _, l := range all {
		if done[l] {
			continue
		}
		done[l] = true
		emit(l, m[l])
	}
	for l, v := range m {
		if !done[l] {
			emit(l, v)
		}
	}
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
