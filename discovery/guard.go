package discovery

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The transport is where the package knows which member a packet or a
// stream came from: the member whose tunnel it came through (Config.
// PeerName). Every memberlist message passes the rules below there,
// before memberlist sees it, and the package's own messages are handled
// there and never reach memberlist:
//
//   - A member speaks for itself: an alive message (or alive node state)
//     for the sender itself may carry any incarnation, from the sender's
//     own address. So may its own leave (dead with From = Node).
//   - About anyone else, a member only relays, and a relay must be
//     plausible: an alive message places the named member at the gossip
//     address of its genuine record here, or (before its record arrived)
//     at an address of a tunnel that belongs to it, so a made-up name
//     never enters memberlist's table; a verdict names a member this node
//     knows; the incarnation is at most
//     maxIncarnationStep past the highest one this node let through for
//     that member and at most maxRelayedIncarnation (so no accusation
//     can push a member's incarnation to where its refutation, one more,
//     wraps to 0 and loses). Alive messages about this node from others
//     are dropped (only memberlist itself speaks for this node); verdicts
//     about it pass (memberlist can only refute them).
//   - A push this node did not ask for (another member's push/pull or
//     join) carries only the sender's own node state and record, and
//     verdicts about this node; answers
//     to this node's own push/pulls and joins carry everyone's, each under
//     the relay rules. At most maxPushNodes node states.
//   - Pings name the sender's own address for the answer; indirect pings
//     target a member at its gossip address (as for alive messages).
//   - Compression, encryption, labels and unknown message types are
//     dropped: this package never sends them.
//
// memberlist's verdicts (suspect, dead) still pass under the incarnation
// rule: they are how failure detection works. They are hints to the
// node, which checks a member through its tunnel before it removes it
// (see OnLeave); what the rules prevent is a verdict that cannot be
// refuted.

// Memberlist v0.7.0 message types (its net.go).
const (
	mlPing         = 0
	mlIndirectPing = 1
	mlAck          = 2
	mlSuspect      = 3
	mlAlive        = 4
	mlDead         = 5
	mlPushPull     = 6
	mlCompound     = 7
	mlUser         = 8
	mlNack         = 11
	mlHasCrc       = 12
	mlErr          = 13
)

// memberlist node states in push/pull (its state.go).
const (
	mlStateAlive   = 0
	mlStateSuspect = 1
	mlStateDead    = 2
	mlStateLeft    = 3
)

// Memberlist message rules.
const (
	// maxIncarnationStep is how far past the highest incarnation this
	// node let through for a member a relayed message about that member
	// may go. memberlist raises a member's incarnation by one for each
	// refutation and each metadata update, so an honest relay is a few
	// ahead at most; 1024 covers a long partition's worth. A member's
	// own messages about itself are not bounded, and a relay too far
	// ahead is repaired when this node syncs with that member itself.
	maxIncarnationStep = 1024
	// maxRelayedIncarnation caps the incarnation of any relayed message:
	// memberlist refutes an accusation with its incarnation plus one,
	// which wraps to 0 (and loses) at 2^32-1. With relays capped at
	// 2^31, no accusation makes a refutation wrap.
	maxRelayedIncarnation = 1 << 31
	// maxPushNodes caps the node states of one push/pull: the fabric
	// size the package is designed for, plus the sender. memberlist
	// itself allocates for up to a million before reading them.
	maxPushNodes = MaxStateRecords + 1
	// maxUserStream caps a user message over a stream that is not a
	// state: a pull names at most MaxStateRecords names, and a CRL is
	// at most MaxCRLSize.
	maxUserStream = MaxCRLSize + 64<<10
	// maxCompoundDepth is how deeply compound packets may nest
	// (memberlist does not nest them).
	maxCompoundDepth = 2
	// pullAnswerWait is how long after a pull its answer is taken: the
	// member answers pulls one at a time, so a loaded one answers late;
	// later, a state from it is one nobody asked for.
	pullAnswerWait = 30 * time.Second
)

var (
	errRefused = errors.New("refused by the transport's rules")
	// errExpected marks refusals honest members cause too (memberlist
	// sends its whole state in a push; relays echo this node's own alive
	// messages; a relay may come before the member's record): counted,
	// logged at debug level only.
	errExpected = fmt.Errorf("expected: %w", errRefused)
)

