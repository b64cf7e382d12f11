package discovery

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/memberlist"
)

func FuzzDecodeRecord(f *testing.F) {
	r := testRecord(1, 42)
	b, _ := encodeRecord(nil, r, netip.MustParseAddrPort("100.64.0.1:7946"))
	f.Add(b)
	f.Add([]byte{recordFormat})
	f.Add([]byte{recordFormat, fieldName, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, gossip, err := decodeRecord(b)
		if err != nil {
			return
		}
		if len(rec.Endpoints) > MaxEndpoints || len(rec.Name) > MaxNameLen || rec.Name == "" {
			t.Fatalf("limits not enforced: %d endpoints, name %d bytes", len(rec.Endpoints), len(rec.Name))
		}
		// Round trip: what decodes re-encodes to something that decodes the same.
		again, err := encodeRecord(nil, rec, gossip)
		if err != nil {
			return // e.g. a record padded with unknown fields up to the limit
		}
		rec2, gossip2, err := decodeRecord(again)
		if err != nil || !rec2.Equal(rec) || gossip2 != gossip {
			t.Fatalf("round trip: %v %+v != %+v", err, rec2, rec)
		}
	})
}

func FuzzDecodeState(f *testing.F) {
	s := state{from: "node-001", crl: testCRL(3, 100)}
	for i := range 3 {
		s.entries = append(s.entries, signedEntry(i, uint64(i+1)))
	}
	f.Add(encodeState(s))
	s.leaves = [][]byte{encodeLeave(testKey(nodeName(2)), nodeName(2), 3, time.Unix(1e9, 0))}
	f.Add(encodeState(s))
	f.Add([]byte{stateFormat})
	f.Add([]byte{stateFormat, stateRecord, 3, recordFormat, fieldVersion, 0})
	f.Add([]byte{stateFormat, stateLeave, 2, msgLeave, 0})
	f.Add(encodeAnnounce(announce{kind: kindCRL, digest: make([]byte, digestLen), holder: "x",
		holderAddr: netip.MustParseAddrPort("100.64.0.2:7946")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b)
		if err == nil && (len(st.entries) > MaxStateRecords || len(st.crl) > MaxCRLSize || len(st.leaves) > maxStateLeaves) {
			t.Fatalf("limits not enforced: %d entries, CRL %d bytes, %d leave notices", len(st.entries), len(st.crl), len(st.leaves))
		}
		for _, l := range st.leaves {
			if len(l) > maxLeaveSize {
				t.Fatalf("leave notice of %d bytes taken", len(l))
			}
		}
		if len(b) > 0 {
			decodeAnnounce(b[1:])
			decodeLeave(b[1:])
		}
		decodeMeta(b)
	})
}

func FuzzDecodePull(f *testing.F) {
	f.Add(encodePull(pullRequest{from: "node-001", addr: netip.MustParseAddrPort("100.64.0.1:7946"), names: []string{"node-002", "node-003"}})[1:])
	f.Add([]byte{pullFrom, 1, 'x'})
	f.Add([]byte{pullName, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodePull(b)
		if err != nil {
			return
		}
		if p.from == "" || len(p.from) > MaxNameLen || !p.addr.IsValid() || len(p.names) > MaxStateRecords {
			t.Fatalf("limits not enforced: sender %d bytes, address %v, %d names", len(p.from), p.addr, len(p.names))
		}
		for _, n := range p.names {
			if n == "" || len(n) > MaxNameLen {
				t.Fatalf("name of %d bytes accepted", len(n))
			}
		}
		again, err := decodePull(encodePull(p)[1:])
		if err != nil || again.from != p.from || again.addr != p.addr || len(again.names) != len(p.names) {
			t.Fatalf("round trip: %v %+v != %+v", err, again, p)
		}
	})
}

