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
