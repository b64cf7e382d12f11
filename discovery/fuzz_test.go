package discovery

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"testing"
	"time"
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
