package overlay

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
	"github.com/aigrid/gridnet/overlay/internal/inflight"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// fakeBind delivers scripted batches, then net.ErrClosed.
type fakeBind struct {
	batches [][]fakePacket
	loop    bool // repeat the batches forever (benchmarks)
}

type fakePacket struct {
	data []byte
	from netip.AddrPort
}

func (f *fakeBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	i := 0
	eps := map[netip.AddrPort]conn.Endpoint{}
	fn := func(packets [][]byte, sizes []int, out []conn.Endpoint) (int, error) {
		if i == len(f.batches) {
			if !f.loop {
				return 0, net.ErrClosed
			}
			i = 0
		}
		b := f.batches[i]
		i++
		for k, p := range b {
			sizes[k] = copy(packets[k], p.data)
			ep, ok := eps[p.from]
			if !ok {
				ep = &conn.StdNetEndpoint{AddrPort: p.from}
				eps[p.from] = ep
			}
			out[k] = ep
		}
		return len(b), nil
	}
	return []conn.ReceiveFunc{fn}, 51820, nil
}
func (f *fakeBind) Close() error                                { return nil }
func (f *fakeBind) SetMark(uint32) error                        { return nil }
func (f *fakeBind) Send([][]byte, conn.Endpoint) error          { return nil }
func (f *fakeBind) ParseEndpoint(string) (conn.Endpoint, error) { return nil, nil }
func (f *fakeBind) BatchSize() int                              { return conn.IdealBatchSize }

// receiveBuffers returns one full batch of receive buffers.
func receiveBuffers() ([][]byte, []int, []conn.Endpoint) {
	bufs := make([][]byte, conn.IdealBatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 2000)
	}
	return bufs, make([]int, len(bufs)), make([]conn.Endpoint, len(bufs))
}

func wgPacket(id byte, n int) []byte {
	p := make([]byte, n)
	p[0] = 4 // transport data
	for i := 4; i < n; i++ {
		p[i] = id
	}
	return p
}

func gnPacket(id byte) []byte {
	p := make([]byte, 64)
	p[0], p[1], p[2] = handshake.TypeGridnet, handshake.KindFinal, id
	return p
}

func TestBindDiversion(t *testing.T) {
	src := netip.MustParseAddrPort("192.0.2.1:1000")
	src2 := netip.MustParseAddrPort("192.0.2.2:2000")
	junkPkt := []byte{0x99, 1, 2, 3}
	fb := &fakeBind{batches: [][]fakePacket{
		{{gnPacket(1), src}, {wgPacket(1, 100), src}, {junkPkt, src}, {gnPacket(2), src2}, {wgPacket(2, 32), src2}, {wgPacket(3, 1500), src}},
		{{gnPacket(3), src}, {gnPacket(4), src2}}, // all diverted: the wrapper reads again
		{{wgPacket(4, 148), src2}},
	}}
	var diverted []fakePacket
	var junk atomic.Uint64
	b := newDivertBind(fb, func(p []byte, from netip.AddrPort) {
		diverted = append(diverted, fakePacket{bytes.Clone(p), from})
		for i := range p { // the handler must not rely on the buffer afterwards
			p[i] = 0xEE
		}
	}, &junk)
	fns, port, err := b.Open(0)
	if err != nil || port != 51820 || b.Port() != 51820 {
		t.Fatal(err, port)
	}
	bufs, sizes, eps := receiveBuffers()

	n, err := fns[0](bufs, sizes, eps)
	if err != nil || n != 3 {
		t.Fatalf("first batch: n=%d err=%v", n, err)
	}
	want := []fakePacket{{wgPacket(1, 100), src}, {wgPacket(2, 32), src2}, {wgPacket(3, 1500), src}}
	for i, w := range want {
		if !bytes.Equal(bufs[i][:sizes[i]], w.data) || endpointAddr(eps[i]) != w.from {
			t.Fatalf("packet %d: got %d bytes from %v, want %d bytes from %v", i, sizes[i], endpointAddr(eps[i]), len(w.data), w.from)
		}
	}
	for i := n; i < 6; i++ {
		if sizes[i] != 0 || eps[i] != nil {
			t.Fatalf("slot %d not cleared", i)
		}
	}
	n, err = fns[0](bufs, sizes, eps)
	if err != nil || n != 1 || !bytes.Equal(bufs[0][:sizes[0]], wgPacket(4, 148)) || endpointAddr(eps[0]) != src2 {
		t.Fatalf("after fully diverted batch: n=%d err=%v", n, err)
	}
	if _, err := fns[0](bufs, sizes, eps); err != net.ErrClosed {
		t.Fatalf("want net.ErrClosed, got %v", err)
	}
	wantDiv := []fakePacket{{gnPacket(1), src}, {gnPacket(2), src2}, {gnPacket(3), src}, {gnPacket(4), src2}}
	if len(diverted) != len(wantDiv) {
		t.Fatalf("diverted %d, want %d", len(diverted), len(wantDiv))
	}
	for i, w := range wantDiv {
		if !bytes.Equal(diverted[i].data, w.data) || diverted[i].from != w.from {
			t.Fatalf("diverted %d = %x from %v", i, diverted[i].data[:3], diverted[i].from)
		}
	}
	if junk.Load() != 1 {
		t.Fatalf("junk = %d, want 1", junk.Load())
	}
}

