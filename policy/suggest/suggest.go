// Package suggest finds the known word a user most likely meant, for
// "did you mean" hints in config errors. It is shared by the node config
// (package node) and the firewall config (package policy), and imports
// nothing of gridnet.
package suggest

import (
	"fmt"
	"strings"
)

// Closest returns the word of known nearest to word, or "" when none is
// near enough to be a plausible typo. Nearness is the optimal string
// alignment distance (insertions, deletions, substitutions and swaps of
// two adjacent letters each count one), ignoring case and treating '-' as
// '_'. A word is near enough when the distance is at most a third of its
// length, and at least 1 and at most 3 in any case; ties go to the word
// listed first. Failing that, a known word that starts with word (of at
// least four letters) is returned: "memory_limit" for "memory_limit_mib".
func Closest(word string, known ...string) string {
	w := normalize(word)
	limit := min(max(len([]rune(w))/3, 1), 3)
	best, bestD := "", limit+1
	for _, k := range known {
		if k == word {
			continue
		}
		if d := Distance(w, normalize(k)); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" || len(w) < 4 {
		return best
	}
	for _, k := range known {
		if strings.HasPrefix(normalize(k), w) && k != word {
			return k
		}
	}
	return ""
}

// Hint returns the tail of an unknown-key message: `; did you mean "X"?`
// when a known key is close to key, else ` (want a, b, c)` listing known,
// or "" when known is empty.
func Hint(key string, known ...string) string {
	if c := Closest(key, known...); c != "" {
		return fmt.Sprintf("; did you mean %q?", c)
	}
	if len(known) == 0 {
		return ""
	}
	return " (want " + strings.Join(known, ", ") + ")"
}

func normalize(s string) string {
	return strings.ReplaceAll(strings.ToLower(s), "-", "_")
}

// Distance is the optimal string alignment distance between a and b, in
// runes: the fewest insertions, deletions, substitutions and transpositions
// of adjacent runes that turn a into b, no substring edited twice.
func Distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	// Three rows of the dynamic programme: i-2, i-1 and i.
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}
