package overlay

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
)

// inboundPacket is a copied gridnet datagram.
type inboundPacket struct {
	pkt  []byte
	from netip.AddrPort
}

// maxRepeatAnswers bounds how often a responder sends the msg2 of one
// handshake again, answering its msg1 sent again: as often as one attempt
// of an initiator sends it again (maxResends, and once after a cookie
// reply). Only whoever sent the msg1 (or sees it on the path) can repeat
// it, and each answer goes to the address the handshake is held for.
const maxRepeatAnswers = maxResends + 1

// msg1Key names a msg1 by what its initiator chose: its source, its
// sender index and its ephemeral key. A msg1 sent again (with or without
// a cookie MAC) has the same key.
type msg1Key struct {
	from   netip.AddrPort
	sender uint32
	e      [32]byte
}

// keyOf returns the key of msg1 m from from.
func keyOf(m handshake.Message, from netip.AddrPort) msg1Key {
	k := msg1Key{from: from, sender: m.Sender}
	copy(k.e[:], m.Noise)
	return k
}

// rawKeyOf returns the key of the msg1 frame pkt from from (pkt passed
// handshake.CheckSize as a msg1, so it holds the header and e).
func rawKeyOf(pkt []byte, from netip.AddrPort) msg1Key {
	k := msg1Key{from: from, sender: binary.LittleEndian.Uint32(pkt[2:6])}
	copy(k.e[:], pkt[handshake.HeaderSize:])
	return k
}

// queuedMsg1 is the halfOpenByInit value of a msg1 that waits in the
// handshake queue (no session index is 0): the same msg1 sent again
// meanwhile is dropped rather than queued twice.
const queuedMsg1 uint32 = 0

// heldLocked reports whether this node holds the msg1 named mk: queued
// for a worker, or half-open and not expired (an expired entry goes).
// For a half-open one whose msg2 is made, again is that msg2, to be sent
// once more (at most maxRepeatAnswers times; counted here).
func (o *Overlay) heldLocked(mk msg1Key, now time.Time) (again []byte, held bool) {
	idx, ok := o.halfOpenByInit[mk]
	if !ok {
		return nil, false
	}
	if idx == queuedMsg1 {
		return nil, true
	}
	h := o.halfOpen[idx]
	if h == nil || !now.Before(h.expires) {
		o.deleteHalfOpenLocked(idx)
		delete(o.halfOpenByInit, mk)
		return nil, false
	}
	if h.msg2 != nil && h.repeats < maxRepeatAnswers {
		h.repeats++
		return h.msg2, true
	}
	return nil, true
}

// heldRepeat reports whether this node holds the msg1 named mk (see
// heldLocked), and if so answers it as a repeat; if not and mark is set,
// it marks the msg1 as queued.
func (o *Overlay) heldRepeat(mk msg1Key, from netip.AddrPort, mark bool) bool {
	o.hsMu.Lock()
	again, held := o.heldLocked(mk, time.Now())
	if !held && mark {
		o.halfOpenByInit[mk] = queuedMsg1
	}
	o.hsMu.Unlock()
	if held {
		// A repeat that came before the per-source limit (mark false)
		// pays it now, before it is answered: a spoofer repeating one
		// msg1 must not get more msg2s sent to the address it names than
		// the limit lets first messages have.
		o.repeated(again, from, !mark)
	}
	return held
}

// repeated answers a msg1 this node held when it came again: with the
// msg2 made for it, if there is one to send (see heldLocked) and, when
// charge is set, the per-source limit allows it. It counts the repeat
// before the answer leaves.
func (o *Overlay) repeated(again []byte, from netip.AddrPort, charge bool) {
	o.stats.repeats.Add(1) // a repeat that came counts, answered or not
	if again == nil {
		return
	}
	if charge && !o.limiter.allow(from.Addr()) {
		o.stats.rateLimited.Add(1)
		return
	}
	if err := o.bind.SendTo(again, from); err != nil {
		o.logSend(err)
	}
}

