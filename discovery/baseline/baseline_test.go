package baseline

import (
	"testing"
	"time"
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
