package node

import (
	"net/http"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node/internal/control"
)

// TestServeControl: an embedded node serves the control API the gridnet
// commands use on a socket of the program's choice; without a reload
// function it refuses reloads, and after Close the socket is gone.
func TestServeControl(t *testing.T) {
	ca, err := newLocalCA("ca", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := ca.NodeOptions("emb", netip.MustParsePrefix("100.64.0.7/10"), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	sock := filepath.Join(t.TempDir(), "emb.sock")
	ln, err := control.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	cs := n.ServeControl(ln, nil)
	c := control.NewClient(sock)
	var st Status
	if err := c.GetJSON(t.Context(), control.PathStatus, &st); err != nil || st.Name != "emb" || st.Addresses[0] != "100.64.0.7/10" {
		t.Errorf("status: %+v, %v", st, err)
	}
	// The data path: a userspace stack with offload, a bounded backlog,
	// and the UDP offloads the kernel offers (Linux only).
	if dp := st.DataPath; dp.Mode != "userspace" || !dp.TCPSegmentation || dp.BacklogLimit <= 0 ||
		(runtime.GOOS != "linux" && (dp.UDPSegmentation || dp.UDPCoalescing)) {
		t.Errorf("status data path: %+v", dp)
	}
	if _, err := c.Do(t.Context(), http.MethodPost, control.PathReload); err == nil || !strings.Contains(err.Error(), "does not reload") {
		t.Errorf("reload without a reload function: %v", err)
	}
	if err := cs.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := c.GetJSON(t.Context(), control.PathStatus, &st); err == nil {
		t.Error("the control API still answers after Close")
	}
}