func TestIsWireGuard(t *testing.T) {
	for _, tc := range []struct {
		b    []byte
		want bool
	}{
		{[]byte{1, 0, 0, 0}, true}, {[]byte{4, 0, 0, 0, 9}, true}, {[]byte{5, 0, 0, 0}, false},
		{[]byte{0, 0, 0, 0}, false}, {[]byte{1, 0, 0, 1}, false}, {[]byte{1, 0, 0}, false},
		{[]byte{handshake.TypeGridnet, 0, 0, 0}, false},
	} {
		if got := isWireGuard(tc.b); got != tc.want {
			t.Errorf("isWireGuard(%x) = %v", tc.b, got)
		}
	}
}

func TestRateLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	rl := newRateLimiter(20, 5, func() time.Time { return now })
	a := netip.MustParseAddr("198.51.100.7")
	for i := range 5 {
		if !rl.allow(a) {
			t.Fatalf("burst packet %d refused", i)
		}
	}
	if rl.allow(a) {
		t.Fatal("sixth packet allowed")
	}
	if !rl.allow(netip.MustParseAddr("198.51.100.8")) {
		t.Fatal("other source limited")
	}
	now = now.Add(50 * time.Millisecond) // one token at 20 pps
	if !rl.allow(a) || rl.allow(a) {
		t.Fatal("refill wrong")
	}
	// IPv6 is grouped by /64.
	v6a, v6b := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2:ffff::9")
	for range 5 {
		rl.allow(v6a)
	}
	if rl.allow(v6b) {
		t.Fatal("same /64 not grouped")
	}
	if !rl.allow(netip.MustParseAddr("2001:db8:1:3::1")) {
		t.Fatal("different /64 limited")
	}
	// Idle entries are reclaimed when a new source comes.
	rl = newRateLimiter(20, 5, func() time.Time { return now })
	for i := range 1000 {
		rl.allow(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	now = now.Add(rateEntryIdle)
	if !rl.allow(netip.MustParseAddr("203.0.113.1")) || rl.size() != 1 {
		t.Fatalf("idle entries not reclaimed: size %d", rl.size())
	}
}

// TestRateLimiterFullTable: with more distinct sources than the table
// holds, all within one second (nothing idle), every new source is still
// served: the least recently seen entry makes room. A source seen
// recently keeps its entry, so its limit holds throughout.
func TestRateLimiterFullTable(t *testing.T) {
	now := time.Unix(1000, 0)
	rl := newRateLimiter(20, 5, func() time.Time { return now })
	heavy := netip.MustParseAddr("198.51.100.7")
	for range 5 {
		rl.allow(heavy)
	}
	// 2*rateTableCap new sources: IPv4 addresses and, as many, /64s of
	// one IPv6 /32.
	const total = 2 * rateTableCap
	for i := range total {
		var src netip.Addr
		if i%2 == 0 {
			src = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		} else {
			a := [16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i), 15: 1}
			src = netip.AddrFrom16(a)
		}
		if !rl.allow(src) {
			t.Fatalf("new source %d (%s) refused with %d sources tracked", i, src, rl.size())
		}
		if i%1000 == 0 && rl.allow(heavy) { // seen again: stays tracked, stays limited
			t.Fatalf("the limit of a recently seen source was reset after %d new sources", i)
		}
		if n := rl.size(); n > rateTableCap {
			t.Fatalf("table holds %d sources", n)
		}
	}
	if rl.size() != rateTableCap {
		t.Fatalf("table holds %d sources, want %d", rl.size(), rateTableCap)
	}
	// The oldest of the flood were evicted and start afresh; the newest
	// are tracked and limited.
	first := netip.AddrFrom4([4]byte{10, 0, 0, 0})
	l := total - 1 // odd: IPv6
	last := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(l >> 24), byte(l >> 16), byte(l >> 8), byte(l), 15: 1})
	for range 4 {
		rl.allow(last)
	}
	if rl.allow(last) {
		t.Fatal("a tracked source passed its burst")
	}
	if !rl.allow(first) {
		t.Fatal("an evicted source was refused")
	}
}

