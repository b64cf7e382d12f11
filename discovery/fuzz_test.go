package discovery

import (
	"net/netip"
	"testing"
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
		s.entries = append(s.entries, entry{rec: testRecord(i, uint64(i+1))})
	}
	f.Add(encodeState(s))
	f.Add([]byte{stateFormat})
	f.Add([]byte{stateFormat, stateRecord, 3, recordFormat, fieldVersion, 0})
	f.Add(encodeAnnounce(announce{kind: kindCRL, digest: make([]byte, digestLen), holder: "x",
		holderAddr: netip.MustParseAddrPort("100.64.0.2:7946")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b)
		if err == nil && (len(st.entries) > MaxStateRecords || len(st.crl) > MaxCRLSize) {
			t.Fatalf("limits not enforced: %d entries, CRL %d bytes", len(st.entries), len(st.crl))
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
