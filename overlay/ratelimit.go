package overlay

import (
	"net/netip"
	"sync"
	"time"
)

const (
	// DefaultHandshakeRate is the steady rate of first handshake messages
	// (msg1) allowed per source address, per second (WireGuard's
	// ratelimiter uses the same figure for its initiations).
	DefaultHandshakeRate = 20
	// DefaultHandshakeBurst is the burst allowed per source above the rate.
	DefaultHandshakeBurst = 5
	// rateTableCap bounds the limiter's memory: at most this many sources are
	// tracked; when full and nothing is stale, new sources are refused.
	rateTableCap = 65536
	// rateEntryIdle is how long an entry must be idle before a sweep may
	// reclaim it (by then its bucket is full again anyway).
	rateEntryIdle = time.Second
)

// rateLimiter is a per-source token bucket. IPv4 sources are keyed by
// address, IPv6 sources by their /64 (one subscriber usually owns a /64).
// It is written here rather than using wireguard-go's ratelimiter because
// that one has no table cap, no injectable clock and runs its own goroutine;
// this one sweeps lazily on insert and owns no goroutine.
type rateLimiter struct {
	mu        sync.Mutex
	now       func() time.Time
	cost      int64 // nanoseconds of credit one packet costs
	maxTokens int64
	table     map[netip.Addr]*bucket
	lastSweep time.Time
}

type bucket struct {
	last   time.Time
	tokens int64
}

// newRateLimiter returns a limiter allowing rate packets/s with burst extra
// per source. now may be nil (time.Now).
func newRateLimiter(rate float64, burst int, now func() time.Time) *rateLimiter {
	if now == nil {
		now = time.Now
	}
	if rate <= 0 {
		rate = DefaultHandshakeRate
	}
	if burst <= 0 {
		burst = DefaultHandshakeBurst
	}
	cost := int64(float64(time.Second) / rate)
	if cost < 1 {
		cost = 1
	}
	return &rateLimiter{
		now:       now,
		cost:      cost,
		maxTokens: cost * int64(burst),
		table:     make(map[netip.Addr]*bucket),
	}
}

// rateKey maps a source to its bucket key.
func rateKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// allow reports whether one more packet from src may pass.
func (r *rateLimiter) allow(src netip.Addr) bool {
	key := rateKey(src)
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.table[key]
	if !ok {
		if len(r.table) >= rateTableCap {
			r.sweepLocked(now)
			if len(r.table) >= rateTableCap {
				return false
			}
		}
		r.table[key] = &bucket{last: now, tokens: r.maxTokens - r.cost}
		return true
	}
	elapsed := now.Sub(b.last).Nanoseconds()
	if elapsed > 0 {
		b.tokens = min(b.tokens+elapsed, r.maxTokens)
		b.last = now
	}
	if b.tokens >= r.cost {
		b.tokens -= r.cost
		return true
	}
	return false
}

// sweepLocked drops idle entries, at most once per rateEntryIdle so a full
// table under attack does not turn every packet into a full scan.
func (r *rateLimiter) sweepLocked(now time.Time) {
	if now.Sub(r.lastSweep) < rateEntryIdle {
		return
	}
	r.lastSweep = now
	for k, b := range r.table {
		if now.Sub(b.last) >= rateEntryIdle {
			delete(r.table, k)
		}
	}
}

// size returns the number of tracked sources.
func (r *rateLimiter) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.table)
}
