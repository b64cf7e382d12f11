package overlay

import (
	"slices"
	"time"
)

// RevalidateInterval is how often admitted certificates are re-checked
// (expiry, revocation) even if nobody calls Revalidate.
const RevalidateInterval = 10 * time.Second

// Revalidate removes at once every peer whose certificate has expired at now
// or is revoked (or otherwise no longer verifies) and returns their names.
// Call it whenever the Verifier's CRL changes; it also runs on a timer.
func (o *Overlay) Revalidate(now time.Time) []string {
	o.peersMu.Lock()
	var removed []string
	for _, e := range o.peers {
		if o.stillValid(e.id, now) {
			continue
		}
		why := "certificate no longer valid"
		if !now.Before(e.id.NotAfter) {
			why = "certificate expired"
		} else if o.verify.IsRevoked(e.id) {
			why = "certificate revoked"
		}
		o.removeLocked(e, why)
		removed = append(removed, e.id.Name)
	}
	if len(removed) > 0 {
		o.publishLocked()
	}
	o.peersMu.Unlock()
	if len(removed) > 0 {
		o.deviceCaughtUp()
	}
	slices.Sort(removed)
	return removed
}

// earliestExpiry returns the earliest NotAfter among admitted peers.
func (o *Overlay) earliestExpiry() (time.Time, bool) {
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	var t time.Time
	for _, e := range o.peers {
		if t.IsZero() || e.id.NotAfter.Before(t) {
			t = e.id.NotAfter
		}
	}
	return t, !t.IsZero()
}

// revalidateLoop runs Revalidate every RevalidateInterval and exactly at the
// earliest certificate expiry (measured on the injected clock).
func (o *Overlay) revalidateLoop() {
	defer o.wg.Done()
	tick := time.NewTicker(RevalidateInterval)
	defer tick.Stop()
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	arm := func() {
		d := time.Hour
		if t, ok := o.earliestExpiry(); ok {
			d = max(t.Sub(o.now()), 0)
		}
		expiry.Reset(min(d, time.Hour))
	}
	arm()
	for {
		select {
		case <-o.ctx.Done():
			return
		case <-tick.C:
			o.Revalidate(o.now())
			o.refreshEndpoints()
		case <-expiry.C:
			o.Revalidate(o.now())
		case <-o.changed:
		}
		arm()
	}
}
