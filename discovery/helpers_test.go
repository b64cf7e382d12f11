package discovery

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aigrid/gridnet/discovery/memnet"
	"github.com/hashicorp/memberlist"
)

// Test deadlines. They only catch a step that never happens: a working
// fabric meets them on any machine, loaded or under -race; how long each
// step takes is a benchmark figure (bench_test.go).
const (
	convergeTimeout = 60 * time.Second // membership, records, CRLs everywhere
	callbackTimeout = 10 * time.Second // queued callbacks after a table change
)

// checkLeaks fails the test if goroutines are not back to the count at the
// call within 30 s of the test's end: memberlist's probes in flight at
// shutdown end only with their probe round, which a loaded machine
// stretches, while a leaked goroutine never ends. Register it before
// anything that starts goroutines (cleanups run last-in first-out).
func checkLeaks(t testing.TB) {
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if runtime.NumGoroutine() <= base {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Errorf("goroutine leak: %d running, %d at start\n%s", runtime.NumGoroutine(), base, buf[:n])
	})
}

func overlayAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})
}

// testCAKey signs the test certificates: a fixed key, so that tests are
// reproducible.
var testCAKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0xca}, ed25519.SeedSize))

// testCertMagic starts every test certificate.
const testCertMagic = "TESTCERT"

// Test certificate field tags.
const (
	tcName = 1 + iota
	tcKey
	tcAddr
	tcNote
	tcPad
	tcSig
)

// testKey is the identity key of the test node called name.
func testKey(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("discovery test identity " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

// testCert issues a test certificate of about size bytes that names name,
// its identity key and its overlay address, signed by testCAKey; note
// makes otherwise equal certificates differ (a renewal).
func testCert(name string, key ed25519.PublicKey, addr netip.Addr, size int, note string) []byte {
	b := []byte(testCertMagic)
	b = appendField(b, tcName, []byte(name))
	b = appendField(b, tcKey, key)
	a, _ := addr.MarshalBinary()
	b = appendField(b, tcAddr, a)
	b = appendField(b, tcNote, []byte(note))
	if pad := size - len(b) - 8 - ed25519.SignatureSize; pad > 0 {
		b = appendField(b, tcPad, make([]byte, pad))
	}
	return appendField(b, tcSig, ed25519.Sign(testCAKey, b))
}

// testVerify is the test fabric's certificate verifier: a certificate
// testCert made, unchanged.
func testVerify(der []byte) (Identity, error) {
	var id Identity
	if !bytes.HasPrefix(der, []byte(testCertMagic)) {
		return id, fmt.Errorf("test certificate: no magic: %w", ErrMalformed)
	}
	rd := &reader{b: der[len(testCertMagic):]}
	for {
		signed := der[:len(der)-len(rd.b)]
		tag, v, ok := rd.field()
		if !ok {
			break
		}
		switch tag {
		case tcName:
			id.Name = string(v)
		case tcKey:
			id.Key = ed25519.PublicKey(bytes.Clone(v))
		case tcAddr:
			var a netip.Addr
			if err := a.UnmarshalBinary(v); err != nil {
				return id, fmt.Errorf("test certificate address: %w", err)
			}
			id.Addrs = append(id.Addrs, a)
		case tcSig:
			if len(rd.b) != 0 || !ed25519.Verify(testCAKey.Public().(ed25519.PublicKey), signed, v) {
				return Identity{}, fmt.Errorf("test certificate: bad CA signature: %w", ErrBadStatement)
			}
			if id.Name == "" || len(id.Key) != ed25519.PublicKeySize {
				return Identity{}, fmt.Errorf("test certificate incomplete: %w", ErrMalformed)
			}
			return id, nil
		}
	}
	return Identity{}, fmt.Errorf("test certificate unsigned: %w", ErrMalformed)
}

// testPeerName names the test node holding an overlay address (see
// overlayAddr): the hub's hosts are the test fabric's tunnels.
func testPeerName(a netip.Addr) (string, bool) {
	b := a.As4()
	if !a.Is4() || b[0] != 100 || b[1] != 64 {
		return "", false
	}
	return nodeName(int(b[2])<<8 | int(b[3])), true
}

// signedEntry is test node i's record with version v, signed by its key,
// as it would gossip it.
func signedEntry(i int, v uint64) entry {
	e, err := signEntry(testKey(nodeName(i)), testRecord(i, v), netip.AddrPortFrom(overlayAddr(i), DefaultPort))
	if err != nil {
		panic(err)
	}
	return e
}

// verifyCache remembers the certificates testVerify accepted, by hash,
// as the node's trust pool does (a CA signature is checked once per
// certificate): every node of a test fabric shares one.
type verifyCache struct {
	mu   sync.Mutex
	seen map[[32]byte]Identity
}

func (c *verifyCache) verify(der []byte) (Identity, error) {
	h := sha256.Sum256(der)
	c.mu.Lock()
	id, ok := c.seen[h]
	c.mu.Unlock()
	if ok {
		return id, nil
	}
	id, err := testVerify(der)
	if err != nil {
		return id, err
	}
	c.mu.Lock()
	c.seen[h] = id
	c.mu.Unlock()
	return id, nil
}

// nodeName is the name of test node i.
func nodeName(i int) string { return fmt.Sprintf("node-%03d", i) }

// nodeCert is test node i's certificate of about size bytes.
func nodeCert(i, size int, note string) []byte {
	name := nodeName(i)
	return testCert(name, testKey(name).Public().(ed25519.PublicKey), overlayAddr(i), size, note)
}

func testRecord(i int, version uint64) Record {
	name := nodeName(i)
	return Record{
		Name:        name,
		Certificate: nodeCert(i, 700, ""),
		Endpoints:   []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 51820)},
		Version:     version,
	}
}

