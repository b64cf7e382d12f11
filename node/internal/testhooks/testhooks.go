// Package testhooks carries the test-only controls of a node between
// package node and its test-support package node/nodetest. It is
// internal: programs outside this module cannot make a Hooks, so
// node.Options.TestHooks is nil for them and nothing here changes how
// their nodes run.
package testhooks

import (
	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/stack"
)

// Hooks are set by node/nodetest before node.Start (the switches) and
// filled by node.Start (the functions).
type Hooks struct {
	// Unfiltered leaves the packet hook a pass-through (counters only):
	// benchmarks compare it with the firewall.
	Unfiltered bool
	// SkipSelfCheck starts the node even if its own certificate does not
	// verify or is not for its keys, to play a node that an honest peer
	// must refuse.
	SkipSelfCheck bool
	// StackTuning overrides the userspace stack's defaults, for the
	// benchmark that measures alternatives to them.
	StackTuning stack.Tuning

	// Crash stops the node without leaving the gossip fabric, as a
	// killed process would.
	Crash func() error
	// OverlayStats are the admission and underlay counters.
	OverlayStats func() overlay.Stats
	// WireGuardConfig is the WireGuard device's configuration dump.
	WireGuardConfig func() (string, error)
}