func TestParseIpcGet(t *testing.T) {
	dump := "private_key=00\nlisten_port=1\npublic_key=" + string(bytes.Repeat([]byte("ab"), 32)) +
		"\nendpoint=127.0.0.1:9\nlast_handshake_time_sec=100\nlast_handshake_time_nsec=5\ntx_bytes=7\nrx_bytes=8\n" +
		"public_key=" + string(bytes.Repeat([]byte("cd"), 32)) + "\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\nrx_bytes=1\n"
	m := parseIpcGet(dump)
	var k1, k2 [32]byte
	for i := range k1 {
		k1[i], k2[i] = 0xab, 0xcd
	}
	s1, s2 := m[k1], m[k2]
	if s1 == nil || s2 == nil || !s1.lastHandshake.Equal(time.Unix(100, 5)) || s1.tx != 7 || s1.rx != 8 ||
		s1.endpoint != netip.MustParseAddrPort("127.0.0.1:9") || !s2.lastHandshake.IsZero() || s2.rx != 1 {
		t.Fatalf("parse: %+v %+v", s1, s2)
	}
}

// BenchmarkBindReceive measures the receive-path overhead per WireGuard
// packet (full batches of 128 transport packets, nothing diverted).
// TestBindStrangerLimit: WireGuard datagrams from an admitted peer's
// endpoint all pass; from any other address only a per-source budget
// passes, before wireguard-go would try to decrypt them.
func TestBindStrangerLimit(t *testing.T) {
	known := netip.MustParseAddrPort("192.0.2.1:1000")
	stranger := netip.MustParseAddrPort("198.51.100.7:2000")
	const rounds, perBatch = 10, 64
	var batches [][]fakePacket
	for range rounds {
		var kb, sb []fakePacket
		for i := range perBatch {
			kb = append(kb, fakePacket{wgPacket(byte(i), 64), known})
			sb = append(sb, fakePacket{wgPacket(byte(i), 64), stranger})
		}
		batches = append(batches, kb, sb)
	}
	var junk atomic.Uint64
	b := newDivertBind(&fakeBind{batches: batches}, func([]byte, netip.AddrPort) {}, &junk)
	b.setKnown([]netip.AddrPort{known})
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	bufs, sizes, eps := receiveBuffers()
	got := map[netip.AddrPort]int{}
	for {
		n, err := fns[0](bufs, sizes, eps)
		if err != nil {
			break
		}
		for i := range n {
			got[endpointAddr(eps[i])]++
		}
	}
	if got[known] != rounds*perBatch {
		t.Errorf("admitted peer: %d of %d datagrams passed", got[known], rounds*perBatch)
	}
	// The whole run takes far less than a second: about the burst passes.
	if s := got[stranger]; s < strangerBurst/2 || s > strangerBurst+strangerRate/10 {
		t.Errorf("stranger: %d of %d datagrams passed, want about the burst of %d", s, rounds*perBatch, strangerBurst)
	}
	if lim := b.limited.Load(); lim != uint64(rounds*perBatch-got[stranger]) {
		t.Errorf("limited counter %d, want %d", lim, rounds*perBatch-got[stranger])
	}
}

