//go:build race

package integration

// floodTransfer is smaller under -race, where the tunnel moves tens of
// Mbit/s.
const floodTransfer = 2 << 20

// raceEnabled: time bounds that are goals without -race get headroom with
// it (several test packages run at once on two cores).
const raceEnabled = true