// memberlist's messages (see msgpack.go for their encoding).
type (
	mlPingMsg struct {
		SeqNo      uint32
		Node       string
		SourceAddr []byte `codec:",omitempty"`
		SourcePort uint16 `codec:",omitempty"`
		SourceNode string `codec:",omitempty"`
	}
	mlIndirectPingMsg struct {
		SeqNo      uint32
		Target     []byte
		Port       uint16
		Node       string
		Nack       bool
		SourceAddr []byte `codec:",omitempty"`
		SourcePort uint16 `codec:",omitempty"`
		SourceNode string `codec:",omitempty"`
	}
	mlAliveMsg struct {
		Incarnation uint32
		Node        string
		Addr        []byte
		Port        uint16
		Meta        []byte
		Vsn         []uint8
	}
	// mlVerdictMsg is a suspect or a dead message.
	mlVerdictMsg struct {
		Incarnation uint32
		Node        string
		From        string
	}
	mlPushPullHeader struct {
		Nodes        int
		UserStateLen int
		Join         bool
	}
	mlUserMsgHeader struct {
		UserMsgLen int
	}
	mlPushNodeState struct {
		Name        string
		Addr        []byte
		Port        uint16
		Meta        []byte
		Incarnation uint32
		State       int
		Vsn         []uint8
	}
)

func addrPortOf(ip []byte, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}

// about reports whether a memberlist statement from sender about node
// (of kind alive, suspect or dead; addr is an alive message's address)
// may reach memberlist, and if so raises the incarnation this node has
// let through for node. from is where the sender's packet came from;
// solicited is false for a push this node did not ask for.
func (d *Discovery) about(sender string, from netip.Addr, kind byte, node, accuser string, inc uint32, addr netip.AddrPort, solicited bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case node == "":
		return fmt.Errorf("statement without a name: %w", errRefused)
	case node == d.self.Name:
		// memberlist can only refute what others say about this node;
		// that is how it learns to (a push telling it it is dead
		// included). Only alive messages are useless: they would only
		// ever be refuted.
		if kind == mlAlive {
			return fmt.Errorf("%q speaks for this node: %w", sender, errExpected)
		}
		if err := d.incOKLocked(node, inc); err != nil {
			return err
		}
	case node == sender:
		if kind == mlAlive && addr.Addr() != from {
			return fmt.Errorf("%q announces itself at %v, but speaks from %v: %w", node, addr, from, errRefused)
		}
		if kind != mlAlive && !(kind == mlDead && accuser == node) && !solicited {
			return fmt.Errorf("%q accuses itself in a push: %w", node, errRefused)
		}
	case !solicited:
		return fmt.Errorf("%q speaks about %q in a push nobody asked for: %w", sender, node, errExpected)
	default:
		m := d.members[node]
		if kind == mlAlive && !d.placesLocked(m, node, addr) {
			why := errRefused
			if m == nil || !m.hasRec {
				why = errExpected // the relay came before the record
			}
			return fmt.Errorf("%q puts %q at %v, which is neither the gossip address of its record nor one of its tunnels: %w", sender, node, addr, why)
		}
		if kind != mlAlive && m == nil {
			return fmt.Errorf("%q speaks about %q, which is no member here: %w", sender, node, errExpected)
		}
		if err := d.incOKLocked(node, inc); err != nil {
			return err
		}
	}
	if inc > d.incs[node] {
		d.incs[node] = inc
	}
	return nil
}

// placesLocked reports whether addr is member node's gossip address: the
// one in its genuine record, or (before its record arrived) an address
// of a tunnel that belongs to it (its certificate was verified when it
// was admitted). A made-up name has neither.
func (d *Discovery) placesLocked(m *member, node string, addr netip.AddrPort) bool {
	if m != nil && m.hasRec {
		return slices.Contains(m.addrs, addr.Addr()) && (!m.recGossip.IsValid() || addr == m.recGossip)
	}
	name, ok := d.cfg.PeerName(addr.Addr())
	return ok && name == node
}