func FuzzDecodeLeave(f *testing.F) {
	key := testKey("node-001")
	valid := encodeLeave(key, "node-001", 42, time.Unix(1700000000, 0))
	f.Add(valid[1:])
	f.Add(append(bytes.Clone(valid[1:]), annName, 1, 'x')) // a field after the signature
	f.Add(valid[1 : len(valid)-10])                        // truncated signature
	f.Add([]byte{annName, 1, 'x', annVersion, 8, 0, 0, 0, 0, 0, 0, 0, 5})
	pub := key.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := decodeLeave(b)
		if err != nil {
			return
		}
		if n.name == "" || len(n.name) > MaxNameLen || len(n.sig) != ed25519.SignatureSize {
			t.Fatalf("limits not enforced: name %d bytes, signature %d bytes", len(n.name), len(n.sig))
		}
		if !bytes.HasPrefix(b, n.signed) || len(n.signed) >= len(b) {
			t.Fatalf("signed part (%d bytes) is not a proper prefix of the notice (%d bytes)", len(n.signed), len(b))
		}
		// Only the notice the key signed verifies: its signed bytes and
		// signature are the seed's (Ed25519 signatures do not forge or
		// malleate).
		vn, _ := decodeLeave(valid[1:])
		if n.verify(Identity{Name: n.name, Key: pub}, time.Unix(0, n.at)) == nil &&
			(!bytes.Equal(n.signed, vn.signed) || !bytes.Equal(n.sig, vn.sig)) {
			t.Fatalf("a notice the key did not sign verified: %x", b)
		}
	})
}

func FuzzDecodeAnnounce(f *testing.F) {
	holder := netip.MustParseAddrPort("100.64.0.2:7946")
	f.Add(encodeAnnounce(announce{kind: kindRecord, name: "node-001", version: 7, holder: "node-002", holderAddr: holder})[1:])
	f.Add(encodeAnnounce(announce{kind: kindCRL, digest: make([]byte, digestLen), holder: "node-002", holderAddr: holder})[1:])
	f.Add([]byte{annKind, 1, 9})
	f.Add([]byte{annHolder, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := decodeAnnounce(b)
		if err != nil {
			return
		}
		if a.holder == "" || len(a.holder) > MaxNameLen || len(a.name) > MaxNameLen || !a.holderAddr.IsValid() ||
			(a.kind == kindCRL && len(a.digest) != digestLen) || (a.kind == kindRecord && a.name == "") {
			t.Fatalf("incomplete announcement accepted: %+v", a)
		}
		again, err := decodeAnnounce(encodeAnnounce(a)[1:])
		if err != nil || again.kind != a.kind || again.holder != a.holder || again.holderAddr != a.holderAddr ||
			(a.kind == kindRecord && (again.name != a.name || again.version != a.version)) ||
			(a.kind == kindCRL && !bytes.Equal(again.digest, a.digest)) {
			t.Fatalf("round trip: %v %+v != %+v", err, again, a)
		}
	})
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add(encodeMeta(42))
	f.Add([]byte{metaFormat})
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, ok := decodeMeta(b)
		if ok != (len(b) >= 9 && b[0] == metaFormat) {
			t.Fatalf("decodeMeta(%x) ok=%v", b, ok)
		}
		if ok && !bytes.Equal(encodeMeta(v), b[:9]) {
			t.Fatalf("round trip: %x != %x", encodeMeta(v), b[:9])
		}
	})
}

// bareFixture holds what bareDiscovery needs, made once per fuzz target:
// signing and verifying cost more than a fuzz input's whole run.
type bareFixture struct {
	key     ed25519.PrivateKey
	self    entry
	members []entry
	ids     []Identity
}

func newBareFixture(t testing.TB) *bareFixture {
	fx := &bareFixture{key: testKey(nodeName(0)), self: signedEntry(0, 1)}
	for _, i := range []int{1, 2} {
		e := signedEntry(i, 5)
		id, err := testVerify(e.rec.Certificate)
		if err == nil {
			err = e.verify(id, time.Now())
		}
		if err != nil {
			t.Fatalf("genuine record of node %d: %v", i, err)
		}
		fx.members, fx.ids = append(fx.members, e), append(fx.ids, id)
	}
	return fx
}