// halfOpenState is a responder waiting for msg3.
type halfOpenState struct {
	resp     *handshake.Responder
	from     netip.AddrPort
	expires  time.Time
	answered time.Time // when msg2 went out
	key      msg1Key   // the msg1 that made it
	msg2     []byte    // the answer, sent again if the msg1 comes again
	repeats  int       // how often msg2 was sent again (maxRepeatAnswers)
}

// onGridnet is the bind's divert function. It runs on WireGuard's receive
// goroutine, so it only does cheap checks (size/kind, rate limit, table
// lookups), copies survivors and hands them off without blocking.
func (o *Overlay) onGridnet(pkt []byte, from netip.AddrPort) {
	if err := handshake.CheckSize(pkt); err != nil || !from.IsValid() {
		o.stats.junk.Add(1)
		return
	}
	receiver := binary.LittleEndian.Uint32(pkt[6:10])
	in := inboundPacket{from: from}
	switch pkt[1] {
	case handshake.KindResponse, handshake.KindRefusal, handshake.KindCookie:
		o.hsMu.Lock()
		ch, ok := o.pending[receiver]
		var h *halfOpenState
		if !ok && pkt[1] == handshake.KindRefusal {
			h = o.halfOpen[receiver]
		}
		o.hsMu.Unlock()
		if h != nil && h.from == from {
			break // a refusal of msg2 this node sent: to the workers
		}
		if !ok {
			o.stats.junk.Add(1)
			return
		}
		in.pkt = bytes.Clone(pkt)
		select {
		case ch <- in:
		default: // the initiator already has a candidate msg2 or refusal
			o.stats.junk.Add(1)
		}
		return
	case handshake.KindInit:
		// Under load, a first message must prove that its sender receives
		// at its source address: without a valid cookie it gets a cookie
		// reply and nothing else (cookie.go). This comes before the
		// per-source limit, so that spoofed messages neither spend the
		// budget of the address they claim nor enter the limiter's table.
		if o.underLoad() && !o.cookies.valid(pkt, from) {
			o.queueCookie(pkt, from)
			return
		}
		// A msg1 sent again (Msg1Resend) while this node holds it costs
		// no budget, no queue slot and no work: it is answered from its
		// handshake, or dropped while it waits for a worker.
		mk := rawKeyOf(pkt, from)
		if o.heldRepeat(mk, from, false) {
			return
		}
		// Only a first message costs work without state of ours behind
		// it: it alone counts against the per-source limit. Answers (msg2,
		// msg3) must name a handshake this node holds, from the address
		// it holds it for, or are dropped by that lookup; limiting them
		// would drop the completion of a handshake already paid for
		// (nodes behind one address share the limit).
		if !o.limiter.allow(from.Addr()) {
			o.stats.rateLimited.Add(1)
			o.refuseBusy(pkt, from)
			return
		}
		if o.halfOpenFull() {
			o.stats.halfOpenFull.Add(1)
			o.refuseBusy(pkt, from)
			return
		}
		// Marked as queued, unless a copy got here first meanwhile.
		if o.heldRepeat(mk, from, true) {
			return
		}
		in.pkt = bytes.Clone(pkt)
		select {
		case o.queue <- in:
		default:
			o.unqueue(mk)
			o.stats.queueFull.Add(1)
			o.refuseBusy(pkt, from)
		}
		return
	case handshake.KindFinal:
		o.hsMu.Lock()
		h, ok := o.halfOpen[receiver]
		o.hsMu.Unlock()
		if !ok || h.from != from {
			o.stats.junk.Add(1)
			return
		}
		in.pkt = bytes.Clone(pkt)
		select {
		case o.finals <- in:
		default:
			o.stats.queueFull.Add(1)
		}
		return
	}
	in.pkt = bytes.Clone(pkt)
	select {
	case o.queue <- in:
	default:
		o.stats.queueFull.Add(1)
	}
}

// unqueue drops the queued mark of the msg1 named mk, if it has one.
func (o *Overlay) unqueue(mk msg1Key) {
	o.hsMu.Lock()
	if idx, ok := o.halfOpenByInit[mk]; ok && idx == queuedMsg1 {
		delete(o.halfOpenByInit, mk)
	}
	o.hsMu.Unlock()
}

