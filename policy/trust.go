package policy

import (
	"math"
	"time"
)

// floodPenaltyWindow limits flood penalties to one per window, so a short
// burst over the bucket costs little and a sustained flood costs ~10/s.
const floodPenaltyWindow = 100 * time.Millisecond

// minExpiryFactor is the lowest multiplier certificate expiry applies: an
// expiring certificate alone lowers the score, it never quarantines a peer
// with the default threshold.
const minExpiryFactor = 0.5

// trustState is a peer's trust score. The stored score decays towards 1;
// see the package doc for the formula. Guarded by the peer's lock.
type trustState struct {
	score        float64 // at time at
	at           int64
	lastFlood    int64 // last flood penalty (clock ns); -1 none
	quarantined  int64 // quarantined until (clock ns); 0 = not
	notBefore    int64 // certificate validity on the firewall clock
	notAfter     int64
	hasValidity  bool
	quarantines  uint64
	penaltiesHit uint64
}

// recovered returns the stored score brought forward to now:
// s(now) = 1 - (1 - s(at)) * 2^(-(now-at)/halfLife).
func (t *trustState) recovered(now int64, halfLife time.Duration) float64 {
	if t.score >= 1 || now <= t.at {
		return t.score
	}
	return 1 - (1-t.score)*math.Exp2(-float64(now-t.at)/float64(halfLife))
}

// expiryFactor is 1 until the last `window` fraction of the certificate's
// validity, then falls linearly to minExpiryFactor at NotAfter.
func (t *trustState) expiryFactor(now int64, window float64) float64 {
	if !t.hasValidity || window <= 0 {
		return 1
	}
	life := float64(t.notAfter - t.notBefore)
	left := float64(t.notAfter - now)
	w := life * window
	if life <= 0 || left <= 0 {
		return minExpiryFactor
	}
	if left >= w {
		return 1
	}
	return minExpiryFactor + (1-minExpiryFactor)*left/w
}

// current returns the effective score at now: recovered score times the
// expiry factor, in [0,1].
func (t *trustState) current(now int64, cfg *TrustConfig) float64 {
	if t.score >= 1 && !t.hasValidity {
		return 1
	}
	s := t.recovered(now, cfg.HalfLife) * t.expiryFactor(now, cfg.ExpiryWindow)
	return min(max(s, 0), 1)
}

// penalize lowers the score by p at now and reports whether the peer just
// entered quarantine (effective score below the threshold).
func (t *trustState) penalize(now int64, p float64, cfg *TrustConfig) bool {
	t.score = max(t.recovered(now, cfg.HalfLife)-p, 0)
	t.at = now
	t.penaltiesHit++
	if cfg.Threshold <= 0 || t.quarantined > now {
		return false
	}
	if t.current(now, cfg) < cfg.Threshold {
		t.quarantined = now + int64(cfg.Quarantine)
		if t.quarantined == now {
			t.quarantined = now + 1
		}
		t.quarantines++
		return true
	}
	return false
}

// floodPenaltyDue reports whether floodPenalty would apply at now.
func (t *trustState) floodPenaltyDue(now int64) bool {
	return t.lastFlood == 0 || now-t.lastFlood >= int64(floodPenaltyWindow)
}

// floodPenalty applies the flood penalty at most once per window.
func (t *trustState) floodPenalty(now int64, cfg *TrustConfig) bool {
	if !t.floodPenaltyDue(now) {
		return false
	}
	t.lastFlood = now
	return t.penalize(now, cfg.FloodPenalty, cfg)
}

// inQuarantine reports whether the peer is quarantined at now.
func (t *trustState) inQuarantine(now int64) bool { return t.quarantined > now }

// blockedSlots is the size of a peer's table of recently penalised blocked
// keys: 32 entries of 16 bytes. With the default penalty a peer is
// quarantined after 14 distinct keys, so an honest peer never fills it.
const blockedSlots = 32

// blockedEntry is one remembered (proto, port) of a blocked inbound flow.
type blockedEntry struct {
	key   uint32 // blockedKey
	until int64  // clock ns when the entry lapses; 0 = free
}

// blockedTable remembers, per peer, the (proto, port) pairs whose blocked
// new flows were penalised within the window, so that retransmits, resends
// and retries of a refused connection cost trust once per window, while
// every distinct port still costs. It is fixed-size: when it is full of
// live entries, a new key replaces the entry that lapses first and is
// penalised like any new key, so filling the table buys an attacker
// nothing. Guarded by the peer's lock.
type blockedTable struct {
	e [blockedSlots]blockedEntry
}

// blockedKey is the table key of a packet: protocol and destination port,
// or for ICMP the message type (an echo's identifier and sequence number
// change with every ping and every resend).
func blockedKey(p *packet) uint32 {
	switch {
	case isICMP(p.proto):
		return uint32(p.proto)<<16 | uint32(p.icmpType)
	case p.proto == protoTCP || p.proto == protoUDP:
		return uint32(p.proto)<<16 | uint32(p.dstPort)
	}
	return uint32(p.proto) << 16
}

// charge reports whether a blocked flow with key should be penalised at
// now: true the first time the key is seen in a window (the key is then
// remembered until now+window), false for a repeat within it. A window of
// 0 or less charges every call.
func (t *blockedTable) charge(key uint32, now int64, window time.Duration) bool {
	if window <= 0 {
		return true
	}
	victim := 0
	for i := range t.e {
		e := &t.e[i]
		if e.until > now && e.key == key {
			return false
		}
		if e.until < t.e[victim].until {
			victim = i
		}
	}
	t.e[victim] = blockedEntry{key: key, until: now + int64(window)}
	return true
}
