package metrics

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node/metrics/metricstest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// fakeSource is a Source whose snapshot a test changes between scrapes.
type fakeSource struct {
	mu sync.Mutex
	s  Snapshot
}

func (f *fakeSource) MetricsSnapshot() Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.s
}

func (f *fakeSource) set(fn func(*Snapshot)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.s)
}

func sampleSnapshot() Snapshot {
	now := time.Unix(1_800_000_000, 0)
	return Snapshot{
		CertificateExpiry: now.Add(time.Hour),
		Peers: []Peer{
			{Name: "beta", Domain: "corp.example", State: "connected", RxBytes: 1000, TxBytes: 2000, RxPackets: 10, TxPackets: 20, RxDropped: 3, TxDropped: 1,
				Trust: 0.75, Quarantined: true, Quarantines: 2, Flows: 4, LastHandshake: now, CertificateExpiry: now.Add(2 * time.Hour)},
			{Name: "gamma", Domain: "partner.example", State: "admitted", Trust: 1},
		},
		Admission: Admission{
			Initiated: 5, Responded: 6, Admitted: 7, Timeouts: 1,
			Rejected: map[string]uint64{"revoked": 2}, RejectReasons: []string{"revoked", "expired"},
			RefusedByPeer: map[string]uint64{"expired": 1}, RefusalCodes: []string{"expired", "unknown_ca"},
			Dropped:      map[string]uint64{"rate_limited": 9, "junk": 1},
			RefusalsSent: 2, RefusalsSuppressed: 1, CookiesSent: 3, CookiesReceived: 1,
			UnderlayDropped: map[string]uint64{"stranger_limited": 4, "throttled": 0},
			SessionRestarts: 1, PeersRevoked: 1,
		},
		Firewall: Firewall{Accepted: 100, Dropped: map[string]uint64{"default-deny": 3}, DropReasons: []string{"default-deny", "flood-packets"},
			Flows: 4, FlowsCut: 1, Quarantined: 1},
		Gossip:    &Gossip{Members: map[string]int{"alive": 3}, States: []string{"alive", "dead", "left"}},
		CRLs:      []CRL{{CA: "corp-ca", CAFingerprint: "ab12", Number: big.NewInt(42), NextUpdate: now.Add(24 * time.Hour)}},
		VaultOpen: 1500 * time.Millisecond,
	}
}

func gatherText(t *testing.T, src Source) []byte {
	t.Helper()
	return encode(t, NewRegistry(src, BuildInfo{Version: "1.2.3", Revision: "abc", GoVersion: "go1.26"}))
}

