//go:build !race

package integration

// floodTransfer is what the honest peer sends per measurement.
const floodTransfer = 48 << 20

// raceEnabled: see race_on_test.go.
const raceEnabled = false
