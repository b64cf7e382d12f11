package discovery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// handleUser handles one of the package's own messages (b, type byte
// first) that the transport received from sender (the member whose
// tunnel it came through) at from; stream says whether it came over a
// stream (pulls and their answers only travel so) or in a packet.
func (d *Discovery) handleUser(sender string, from netip.AddrPort, b []byte, stream bool) {
	if len(b) < 2 {
		d.refuse(sender, "message", fmt.Errorf("message of %d bytes: %w", len(b), ErrMalformed))
		return
	}
	switch b[0] {
	case msgRecord:
		e, err := decodeEntry(b[1:])
		if err != nil {
			d.refuse(sender, "record", err)
			return
		}
		// Anyone may relay a record, unchanged: its owner's signature
		// says whose it is.
		if d.acceptEntry(e, LearnedGossip, sender) {
			d.queueRecord(e)
		}
	case msgCRL:
		der := bytes.Clone(b[1:])
		if d.acceptCRL(der) {
			d.queueCRL(der)
		}
	case msgAnnounce:
		a, err := decodeAnnounce(b[1:])
		if err != nil {
			d.refuse(sender, "announcement", err)
			return
		}
		// "Pull from me": only the holder itself says so, from its own
		// address, so that nobody can send the fabric's syncs elsewhere.
		if a.holder != sender || a.holderAddr.Addr() != from.Addr() {
			d.refuse(sender, "announcement", fmt.Errorf("announcement for holder %q at %v sent by %q at %v: %w", a.holder, a.holderAddr, sender, from.Addr(), ErrBadStatement))
			return
		}
		if d.wants(a) {
			d.requestSync(syncRequest{addr: a.holderAddr})
		}
	case msgPull:
		p, err := decodePull(b[1:])
		if err == nil && (!stream || p.from != sender || p.addr.Addr() != from.Addr()) {
			err = fmt.Errorf("pull for %q at %v sent by %q at %v (stream %v): %w", p.from, p.addr, sender, from.Addr(), stream, ErrBadStatement)
		}
		if err != nil {
			d.refuse(sender, "pull", err)
			return
		}
		d.queueAnswer(p)
	case msgState:
		// Streamed states are merged by the transport as they are read
		// (see readUserStream); one in a packet was never asked for.
		d.refuse(sender, "state", fmt.Errorf("state in a packet: %w", ErrBadStatement))
	case msgLeave:
		n, err := decodeLeave(b[1:])
		if err != nil {
			d.stats.leavesRefused.Add(1)
			d.refuse(sender, "leave", err)
			return
		}
		if d.leaving(n, b, sender) {
			// Relayed unchanged: the leaver's signature goes with it.
			d.enqueue("l/"+n.name, bytes.Clone(b))
		}
	default:
		d.refuse(sender, "message", fmt.Errorf("message type %d: %w", b[0], ErrMalformed))
	}
}

// refuse counts a refused message from sender and logs it, at most once
// per badInputLogEvery for each sender, reason and level.
func (d *Discovery) refuse(sender, reason string, err error) {
	switch reason {
	case "record":
		d.stats.recordsRefused.Add(1)
	case "state":
		d.stats.statesRefused.Add(1)
	}
	d.stats.refused.Add(1)
	d.badLog.log(d.log, sender, reason, err)
}

// Log limits for bad input from members.
const (
	// badInputLogEvery is how often one line per sending member and reason
	// is logged about refused input; the lines in between are counted and
	// the count goes with the next line. As for firewall events: a member
	// sending junk as fast as it can costs one line a minute per reason.
	badInputLogEvery = time.Minute
	// maxBadInputKeys bounds the (member, reason) pairs remembered for
	// that; past it, pairs not logged for badInputLogEvery are forgotten,
	// and if none is, a new pair's lines are only counted.
	maxBadInputKeys = 1024
)

// badInputLog rate-limits log lines about members' bad input.
type badInputLog struct {
	mu      sync.Mutex
	last    map[badInputKey]*badInputState
	dropped uint64 // lines of pairs that found the table full
}

type badInputKey struct {
	sender, reason string
	level          slog.Level
}

type badInputState struct {
	at         time.Time
	suppressed uint64
}

func (l *badInputLog) log(log *slog.Logger, sender, reason string, err error) {
	now := time.Now()
	level := badInputLevel(err)
	k := badInputKey{sender, reason, level}
	l.mu.Lock()
	if l.last == nil {
		l.last = make(map[badInputKey]*badInputState)
	}
	st := l.last[k]
	if st == nil && len(l.last) >= maxBadInputKeys {
		for key, s := range l.last {
			if now.Sub(s.at) >= badInputLogEvery {
				delete(l.last, key)
			}
		}
		if len(l.last) >= maxBadInputKeys {
			l.dropped++
			l.mu.Unlock()
			return
		}
	}
	if st != nil && now.Sub(st.at) < badInputLogEvery {
		st.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := uint64(0)
	if st == nil {
		st = &badInputState{}
		l.last[k] = st
	} else {
		suppressed = st.suppressed
	}
	st.at, st.suppressed = now, 0
	l.mu.Unlock()
	log.Log(context.Background(), level, "discovery: refused input from a member", "member", sender, "what", reason, "err", err,
		"suppressed_before", suppressed)
}

// badInputLevel is the log level of a refusal: a warning for input no
// honest member sends (bad signatures, forged or malformed messages,
// limits), debug for what honest members cause too (see errExpected) and
// for broken streams (a loaded member gives up or times out).
func badInputLevel(err error) slog.Level {
	switch {
	case errors.Is(err, errExpected):
		return slog.LevelDebug
	case errors.Is(err, ErrBadStatement), errors.Is(err, ErrMalformed), errors.Is(err, ErrTooLarge), errors.Is(err, errRefused):
		return slog.LevelWarn
	}
	return slog.LevelDebug
}