// bareDiscovery is a Discovery without memberlist or transport, holding
// the genuine records of test nodes 1 and 2, for the fuzz targets of the
// message handlers: node 0 as the fabric sees it.
func (fx *bareFixture) bareDiscovery() *Discovery {
	d := &Discovery{
		cfg: Config{Self: fx.self.rec, IdentityKey: fx.key, VerifyCertificate: testVerify, PeerName: testPeerName,
			OnCRL: func(der []byte) bool { _, ok := crlNumber(der); return ok }},
		tun:       ProfileLocal.tuning(),
		log:       slog.New(slog.DiscardHandler),
		addr:      gossipAddr(0),
		self:      fx.self.rec,
		selfEntry: fx.self,
		members:   map[string]*member{},
		pulls:     map[string]pendingPulls{},
		incs:      map[string]uint32{},
		user:      newUserQueue(),
		events:    newNotifier(),
		syncs:     newKeyedQueue[syncRequest, syncRequest](syncQueueLen),
		replies:   newKeyedQueue[netip.AddrPort, pullRequest](syncQueueLen),
		queue:     &memberlist.TransmitLimitedQueue{NumNodes: func() int { return 3 }, RetransmitMult: 4},
	}
	for i, e := range fx.members {
		d.members[e.rec.Name] = &member{rec: e.rec, raw: e.raw, recGossip: e.gossip, gossip: e.gossip, addrs: fx.ids[i].Addrs, hasRec: true}
	}
	return d
}

// checkTable checks the invariants of d's member table: every record in
// it is genuine (its owner signed it, its certificate names the owner),
// none is for d itself, and leaving is only set for members with a
// record.
func checkTable(t *testing.T, d *Discovery) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.members[d.self.Name]; ok {
		t.Fatal("this node in its own member table")
	}
	for name, m := range d.members {
		if !m.hasRec {
			t.Fatalf("%q in the table without a record (only memberlist adds those; it does not run here)", name)
		}
		e, err := decodeEntry(m.raw)
		if err != nil {
			t.Fatalf("%q: held record does not decode: %v", name, err)
		}
		id, err := testVerify(e.rec.Certificate)
		if err == nil {
			err = e.verify(id, time.Now())
		}
		if err != nil || e.rec.Name != name || !e.rec.Equal(m.rec) {
			t.Fatalf("%q: held record not genuine: %v", name, err)
		}
	}
}

// FuzzHandleUser runs a sequence of the package's own messages (each
// prefixed by a uvarint length) through handleUser, as one member would
// send them in packets and streams, and checks the member table after
// each: whatever a member sends, only genuine records enter it.
func FuzzHandleUser(f *testing.F) {
	seq := func(msgs ...[]byte) []byte {
		var b []byte
		for _, m := range msgs {
			b = binary.AppendUvarint(b, uint64(len(m)))
			b = append(b, m...)
		}
		return b
	}
	genuine := signedEntry(1, 9)
	f.Add(seq(append([]byte{msgRecord}, genuine.raw...)))
	f.Add(seq(encodeLeave(testKey(nodeName(1)), nodeName(1), 9, time.Now()), encodeLeave(testKey(nodeName(2)), nodeName(1), 9, time.Now())))
	f.Add(seq(append([]byte{msgRecord}, signedEntry(3, 1).raw...), append([]byte{msgCRL}, testCRL(4, 50)...)))
	f.Add(seq(encodeAnnounce(announce{kind: kindRecord, name: nodeName(1), version: 99, holder: nodeName(2), holderAddr: gossipAddr(2)})))
	f.Add(seq(encodePull(pullRequest{from: nodeName(2), addr: gossipAddr(2), names: []string{nodeName(1)}})))
	f.Add(seq(append([]byte{msgState}, encodeState(state{from: nodeName(2), entries: []entry{genuine}})...)))
	f.Add(seq([]byte{msgRecord, 1, 2, 3}, []byte{99, 1}))
	fx := newBareFixture(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		d := fx.bareDiscovery()
		sender, from := nodeName(2), gossipAddr(2)
		rd := &reader{b: b}
		for i := 0; i < 64 && len(rd.b) > 0; i++ {
			msg := rd.bytes(rd.uvarint())
			if rd.err != nil {
				break
			}
			d.handleUser(sender, from, msg, i%2 == 1)
			checkTable(t, d)
		}
	})
}