// incOKLocked applies the incarnation bounds to a relayed statement.
func (d *Discovery) incOKLocked(node string, inc uint32) error {
	if inc > maxRelayedIncarnation {
		return fmt.Errorf("incarnation %d of %q above the relay cap %d: %w", inc, node, uint32(maxRelayedIncarnation), errRefused)
	}
	if known := d.incs[node]; inc > known+maxIncarnationStep {
		return fmt.Errorf("incarnation %d of %q is %d past the highest seen (%d), limit %d: %w", inc, node, inc-known, known, maxIncarnationStep, errRefused)
	}
	return nil
}

// filterPacket applies the rules to one packet from the overlay address
// from and returns what memberlist may see of it (nil: nothing). The
// package's own messages in it are handled here, with their sender.
func (d *Discovery) filterPacket(from netip.AddrPort, buf []byte) []byte {
	sender, ok := d.cfg.PeerName(from.Addr())
	if !ok {
		d.stats.filtered.Add(1)
		d.badLog.log(d.log, from.Addr().String(), "packet", fmt.Errorf("packet from an address no admitted peer holds: %w", errExpected))
		return nil
	}
	var parts [][]byte
	if err := splitPacket(buf, 0, &parts); err != nil {
		d.stats.filtered.Add(1)
		d.badLog.log(d.log, sender, "packet", err)
		return nil
	}
	// The package's own messages go to their worker: verifying them
	// takes longer than memberlist's probes may wait.
	for _, p := range parts {
		if p[0] == mlUser {
			d.user.offer(sender, from, p[1:])
		}
	}
	keep := make([][]byte, 0, len(parts))
	for _, p := range parts {
		if p[0] == mlUser {
			continue
		}
		out, err := d.checkPart(sender, from, p)
		if err != nil {
			d.stats.filtered.Add(1)
			d.badLog.log(d.log, sender, "memberlist", err)
			continue
		}
		keep = append(keep, out)
	}
	switch len(keep) {
	case 0:
		return nil
	case 1:
		return keep[0]
	}
	out := []byte{mlCompound, byte(len(keep))}
	for _, p := range keep {
		out = binary.BigEndian.AppendUint16(out, uint16(len(p)))
	}
	for _, p := range keep {
		out = append(out, p...)
	}
	return out
}

// splitPacket appends the messages of a packet (checksum checked and
// removed, compound packets unpacked) to parts.
func splitPacket(buf []byte, depth int, parts *[][]byte) error {
	if len(buf) == 0 {
		return fmt.Errorf("empty message: %w", ErrMalformed)
	}
	switch buf[0] {
	case mlHasCrc:
		if len(buf) < 5 || depth > 0 {
			return fmt.Errorf("bad checksum frame: %w", ErrMalformed)
		}
		if crc32.ChecksumIEEE(buf[5:]) != binary.BigEndian.Uint32(buf[1:5]) {
			return fmt.Errorf("checksum mismatch: %w", ErrMalformed)
		}
		return splitPacket(buf[5:], depth+1, parts)
	case mlCompound:
		if depth >= maxCompoundDepth || len(buf) < 2 {
			return fmt.Errorf("compound message nested %d deep or empty: %w", depth, ErrMalformed)
		}
		n := int(buf[1])
		b := buf[2:]
		if len(b) < 2*n {
			return fmt.Errorf("compound message: truncated lengths: %w", ErrMalformed)
		}
		lens, b := b[:2*n], b[2*n:]
		for i := range n {
			l := int(binary.BigEndian.Uint16(lens[2*i:]))
			if l > len(b) {
				return fmt.Errorf("compound message: part %d of %d bytes past the end: %w", i, l, ErrMalformed)
			}
			if err := splitPacket(b[:l], depth+1, parts); err != nil {
				return err
			}
			b = b[l:]
		}
		return nil
	}
	*parts = append(*parts, buf)
	return nil
}