// halfOpenFull reports whether the half-open table is at capacity after
// dropping expired entries.
func (o *Overlay) halfOpenFull() bool {
	o.hsMu.Lock()
	defer o.hsMu.Unlock()
	if len(o.halfOpen) < HalfOpenCap {
		return false
	}
	o.sweepHalfOpenLocked(time.Now())
	return len(o.halfOpen) >= HalfOpenCap
}

func (o *Overlay) sweepHalfOpenLocked(now time.Time) {
	for idx, h := range o.halfOpen {
		if now.After(h.expires) {
			o.deleteHalfOpenLocked(idx)
		}
	}
}

// Responding reports whether a handshake from endpoint is in progress here
// as responder: msg2 is out (or being made) and its msg3 not yet handled.
// A node about to admit the node at endpoint can leave it to that
// handshake rather than start a second one that would cross it.
func (o *Overlay) Responding(endpoint netip.AddrPort) bool {
	o.hsMu.Lock()
	defer o.hsMu.Unlock()
	now := time.Now()
	for _, h := range o.halfOpen {
		if h.from == endpoint && now.Before(h.expires) {
			return true
		}
	}
	return false
}

// deleteHalfOpenLocked drops a half-open entry and its per-source count.
func (o *Overlay) deleteHalfOpenLocked(idx uint32) {
	h, ok := o.halfOpen[idx]
	if !ok {
		return
	}
	delete(o.halfOpen, idx)
	if o.halfOpenByInit[h.key] == idx {
		delete(o.halfOpenByInit, h.key)
	}
	o.halfOpenN.Store(int32(len(o.halfOpen)))
	key := rateKey(h.from.Addr())
	if o.halfOpenBySrc[key]--; o.halfOpenBySrc[key] <= 0 {
		delete(o.halfOpenBySrc, key)
	}
}

// newIndexLocked picks a random non-zero session index unused by any
// half-open or pending handshake. Random indices keep off-path attackers
// from guessing a live session.
func (o *Overlay) newIndexLocked() uint32 {
	var b [4]byte
	for {
		_, _ = rand.Read(b[:])
		idx := binary.LittleEndian.Uint32(b[:])
		if idx == 0 {
			continue
		}
		if _, ok := o.halfOpen[idx]; ok {
			continue
		}
		if _, ok := o.pending[idx]; ok {
			continue
		}
		return idx
	}
}

// worker serves the handshake queues until the overlay closes.
func (o *Overlay) worker() {
	defer o.wg.Done()
	for {
		in, ok := o.nextInbound()
		if !ok {
			return
		}
		o.handleInbound(in)
	}
}

// nextInbound waits for the next handshake message to handle: a last
// message (msg3) if one waits, else whichever comes first. It reports
// false once the overlay closes.
func (o *Overlay) nextInbound() (inboundPacket, bool) {
	select {
	case in := <-o.finals:
		return in, true
	default:
	}
	select {
	case <-o.ctx.Done():
		return inboundPacket{}, false
	case in := <-o.finals:
		return in, true
	case in := <-o.queue:
		return in, true
	}
}

// handleInbound runs the responder side for msg1 and msg3.
func (o *Overlay) handleInbound(in inboundPacket) {
	m, err := handshake.ParseMessage(in.pkt)
	if err != nil {
		o.stats.junk.Add(1)
		if len(in.pkt) > handshake.HeaderSize+32 && in.pkt[1] == handshake.KindInit {
			o.unqueue(rawKeyOf(in.pkt, in.from))
		}
		return
	}
	switch m.Kind {
	case handshake.KindInit:
		o.respond(m, in.from)
	case handshake.KindFinal:
		o.finish(m, in.from)
	case handshake.KindRefusal:
		o.refusedAsResponder(m, in.from)
	default:
		o.stats.junk.Add(1)
	}
}

