//go:build race

package stack

// raceEnabled reports a -race build, where sync.Pool drops objects at random
// and allocation counts are meaningless.
const raceEnabled = true
