package discovery

import (
	"math"
	"time"

	"github.com/hashicorp/memberlist"
)

// Profile selects the timings of failure detection, gossip and the
// package's own repair loops.
type Profile int

const (
	// ProfileLAN (the default) uses memberlist.DefaultLANConfig timings:
	// probe every 1 s with a 500 ms timeout, gossip every 200 ms to 3
	// members, suspicion 4 × log10(N) × 1 s (at most 6 times that),
	// push/pull every 30 s (memberlist scales it up above 32 members).
	// Changed: UDPBufferSize 1350 (fits the overlay MTU), compression off
	// (no decompression bombs; the tunnel carries bytes anyway),
	// DeadNodeReclaimTime 1 s (a member may come back at a new overlay
	// address: identities are bound by certificates, not addresses).
	// Package loops: settle syncs 1, 2, 4, 8 s after Join; record repair
	// every 1 s after 2 s of grace; reconnect to one dead member every 10 s
	// for 24 h; seed retries from 1 s backing off to 30 s; a member known
	// only by its record (memberlist has not reported it) is offered to
	// OnLeave for a check every 10 s.
	ProfileLAN Profile = iota
	// ProfileLocal is for tests in one process (in-memory or loopback): the
	// LAN changes plus probe every 400 ms with a 300 ms timeout (in-memory
	// RTT is microseconds, but 50 members under -race on two cores next to
	// other test packages stall for 100 ms and more), gossip every 50 ms,
	// suspicion 4 × log10(N) × 400 ms (at most 4 times that),
	// push/pull every 5 s, TCP timeout 1 s, dead members gossiped for 5 s.
	// Package loops: settle syncs 0.2, 0.5, 1, 2, 4 s after Join; record
	// repair every 200 ms after 500 ms of grace; reconnect every 300 ms for
	// 1 min; seed retries from 50 ms backing off to 1 s; a member known
	// only by its record is offered for a check every 5 s.
	ProfileLocal
)

// String returns "lan" or "local".
func (p Profile) String() string {
	if p == ProfileLocal {
		return "local"
	}
	return "lan"
}

// tuning holds the package's own timings for a profile.
type tuning struct {
	settleDelays      []time.Duration // push/pull with random members after Join
	settleFanout      int             // members per settle round
	repairInterval    time.Duration   // maintenance tick
	recordGrace       time.Duration   // wait for gossip before pulling a record
	reconnectInterval time.Duration   // one reconnect attempt per interval
	reconnectTimeout  time.Duration   // forget dead and left members after this
	joinBackoffMin    time.Duration
	joinBackoffMax    time.Duration
	updateTimeout     time.Duration // wait for UpdateNode's broadcast
	maxSyncsPerTick   int           // bound the repair loop's push/pulls
	// unseenAfter: a member known only by its record for this long (and
	// again every unseenAfter) is offered to OnLeave as dead, for the
	// node to check it.
	unseenAfter time.Duration
}

func (p Profile) tuning() tuning {
	if p == ProfileLocal {
		return tuning{
			settleDelays: []time.Duration{200 * time.Millisecond, 500 * time.Millisecond,
				time.Second, 2 * time.Second, 4 * time.Second},
			settleFanout:      1,
			repairInterval:    200 * time.Millisecond,
			recordGrace:       500 * time.Millisecond,
			reconnectInterval: 300 * time.Millisecond,
			reconnectTimeout:  time.Minute,
			joinBackoffMin:    50 * time.Millisecond,
			joinBackoffMax:    time.Second,
			updateTimeout:     2 * time.Second,
			maxSyncsPerTick:   2,
			unseenAfter:       5 * time.Second,
		}
	}
	return tuning{
		settleDelays:      []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second},
		settleFanout:      1,
		repairInterval:    time.Second,
		recordGrace:       2 * time.Second,
		reconnectInterval: 10 * time.Second,
		reconnectTimeout:  24 * time.Hour,
		joinBackoffMin:    time.Second,
		joinBackoffMax:    30 * time.Second,
		updateTimeout:     5 * time.Second,
		maxSyncsPerTick:   2,
		unseenAfter:       10 * time.Second,
	}
}

// memberlistConfig returns memberlist's configuration for the profile
// (without name, transport, delegates or logger).
func (p Profile) memberlistConfig() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.UDPBufferSize = udpBufferSize
	c.EnableCompression = false
	c.DeadNodeReclaimTime = time.Second
	if p == ProfileLocal {
		c.ProbeInterval = 400 * time.Millisecond
		c.ProbeTimeout = 300 * time.Millisecond
		c.GossipInterval = 50 * time.Millisecond
		c.SuspicionMult = 4
		c.SuspicionMaxTimeoutMult = 4
		c.PushPullInterval = 5 * time.Second
		c.TCPTimeout = time.Second
		c.GossipToTheDeadTime = 5 * time.Second
	}
	return c
}

// SuspicionWindow is an upper bound on the time from a member's death to
// every one of n members declaring it dead: a probe round, the probe and
// indirect-probe timeouts, the longest suspicion timeout (no
// confirmations), and ten gossip rounds to spread the verdict. Typical
// times are much shorter: confirmations shrink the suspicion timeout
// towards its minimum (SuspicionMult × log10(n) × ProbeInterval).
func (p Profile) SuspicionWindow(n int) time.Duration {
	c := p.memberlistConfig()
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	suspicion := time.Duration(float64(c.SuspicionMult) * scale * float64(c.ProbeInterval))
	return 2*c.ProbeInterval + c.ProbeTimeout + time.Duration(c.SuspicionMaxTimeoutMult)*suspicion +
		10*c.GossipInterval
}