// A budget throttles the transport packets of one admitted endpoint before
// decryption; another peer on the same IP (another port) and the throttled
// peer's handshakes pass untouched, and SetBudgets(nil) lifts it.
func TestBudgetThrottlesOnlyItsEndpoint(t *testing.T) {
	flooder := netip.MustParseAddrPort("127.0.0.1:1000")
	honest := netip.MustParseAddrPort("127.0.0.1:2000")
	const rounds, perBatch = 10, 64
	handshake := wgPacket(0, 148)
	handshake[0] = 1 // handshake initiation
	var batches [][]fakePacket
	for range rounds {
		var fb, hb []fakePacket
		for i := range perBatch {
			fb = append(fb, fakePacket{wgPacket(byte(i), 64), flooder})
			hb = append(hb, fakePacket{wgPacket(byte(i), 64), honest})
		}
		fb = append(fb, fakePacket{handshake, flooder})
		batches = append(batches, fb, hb)
	}
	// After the budget is lifted, everything passes again.
	var after []fakePacket
	for i := range perBatch {
		after = append(after, fakePacket{wgPacket(byte(i), 64), flooder})
	}
	batches = append(batches, after)
	var junk atomic.Uint64
	b := newDivertBind(&fakeBind{batches: batches}, func([]byte, netip.AddrPort) {}, &junk)
	b.setKnown([]netip.AddrPort{flooder})
	const rate = 1000 // burst: 100 ms of rate
	b.setBudgets(map[netip.AddrPort]float64{flooder: rate})
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	bufs, sizes, eps := receiveBuffers()
	type count struct{ transport, handshake int }
	got := map[netip.AddrPort]*count{flooder: {}, honest: {}}
	for {
		if got[honest].transport == rounds*perBatch {
			b.setBudgets(nil) // every throttled batch is read: lift
		}
		n, err := fns[0](bufs, sizes, eps)
		if err != nil {
			break
		}
		for i := range n {
			c := got[endpointAddr(eps[i])]
			if bufs[i][0] == messageTransport {
				c.transport++
			} else {
				c.handshake++
			}
		}
	}
	if h := got[honest]; h.transport != rounds*perBatch {
		t.Errorf("peer on the same IP, other port: %d of %d passed", h.transport, rounds*perBatch)
	}
	f := got[flooder]
	if f.handshake != rounds {
		t.Errorf("throttled peer's handshakes: %d of %d passed", f.handshake, rounds)
	}
	// The run takes far less than a second: about the burst passes while
	// throttled, then the whole last batch.
	burst := int(rate * budgetBurst.Seconds())
	throttledPassed := f.transport - perBatch
	if throttledPassed < burst || throttledPassed > burst+rate/10 {
		t.Errorf("throttled peer: %d of %d transport packets passed, want about the burst of %d", throttledPassed, rounds*perBatch, burst)
	}
	if th := b.throttled.Load(); th != uint64(rounds*perBatch-throttledPassed) {
		t.Errorf("throttled counter %d, want %d", th, rounds*perBatch-throttledPassed)
	}
}

// wgMessage is a WireGuard message of type typ and size n whose index
// field at off (sender or receiver) is idx.
func wgMessage(typ byte, n, off int, idx uint32) []byte {
	p := make([]byte, n)
	p[0] = typ
	binary.LittleEndian.PutUint32(p[off:off+4], idx)
	return p
}

