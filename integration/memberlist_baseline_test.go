package integration

import (
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// memberlistBaseline runs n members of memberlist alone on 127.0.0.1 (its
// own transport, LAN preset, distinct ports), joins all of them to the
// first at once, and measures the time until every member knows all n,
// then the time until a member shut down without leaving is gone from
// every other member's list. Each phase is bounded by two minutes; a
// phase that runs out reports the bound (memberlist alone can leave
// stragglers until its next push/pull).
func memberlistBaseline(b *testing.B, n int) fabricTimes {
	const bound = 2 * time.Minute
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
			b.Fatalf("memberlist baseline: %v", err)
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
	everyoneSees := func(set []*memberlist.Memberlist, want int) bool {
		for _, m := range set {
			if m.NumMembers() != want {
				return false
			}
		}
		return true
	}
	for !everyoneSees(mls, n) && time.Since(start) < bound {
		time.Sleep(20 * time.Millisecond)
	}
	mesh := time.Since(start)

	killed := mls[n-1]
	mls = mls[:n-1]
	killed.Shutdown() // no Leave: the others must detect it
	t0 := time.Now()
	for !everyoneSees(mls, n-1) && time.Since(t0) < bound {
		time.Sleep(20 * time.Millisecond)
	}
	return fabricTimes{mesh: mesh, removal: time.Since(t0)}
}
