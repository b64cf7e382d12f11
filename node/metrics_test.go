package node

import (
	"context"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/aigrid/gridnet/node/metrics/metricstest"
	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/policy"
)

// TestMetricsCountTrafficAndDrops: two userspace nodes; beta serves
// metrics. The exposition parses and follows the naming conventions;
// beta's byte and packet counters for alpha grow when pings pass, and its
// drop counters grow when its firewall drops alpha's pings.
func TestMetricsCountTrafficAndDrops(t *testing.T) {
	var crlNumber *big.Int
	alpha, beta := startPair(t, func(ca *localCA, o *Options) {
		o.Metrics = &MetricsOptions{Listen: "127.0.0.1:0"}
		crl, err := ca.CA.Revoke(nil, []*big.Int{big.NewInt(4242)}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		o.CRLs, crlNumber = append(o.CRLs, crl), crl.Number
	})
	if alpha.MetricsAddr() != nil {
		t.Errorf("alpha has a metrics endpoint without asking: %v", alpha.MetricsAddr())
	}
	url := fmt.Sprintf("http://%s/metrics", beta.MetricsAddr())
	waitUntil(t, 30*time.Second, "a session between alpha and beta", func() bool {
		for _, p := range beta.Peers() {
			if p.Name == "alpha" && p.State == overlay.PeerConnected {
				return true
			}
		}
		return false
	})

	before := metricstest.Scrape(t, url)
	for name, mf := range before {
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue
		}
		if !strings.HasPrefix(name, "gridnet_") {
			t.Errorf("%s: not in the gridnet_ namespace", name)
		}
		if (mf.GetType() == dto.MetricType_COUNTER) != strings.HasSuffix(name, "_total") {
			t.Errorf("%s: type %s; counters and only counters end in _total", name, mf.GetType())
		}
	}
	if v, ok := metricstest.Value(before, "gridnet_build_info", "version", Version); !ok || v != 1 {
		t.Errorf("gridnet_build_info{version=%q} = %v, %v", Version, v, ok)
	}
	if v, _ := metricstest.Value(before, "gridnet_admissions_total", "result", "admitted"); v < 1 {
		t.Errorf("admissions: %v, want at least 1", v)
	}
	if v, ok := metricstest.Value(before, "gridnet_crl_number", "ca", "ca"); !ok || v != float64(crlNumber.Int64()) {
		t.Errorf("gridnet_crl_number = %v (%v), want %v", v, ok, crlNumber)
	}
	if v, ok := metricstest.Value(before, "gridnet_peer_trust_score", "peer", "alpha", "domain", "corp.example"); !ok || v != 1 {
		t.Errorf("alpha's trust: %v (%v)", v, ok)
	}
	if _, ok := before["gridnet_gossip_members"]; ok {
		t.Error("gossip members without gossip")
	}

	// Pings from beta to alpha, which lets ICMP in: both directions flow.
	allow, err := policy.ParseConfig([]byte("inbound:\n  - {proto: icmp, port: any, host: any}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := alpha.ReloadFirewall(allow); err != nil {
		t.Fatal(err)
	}
	const pings = 3
	for range pings {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, err := beta.Ping(ctx, "alpha")
		cancel()
		if err != nil {
			t.Fatalf("beta's ping of alpha: %v", err)
		}
	}
	// Pings from alpha to beta, whose firewall (the default) drops them.
	for range 2 {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		if _, err := alpha.Ping(ctx, "beta"); err == nil {
			t.Fatal("alpha's ping passed beta's default-deny firewall")
		}
		cancel()
	}

	after := metricstest.Scrape(t, url)
	peer := []string{"peer", "alpha", "domain", "corp.example"}
	grew := func(name string, by float64, labels ...string) {
		t.Helper()
		b, _ := metricstest.Value(before, name, labels...)
		a, ok := metricstest.Value(after, name, labels...)
		if !ok || a-b < by {
			t.Errorf("%s%v: %v before, %v after (present %v); want it up by %v at least", name, labels, b, a, ok, by)
		}
	}
	grew("gridnet_peer_transmit_packets_total", pings, peer...)
	grew("gridnet_peer_receive_packets_total", pings, peer...)
	grew("gridnet_peer_transmit_bytes_total", pings*84, peer...) // each an 84-byte echo request, plus WireGuard's overhead
	grew("gridnet_peer_receive_bytes_total", (pings+2)*84, peer...)
	grew("gridnet_peer_dropped_packets_total", 2, append(peer, "direction", "inbound")...)
	grew("gridnet_firewall_dropped_packets_total", 2, "reason", "default-deny")
	grew("gridnet_firewall_accepted_packets_total", 2*pings)

	if err := beta.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := (&http.Client{Timeout: 5 * time.Second}).Get(url); err == nil {
		t.Error("the metrics endpoint still answers after the node closed")
	}
}

// TestMetricsListenInUse: a node whose metrics address is taken does not
// start, and says why.
func TestMetricsListenInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ca, err := newLocalCA("ca", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := ca.NodeOptions("alpha", netip.MustParsePrefix("100.64.0.1/10"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	opts.Metrics = &MetricsOptions{Listen: ln.Addr().String()}
	n, err := Start(t.Context(), opts)
	if err == nil {
		n.Close()
		t.Fatal("started with its metrics address in use")
	}
	if !strings.Contains(err.Error(), "metrics listener") {
		t.Errorf("error %q does not name the metrics listener", err)
	}
}

// TestMetricsConfig: the metrics section is off by default, takes an IP
// and port, and may not share an address with a proxy.
func TestMetricsConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte("vault: {path: v}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metrics.Listen.IsValid() || metricsOptions(cfg.Metrics) != nil {
		t.Errorf("metrics on by default: %+v", cfg.Metrics)
	}
	cfg, err = ParseConfig([]byte("vault: {path: v}\nmetrics: {listen: 127.0.0.1:9100}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if mo := metricsOptions(cfg.Metrics); mo == nil || mo.Listen != "127.0.0.1:9100" {
		t.Errorf("metrics options %+v", mo)
	}
	for _, c := range []struct{ yaml, want string }{
		{"vault: {path: v}\nmetrics:\n  listen: localhost:9100\n", "line 3: \"localhost:9100\" is not an IP address with port"},
		{"vault: {path: v}\nmetrics:\n  lisen: 127.0.0.1:9100\n", "line 3: unknown key \"lisen\" in metrics; did you mean \"listen\"?"},
		{"vault: {path: v}\nproxy: {http: 127.0.0.1:8080}\nmetrics:\n  listen: 127.0.0.1:8080\n", "line 4: metrics.listen: tcp local address 127.0.0.1:8080 is proxy.http too"},
	} {
		_, err := ParseConfig([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.yaml, err, c.want)
		}
	}
}