// A session watch reports, once per arming, the first handshake response
// or transport message from its endpoint on the session of this node's
// latest initiation or response: not initiations, not messages on other
// sessions, not other endpoints, not after unwatch; and, once per arming,
// the first initiation from its endpoint whose MAC1 names this node's key
// (the peer is starting the session).
func TestSessionWatch(t *testing.T) {
	watched := netip.MustParseAddrPort("127.0.0.1:1000")
	other := netip.MustParseAddrPort("127.0.0.1:2000")
	const ours, theirs, stale = 11, 22, 33
	sentInit := wgMessage(1, device.MessageInitiationSize, 4, ours)
	sentResp := wgMessage(2, device.MessageResponseSize, 4, ours+1)
	var self device.NoisePublicKey
	self[0] = 9
	var macs device.CookieGenerator
	macs.Init(self)
	peerInit := wgMessage(1, device.MessageInitiationSize, 4, theirs)
	macs.AddMacs(peerInit) // addressed to self
	batches := [][]fakePacket{
		// an initiation from it, transport on our index from another
		// endpoint, transport on a stale session and a response to
		// another handshake from it
		// (its MAC1 is not for this node's key)
		{{wgMessage(1, device.MessageInitiationSize, 4, theirs), watched}, {wgMessage(4, 64, 4, ours), other},
			{wgMessage(4, 64, 4, stale), watched}, {wgMessage(2, device.MessageResponseSize, 8, stale), watched}},
		// the peer's initiation from another endpoint, then twice from it
		{{peerInit, other}, {peerInit, watched}, {peerInit, watched}},
		// the response to our initiation
		{{wgMessage(2, device.MessageResponseSize, 8, ours), watched}},
		// transport on our session, not armed
		{{wgMessage(4, 64, 4, ours), watched}},
		// stale, the answer to our initiation (which our response to the
		// peer's initiation replaced), then on the session of our
		// response (armed again)
		{{wgMessage(4, 64, 4, stale), watched}, {wgMessage(2, device.MessageResponseSize, 8, ours), watched}},
		{{wgMessage(4, 64, 4, ours+1), watched}},
		// after unwatch
		{{wgMessage(4, 64, 4, ours), watched}},
	}
	var junk atomic.Uint64
	b := newDivertBind(&fakeBind{batches: batches}, func([]byte, netip.AddrPort) {}, &junk)
	b.setKnown([]netip.AddrPort{watched, other})
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	bufs, sizes, eps := receiveBuffers()
	var ups, starts []([32]byte)
	var mac1 device.CookieChecker
	mac1.Init(self)
	w := &sessionWatch{key: [32]byte{7}, up: func(k [32]byte) { ups = append(ups, k) },
		started: func(k [32]byte) { starts = append(starts, k) }, mac1: &mac1}
	b.watchEndpoint(watched, w)
	to := &conn.StdNetEndpoint{AddrPort: watched}
	if err := b.Send([][]byte{sentInit}, to); err != nil {
		t.Fatal(err)
	}
	fns[0](bufs, sizes, eps)
	if len(ups) != 0 || len(starts) != 0 {
		t.Fatalf("watch reported %v up and %v started on an initiation not for this node, another endpoint or another session", ups, starts)
	}
	fns[0](bufs, sizes, eps)
	if len(ups) != 0 || len(starts) != 1 || starts[0] != w.key {
		t.Fatalf("after the peer's initiation came twice: %v up, %v started; want one report of the start", ups, starts)
	}
	fns[0](bufs, sizes, eps)
	if len(ups) != 1 || ups[0] != w.key {
		t.Fatalf("watch reported %v after the response to its initiation, want one report of its key", ups)
	}
	fns[0](bufs, sizes, eps)
	if len(ups) != 1 {
		t.Fatal("watch fired again without being armed")
	}
	b.watchEndpoint(watched, w) // armed again
	if err := b.Send([][]byte{sentResp}, to); err != nil {
		t.Fatal(err)
	}
	fns[0](bufs, sizes, eps)
	if len(ups) != 1 {
		t.Fatal("watch fired on the answer to an initiation its response replaced")
	}
	fns[0](bufs, sizes, eps)
	if len(ups) != 2 {
		t.Fatal("armed watch missed transport on the session of its response")
	}
	b.watchEndpoint(watched, w)
	b.unwatchEndpoint(watched, w)
	if len(*b.watches.Load()) != 0 {
		t.Fatal("unwatch left the endpoint watched")
	}
	fns[0](bufs, sizes, eps) // no watch: nothing reported, nothing breaks
	if len(ups) != 2 {
		t.Fatal("watch fired after unwatch")
	}
}

