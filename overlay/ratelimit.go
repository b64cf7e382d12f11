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
	// tracked. When the table is full, a new source takes the place of the
	// one least recently seen, so honest new sources are still served.
	rateTableCap = 65536
	// rateEntryIdle is how long an entry must be idle before it is dropped
	// (by then its bucket is full again anyway, so dropping it changes
	// nothing for its source).
	rateEntryIdle = time.Second
)

// rateLimiter is a per-source token bucket. IPv4 sources are keyed by
// address, IPv6 sources by their /64 (one subscriber usually owns a /64).
// It is written here rather than using wireguard-go's ratelimiter because
// that one has no table cap, no injectable clock and runs its own goroutine;
// this one owns no goroutine.
//
// Entries are kept in order of last use. A new source first drops the
// idle entries at the old end (lossless: their buckets are full), and if
// the table is still full it evicts the least recently used one. An
// evicted source starts again with a full burst when it comes back: with
// the table full, that is a source not seen while rateTableCap others
// were, so a flooder gains a burst per source only by cycling through more
// sources than the table holds (an IPv6 /48 has 65,536 /64s) and meanwhile
// cannot lock anyone out, where a table that refused new sources when full
// locked out every honest newcomer.
type rateLimiter struct {
	mu        sync.Mutex
	now       func() time.Time
	cost      int64 // nanoseconds of credit one packet costs
	maxTokens int64
	capacity  int // rateTableCap; tests may lower it
	table     map[netip.Addr]*bucket
	// newest and oldest are the ends of the list of entries by last use.
	newest, oldest *bucket
}

type bucket struct {
	key          netip.Addr
	last         time.Time
	tokens       int64
	newer, older *bucket
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
		capacity:  rateTableCap,
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
		r.makeRoomLocked(now)
		b = &bucket{key: key, last: now, tokens: r.maxTokens - r.cost}
		r.table[key] = b
		r.pushNewestLocked(b)
		return true
	}
	if b != r.newest {
		r.unlinkLocked(b)
		r.pushNewestLocked(b)
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

// makeRoomLocked drops idle entries from the old end of the list, then,
// if the table is still full, the least recently used entry. Each entry is
// dropped once, so this is constant work per new source on average.
func (r *rateLimiter) makeRoomLocked(now time.Time) {
	for r.oldest != nil && now.Sub(r.oldest.last) >= rateEntryIdle {
		r.removeLocked(r.oldest)
	}
	for r.oldest != nil && len(r.table) >= r.capacity {
		r.removeLocked(r.oldest)
	}
}

func (r *rateLimiter) removeLocked(b *bucket) {
	r.unlinkLocked(b)
	delete(r.table, b.key)
}

func (r *rateLimiter) unlinkLocked(b *bucket) {
	if b.newer != nil {
		b.newer.older = b.older
	} else {
		r.newest = b.older
	}
	if b.older != nil {
		b.older.newer = b.newer
	} else {
		r.oldest = b.newer
	}
	b.newer, b.older = nil, nil
}

func (r *rateLimiter) pushNewestLocked(b *bucket) {
	b.older = r.newest
	if r.newest != nil {
		r.newest.newer = b
	}
	r.newest = b
	if r.oldest == nil {
		r.oldest = b
	}
}

// size returns the number of tracked sources.
func (r *rateLimiter) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.table)
}
