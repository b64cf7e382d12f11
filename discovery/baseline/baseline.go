// Package baseline runs hashicorp/memberlist alone — its own UDP and TCP
// transport on 127.0.0.1, the LAN preset, no overlay — so that benchmarks
// can report gridnet's discovery figures against memberlist measured in
// the same run. It is used by benchmarks only.
package baseline

import (
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Figures are the times of one baseline run.
type Figures struct {
	// Converged is the time from the joins until every member knows all
	// n members (the limit if that was not reached).
	Converged time.Duration
	// Stragglers is how many members did not know all n at Converged.
	Stragglers int
	// Removed is the time until a member shut down without leaving was
	// gone from every other member's list (the limit if not reached; zero
	// unless Run was asked to kill one).
	Removed time.Duration
}

// Run starts n members, joins all of them to the first at the same moment
// and measures convergence; with killOne it then shuts one member down
// without a leave and measures the time until the others drop it. Each
// phase is bounded by limit.
func Run(n int, limit time.Duration, killOne bool) (Figures, error) {
	if n < 2 {
		return Figures{}, fmt.Errorf("baseline: need at least 2 members, got %d", n)
	}
	mls := make([]*memberlist.Memberlist, 0, n)
	defer func() {
		for _, m := range mls {
			m.Shutdown()
		}
	}()
	for i := range n {
		c := memberlist.DefaultLANConfig()
		c.Name = "base-" + strconv.Itoa(i)
		c.BindAddr, c.BindPort, c.AdvertisePort = "127.0.0.1", 0, 0
		c.Logger = log.New(io.Discard, "", 0)
		m, err := memberlist.Create(c)
		if err != nil {
			return Figures{}, fmt.Errorf("baseline: member %d: %w", i, err)
		}
		mls = append(mls, m)
	}
	seed := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(mls[0].LocalNode().Port)))
	start := time.Now()
	var wg sync.WaitGroup
	for _, m := range mls[1:] {
		wg.Go(func() { m.Join([]string{seed}) })
	}
	wg.Wait()
	behind := func(set []*memberlist.Memberlist, want int) int {
		k := 0
		for _, m := range set {
			if m.NumMembers() != want {
				k++
			}
		}
		return k
	}
	var f Figures
	for f.Stragglers = behind(mls, n); f.Stragglers > 0 && time.Since(start) < limit; f.Stragglers = behind(mls, n) {
		time.Sleep(20 * time.Millisecond)
	}
	f.Converged = time.Since(start)
	if !killOne {
		return f, nil
	}
	killed := mls[n-1]
	mls = mls[:n-1]
	killed.Shutdown() // no Leave: the others must detect it
	t0 := time.Now()
	for behind(mls, n-1) > 0 && time.Since(t0) < limit {
		time.Sleep(20 * time.Millisecond)
	}
	f.Removed = time.Since(t0)
	return f, nil
}
