package suggest

import "testing"

func TestDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"listen", "listen", 0},
		{"lisen", "listen", 1},   // deletion
		{"listenn", "listen", 1}, // insertion
		{"lusten", "listen", 1},  // substitution
		{"lsiten", "listen", 1},  // adjacent swap
		{"threshhold", "threshold", 1},
		{"", "abc", 3},
		{"abc", "", 3},
		{"kitten", "sitting", 3},
		{"ca", "abc", 3}, // OSA: no edit of a swapped pair
		{"grüße", "grusse", 3},
	}
	for _, tt := range tests {
		if got := Distance(tt.a, tt.b); got != tt.want {
			t.Errorf("Distance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := Distance(tt.b, tt.a); got != tt.want {
			t.Errorf("Distance(%q, %q) = %d, want %d (symmetry)", tt.b, tt.a, got, tt.want)
		}
	}
}

func TestClosest(t *testing.T) {
	top := []string{"vault", "ca", "cert", "crl", "listen", "peers", "tun", "control", "log", "gossip", "memory_limit_mib", "firewall"}
	tests := []struct {
		word string
		want string
	}{
		{"lisen", "listen"},
		{"Listen", "listen"},    // case only
		{"pears", "peers"},      // substitution
		{"firewal", "firewall"}, // deletion
		{"memory-limit-mib", "memory_limit_mib"},
		{"memory_limit", "memory_limit_mib"}, // 4 edits, but a prefix
		{"mem", ""},                          // too short for a prefix
		{"bogus", ""},
		{"x", ""},      // one letter: anything is one edit away
		{"cs", "ca"},   // short words: one edit
		{"listen", ""}, // a known word is not its own suggestion
	}
	for _, tt := range tests {
		if got := Closest(tt.word, top...); got != tt.want {
			t.Errorf("Closest(%q) = %q, want %q", tt.word, got, tt.want)
		}
	}
	// Ties go to the first listed.
	if got := Closest("cat", "cap", "car"); got != "cap" {
		t.Errorf("tie: %q", got)
	}
}

func TestHint(t *testing.T) {
	if got := Hint("lisen", "vault", "listen"); got != `; did you mean "listen"?` {
		t.Errorf("hint: %q", got)
	}
	if got := Hint("bogus", "vault", "listen"); got != " (want vault, listen)" {
		t.Errorf("hint without suggestion: %q", got)
	}
	if got := Hint("bogus"); got != "" {
		t.Errorf("hint with nothing known: %q", got)
	}
}