// encode gathers g in the text format.
func encode(t *testing.T, g prometheus.Gatherer) []byte {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// TestExpositionParsesAndFollowsConventions: the node's metrics parse
// with the Prometheus text parser, pass promtool's lint (testutil), carry
// the gridnet_ prefix, and counters end in _total.
func TestExpositionParsesAndFollowsConventions(t *testing.T) {
	src := &fakeSource{s: sampleSnapshot()}
	fams := metricstest.Parse(t, gatherText(t, src))

	problems, err := testutil.CollectAndLint(NewCollector(src))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	ours := 0
	for name, mf := range fams {
		switch {
		case strings.HasPrefix(name, "go_"), strings.HasPrefix(name, "process_"):
			continue
		case !strings.HasPrefix(name, "gridnet_"):
			t.Errorf("%s: not in the gridnet_ namespace", name)
			continue
		}
		ours++
		if mf.GetHelp() == "" {
			t.Errorf("%s: no HELP", name)
		}
		isCounter := mf.GetType() == dto.MetricType_COUNTER
		if isCounter != strings.HasSuffix(name, "_total") {
			t.Errorf("%s: type %s; counters and only counters end in _total", name, mf.GetType())
		}
		for _, bad := range []string{"_ms", "_milliseconds", "_kb", "_mb", "_minutes"} {
			if strings.Contains(name, bad) {
				t.Errorf("%s: not a base unit", name)
			}
		}
	}
	if ours < 25 {
		t.Errorf("only %d gridnet families", ours)
	}

	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"gridnet_build_info", []string{"version", "1.2.3", "revision", "abc", "goversion", "go1.26"}, 1},
		{"gridnet_peer_receive_bytes_total", []string{"peer", "beta", "domain", "corp.example"}, 1000},
		{"gridnet_peer_transmit_bytes_total", []string{"peer", "beta"}, 2000},
		{"gridnet_peer_receive_packets_total", []string{"peer", "beta"}, 10},
		{"gridnet_peer_transmit_packets_total", []string{"peer", "beta"}, 20},
		{"gridnet_peer_dropped_packets_total", []string{"peer", "beta", "direction", "inbound"}, 3},
		{"gridnet_peer_dropped_packets_total", []string{"peer", "beta", "direction", "outbound"}, 1},
		{"gridnet_peer_trust_score", []string{"peer", "beta"}, 0.75},
		{"gridnet_peer_quarantined", []string{"peer", "beta"}, 1},
		{"gridnet_peer_quarantined", []string{"peer", "gamma", "domain", "partner.example"}, 0},
		{"gridnet_peer_quarantines_total", []string{"peer", "beta"}, 2},
		{"gridnet_peer_flows", []string{"peer", "beta"}, 4},
		{"gridnet_peer_last_handshake_timestamp_seconds", []string{"peer", "beta"}, 1_800_000_000},
		{"gridnet_peer_certificate_expiry_timestamp_seconds", []string{"peer", "beta"}, 1_800_007_200},
		{"gridnet_certificate_expiry_timestamp_seconds", nil, 1_800_003_600},
		{"gridnet_peers", []string{"state", "connected"}, 1},
		{"gridnet_peers", []string{"state", "admitted"}, 1},
		{"gridnet_peers", []string{"state", "idle"}, 0},
		{"gridnet_handshakes_started_total", []string{"role", "initiator"}, 5},
		{"gridnet_handshakes_started_total", []string{"role", "responder"}, 6},
		{"gridnet_admissions_total", []string{"result", "admitted"}, 7},
		{"gridnet_admissions_total", []string{"result", "timeout"}, 1},
		{"gridnet_admissions_total", []string{"result", "rejected", "reason", "revoked"}, 2},
		{"gridnet_admissions_total", []string{"result", "rejected", "reason", "expired"}, 0},
		{"gridnet_admissions_total", []string{"result", "refused", "reason", "expired"}, 1},
		{"gridnet_admissions_total", []string{"result", "refused", "reason", "unknown_ca"}, 0},
		{"gridnet_handshake_dropped_datagrams_total", []string{"reason", "rate_limited"}, 9},
		{"gridnet_handshake_refusals_sent_total", nil, 2},
		{"gridnet_handshake_refusals_suppressed_total", nil, 1},
		{"gridnet_handshake_cookie_replies_total", []string{"direction", "sent"}, 3},
		{"gridnet_underlay_dropped_datagrams_total", []string{"reason", "stranger_limited"}, 4},
		{"gridnet_session_restarts_total", nil, 1},
		{"gridnet_peer_revalidation_removals_total", nil, 1},
		{"gridnet_firewall_accepted_packets_total", nil, 100},
		{"gridnet_firewall_dropped_packets_total", []string{"reason", "default-deny"}, 3},
		{"gridnet_firewall_dropped_packets_total", []string{"reason", "flood-packets"}, 0},
		{"gridnet_firewall_flows", nil, 4},
		{"gridnet_firewall_flows_cut_total", nil, 1},
		{"gridnet_firewall_quarantined_peers", nil, 1},
		{"gridnet_gossip_members", []string{"state", "alive"}, 3},
		{"gridnet_gossip_members", []string{"state", "dead"}, 0},
		{"gridnet_crl_number", []string{"ca", "corp-ca", "ca_sha256", "ab12"}, 42},
		{"gridnet_crl_next_update_timestamp_seconds", []string{"ca", "corp-ca"}, 1_800_086_400},
		{"gridnet_vault_open_duration_seconds", nil, 1.5},
	} {
		got, ok := metricstest.Value(fams, c.name, c.labels...)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
}

// TestOptionalMetricsLeftOut: without gossip, a vault, CRLs or a
// handshake, those metrics are absent rather than made-up zeros, and
// duplicated peers do not break the scrape.
func TestOptionalMetricsLeftOut(t *testing.T) {
	s := sampleSnapshot()
	s.Gossip, s.VaultOpen, s.CRLs = nil, 0, nil
	s.Peers[0].LastHandshake = time.Time{}
	s.Peers = append(s.Peers, s.Peers[0])
	fams := metricstest.Parse(t, gatherText(t, &fakeSource{s: s}))
	for _, name := range []string{"gridnet_gossip_members", "gridnet_vault_open_duration_seconds", "gridnet_crl_number", "gridnet_peer_last_handshake_timestamp_seconds"} {
		if _, ok := fams[name]; ok {
			t.Errorf("%s present", name)
		}
	}
	if n := len(fams["gridnet_peer_receive_bytes_total"].GetMetric()); n != 2 {
		t.Errorf("%d receive-bytes series for two peers", n)
	}
}

