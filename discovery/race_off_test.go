//go:build !race

package discovery

// raceEnabled: see race_on_test.go.
const raceEnabled = false
