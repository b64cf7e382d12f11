package overlay

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aigrid/gridnet/overlay/cert"
)

// sessionFresh is how long after its last WireGuard handshake a peer
// counts as connected (WireGuard's RejectAfterTime).
const sessionFresh = 180 * time.Second

// PeerState is a coarse peer state for status displays.
type PeerState string

// Peer states.
const (
	// PeerAdmitted: certificate verified and peer configured, no WireGuard
	// session yet.
	PeerAdmitted PeerState = "admitted"
	// PeerConnected: a WireGuard handshake completed within the last 180 s.
	PeerConnected PeerState = "connected"
	// PeerIdle: the last WireGuard handshake is older than 180 s.
	PeerIdle PeerState = "idle"
)

// PeerStatus describes one admitted peer.
type PeerStatus struct {
	// Name is the peer's certificate name.
	Name string
	// Addresses are the certificate's overlay addresses (address + overlay
	// prefix length); WireGuard routes each as a host route.
	Addresses []netip.Prefix
	// WireGuardKey is the peer's WireGuard public key.
	WireGuardKey [32]byte
	// Endpoint is WireGuard's current endpoint for the peer (follows roaming).
	Endpoint netip.AddrPort
	// LastHandshake is the last WireGuard handshake; zero if none yet.
	LastHandshake time.Time
	// RxBytes and TxBytes are WireGuard's byte counters for the peer.
	RxBytes, TxBytes uint64
	// AdmittedAt is when the certificate was last verified and installed.
	AdmittedAt time.Time
	// NotAfter is the certificate's expiry.
	NotAfter time.Time
	// State summarises the session.
	State PeerState
	// Identity is the verified certificate identity.
	Identity *cert.Identity
}

// wgPeerStats is what IpcGet reports per peer.
type wgPeerStats struct {
	endpoint      netip.AddrPort
	lastHandshake time.Time
	rx, tx        uint64
}

// wgStats parses the device's UAPI dump. The result is shared with
// recentStats callers: treat it as read-only.
func (o *Overlay) wgStats() (map[[32]byte]*wgPeerStats, error) {
	dump, err := o.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("overlay: IpcGet: %w", err)
	}
	st := parseIpcGet(dump)
	o.statsMu.Lock()
	o.statsCache, o.statsAt = st, time.Now()
	o.statsMu.Unlock()
	return st, nil
}

// recentStats returns device stats at most maxAge old. A dump costs time
// in proportion to the number of peers and holds the device's
// configuration lock, so many waiters (admissions being confirmed) share
// one dump instead of taking one each.
func (o *Overlay) recentStats(maxAge time.Duration) (map[[32]byte]*wgPeerStats, error) {
	o.statsFetch.Lock()
	defer o.statsFetch.Unlock()
	o.statsMu.Lock()
	st, at := o.statsCache, o.statsAt
	o.statsMu.Unlock()
	if st != nil && time.Since(at) < maxAge {
		return st, nil
	}
	return o.wgStats()
}

// parseIpcGet extracts per-peer endpoint, handshake time and byte counters.
func parseIpcGet(dump string) map[[32]byte]*wgPeerStats {
	out := make(map[[32]byte]*wgPeerStats)
	var cur *wgPeerStats
	var sec, nsec int64
	flush := func() {
		if cur != nil && (sec != 0 || nsec != 0) {
			cur.lastHandshake = time.Unix(sec, nsec)
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(dump))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			var key [32]byte
			if b, err := hex.DecodeString(v); err == nil && len(b) == 32 {
				copy(key[:], b)
				cur = &wgPeerStats{}
				out[key] = cur
			} else {
				cur = nil
			}
		case "endpoint":
			if cur != nil {
				cur.endpoint, _ = netip.ParseAddrPort(v)
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			if cur != nil {
				cur.rx, _ = strconv.ParseUint(v, 10, 64)
			}
		case "tx_bytes":
			if cur != nil {
				cur.tx, _ = strconv.ParseUint(v, 10, 64)
			}
		}
	}
	flush()
	return out
}

// Peers returns the admitted peers with their WireGuard session state,
// sorted by name.
func (o *Overlay) Peers() []PeerStatus {
	wg, err := o.wgStats()
	if err != nil {
		wg = nil
	}
	o.peersMu.Lock()
	out := make([]PeerStatus, 0, len(o.peers))
	for _, e := range o.peers {
		out = append(out, statusOf(e, wg[e.key]))
	}
	o.peersMu.Unlock()
	slices.SortFunc(out, func(a, b PeerStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Peer returns the status of the admitted peer with WireGuard key key,
// from a device read shared for statusPoll (cheaper than Peers for one
// peer); ok is false if no such peer is admitted.
func (o *Overlay) Peer(key [32]byte) (ps PeerStatus, ok bool) {
	wg, err := o.recentStats(statusPoll)
	if err != nil {
		wg = nil
	}
	o.peersMu.Lock()
	defer o.peersMu.Unlock()
	e := o.peers[key]
	if e == nil {
		return PeerStatus{}, false
	}
	return statusOf(e, wg[key]), true
}

// statusOf is e's status with the device's counters s (nil if unknown).
func statusOf(e *peerEntry, s *wgPeerStats) PeerStatus {
	ps := PeerStatus{
		Name:         e.id.Name,
		Addresses:    slices.Clone(e.id.Addresses),
		WireGuardKey: e.key,
		Endpoint:     e.endpoint,
		AdmittedAt:   e.admittedAt,
		NotAfter:     e.id.NotAfter,
		State:        PeerAdmitted,
		Identity:     e.id,
	}
	if s != nil {
		if s.endpoint.IsValid() {
			ps.Endpoint = s.endpoint
		}
		ps.LastHandshake, ps.RxBytes, ps.TxBytes = s.lastHandshake, s.rx, s.tx
		if !s.lastHandshake.IsZero() {
			ps.State = PeerIdle
			if time.Since(s.lastHandshake) < sessionFresh {
				ps.State = PeerConnected
			}
		}
	}
	return ps
}
