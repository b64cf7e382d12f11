package cli

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// pingStats sums up a ping run as ping(8) does.
type pingStats struct {
	target      string
	transmitted int
	rtts        []float64 // milliseconds, one per reply
	elapsed     time.Duration
}

// summary is ping(8)'s closing block: the counts and loss, the time, and
// with any reply the round trip's min/avg/max/mdev.
func (s pingStats) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "--- %s ping statistics ---\n", s.target)
	received := len(s.rtts)
	loss := 0.0
	if s.transmitted > 0 {
		loss = float64(s.transmitted-received) * 100 / float64(s.transmitted)
	}
	fmt.Fprintf(&b, "%d packets transmitted, %d received, %.6g%% packet loss, time %dms\n",
		s.transmitted, received, loss, s.elapsed.Round(time.Millisecond).Milliseconds())
	if received == 0 {
		return b.String()
	}
	lo, hi, sum, sq := math.Inf(1), math.Inf(-1), 0.0, 0.0
	for _, r := range s.rtts {
		lo, hi = min(lo, r), max(hi, r)
		sum += r
		sq += r * r
	}
	avg := sum / float64(received)
	mdev := math.Sqrt(max(sq/float64(received)-avg*avg, 0))
	fmt.Fprintf(&b, "rtt min/avg/max/mdev = %.3f/%.3f/%.3f/%.3f ms\n", lo, avg, hi, mdev)
	return b.String()
}
