package cli

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape fetches url and parses it with the Prometheus text parser.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s\n%s", resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, body)
	}
	return fams
}

// sample returns the value of family name's sample whose labels include
// the given pairs, and whether there is one.
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
next:
	for _, m := range fams[name].GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

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
	fams := scrape(t, url)
	if v, ok := sample(fams, "gridnet_vault_open_duration_seconds"); !ok || v <= 0 {
		t.Errorf("gridnet_vault_open_duration_seconds = %v (present %v), want > 0", v, ok)
	}
	if v, ok := sample(fams, "gridnet_certificate_expiry_timestamp_seconds"); !ok || v < float64(time.Now().Unix()) {
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
