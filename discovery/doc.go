// Package discovery runs hashicorp/memberlist over the gridnet overlay, so
// that nodes find each other, spread their records and CRLs, and detect
// failures, with every gossip byte inside an authenticated WireGuard tunnel.
//
// # Transport
//
// memberlist gets a Transport built on a Network (implemented by the node's
// stack package; memnet implements it in memory for tests): one UDP socket
// for packets and one TCP listener for streams, both on the node's overlay
// address and Config.Port. memberlist node names are gridnet node names and
// member addresses are overlay addresses, so an address is reachable only
// through a tunnel the node has admitted. The package knows nothing about
// WireGuard or certificates: the node verifies every certificate in a record
// (OnRecord) before it configures a peer from it.
//
// # Records
//
// A Record (name, certificate DER, underlay endpoints, version) is encoded
// in a versioned binary format of tagged fields (unknown fields skipped).
// memberlist's 512-byte metadata carries only a digest: the record version.
// Full records travel in push/pull state (LocalState/MergeRemoteState), in
// gossip broadcasts and in pulls; a record or CRL too large for one packet
// is announced ("pull from me") and fetched by push/pull. For each name the
// newest version wins; OnRecord fires only for newer records (and again when
// a member reported gone comes back). A member whose metadata advertises a
// newer version than held is pulled from after a grace period.
//
// A pull is a request over a stream naming the records the requester
// lacks; the answer, a state with those records and the newest CRL, comes
// back over a stream of its own. A push/pull sends every record both ways:
// in the first seconds of a 100-node fabric the push/pull states came to
// about 80 MB with record repairs as push/pulls, 35 MB with repairs as
// pulls (whose answers carry only the records asked for).
//
// # Signed statements
//
// A member may only speak for itself. Config.IdentityKey signs what this
// node says about itself; Config.VerifyCertificate checks the certificate
// a statement is checked against (trusted CA, CRL, clock, and that it
// names the speaker).
//
//   - A record is signed by its owner over everything in it (name,
//     version, certificate, endpoints, gossip address). The version is the
//     owner's clock when it signed (Unix nanoseconds; one more than the
//     previous version if the clock is behind it). A receiver keeps a
//     record only if its certificate verifies and names the record's
//     owner, the owner's key signed it, its gossip address is one of the
//     certificate's addresses and its version is at most MaxClockSkew
//     ahead of the receiver's clock: no value pins a record or wraps.
//     Nothing of a record is stored before that, so a made-up name never
//     enters the member table. Anyone relays a record, unchanged (the
//     encoding its owner signed).
//   - A leave notice (name, record version, time) is signed by the leaver
//     and verified against the certificate in the leaver's own record; an
//     unsigned notice, one signed by another key, one for a member whose
//     record is not held, or one dated more than MaxClockSkew ahead or
//     older than ten minutes changes nothing and is not relayed. Only a
//     verified notice makes OnLeave report a leave (dead=false); every
//     other verdict is reported as dead=true, for the node to check
//     through the tunnel before it acts.
//
// # What members send, checked at the transport
//
// Config.PeerName names the member whose tunnel a packet or stream came
// through. The transport handles the package's own messages itself, with
// that name: an announcement ("pull from me") and a pull come only from
// the member they name, at its address; a state is merged whole only as
// the answer to this node's own pull or push/pull (a pull is answered
// once, within pullAnswerWait); from a push this node did not ask for,
// only the sender's own record and the CRL are taken, read as they
// stream in without holding the rest. memberlist's own messages pass the
// rules in guard.go before memberlist sees them: a member speaks for
// itself with any incarnation; about others it only relays, about
// members with a genuine record here, at their gossip address, with an
// incarnation at most maxIncarnationStep past the highest seen and at
// most 2^31 (so no refutation wraps); unsolicited pushes carry only the
// sender's own state. memberlist's verdicts (suspect, dead) still pass
// under those rules: they are hints the node checks. Refusals are counted
// (Stats) and logged once a minute per member and reason.
//
// # Limits
//
// MaxRecordSize (8 KiB) per record, MaxNameLen, MaxEndpoints (16),
// MaxStateRecords (4096) records accepted from one exchange, MaxCRLSize
// (1 MiB), MaxStateSize (8 MiB) per state, maxPushNodes memberlist node
// states per push/pull; inbound streams are capped at MaxStateSize+4 MiB,
// 64 at once and 8 per member, and their first message must arrive
// within memberlist's TCP timeout (idle and trickling streams are
// closed); compression is off and compressed streams are refused
// unread, so no decompression happens for them.
//
// # Profiles
//
// ProfileLAN keeps memberlist's LAN timings; ProfileLocal is fast, for
// tests. Each profile documents the values it changes and why.
//
// # Stragglers
//
// When many members join one seed at once, memberlist alone can leave a
// member unaware of later joiners until the next periodic push/pull (30 s
// and more), because gossip has a finite retransmit budget. The package
// closes that gap three ways: settle syncs (push/pull with a random live
// member at growing delays after Join), record repair (pull from a member
// whose metadata digest is newer than its held record, and join the owner
// of a record memberlist has not reported), and reconnects (one dead member
// per interval, which also heals partitions without an operator). A
// member known only by its record is out of failure detection's sight
// (memberlist declares dead only members it knows); it is offered to
// OnLeave as dead every so often, for the node to check it with Ping.
package discovery
