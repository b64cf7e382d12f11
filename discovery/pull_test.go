package discovery

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// TestRepairPullsOnlyMissingRecords: a record gossip did not deliver is
// repaired by a pull of the missing records from a member, not by a
// push/pull of every record both ways; the records held stay as they
// were learned.
func TestRepairPullsOnlyMissingRecords(t *testing.T) {
	checkLeaks(t)
	const n = 4
	f := newFabric(t, ProfileLocal)
	f.hook = func(c *memberlist.Config, tu *tuning) {
		c.PushPullInterval = 0 // no periodic anti-entropy
		tu.settleDelays = nil  // nor settle syncs: only repair is left
	}
	f.startConverged(n)

	// Node 1 loses the records of nodes 2 and 3, as if their broadcasts
	// had never arrived, while memberlist still reports both alive; no
	// broadcast still queued can bring them back.
	for _, nd := range f.nodes {
		nd.d.queue.Reset()
	}
	lost := []string{testRecord(2, 1).Name, testRecord(3, 1).Name}
	kept := testRecord(0, 1).Name
	d := f.nodes[1].d
	d.mu.Lock()
	keptHow := d.members[kept].learned
	d.mu.Unlock()
	// lose drops name's record at node 1.
	lose := func(name string) {
		d.mu.Lock()
		defer d.mu.Unlock()
		m := d.members[name]
		m.rec, m.hasRec, m.learned = Record{}, false, ""
		m.metaSeen = time.Now().Add(-time.Hour)
	}
	for _, name := range lost {
		lose(name)
	}

	waitFor(t, 5*time.Second, "lost records pulled back", func() error {
		for _, m := range d.Members() {
			if !slices.Contains(lost, m.Name) {
				continue
			}
			if m.LearnedFrom == LearnedGossip {
				// A gossip datagram sent before the queues were emptied
				// arrived late (a loaded machine): drop the record again,
				// so that only repair can bring it back.
				lose(m.Name)
				return fmt.Errorf("%s came back by a late gossip datagram; dropped again", m.Name)
			}
			if m.Record.Version != 1 || m.LearnedFrom != LearnedPull {
				return fmt.Errorf("%s: version %d learned by %q, want 1 by %q", m.Name, m.Record.Version, m.LearnedFrom, LearnedPull)
			}
		}
		return nil
	})
	for _, m := range d.Members() {
		if m.Name == kept && m.LearnedFrom != keptHow {
			t.Errorf("record held all along now learned by %q, was %q: a push/pull ran", m.LearnedFrom, keptHow)
		}
	}
}

// TestPullAnswerHoldsOnlyNamedRecords: an answer carries the records the
// request names that the node holds, its own included, and nothing else.
func TestPullAnswerHoldsOnlyNamedRecords(t *testing.T) {
	self := testRecord(0, 3)
	d := &Discovery{self: self, selfEntry: signedEntry(0, 3), addr: netip.AddrPortFrom(overlayAddr(0), DefaultPort), members: map[string]*member{}}
	for i := 1; i <= 3; i++ {
		e := signedEntry(i, uint64(i))
		d.members[e.rec.Name] = &member{rec: e.rec, raw: e.raw, hasRec: true, gossip: e.gossip, recGossip: e.gossip}
	}
	d.members["no-record-yet"] = &member{}
	s := d.answer(pullRequest{names: []string{self.Name, testRecord(2, 0).Name, "no-record-yet", "unknown"}})
	var got []string
	for _, e := range s.entries {
		got = append(got, fmt.Sprintf("%s@%d", e.rec.Name, e.rec.Version))
	}
	want := []string{self.Name + "@3", testRecord(2, 0).Name + "@2"}
	if !slices.Equal(got, want) || s.from != self.Name {
		t.Fatalf("answer from %q holds %v, want from %q %v", s.from, got, self.Name, want)
	}
}

func TestPullRequestEncoding(t *testing.T) {
	p := pullRequest{from: "node-001", addr: netip.MustParseAddrPort("100.64.0.1:7946"), names: []string{"a", "node-002"}}
	b := encodePull(p)
	if b[0] != msgPull {
		t.Fatalf("type byte %d, want %d", b[0], msgPull)
	}
	got, err := decodePull(b[1:])
	if err != nil || got.from != p.from || got.addr != p.addr || !slices.Equal(got.names, p.names) {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, p)
	}
	for name, bad := range map[string]pullRequest{
		"no sender":    {addr: p.addr, names: p.names},
		"no address":   {from: p.from, names: p.names},
		"port zero":    {from: p.from, addr: netip.AddrPortFrom(p.addr.Addr(), 0), names: p.names},
		"empty name":   {from: p.from, addr: p.addr, names: []string{""}},
		"long name":    {from: p.from, addr: p.addr, names: []string{string(make([]byte, MaxNameLen+1))}},
		"long sender":  {from: string(make([]byte, MaxNameLen+1)), addr: p.addr},
		"bad varint":   {},
		"short field":  {},
		"unknown only": {},
	} {
		b := encodePull(bad)[1:]
		switch name {
		case "bad varint":
			b = []byte{pullFrom, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		case "short field":
			b = []byte{pullFrom, 9, 'x'}
		case "unknown only":
			b = []byte{42, 1, 'x'}
		}
		if _, err := decodePull(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
	// Names past MaxStateRecords are ignored, not an error.
	many := pullRequest{from: p.from, addr: p.addr}
	for i := range MaxStateRecords + 5 {
		many.names = append(many.names, fmt.Sprint("n", i))
	}
	got, err = decodePull(encodePull(many)[1:])
	if err != nil || len(got.names) != MaxStateRecords {
		t.Fatalf("%d names: kept %d, err %v; want %d", len(many.names), len(got.names), err, MaxStateRecords)
	}
}
