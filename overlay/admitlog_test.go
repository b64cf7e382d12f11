package overlay

import (
	"context"
	"log/slog"
	"sync"
	"testing"
)

// messageCounter is a slog handler that counts records by message.
type messageCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

func (h *messageCounter) Enabled(context.Context, slog.Level) bool { return true }

func (h *messageCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts[r.Message]++
	return nil
}

func (h *messageCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *messageCounter) WithGroup(string) slog.Handler      { return h }

func (h *messageCounter) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}

// TestPeerAdmittedLoggedOncePerAdmission: two nodes that admit each other
// (each lists the other as a static peer) run two handshakes, and each
// node admits the other twice. The user sees one "peer admitted" line per
// node; the second admission of the same certificate from the same
// endpoint is a debug line.
func TestPeerAdmittedLoggedOncePerAdmission(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "corp")
	logA := &messageCounter{counts: map[string]int{}}
	logB := &messageCounter{counts: map[string]int{}}
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{logger: slog.New(logA)})
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{logger: slog.New(logB)})

	admit(t, a, b)
	admit(t, b, a)
	both := func(h *messageCounter) int { return h.count("peer admitted") + h.count("peer admitted again") }
	waitFor(t, sessionTimeout, "both admissions on both nodes", func() bool { return both(logA) == 2 && both(logB) == 2 })
	for name, h := range map[string]*messageCounter{"node-a": logA, "node-b": logB} {
		if n := h.count("peer admitted"); n != 1 {
			t.Errorf("%s logged %d \"peer admitted\" lines for one peer admitted twice, want 1", name, n)
		}
	}
}