// checkPart applies the rules to one memberlist message (not a user
// message) from sender and returns what memberlist may see of it: for
// the messages it decodes, their canonical encoding (see msgpack.go).
func (d *Discovery) checkPart(sender string, from netip.AddrPort, p []byte) ([]byte, error) {
	switch p[0] {
	case mlAck, mlNack, mlErr:
		return p, nil
	case mlPing:
		m, err := decodePing(p[1:])
		if err != nil {
			return nil, err
		}
		if len(m.SourceAddr) > 0 && addrPortOf(m.SourceAddr, m.SourcePort).Addr() != from.Addr() {
			return nil, fmt.Errorf("ping asks for the answer at %v, sent from %v: %w", addrPortOf(m.SourceAddr, m.SourcePort), from, errRefused)
		}
		return m.encode(), nil
	case mlIndirectPing:
		m, err := decodeIndirectPing(p[1:])
		if err != nil {
			return nil, err
		}
		if len(m.SourceAddr) > 0 && addrPortOf(m.SourceAddr, m.SourcePort).Addr() != from.Addr() {
			return nil, fmt.Errorf("indirect ping asks for the answer at %v, sent from %v: %w", addrPortOf(m.SourceAddr, m.SourcePort), from, errRefused)
		}
		target := addrPortOf(m.Target, m.Port)
		d.mu.Lock()
		ok := d.placesLocked(d.members[m.Node], m.Node, target)
		d.mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("indirect ping of %q at %v, not its gossip address: %w", m.Node, target, errRefused)
		}
		return m.encode(), nil
	case mlAlive:
		m, err := decodeAlive(p[1:])
		if err != nil {
			return nil, err
		}
		if err := d.about(sender, from.Addr(), mlAlive, m.Node, "", m.Incarnation, addrPortOf(m.Addr, m.Port), true); err != nil {
			return nil, err
		}
		return m.encode(), nil
	case mlSuspect, mlDead:
		m, err := decodeVerdict(p[1:])
		if err != nil {
			return nil, err
		}
		if err := d.about(sender, from.Addr(), p[0], m.Node, m.From, m.Incarnation, netip.AddrPort{}, true); err != nil {
			return nil, err
		}
		return m.encode(p[0]), nil
	}
	return nil, fmt.Errorf("memberlist message type %d in a packet: %w", p[0], errRefused)
}

// readFirst reads the first message of a stream from sender at from (the
// other side's first message: a push or a user message on a stream the
// other side opened, the answer on one this node opened) and returns
// the bytes memberlist reads in its place, before the rest of the
// stream. consumed means the package handled the message and memberlist
// gets nothing (the stream is closed). solicited is true on streams this
// node opened.
func (d *Discovery) readFirst(r *bufio.Reader, sender string, from netip.AddrPort, solicited bool) (replay []byte, consumed bool, err error) {
	t, err := r.ReadByte()
	if err != nil {
		return nil, false, fmt.Errorf("stream: %w", err)
	}
	switch t {
	case mlPushPull:
		replay, err := d.readPushPull(r, sender, from, solicited)
		return replay, false, err
	case mlUser:
		return nil, true, d.readUserStream(r, sender, from)
	case mlPing, mlAck, mlErr:
		// A ping over TCP and the answers to this node's own requests:
		// memberlist reads them, the bytes after the type are untouched.
		return []byte{t}, false, nil
	}
	return nil, false, fmt.Errorf("stream with memberlist message type %d: %w", t, errRefused)
}

