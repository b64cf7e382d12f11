package policy

import "time"

// burstFraction is the default bucket depth as a fraction of one second of
// rate: deep enough for a TCP window's burst, shallow enough to cap a flood.
const burstFraction = 0.2

// bucket is a token bucket on the firewall clock (nanoseconds). It is not
// safe for concurrent use; the peer's lock protects it.
type bucket struct {
	tokens float64
	last   int64
}

// take refills at rate tokens/s up to burst and takes n tokens. A rate of 0
// means unlimited. It reports whether n tokens were available.
func (b *bucket) take(now int64, rate, burst, n float64) bool {
	if rate <= 0 {
		return true
	}
	if burst <= 0 {
		burst = max(rate*burstFraction, 1)
	}
	if burst < n {
		// A single packet bigger than the whole bucket passes only with
		// a full bucket, so a tiny burst cannot block big packets forever.
		n = burst
	}
	if el := now - b.last; el > 0 {
		b.tokens += float64(el) * rate / float64(time.Second)
		b.last = now
	} else if b.last == 0 {
		b.last = now
	}
	if b.tokens > burst {
		b.tokens = burst
	}
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// fill sets the bucket full at now (new peers start with a full burst).
func (b *bucket) fill(now int64, rate, burst float64) {
	if burst <= 0 {
		burst = max(rate*burstFraction, 1)
	}
	b.tokens, b.last = burst, now
}