// TestFirewallTotalsNeverGoDown: a node-wide firewall counter read short
// (a removed peer's counts on their way into the totals) is exposed at
// its previous value, not as a reset; per-peer counters follow the source.
func TestFirewallTotalsNeverGoDown(t *testing.T) {
	src := &fakeSource{s: sampleSnapshot()}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(src))
	text := func() map[string]*dto.MetricFamily {
		t.Helper()
		return metricstest.Parse(t, encode(t, reg))
	}
	text()
	src.set(func(s *Snapshot) {
		s.Firewall.Accepted, s.Firewall.Dropped, s.Firewall.FlowsCut = 60, map[string]uint64{"default-deny": 1}, 0
		s.Peers[0].RxPackets = 1
	})
	fams := text()
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"gridnet_firewall_accepted_packets_total", nil, 100},
		{"gridnet_firewall_dropped_packets_total", []string{"reason", "default-deny"}, 3},
		{"gridnet_firewall_flows_cut_total", nil, 1},
		{"gridnet_peer_receive_packets_total", []string{"peer", "beta"}, 1},
	} {
		if got, _ := metricstest.Value(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	src.set(func(s *Snapshot) { s.Firewall.Accepted = 150 })
	if got, _ := metricstest.Value(text(), "gridnet_firewall_accepted_packets_total"); got != 150 {
		t.Errorf("accepted = %v after the source passed the old high, want 150", got)
	}
}

// TestServerServesMetricsOnly: the server answers GET /metrics with a
// parseable exposition that follows the source, nothing else, and stops
// on Close and when its context ends.
func TestServerServesMetricsOnly(t *testing.T) {
	src := &fakeSource{s: sampleSnapshot()}
	reg := NewRegistry(src, BuildInfo{Version: "v"})
	srv, err := Serve(t.Context(), "127.0.0.1:0", reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	base := "http://" + srv.Addr().String()
	client := &http.Client{Timeout: 30 * time.Second}
	get := func(method, path string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	code, body := get("GET", Path)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", code, body)
	}
	if v, ok := metricstest.Value(metricstest.Parse(t, body), "gridnet_peer_receive_bytes_total", "peer", "beta"); !ok || v != 1000 {
		t.Errorf("receive bytes %v %v", v, ok)
	}
	src.set(func(s *Snapshot) { s.Peers[0].RxBytes = 5000 })
	_, body = get("GET", Path)
	if v, _ := metricstest.Value(metricstest.Parse(t, body), "gridnet_peer_receive_bytes_total", "peer", "beta"); v != 5000 {
		t.Errorf("after the source changed: receive bytes %v, want 5000", v)
	}
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/", http.StatusNotFound},
		{"GET", "/debug/pprof/", http.StatusNotFound},
		{"POST", Path, http.StatusMethodNotAllowed},
	} {
		if code, _ := get(c.method, c.path); code != c.want {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, code, c.want)
		}
	}

	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := client.Get(base + Path); err == nil {
		t.Error("the server still answers after Close")
	}

	ctx, cancel := context.WithCancel(t.Context())
	srv2, err := Serve(ctx, "127.0.0.1:0", reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	addr := srv2.Addr().String()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := client.Get("http://" + addr + Path); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server still answers after its context ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv2.Close()
}

// blockingSource holds every scrape until release is closed.
type blockingSource struct {
	entered chan struct{}
	release chan struct{}
}

func (b blockingSource) MetricsSnapshot() Snapshot {
	b.entered <- struct{}{}
	<-b.release
	return Snapshot{}
}

// TestServerLimitsConcurrentScrapes: with maxInFlight scrapes in progress
// another one is refused at once with 503, and is served once they end.
func TestServerLimitsConcurrentScrapes(t *testing.T) {
	src := blockingSource{entered: make(chan struct{}, maxInFlight+1), release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src))
	srv, err := Serve(t.Context(), "127.0.0.1:0", reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	url := "http://" + srv.Addr().String() + Path
	client := &http.Client{Timeout: 30 * time.Second}
	codes := make(chan int, maxInFlight)
	for range maxInFlight {
		go func() {
			resp, err := client.Get(url)
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	for range maxInFlight {
		select {
		case <-src.entered:
		case <-time.After(30 * time.Second):
			t.Fatal("the scrapes did not reach the source")
		}
	}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("scrape %d while %d run: %s, want 503", maxInFlight+1, maxInFlight, resp.Status)
	}
	close(src.release)
	for range maxInFlight {
		if c := <-codes; c != http.StatusOK {
			t.Errorf("a held scrape ended with %d", c)
		}
	}
	resp, err = client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("scrape after the others ended: %s", resp.Status)
	}
}

// TestServeAddressInUse: a listen address that cannot be bound is Serve's
// error, named as the metrics listener.
func TestServeAddressInUse(t *testing.T) {
	srv, err := Serve(t.Context(), "127.0.0.1:0", NewRegistry(&fakeSource{}, BuildInfo{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, err = Serve(t.Context(), srv.Addr().String(), NewRegistry(&fakeSource{}, BuildInfo{}), nil)
	if err == nil || !strings.Contains(err.Error(), "metrics listener") {
		t.Fatalf("second server on %s: %v", srv.Addr(), err)
	}
}

// ExampleNewRegistry shows a node's registry served on a local port.
func ExampleNewRegistry() {
	reg := NewRegistry(SourceFunc(func() Snapshot { return Snapshot{} }), BuildInfo{Version: "0.1.0"})
	srv, err := Serve(context.Background(), "127.0.0.1:0", reg, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()
	resp, err := http.Get("http://" + srv.Addr().String() + Path)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Println(strings.Contains(string(b), `gridnet_build_info{goversion="",revision="",version="0.1.0"} 1`))
	// Output: true
}