// FuzzFilterPacket: whatever a member sends in a packet, what the
// transport passes to memberlist passes the rules again unchanged (it
// holds only messages the rules let through), and the member table
// holds only genuine records.
func FuzzFilterPacket(f *testing.F) {
	ml := func(t byte, v any) []byte {
		var buf bytes.Buffer
		buf.WriteByte(t)
		codec.NewEncoder(&buf, mlHandle()).Encode(v)
		return buf.Bytes()
	}
	compound := func(parts ...[]byte) []byte {
		b := []byte{mlCompound, byte(len(parts))}
		for _, p := range parts {
			b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
		}
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	alive := func(node string, inc uint32, at netip.AddrPort) []byte {
		return ml(mlAlive, &mlAliveMsg{Incarnation: inc, Node: node, Addr: at.Addr().AsSlice(), Port: at.Port(), Vsn: []uint8{1, 5, 2, 0, 0, 0}})
	}
	f.Add(alive(nodeName(2), 3, gossipAddr(2)))
	f.Add(compound(alive(nodeName(1), 3, gossipAddr(1)), ml(mlDead, &mlVerdictMsg{Incarnation: ^uint32(0), Node: nodeName(1), From: nodeName(2)})))
	f.Add(compound(ml(mlSuspect, &mlVerdictMsg{Incarnation: 4, Node: nodeName(1), From: nodeName(2)}), ml(mlPing, &mlPingMsg{SeqNo: 1, Node: nodeName(0)})))
	f.Add(compound(append([]byte{mlUser, msgRecord}, signedEntry(3, 1).raw...), alive(nodeName(3), 1, gossipAddr(3))))
	f.Add(ml(mlIndirectPing, &mlIndirectPingMsg{SeqNo: 2, Target: overlayAddr(1).AsSlice(), Port: DefaultPort, Node: nodeName(1)}))
	f.Add([]byte{mlHasCrc, 0, 0, 0, 0, mlAck})
	f.Add(compound(compound(alive(nodeName(2), 1, gossipAddr(2)))))
	fx := newBareFixture(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		d := fx.bareDiscovery()
		out := d.filterPacket(gossipAddr(2), b)
		for _, it := range d.user.take() {
			d.handleUser(it.sender, it.from, it.msg, false)
		}
		checkTable(t, d)
		if out == nil {
			return
		}
		var parts [][]byte
		if err := splitPacket(out, 0, &parts); err != nil {
			t.Fatalf("passed packet does not split: %v", err)
		}
		for _, p := range parts {
			if p[0] == mlUser {
				t.Fatal("a user message passed to memberlist")
			}
		}
		if again := d.filterPacket(gossipAddr(2), out); !bytes.Equal(again, out) {
			t.Fatalf("passed packet does not pass again unchanged:\n%x\n%x", out, again)
		}
	})
}