func BenchmarkBindReceive(b *testing.B) {
	src := netip.MustParseAddrPort("192.0.2.1:1000")
	batch := make([]fakePacket, conn.IdealBatchSize)
	for i := range batch {
		batch[i] = fakePacket{wgPacket(byte(i), 64), src}
	}
	var junk atomic.Uint64
	inner := &fakeBind{batches: [][]fakePacket{batch}, loop: true}
	bind := newDivertBind(inner, func([]byte, netip.AddrPort) {}, &junk)
	bind.setKnown([]netip.AddrPort{src}) // an admitted peer's traffic
	fns, _, _ := bind.Open(0)
	raw, _, _ := inner.Open(0)
	bufs, sizes, eps := receiveBuffers()
	run := func(b *testing.B, fn conn.ReceiveFunc) {
		b.ReportAllocs()
		for b.Loop() {
			if n, _ := fn(bufs, sizes, eps); n != conn.IdealBatchSize {
				b.Fatal(n)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*conn.IdealBatchSize), "ns/pkt")
	}
	b.Run("inner", func(b *testing.B) { run(b, raw[0]) })
	b.Run("divert", func(b *testing.B) { run(b, fns[0]) })
}

// The Bind counts the backlog inside wireguard-go: received transport
// datagrams that carry a packet from an admitted peer's endpoint go in
// (keepalives, handshakes and gridnet messages do not: they never reach the
// TUN; nor do datagrams from other endpoints, which wireguard-go drops at
// once), and sent ones come out of the send backlog the same way.
func TestBindCountsTheBacklog(t *testing.T) {
	peer := netip.MustParseAddrPort("127.0.0.1:1000")
	keepalive := wgPacket(0, device.MessageKeepaliveSize)
	initiation := wgPacket(0, device.MessageInitiationSize)
	initiation[0] = device.MessageInitiationType
	gridnet := []byte{handshake.TypeGridnet, 1, 2, 3}
	otherPort := netip.MustParseAddrPort("127.0.0.1:1001") // the peer's address, not its endpoint
	stranger := netip.MustParseAddrPort("192.0.2.9:1000")
	batch := []fakePacket{
		{wgPacket(1, 100), peer}, {keepalive, peer}, {initiation, peer},
		{gridnet, peer}, {wgPacket(2, 1400), peer}, {[]byte{9, 9, 9, 9}, peer},
		{wgPacket(3, 100), otherPort}, {wgPacket(4, 100), stranger},
	}
	var junk atomic.Uint64
	b := newDivertBind(&fakeBind{batches: [][]fakePacket{batch}}, func([]byte, netip.AddrPort) {}, &junk)
	b.setKnown([]netip.AddrPort{peer})
	b.received = inflight.New(1000, time.Hour, nil)
	b.sent = inflight.New(1000, time.Hour, nil)
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	bufs, sizes, eps := receiveBuffers()
	if _, err := fns[0](bufs, sizes, eps); err != nil {
		t.Fatal(err)
	}
	if got := b.received.Inside(); got != 2 {
		t.Fatalf("received backlog = %d, want the 2 transport datagrams with a packet", got)
	}

	b.sent.Add(5) // five packets read from the TUN
	ep := &conn.StdNetEndpoint{AddrPort: peer}
	if err := b.Send([][]byte{wgPacket(1, 100), keepalive, initiation, wgPacket(2, 200)}, ep); err != nil {
		t.Fatal(err)
	}
	if got := b.sent.Inside(); got != 3 {
		t.Fatalf("send backlog = %d after two packets left, want 3", got)
	}
}
