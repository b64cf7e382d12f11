// Package policy is gridnet's identity-aware firewall at the virtual
// interface: packet parsing, rules, conntrack, per-peer flood control, trust
// scores and drop events. The node wraps Firewall.Inbound and
// Firewall.Outbound as the stack's packet filters; both are safe for
// concurrent use, do not allocate, and take no lock shared by all peers
// (each peer has its own lock; rules and the peer table are immutable
// snapshots behind atomic pointers).
//
// # Per packet
//
// Inbound: parse → peer by source address (WireGuard already tied the
// source to the peer; an unknown source is spoofing and dropped) → the
// destination must be this node's (when Options.Self has addresses) →
// quarantine → packets/s and bytes/s buckets → fragment rule → ICMP errors
// for tracked flows → conntrack hit → rules → new-flow bucket → flow caps →
// new flow. Outbound is the same keyed by destination address, without
// buckets and quarantine.
//
// # Rule language
//
// YAML, with Nebula's words where the meaning is the same:
//
//	services:
//	  ssh: {proto: tcp, port: 22}
//	  web: {proto: tcp, port: 80-443, allow: {groups: [web-clients]}}
//	inbound:
//	  - {port: any, proto: icmp, host: any}
//	  - {port: 22, proto: tcp, groups: [admins, prod], min_trust: 0.5}
//	  - {service: web, group: web-clients}
//	  - {action: deny, port: 22, proto: tcp, host: laptop-7}
//	outbound:
//	  - {port: any, proto: any, host: any}
//
// port is a number, a range "a-b", "any" or "fragment"; proto is tcp, udp,
// icmp (ICMP and ICMPv6; port must be any) or any. Identity keys, all of
// which must match: host (peer name or "any"), group (one) or groups (all),
// cidr (the peer's overlay address), ca_name, ca_sha (CA fingerprint, hex,
// colons and case ignored), domain, attr (map; all must be equal). A rule
// needs at least one identity key (host: any matches every peer). Names,
// groups and attributes are chosen by each CA, so a rule or allow entry
// that names a host (not any), groups or attr and none of domain, ca_name
// and ca_sha matches only peers of this node's domain (Options.Self.Domain):
// a federated CA cannot issue a name that passes a rule meant for the
// local one. Peers are identified by domain and name. Ours:
// action (allow, the default, or deny), service (a named local service:
// the rule takes its proto and port), min_trust (allow rules only),
// priority (integer, default 0), name (shown in labels). Unknown keys and
// bad values are refused with the line (ConfigError).
//
// A service's allow list is a second layer: an inbound flow to a service's
// proto/port must be allowed by the node-wide rules AND by one entry of the
// service's allow list. Builtin rules (Options.Builtins) for gridnet's own
// traffic come first and a user's rule cannot remove them.
//
// # Evaluation order
//
// Inbound is default deny. Outbound is default allow when the config has no
// outbound section (the node's own applications are trusted, as with
// Tailscale); with an outbound section it is default deny, as in Nebula.
// Rules are ordered by: builtins first; then priority, higher first; then
// deny before allow; then file order. The first rule in that order whose
// identity, proto, port, cidr and min_trust match decides. So without
// priorities an explicit deny always beats an allow, and a priority lets an
// allow carve an exception out of a broader deny. An allow rule skipped only
// because of min_trust is reported ("trust 0.30 below 0.50 required by rule
// ...") when nothing else matches.
//
// Rules are compiled, per peer, into an index: at SetPeer (and lazily after
// Reload) the rules whose static identity matches the peer are kept
// (groups are bitsets over the rule set's group names, so a groups test is
// a mask compare), split by direction and protocol class, and port ranges
// are cut into sorted disjoint segments with their candidate lists. A new
// flow does a binary search and walks only candidates that already match
// its identity, port and proto.
//
// # Conntrack
//
// Flows are tracked per peer (the peer's lock; a map from flow key to a
// slab slot) from this node's point of view, so a reply maps to the flow
// of its request. Timeouts: TCP 12 min once replied, 1 min before a reply,
// 10 s after RST or FIN both ways; UDP 3 min; ICMP echo (by identifier)
// 30 s; other protocols 10 min. Other ICMP creates no flow: ICMP errors
// whose embedded header belongs to a tracked flow pass, the rest is judged
// by the rules per packet. Any TCP packet (not only SYN) may open a flow if
// the rules allow it, so flows survive a firewall restart. Caps: at most
// max_flows_per_peer per peer and max_flows in all; from 7/8 of max_flows
// a peer holding at least its fair share (max_flows / peers holding flows)
// cannot add flows while the others still can. Expired flows are removed
// on lookup and by a sweep at most every 10 s (1 s when a peer is at cap).
// Each flow records the rule-set version that allowed it; Reload re-checks
// every flow at once (those still allowed survive, the others are cut and
// reported as EventFlowCut), and a hit on a flow of an older version is
// re-checked first.
//
// # Fragments
//
// The first fragment decides: it carries the ports and is judged like any
// packet; when accepted, (source, destination, protocol, id) is remembered
// for 30 s in a 16-slot per-peer table. A later fragment passes when its
// first fragment was accepted; otherwise only a rule with port fragment or
// port any (Nebula's meaning) can let it through, else it is dropped
// (ReasonFragment). Fragments never create flows.
//
// # Flood control
//
// Per peer, inbound: token buckets for packets/s and bytes/s (every packet)
// and new flows/s (new flows only); a rate of 0 disables a bucket, a burst
// of 0 means a fifth of a second of rate. Violations drop and count. The
// clock is injected (Options.Now); without it the firewall keeps a coarse
// clock updated every 10 ms by one goroutine that Close stops,
// because time.Now costs 30-60 ns on the VMs measured.
//
// # Trust formula
//
// Each peer has a score s in [0,1], starting at 1. A blocked inbound new
// flow (a policy drop: a lateral movement attempt) subtracts
// blocked_penalty (0.05), once per distinct (protocol, destination port;
// for ICMP the message type) within blocked_window (60 s): retransmits and
// retries of a refused port cost once, every new port of a scan costs. The
// keys live in a fixed 32-entry table per peer; when every entry is live a
// new key evicts the one that lapses first and is charged, so the table
// cannot be filled to evade a penalty. A refused ICMP echo costs nothing
// unless icmp_penalty is true. Flood violations subtract flood_penalty
// (0.02) at most once per 100 ms. Between penalties the distance to 1 halves every
// half_life (5 min): s(t) = 1 − (1 − s₀)·2^(−Δt/half_life). The effective
// score is s times an expiry factor: 1 until the last expiry_window (10%)
// of the certificate's validity, then falling linearly to 0.5 at NotAfter.
// When a penalty takes the effective score below threshold (0.3; 0
// disables), the peer is quarantined for quarantine (60 s): all its inbound
// packets are dropped (ReasonQuarantined, no further penalty) and an
// EventQuarantine alert is raised. min_trust rules compare against the
// effective score, for established flows too: a penalty that takes the
// score below a min_trust level re-checks the peer's flows and cuts those
// no rule allows any more (EventFlowCut, ReasonLowTrust).
//
// # Events
//
// Every drop is counted per peer and reason (Stats, Peers). At most 3
// events per peer and reason per 10 s become Events (the next emitted one
// carries the suppressed count), so a flood costs a counter increment and
// no allocation. Events go to subscribers (Events) through bounded channels
// without blocking (a full channel loses the event and counts it), and to
// the slog Logger at most 10 lines per 5 s. Events carry names, addresses,
// ports, rule labels and reasons; never key material.
package policy