// FuzzReadFirst: whatever a member sends first on a stream, memberlist
// sees a push/pull without user state and with at most maxPushNodes
// node states, or one of the messages it may read as they are, or
// nothing; and only genuine records enter the table.
func FuzzReadFirst(f *testing.F) {
	pushPull := func(nodes []mlPushNodeState, user []byte) []byte {
		var buf bytes.Buffer
		buf.WriteByte(mlPushPull)
		enc := codec.NewEncoder(&buf, mlHandle())
		enc.Encode(&mlPushPullHeader{Nodes: len(nodes), UserStateLen: len(user)})
		for i := range nodes {
			enc.Encode(&nodes[i])
		}
		return append(buf.Bytes(), user...)
	}
	userStream := func(payload []byte) []byte {
		var buf bytes.Buffer
		buf.WriteByte(mlUser)
		codec.NewEncoder(&buf, mlHandle()).Encode(&mlUserMsgHeader{UserMsgLen: len(payload)})
		return append(buf.Bytes(), payload...)
	}
	node := func(i int, inc uint32, st int) mlPushNodeState {
		return mlPushNodeState{Name: nodeName(i), Addr: overlayAddr(i).AsSlice(), Port: DefaultPort, Incarnation: inc, State: st, Vsn: []uint8{1, 5, 2, 0, 0, 0}}
	}
	st := encodeState(state{from: nodeName(2), entries: []entry{signedEntry(2, 7), signedEntry(3, 1)}})
	f.Add(pushPull([]mlPushNodeState{node(2, 1, mlStateAlive), node(1, ^uint32(0), mlStateDead), node(3, 1, mlStateAlive)}, st), true)
	f.Add(pushPull([]mlPushNodeState{node(2, 1, mlStateAlive)}, st), false)
	f.Add(userStream(append([]byte{msgState}, st...)), true)
	f.Add(userStream(encodePull(pullRequest{from: nodeName(2), addr: gossipAddr(2), names: []string{nodeName(1)}})), false)
	f.Add([]byte{mlPing, 0x80}, false)
	f.Add([]byte{mlPushPull, 0x83, 0xa5, 'N', 'o', 'd', 'e', 's', 0xce, 0x7f, 0xff, 0xff, 0xff}, true)
	fx := newBareFixture(f)
	f.Fuzz(func(t *testing.T, b []byte, solicited bool) {
		d := fx.bareDiscovery()
		d.pulls[nodeName(2)] = pendingPulls{last: time.Now(), n: 1}
		replay, consumed, err := d.readFirst(bufio.NewReader(bytes.NewReader(b)), nodeName(2), gossipAddr(2), solicited)
		checkTable(t, d)
		if err != nil || consumed {
			return
		}
		if len(replay) == 0 {
			t.Fatal("nothing to replay for a stream handed to memberlist")
		}
		switch replay[0] {
		case mlPing, mlAck, mlErr:
			if len(replay) != 1 {
				t.Fatalf("pass-through replay of %d bytes", len(replay))
			}
		case mlPushPull:
			dec := codec.NewDecoderBytes(replay[1:], mlHandle())
			var h mlPushPullHeader
			if err := dec.Decode(&h); err != nil || h.UserStateLen != 0 || h.Nodes < 0 || h.Nodes > maxPushNodes {
				t.Fatalf("replayed push/pull header %+v, %v", h, err)
			}
			for range h.Nodes {
				var n mlPushNodeState
				if err := dec.Decode(&n); err != nil {
					t.Fatalf("replayed node state: %v", err)
				}
				if !solicited && n.Name != nodeName(2) {
					t.Fatalf("unsolicited push passed a state about %q", n.Name)
				}
			}
		default:
			t.Fatalf("replayed message type %d", replay[0])
		}
	})
}

