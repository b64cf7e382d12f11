package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Path is the only path the server answers.
const Path = "/metrics"

// Limits of the metrics server: a scrape is small and quick, so anything
// slow is a stuck or hostile client.
const (
	readTimeout  = 10 * time.Second
	writeTimeout = 30 * time.Second
	idleTimeout  = 60 * time.Second
	// maxInFlight bounds concurrent scrapes (each reads the node's state);
	// more get 503 at once.
	maxInFlight = 4
	// maxHeaderBytes bounds a request's headers.
	maxHeaderBytes = 16 << 10
	// shutdownGrace is how long Close lets a scrape finish.
	shutdownGrace = 2 * time.Second
)

// Server serves one registry on /metrics.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// Serve listens on addr (host:port, TCP) and serves g on /metrics until
// Close or until ctx is done. The listener is bound before Serve returns,
// so an address in use is its error.
func Serve(ctx context.Context, addr string, g prometheus.Gatherer, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            slogPrinter{log},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: maxInFlight,
		Timeout:             writeTimeout - time.Second,
	}))
	s := &Server{
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: readTimeout,
			ReadTimeout:       readTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
			BaseContext:       func(net.Listener) context.Context { return ctx },
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			_ = s.Close()
		case <-s.done:
		}
	}()
	return s, nil
}

// Addr is the address the server listens on (the port chosen when addr
// had port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server: a scrape in progress gets a moment to finish.
// It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			if err := s.srv.Close(); err != nil {
				s.closeErr = fmt.Errorf("metrics server: %w", err)
			}
		}
		<-s.done
	})
	return s.closeErr
}

// slogPrinter is promhttp's error log on a slog.Logger.
type slogPrinter struct{ log *slog.Logger }

// Println logs v as one warning.
func (p slogPrinter) Println(v ...any) { p.log.Warn(fmt.Sprint(v...)) }
