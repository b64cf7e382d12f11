package cli

import (
	"net"
	"testing"
	"time"
)

// TestUpTestChecksRelays: up --test reports an unreadable password file
// and a proxy address another program holds.
func TestUpTestChecksRelays(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	s := newCheckSetup(t)
	path := s.config("proxy:\n  socks5: " + busy.Addr().String() + "\n  users: [{name: app, password_file: missing.pass}]\n")
	wantProblems(t, path, time.Now(),
		"line 11: proxy.socks5: cannot listen on tcp "+busy.Addr().String(),
		"line 12: proxy.users[0].password_file: password file: open "+s.p("missing.pass"),
	)
}