// crlNumber parses the test CRL format "crl-<number>-<padding>".
func crlNumber(der []byte) (int, bool) {
	parts := strings.SplitN(string(der), "-", 3)
	if len(parts) < 2 || parts[0] != "crl" {
		return 0, false
	}
	n, err := strconv.Atoi(parts[1])
	return n, err == nil
}

func testCRL(n, size int) []byte {
	s := fmt.Sprintf("crl-%d-", n)
	return append([]byte(s), bytes.Repeat([]byte{'x'}, max(0, size-len(s)))...)
}

// tnode is one member of a test fabric with what its callbacks saw.
type tnode struct {
	i    int
	d    *Discovery
	host *memnet.Host

	mu      sync.Mutex
	records map[string]Record // newest per name via OnRecord
	onRec   map[string]int    // OnRecord calls per name
	leaves  map[string]bool   // name -> dead flag of the last OnLeave
	crlNum  int               // newest CRL number accepted
	crlSeen int               // OnCRL calls
	refuse  bool              // OnCRL returns false
}

type fabric struct {
	t      testing.TB
	hub    *memnet.Hub
	verify *verifyCache
	prof   Profile
	hook   func(*memberlist.Config, *tuning)
	nodes  []*tnode
}

func newFabric(t testing.TB, prof Profile) *fabric {
	f := &fabric{t: t, hub: memnet.NewHub(), prof: prof, verify: &verifyCache{seen: map[[32]byte]Identity{}}}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, n := range f.nodes {
			if n != nil && n.d != nil {
				wg.Add(1)
				go func() { defer wg.Done(); n.d.Close() }()
			}
		}
		wg.Wait()
	})
	return f
}

// start starts node i (a new one, or a restart in place) with version v.
func (f *fabric) start(i int, v uint64) *tnode {
	f.t.Helper()
	n := &tnode{i: i, host: f.hub.Host(overlayAddr(i)),
		records: map[string]Record{}, onRec: map[string]int{}, leaves: map[string]bool{}}
	cfg := Config{
		Network:           n.host,
		Self:              testRecord(i, v),
		IdentityKey:       testKey(nodeName(i)),
		VerifyCertificate: f.verify.verify,
		PeerName:          testPeerName,
		Profile:           f.prof,
		OnRecord: func(r Record) {
			n.mu.Lock()
			defer n.mu.Unlock()
			n.onRec[r.Name]++
			if old, ok := n.records[r.Name]; !ok || r.Version >= old.Version {
				n.records[r.Name] = r
			}
		},
		OnLeave: func(name string, dead bool) {
			n.mu.Lock()
			n.leaves[name] = dead
			n.mu.Unlock()
		},
		OnCRL: func(der []byte) bool {
			n.mu.Lock()
			defer n.mu.Unlock()
			n.crlSeen++
			num, ok := crlNumber(der)
			if !ok || n.refuse || num <= n.crlNum {
				return false
			}
			n.crlNum = num
			return true
		},
		testHook: f.hook,
	}
	d, err := Start(context.Background(), cfg)
	if err != nil {
		f.t.Fatalf("start node %d: %v", i, err)
	}
	n.d = d
	for len(f.nodes) <= i {
		f.nodes = append(f.nodes, nil)
	}
	f.nodes[i] = n
	return n
}

// startConverged starts nodes 0..n-1 (version 1), joins them all to node
// 0 at once and waits until every one knows every record.
func (f *fabric) startConverged(n int) {
	f.t.Helper()
	for i := range n {
		f.start(i, 1)
	}
	f.joinAll(1, n)
	waitFor(f.t, convergeTimeout, "converged", func() error { return f.allKnowAll(f.want()) })
}

// joinAll makes nodes [from, to) join node 0 at the same moment.
func (f *fabric) joinAll(from, to int) {
	f.t.Helper()
	// Joins retry with backoff; 50 members joining one seed at once under
	// -race on loaded cores took over 30 s: the deadline only catches a
	// join that never succeeds.
	ctx, cancel := context.WithTimeout(context.Background(), convergeTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, to-from)
	start := make(chan struct{})
	for i := from; i < to; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := f.nodes[i].d.Join(ctx, []netip.Addr{overlayAddr(0)}); err != nil {
				errs <- fmt.Errorf("node %d: %w", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		f.t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the bound passes, and returns the
// time it took.
func waitFor(t testing.TB, bound time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < bound {
		if err = cond(); err == nil {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, bound, err)
	return 0
}

// knowsAll checks that node n sees every node in want alive with the
// given record versions.
func knowsAll(n *tnode, want map[string]uint64) error {
	ms := n.d.Members()
	got := make(map[string]Member, len(ms))
	for _, m := range ms {
		got[m.Name] = m
	}
	for name, v := range want {
		m, ok := got[name]
		if !ok {
			return fmt.Errorf("node %d does not know %s", n.i, name)
		}
		if m.State != StateAlive {
			return fmt.Errorf("node %d sees %s %v", n.i, name, m.State)
		}
		if m.Record.Version != v {
			return fmt.Errorf("node %d has %s version %d, want %d", n.i, name, m.Record.Version, v)
		}
	}
	return nil
}

func (f *fabric) want() map[string]uint64 {
	w := map[string]uint64{}
	for _, n := range f.nodes {
		if n != nil {
			r := n.d.Self()
			w[r.Name] = r.Version
		}
	}
	return w
}

// allKnowAll checks every node in idx against want.
func (f *fabric) allKnowAll(want map[string]uint64, skip ...int) error {
	for _, n := range f.nodes {
		if n == nil || contains(skip, n.i) {
			continue
		}
		if err := knowsAll(n, want); err != nil {
			return err
		}
	}
	return nil
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
