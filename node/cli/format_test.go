package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node"
)

func TestHumanBytes(t *testing.T) {
	cases := []struct {
		n    uint64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{1048575, "1.0 MiB"},
		{1258291, "1.2 MiB"},
		{5 << 30, "5.0 GiB"},
		{1 << 62, "4.0 EiB"},
		{^uint64(0), "16.0 EiB"},
	}
	for _, c := range cases {
		if got := humanBytes(c.n); got != c.want {
			t.Errorf("humanBytes(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}

// TestStatusSizes: `gridnet status` shows a peer's traffic in binary
// units; `status --json` keeps the exact byte counts.
func TestStatusSizes(t *testing.T) {
	st := node.Status{
		Name: "alpha", Domain: "corp.example", Addresses: []string{"100.64.0.1/10"},
		Peers: []node.PeerView{{Name: "beta", Addresses: []string{"100.64.0.2/10"}, Endpoint: "127.0.0.1:4242",
			RxBytes: 1258291, TxBytes: 812, State: "up"}},
	}
	var text bytes.Buffer
	printStatus(&text, st, time.Now())
	var row string
	for _, line := range strings.Split(text.String(), "\n") {
		if strings.HasPrefix(line, "beta ") {
			row = line
		}
	}
	if !strings.Contains(row, "1.2 MiB") || !strings.Contains(row, "812 B") || strings.Contains(row, "1258291") {
		t.Errorf("status row for beta: %q\n%s", row, text.String())
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"rx_bytes":1258291`)) || !bytes.Contains(b, []byte(`"tx_bytes":812`)) {
		t.Errorf("status --json lost the raw counts: %s", b)
	}
}
