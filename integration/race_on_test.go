//go:build race

package integration

// floodMinRatio under the race detector: its cost per packet varies too
// much between two measurements for a ratio to mean anything, so only the
// flood's effects (drops, events, bounded flows) are checked; `make test`
// runs the flood test once more without -race to check the 0.70 goal.
const floodMinRatio = 0.0

// floodTransfer is smaller under -race, where the tunnel moves tens of
// Mbit/s.
const floodTransfer = 2 << 20

// raceEnabled: time bounds that are goals without -race get headroom with
// it (several test packages run at once on two cores).
const raceEnabled = true
