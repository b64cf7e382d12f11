package cli

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node/metrics/metricstest"
)

// TestUpServesMetrics: `gridnet up` with a metrics section serves them,
// the vault's opening time included; up --test checks the address and
// prints the section.
func TestUpServesMetrics(t *testing.T) {
	s := newCheckSetup(t)
	if out, _, _ := upTest(t, s.config(""), time.Now()); !strings.Contains(out, "\nmetrics:\n  listen: \"\" # empty: no metrics endpoint\n") {
		t.Errorf("up --test without metrics:\n%s", out)
	}
	port := freeTCPPort(t)
	path := s.config(fmt.Sprintf("metrics:\n  listen: 127.0.0.1:%d\n", port))
	out, errOut, code := upTest(t, path, time.Now())
	if code != 0 || !strings.Contains(out, fmt.Sprintf("\nmetrics:\n  listen: 127.0.0.1:%d\n", port)) {
		t.Fatalf("up --test: exit %d\n%s\n%s", code, out, errOut)
	}

	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	wantProblems(t, path, time.Now(), fmt.Sprintf("line 11: metrics.listen: cannot listen on tcp 127.0.0.1:%d", port))
	ln.Close()

	upNode(t, path)
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	waitUntil(t, 30*time.Second, "the metrics endpoint", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	fams := metricstest.Scrape(t, url)
	if v, ok := metricstest.Value(fams, "gridnet_vault_open_duration_seconds"); !ok || v <= 0 {
		t.Errorf("gridnet_vault_open_duration_seconds = %v (present %v), want > 0", v, ok)
	}
	if v, ok := metricstest.Value(fams, "gridnet_certificate_expiry_timestamp_seconds"); !ok || v < float64(time.Now().Unix()) {
		t.Errorf("gridnet_certificate_expiry_timestamp_seconds = %v (present %v)", v, ok)
	}
}

// freeTCPPort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
