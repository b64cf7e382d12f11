package node

import (
	"context"
	"log/slog"
	"time"

	"github.com/aigrid/gridnet/policy"
)

// Pushback moves flood control in front of decryption. The firewall drops a
// flooding peer's packets only after WireGuard has decrypted them, and
// decryption is most of what a packet costs: a peer flooding at full speed
// would take the CPU the node's other peers need, however cheaply the
// firewall drops. So a few times a second the node compares each peer's
// inbound accepted and dropped packets; a peer whose packets are mostly
// dropped gets a budget in the overlay (overlay.SetBudgets), enforced on
// its underlay endpoint before decryption: twice the rate the firewall
// accepted from it, at least pushbackFloor. The budget stays while the
// peer's passed packets are still mostly dropped and is lifted after
// pushbackRelease intervals without that. An honest peer, whose packets are
// mostly accepted, is never throttled however fast it sends.
const (
	pushbackInterval = 250 * time.Millisecond
	// pushbackMinDrops is how many inbound drops in one interval (with
	// more drops than accepts) make a peer count as flooding: 2,000/s.
	pushbackMinDrops = 500
	// pushbackFloor is the least budget, packets/s: room for a flooding
	// peer's honest flows, which pass the firewall as before.
	pushbackFloor = 2000
	// pushbackRelease is how many quiet intervals lift a budget.
	pushbackRelease = 4
)

// pushback holds the per-peer state between intervals. Not safe for
// concurrent use: one goroutine runs it.
type pushback struct {
	last    map[string]policy.PeerLoad
	budgets map[string]float64
	quiet   map[string]int
}

func newPushback() *pushback {
	return &pushback{last: map[string]policy.PeerLoad{}, budgets: map[string]float64{}, quiet: map[string]int{}}
}

// budgetChange is one peer's budget set (PPS > 0) or lifted (PPS == 0).
type budgetChange struct {
	Peer              string
	PPS               float64
	Accepted, Dropped uint64 // in the interval
}

// step takes the firewall's cumulative loads after an interval of length
// d and updates the budgets; it returns the peers whose budget started or
// was lifted.
func (p *pushback) step(loads []policy.PeerLoad, d time.Duration) []budgetChange {
	var changes []budgetChange
	seen := make(map[string]bool, len(loads))
	for _, l := range loads {
		seen[l.Name] = true
		prev, ok := p.last[l.Name]
		p.last[l.Name] = l
		if !ok || l.Accepted < prev.Accepted || l.Dropped < prev.Dropped {
			continue // new or re-admitted peer: no interval to judge yet
		}
		acc, drop := l.Accepted-prev.Accepted, l.Dropped-prev.Dropped
		_, throttled := p.budgets[l.Name]
		flooding := drop > acc && (throttled || drop >= pushbackMinDrops)
		switch {
		case flooding:
			pps := max(pushbackFloor, 2*float64(acc)/d.Seconds())
			p.budgets[l.Name] = pps
			p.quiet[l.Name] = 0
			if !throttled {
				changes = append(changes, budgetChange{Peer: l.Name, PPS: pps, Accepted: acc, Dropped: drop})
			}
		case throttled:
			p.quiet[l.Name]++
			if p.quiet[l.Name] >= pushbackRelease {
				p.lift(l.Name)
				changes = append(changes, budgetChange{Peer: l.Name, Accepted: acc, Dropped: drop})
			}
		}
	}
	for name := range p.last {
		if !seen[name] { // removed peer
			delete(p.last, name)
			if _, ok := p.budgets[name]; ok {
				p.lift(name)
				changes = append(changes, budgetChange{Peer: name})
			}
		}
	}
	return changes
}

func (p *pushback) lift(name string) {
	delete(p.budgets, name)
	delete(p.quiet, name)
}

// runPushback applies pushback every pushbackInterval until ctx ends.
func (n *Node) runPushback(ctx context.Context) {
	p := newPushback()
	t := time.NewTicker(pushbackInterval)
	defer t.Stop()
	var loads []policy.PeerLoad
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			loads = n.fw.Loads(loads[:0])
			changes := p.step(loads, now.Sub(last))
			last = now
			if len(changes) == 0 && len(p.budgets) == 0 {
				continue
			}
			n.ov.SetBudgets(p.budgets)
			for _, c := range changes {
				if c.PPS > 0 {
					n.log.Warn("peer throttled before decryption: most of its packets are dropped",
						slog.String("peer", c.Peer), slog.Float64("budget_pps", c.PPS),
						slog.Uint64("accepted", c.Accepted), slog.Uint64("dropped", c.Dropped))
				} else {
					n.log.Info("peer throttle lifted", slog.String("peer", c.Peer))
				}
			}
		}
	}
}
