//go:build race

package discovery

// raceEnabled reports a -race build: 50 members joining one seed at once
// under the detector exceed what the seed serves in the join deadline on
// loaded cores (see TestJoinOneSeedConverges).
const raceEnabled = true