// readPushPull reads a push/pull (after its type byte), merges its
// state, and returns the push/pull memberlist may see: the node states
// the rules let through and no user state.
func (d *Discovery) readPushPull(r *bufio.Reader, sender string, from netip.AddrPort, solicited bool) ([]byte, error) {
	hb, err := readMLValue(r)
	if err != nil {
		return nil, fmt.Errorf("push/pull header: %w", err)
	}
	h, err := decodePushHeader(hb)
	if err != nil {
		return nil, err
	}
	if h.Nodes < 0 || h.Nodes > maxPushNodes || h.UserStateLen < 0 || h.UserStateLen > MaxStateSize {
		return nil, fmt.Errorf("push/pull of %d nodes and %d bytes of state, limits %d and %d: %w", h.Nodes, h.UserStateLen, maxPushNodes, MaxStateSize, ErrTooLarge)
	}
	nodes := make([]mlPushNodeState, 0, min(h.Nodes, 64))
	for range h.Nodes {
		nb, err := readMLValue(r)
		if err != nil {
			return nil, fmt.Errorf("push/pull node: %w", err)
		}
		n, err := decodeNodeState(nb)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	how := LearnedPushPull
	if h.Join {
		how = LearnedJoin
	}
	// Records first, so that the node states they make genuine pass.
	if err := d.readState(io.LimitReader(r, int64(h.UserStateLen)), h.UserStateLen, sender, how, solicited); err != nil {
		return nil, err
	}
	kept := nodes[:0]
	for _, n := range nodes {
		kind := byte(mlAlive)
		accuser := ""
		switch n.State {
		case mlStateAlive:
		case mlStateLeft:
			kind, accuser = mlDead, n.Name
		case mlStateSuspect, mlStateDead:
			kind = mlSuspect // memberlist merges a remote death as a suspicion
		default:
			d.stats.filtered.Add(1)
			continue
		}
		if err := d.about(sender, from.Addr(), kind, n.Name, accuser, n.Incarnation, addrPortOf(n.Addr, n.Port), solicited); err != nil {
			d.stats.filtered.Add(1)
			d.badLog.log(d.log, sender, "memberlist", err)
			continue
		}
		kept = append(kept, n)
	}
	out := mpWriter{mlPushPull}
	(&mlPushPullHeader{Nodes: len(kept), Join: h.Join}).encode(&out)
	for i := range kept {
		kept[i].encode(&out)
	}
	return out, nil
}

// readUserStream reads a user message from a stream (after its type
// byte) and handles it. A state (the answer to a pull) is merged as it is
// read, and only if this node asked sender for one.
func (d *Discovery) readUserStream(r *bufio.Reader, sender string, from netip.AddrPort) error {
	hb, err := readMLValue(r)
	if err != nil {
		return fmt.Errorf("user message header: %w", err)
	}
	h, err := decodeUserHeader(hb)
	if err != nil {
		return err
	}
	if h.UserMsgLen < 2 || h.UserMsgLen > maxStreamBytes {
		return fmt.Errorf("user message of %d bytes: %w", h.UserMsgLen, ErrMalformed)
	}
	t, err := r.ReadByte()
	if err != nil {
		return fmt.Errorf("user message: %w", err)
	}
	if t == msgState {
		if !d.takePull(sender) {
			d.refuse(sender, "state", fmt.Errorf("a pull answer nobody asked for: %w", ErrBadStatement))
			return nil
		}
		return d.readState(io.LimitReader(r, int64(h.UserMsgLen-1)), h.UserMsgLen-1, sender, LearnedPull, true)
	}
	if h.UserMsgLen > maxUserStream {
		return fmt.Errorf("user message of %d bytes, limit %d: %w", h.UserMsgLen, maxUserStream, ErrTooLarge)
	}
	b := make([]byte, h.UserMsgLen)
	b[0] = t
	if _, err := io.ReadFull(r, b[1:]); err != nil {
		return fmt.Errorf("user message: %w", err)
	}
	d.handleUser(sender, from, b, true)
	return nil
}

// readState reads an encoded state of n bytes from r and merges it (see
// mergeState). It holds one record at a time besides the records kept:
// a state this node did not ask for costs no more memory than the
// sender's own record and a CRL, however large it is.
func (d *Discovery) readState(r io.Reader, n int, sender, how string, solicited bool) error {
	if n == 0 {
		return nil
	}
	br := bufio.NewReaderSize(r, 4096)
	s, err := streamState(br, func(raw []byte) (entry, bool) {
		e, err := decodeEntry(raw)
		if err != nil {
			d.refuse(sender, "record", err)
			return e, false
		}
		return e, solicited || e.rec.Name == sender
	})
	if err != nil {
		d.refuse(sender, "state", err)
		return nil
	}
	d.mergeState(s, how, sender, solicited)
	return nil
}

// streamState decodes a state from r field by field: records are handed
// to keep one at a time (at most MaxRecordSize each, MaxStateRecords in
// all) and only those it keeps are held. The CRL is held whole (at most
// MaxCRLSize); leave notices are held up to maxStateLeaves (at most
// maxLeaveSize each).
func streamState(r *bufio.Reader, keep func(raw []byte) (entry, bool)) (state, error) {
	var s state
	f, err := r.ReadByte()
	if err != nil {
		return s, fmt.Errorf("state: %w", err)
	}
	if f != stateFormat {
		return s, fmt.Errorf("state format %d: %w", f, ErrMalformed)
	}
	records := 0
	for {
		tag, err := binary.ReadUvarint(r)
		if errors.Is(err, io.EOF) {
			return s, nil
		}
		if err != nil {
			return s, fmt.Errorf("state field: %w: %w", ErrMalformed, err)
		}
		l, err := binary.ReadUvarint(r)
		if err != nil {
			return s, fmt.Errorf("state field length: %w: %w", ErrMalformed, err)
		}
		var limit uint64
		switch tag {
		case stateFrom:
			limit = MaxNameLen
		case stateCRL:
			limit = MaxCRLSize
		case stateRecord:
			limit = MaxRecordSize
		case stateLeave:
			limit = maxLeaveSize
		default:
			if _, err := io.CopyN(io.Discard, r, int64(min(l, MaxStateSize))); err != nil {
				return s, fmt.Errorf("state field %d: %w: %w", tag, ErrMalformed, err)
			}
			continue
		}
		if l > limit {
			return s, fmt.Errorf("state field %d of %d bytes, limit %d: %w", tag, l, limit, ErrTooLarge)
		}
		v := make([]byte, l)
		if _, err := io.ReadFull(r, v); err != nil {
			return s, fmt.Errorf("state field %d: %w: %w", tag, ErrMalformed, err)
		}
		switch tag {
		case stateFrom:
			s.from = string(v)
		case stateCRL:
			s.crl = v
		case stateRecord:
			records++
			if records > MaxStateRecords {
				s.truncated = true
				continue
			}
			if e, ok := keep(v); ok {
				s.entries = append(s.entries, e)
			}
		case stateLeave:
			if len(s.leaves) < maxStateLeaves {
				s.leaves = append(s.leaves, v)
			}
		}
	}
}

// pendingPulls counts the pulls this node sent a member that are not
// answered yet, and when it sent the last one.
type pendingPulls struct {
	last time.Time
	n    int
}

// maxPendingPulls caps the answers awaited from one member: the repair
// loop may pull from a member again before the last answer came.
const maxPendingPulls = 4

// takePull reports whether this node has a pull from member name
// pending, and if so, counts one answered: one answer per pull.
func (d *Discovery) takePull(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.pulls[name]
	if !ok || time.Since(p.last) >= pullAnswerWait {
		delete(d.pulls, name)
		return false
	}
	if p.n--; p.n <= 0 {
		delete(d.pulls, name)
	} else {
		d.pulls[name] = p
	}
	return true
}

// Limits of the queue of the package's own messages from packets.
const (
	// userQueueLen bounds the queue: memberlist's own handoff queue
	// holds 1024 messages.
	userQueueLen = 1024
	// userQueuePerPeer bounds one member's share of it, so that a member
	// sending junk as fast as it can delays the others' messages by at
	// most that many.
	userQueuePerPeer = 128
)

// userQueue holds the package's own messages from packets for the worker
// that handles them (see handleUser): a bounded queue with a bounded
// share per sending member; what does not fit is dropped (and counted),
// as a full socket buffer drops packets.
type userQueue struct {
	mu      sync.Mutex
	items   []userItem
	perPeer map[string]int
	wake    chan struct{}
	dropped atomic.Uint64
}

type userItem struct {
	sender string
	from   netip.AddrPort
	msg    []byte
}

func newUserQueue() *userQueue {
	return &userQueue{perPeer: make(map[string]int), wake: make(chan struct{}, 1)}
}

// offer queues a copy of msg from sender, if there is room.
func (q *userQueue) offer(sender string, from netip.AddrPort, msg []byte) {
	q.mu.Lock()
	if len(q.items) >= userQueueLen || q.perPeer[sender] >= userQueuePerPeer {
		q.mu.Unlock()
		q.dropped.Add(1)
		return
	}
	q.items = append(q.items, userItem{sender, from, bytes.Clone(msg)})
	q.perPeer[sender]++
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take removes and returns the queued messages, oldest first.
func (q *userQueue) take() []userItem {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	clear(q.perPeer)
	return items
}

// handleUsers is the worker of the user queue.
func (d *Discovery) handleUsers() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-d.user.wake:
		}
		for items := d.user.take(); len(items) > 0; items = d.user.take() {
			for _, it := range items {
				if d.ctx.Err() != nil {
					return
				}
				d.handleUser(it.sender, it.from, it.msg, false)
			}
		}
	}
}
