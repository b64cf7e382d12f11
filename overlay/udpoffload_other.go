//go:build !linux

package overlay

// probeUDPOffload reports no UDP offloads: wireguard-go uses them on Linux
// only.
func probeUDPOffload() (gso, gro bool) { return false, false }
