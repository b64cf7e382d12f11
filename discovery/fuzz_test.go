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
