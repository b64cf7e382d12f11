package discovery

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"time"
)

// memberlist log lines pass a token bucket so that a flapping member or a
// flood of bad packets cannot flood the node's log.
const (
	logRate  = 20 // lines per second, sustained
	logBurst = 50
)

// mlLogWriter adapts memberlist's *log.Logger output ("[LEVEL] memberlist:
// text" lines) to slog, at debug level, rate-limited.
type mlLogWriter struct {
	log        *slog.Logger
	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int
}

func newMLLogWriter(l *slog.Logger) *mlLogWriter {
	return &mlLogWriter{log: l, tokens: logBurst, last: time.Now()}
}

func (w *mlLogWriter) Write(p []byte) (int, error) {
	if !w.log.Enabled(context.Background(), slog.LevelDebug) {
		return len(p), nil
	}
	w.mu.Lock()
	now := time.Now()
	w.tokens = min(logBurst, w.tokens+now.Sub(w.last).Seconds()*logRate)
	w.last = now
	if w.tokens < 1 {
		w.suppressed++
		w.mu.Unlock()
		return len(p), nil
	}
	w.tokens--
	suppressed := w.suppressed
	w.suppressed = 0
	w.mu.Unlock()

	line := bytes.TrimSpace(p)
	level := "INFO"
	if len(line) > 0 && line[0] == '[' {
		if i := bytes.IndexByte(line, ']'); i > 0 {
			level = string(line[1:i])
			line = bytes.TrimSpace(line[i+1:])
		}
	}
	line = bytes.TrimPrefix(line, []byte("memberlist: "))
	attrs := []any{"memberlist_level", level}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed_before", suppressed)
	}
	w.log.Debug("memberlist: "+string(line), attrs...)
	return len(p), nil
}
