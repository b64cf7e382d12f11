package baseline

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestRunConverges(t *testing.T) {
	f, err := Run(4, 20*time.Second, false)
	if err != nil {
		t.Fatal(err)
	}
	if f.Stragglers != 0 || f.Converged >= 20*time.Second {
		t.Fatalf("4 members of memberlist alone: %+v, want converged with no stragglers", f)
	}
	if f.Removed != 0 {
		t.Fatalf("removal measured without killOne: %v", f.Removed)
	}
}

func TestRunRefusesOneMember(t *testing.T) {
	if _, err := Run(1, time.Second, false); err == nil {
		t.Fatal("Run with one member: no error")
	}
}

func TestRestTrafficCountsProbes(t *testing.T) {
	// Three members of the LAN preset probe one member a second each:
	// a ping and an ack of a few dozen bytes. Anything from a few bytes
	// to a few KiB per member per second is memberlist at rest; zero
	// means the transport's bytes are not counted.
	perMember, behind, err := RestTraffic(3, 10*time.Second, time.Second, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if behind != 0 {
		t.Fatalf("%d of 3 members did not know all within 10 s", behind)
	}
	if perMember < 10 || perMember > 10000 {
		t.Fatalf("3 members at rest sent %.0f B/member/s, want 10–10000", perMember)
	}
}

// TestShutdownWithStreamAccepted: a stream the wrapped transport accepts
// after nobody reads its streams any more (memberlist stops reading
// before it shuts the transport down) does not keep Shutdown waiting.
func TestShutdownWithStreamAccepted(t *testing.T) {
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	c := newCountingTransport(nt)
	c.once.Do(func() { close(c.done) }) // forwarding stopped, as memberlist's reader stops first
	conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(nt.GetAutoBindPort())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(100 * time.Millisecond) // accepted, and handed to nobody
	done := make(chan error, 1)
	go func() { done <- c.Shutdown() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown still waits 10 s after it began: the accepted stream holds it")
	}
}
