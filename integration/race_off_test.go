//go:build !race

package integration

// floodMinRatio is the share of its throughput the honest peer must keep
// when a flood is aimed at the victim, compared with the same flood aimed at
// a bystander in the same process (see TestFloodKeepsOtherPeersServed).
const floodMinRatio = 0.70

// floodTransfer is what the honest peer sends per measurement.
const floodTransfer = 48 << 20

// raceEnabled: see race_on_test.go.
const raceEnabled = false