// FuzzStreamState: a state decoded field by field from a stream is the
// state decodeState makes of the same bytes.
func FuzzStreamState(f *testing.F) {
	f.Add(encodeState(state{from: nodeName(2), crl: testCRL(1, 40), entries: []entry{signedEntry(2, 7), signedEntry(3, 1)}}))
	f.Add([]byte{stateFormat, stateCRL, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{stateFormat, 9, 3, 1, 2, 3, stateFrom, 1, 'x'})
	f.Add(encodeState(state{from: nodeName(2), leaves: [][]byte{encodeLeave(testKey(nodeName(3)), nodeName(3), 1, time.Unix(1e9, 0))}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		want, err := decodeState(b)
		got, serr := streamState(bufio.NewReader(bytes.NewReader(b)), func(raw []byte) (entry, bool) {
			e, err := decodeEntry(raw)
			return e, err == nil
		})
		if err != nil || len(b) == 0 {
			return
		}
		if serr != nil {
			t.Fatalf("decodeState took what streamState refused: %v", serr)
		}
		if got.from != want.from || !bytes.Equal(got.crl, want.crl) || got.truncated != want.truncated || len(got.entries) != len(want.entries) || len(got.leaves) != len(want.leaves) {
			t.Fatalf("streamed %q %d entries, crl %d, truncated %v; decoded %q %d, %d, %v",
				got.from, len(got.entries), len(got.crl), got.truncated, want.from, len(want.entries), len(want.crl), want.truncated)
		}
		for i := range got.entries {
			if !bytes.Equal(got.entries[i].raw, want.entries[i].raw) {
				t.Fatalf("entry %d differs", i)
			}
		}
		for i := range got.leaves {
			if !bytes.Equal(got.leaves[i], want.leaves[i]) {
				t.Fatalf("leave notice %d differs", i)
			}
		}
	})
}

// mlHandle is memberlist's msgpack handle (its util.go encode/decode).
func mlHandle() *codec.MsgpackHandle { return &codec.MsgpackHandle{} }

// FuzzMsgpackCanonical: for every memberlist message the transport
// decodes, what it hands memberlist (its canonical encoding) decodes
// with memberlist's own codec to exactly the values the rules judged.
func FuzzMsgpackCanonical(f *testing.F) {
	enc := func(v any) []byte {
		var buf bytes.Buffer
		codec.NewEncoder(&buf, mlHandle()).Encode(v)
		return buf.Bytes()
	}
	f.Add(byte(0), enc(&mlAliveMsg{Incarnation: 70000, Node: "node-001", Addr: overlayAddr(1).AsSlice(), Port: DefaultPort, Meta: encodeMeta(5), Vsn: []uint8{1, 5, 2, 0, 0, 0}}))
	f.Add(byte(1), enc(&mlVerdictMsg{Incarnation: ^uint32(0), Node: "node-001", From: "node-002"}))
	f.Add(byte(2), enc(&mlPingMsg{SeqNo: 9, Node: "node-001", SourceAddr: overlayAddr(2).AsSlice(), SourcePort: DefaultPort, SourceNode: "node-002"}))
	f.Add(byte(3), enc(&mlIndirectPingMsg{SeqNo: 9, Target: overlayAddr(1).AsSlice(), Port: DefaultPort, Node: "node-001", Nack: true}))
	f.Add(byte(4), enc(&mlPushNodeState{Name: "node-001", Addr: overlayAddr(1).AsSlice(), Port: DefaultPort, Incarnation: 3, State: mlStateDead, Vsn: []uint8{1, 5, 2, 0, 0, 0}}))
	f.Add(byte(5), enc(&mlPushPullHeader{Nodes: 300, UserStateLen: 70000, Join: true}))
	f.Add(byte(0), []byte{0x82, 0xa4, 'N', 'o', 'd', 'e', 0xa1, 'x', 0xa4, 'N', 'o', 'd', 'e', 0xa1, 'y'}) // a key twice
	f.Fuzz(func(t *testing.T, kind byte, b []byte) {
		check := func(got, want any, canonical []byte) {
			if err := codec.NewDecoderBytes(canonical, mlHandle()).Decode(got); err != nil {
				t.Fatalf("memberlist's codec refuses the canonical encoding %x: %v", canonical, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("memberlist decodes %+v, the rules judged %+v", got, want)
			}
		}
		// Empty and nil byte slices are the same to memberlist.
		norm := func(b []byte) []byte {
			if len(b) == 0 {
				return nil
			}
			return b
		}
		switch kind % 6 {
		case 0:
			if m, err := decodeAlive(b); err == nil {
				m.Addr, m.Meta, m.Vsn = norm(m.Addr), norm(m.Meta), norm(m.Vsn)
				check(&mlAliveMsg{}, &m, m.encode()[1:])
			}
		case 1:
			if m, err := decodeVerdict(b); err == nil {
				check(&mlVerdictMsg{}, &m, m.encode(mlDead)[1:])
			}
		case 2:
			if m, err := decodePing(b); err == nil {
				m.SourceAddr = norm(m.SourceAddr)
				if m.SourceAddr == nil {
					m.SourcePort, m.SourceNode = 0, ""
				}
				check(&mlPingMsg{}, &m, m.encode()[1:])
			}
		case 3:
			if m, err := decodeIndirectPing(b); err == nil {
				m.Target, m.SourceAddr = norm(m.Target), norm(m.SourceAddr)
				if m.SourceAddr == nil {
					m.SourcePort, m.SourceNode = 0, ""
				}
				check(&mlIndirectPingMsg{}, &m, m.encode()[1:])
			}
		case 4:
			if n, err := decodeNodeState(b); err == nil {
				n.Addr, n.Meta, n.Vsn = norm(n.Addr), norm(n.Meta), norm(n.Vsn)
				var w mpWriter
				n.encode(&w)
				check(&mlPushNodeState{}, &n, w)
			}
		case 5:
			if h, err := decodePushHeader(b); err == nil {
				var w mpWriter
				h.encode(&w)
				check(&mlPushPullHeader{}, &h, w)
			}
		}
		// A stream reads exactly one value, whatever follows.
		if v, err := readMLValue(bufio.NewReader(bytes.NewReader(b))); err == nil {
			if !bytes.HasPrefix(b, v) {
				t.Fatalf("read value %x is not a prefix of %x", v, b)
			}
			r := &mpReader{b: v}
			r.skip(0)
			if r.err != nil || len(r.b) != 0 {
				t.Fatalf("read value %x does not skip as one value: %v, %d left", v, r.err, len(r.b))
			}
		}
	})
}