// respond answers msg1 with msg2 and records the half-open state. A msg1
// this node already holds a live handshake for (its initiator sent it
// again, see Msg1Resend) is answered with that handshake's msg2, or
// dropped while msg2 is still being made: no second slot, no second
// Noise work.
func (o *Overlay) respond(m handshake.Message, from netip.AddrPort) {
	mk := keyOf(m, from)
	o.hsMu.Lock()
	if idx, ok := o.halfOpenByInit[mk]; ok && idx == queuedMsg1 {
		delete(o.halfOpenByInit, mk) // this is the queued msg1: taken
	} else if again, held := o.heldLocked(mk, time.Now()); held {
		o.hsMu.Unlock()
		o.repeated(again, from, false) // charged when it was queued
		return
	}
	if len(o.halfOpen) >= HalfOpenCap {
		o.sweepHalfOpenLocked(time.Now())
		if len(o.halfOpen) >= HalfOpenCap {
			o.hsMu.Unlock()
			o.stats.halfOpenFull.Add(1)
			o.refuseBusyMsg(m, from)
			return
		}
	}
	key := rateKey(from.Addr())
	if o.halfOpenBySrc[key] >= o.halfOpenPerSrc {
		o.hsMu.Unlock()
		o.stats.halfOpenFull.Add(1)
		o.refuseBusyMsg(m, from)
		return
	}
	idx := o.newIndexLocked()
	// Reserve the index before the (unlocked) crypto.
	o.halfOpen[idx] = &halfOpenState{from: from, expires: time.Now().Add(o.halfOpenTTL), key: mk}
	o.halfOpenByInit[mk] = idx
	o.halfOpenN.Store(int32(len(o.halfOpen)))
	o.halfOpenBySrc[key]++
	o.hsMu.Unlock()

	resp, msg2, err := handshake.NewResponder(o.credentials(), m, idx)
	o.hsMu.Lock()
	h := o.halfOpen[idx] // nil if swept meanwhile: drop the handshake
	if err != nil || h == nil {
		o.deleteHalfOpenLocked(idx)
	} else {
		h.resp = resp
	}
	o.hsMu.Unlock()
	if err != nil {
		o.reject(err, from, "responder")
		return
	}
	if h == nil {
		return
	}
	o.hsMu.Lock()
	h.answered = time.Now()
	h.msg2 = msg2
	o.hsMu.Unlock()
	if err := o.sendCounted(&o.stats.responded, msg2, from); err != nil {
		o.logSend(err)
	}
}

// finish verifies msg3 and admits the initiator.
func (o *Overlay) finish(m handshake.Message, from netip.AddrPort) {
	o.hsMu.Lock()
	h, ok := o.halfOpen[m.Receiver]
	if ok && h.resp != nil && h.from == from {
		o.deleteHalfOpenLocked(m.Receiver)
	} else {
		ok = false
	}
	o.hsMu.Unlock()
	now := time.Now()
	if !ok || now.After(h.expires) {
		o.stats.junk.Add(1)
		return
	}
	rtt := now.Sub(h.answered)
	peer, err := h.resp.ConsumeFinal(m, o.verifyPeer)
	if err == nil {
		// Counted before the admission starts the session, so that
		// whoever sees the session sees the completion counted.
		o.stats.completed.Add(1)
		if err = o.admit(peer, from, o.startsSession(peer.Static, from), rtt); err != nil {
			o.stats.completed.Add(^uint64(0))
		}
	}
	if err != nil {
		o.reject(err, from, "responder")
		o.sendRefusal(err, from, h.resp.Refusal)
		return
	}
	o.forgetRefusal(from)
}

// startsSession decides whether this node, admitting peer as responder,
// starts the WireGuard session. The responder normally does: it admits
// last, so the initiator already has it configured. But when both nodes
// admit each other at once (both name the other as a static peer), each is
// the responder of one handshake, and two simultaneous WireGuard
// initiations leave both sides waiting for WireGuard's 5 s retry. Then only
// the node with the lower WireGuard key starts; the other, which has its own
// attempt in flight towards the peer, waits for it.
func (o *Overlay) startsSession(peer [32]byte, from netip.AddrPort) bool {
	o.hsMu.Lock()
	initiating := o.attempting[from] > 0
	o.hsMu.Unlock()
	return !initiating || bytes.Compare(o.wgPub[:], peer[:]) < 0
}

// logSend logs a failed handshake send, rate limited.
func (o *Overlay) logSend(err error) {
	if o.logLim.allow("send") {
		o.log.Warn("handshake send failed", "err", err.Error())
	}
}
