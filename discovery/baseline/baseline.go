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
	mls, _, err := start(n)
	defer func() {
		for _, m := range mls {
			m.Shutdown()
		}
	}()
	if err != nil {
		return Figures{}, err
	}
	t0 := time.Now()
	joinAll(mls)
	var f Figures
	f.Converged, f.Stragglers = waitAllKnowAll(mls, t0, limit)
	if !killOne {
		return f, nil
	}
	killed := mls[n-1]
	mls = mls[:n-1]
	killed.Shutdown() // no Leave: the others must detect it
	f.Removed, _ = waitAllKnowAll(mls, time.Now(), limit)
	return f, nil
}

// RestTraffic starts n members, joins them all to the first, waits until
// every member knows all n (bounded by limit), lets settle pass and then
// returns the payload bytes (datagrams and stream bytes) the members sent
// in window, per member per second: memberlist's own traffic at rest. It
// also returns how many members still did not know all n at limit (they
// are measured all the same: memberlist's stragglers can take a minute
// and more).
func RestTraffic(n int, limit, settle, window time.Duration) (float64, int, error) {
	if n < 2 {
		return 0, 0, fmt.Errorf("baseline: need at least 2 members, got %d", n)
	}
	mls, counters, err := start(n)
	defer func() {
		for _, m := range mls {
			m.Shutdown()
		}
	}()
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	joinAll(mls)
	_, behind := waitAllKnowAll(mls, t0, limit)
	time.Sleep(settle)
	sent := func() (total uint64) {
		for _, c := range counters {
			total += c.sent.Load()
		}
		return total
	}
	before := sent()
	time.Sleep(window)
	return float64(sent()-before) / float64(n) / window.Seconds(), behind, nil
}

// start creates n members on 127.0.0.1 with the LAN preset, each on
// memberlist's own network transport wrapped to count what it sends. On
// error the members created so far are returned for shutdown.
func start(n int) ([]*memberlist.Memberlist, []*countingTransport, error) {
	mls := make([]*memberlist.Memberlist, 0, n)
	counters := make([]*countingTransport, 0, n)
	for i := range n {
		quiet := log.New(io.Discard, "", 0)
		nt, err := newNetTransport(quiet)
		if err != nil {
			return mls, counters, fmt.Errorf("baseline: member %d transport: %w", i, err)
		}
		ct := newCountingTransport(nt)
		c := memberlist.DefaultLANConfig()
		c.Name = "base-" + strconv.Itoa(i)
		c.BindAddr, c.BindPort, c.AdvertisePort = "127.0.0.1", nt.GetAutoBindPort(), 0
		c.Transport = ct
		c.Logger = quiet
		m, err := memberlist.Create(c)
		if err != nil {
			ct.Shutdown()
			return mls, counters, fmt.Errorf("baseline: member %d: %w", i, err)
		}
		mls = append(mls, m)
		counters = append(counters, ct)
	}
	return mls, counters, nil
}

// joinAll joins every member but the first to the first, all at once.
func joinAll(mls []*memberlist.Memberlist) {
	seed := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(mls[0].LocalNode().Port)))
	var wg sync.WaitGroup
	for _, m := range mls[1:] {
		wg.Go(func() { m.Join([]string{seed}) })
	}
	wg.Wait()
}

// waitAllKnowAll waits until every member of mls knows exactly len(mls)
// members, or until limit after since; it returns the time since since
// and how many members did not.
func waitAllKnowAll(mls []*memberlist.Memberlist, since time.Time, limit time.Duration) (time.Duration, int) {
	behind := func() int {
		k := 0
		for _, m := range mls {
			if m.NumMembers() != len(mls) {
				k++
			}
		}
		return k
	}
	k := behind()
	for k > 0 && time.Since(since) < limit {
		time.Sleep(20 * time.Millisecond)
		k = behind()
	}
	return time.Since(since), k
}

// bindTries bounds the attempts to bind a transport: port 0 picks a free
// TCP port, and the UDP port of the same number may be taken by another
// process meanwhile (memberlist retries the same way for its own
// transport).
const bindTries = 10

// newNetTransport is memberlist's network transport on a free port of
// 127.0.0.1, tried again when it fails (the UDP side of the port it
// picked may be taken).
func newNetTransport(logger *log.Logger) (*memberlist.NetTransport, error) {
	var err error
	for range bindTries {
		var nt *memberlist.NetTransport
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{"127.0.0.1"},
			Logger:    logger,
		})
		if err == nil {
			return nt, nil
		}
		// memberlist's error carries no cause to test (it formats it
		// with %v), so any failure is tried again, as memberlist does.
	}
	return nil, fmt.Errorf("%d tries: %w", bindTries, err)
}
