package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Proto is a rule's protocol: ProtoAny, ProtoTCP, ProtoUDP or ProtoICMP
// (ICMP covers ICMPv6 too).
type Proto uint8

// Protocols a rule can name. The values are the IP protocol numbers, except
// ProtoAny.
const (
	ProtoAny  Proto = 0
	ProtoICMP Proto = protoICMP
	ProtoTCP  Proto = protoTCP
	ProtoUDP  Proto = protoUDP
)

// String returns the config word for p.
func (p Proto) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// ParseProto reads "tcp", "udp", "icmp" or "any".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "any":
		return ProtoAny, nil
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmp", "icmpv6":
		return ProtoICMP, nil
	}
	return 0, fmt.Errorf("%w: proto %q (want tcp, udp, icmp or any)", ErrBadValue, s)
}

// Action is what a matching rule does.
type Action uint8

// Rule actions.
const (
	Allow Action = iota
	Deny
)

// String returns "allow" or "deny".
func (a Action) String() string {
	if a == Deny {
		return "deny"
	}
	return "allow"
}

// PortSpec is a rule's port match: a range, "any", or "fragment" (non-first
// IP fragments, which carry no ports).
type PortSpec struct {
	Any      bool
	Fragment bool
	From, To uint16
}

// String returns the config form of s.
func (s PortSpec) String() string {
	switch {
	case s.Any:
		return "any"
	case s.Fragment:
		return "fragment"
	case s.From == s.To:
		return strconv.Itoa(int(s.From))
	}
	return strconv.Itoa(int(s.From)) + "-" + strconv.Itoa(int(s.To))
}

// ParsePort reads a port spec: "22", "80-443", "any" or "fragment".
func ParsePort(s string) (PortSpec, error) {
	s = strings.TrimSpace(strings.ToLower(s))
	switch s {
	case "any", "0", "":
		if s == "" {
			return PortSpec{}, fmt.Errorf("%w: empty port", ErrBadValue)
		}
		return PortSpec{Any: true}, nil
	case "fragment":
		return PortSpec{Fragment: true}, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	from, err := parsePortNum(a)
	if err != nil {
		return PortSpec{}, err
	}
	to := from
	if isRange {
		if to, err = parsePortNum(b); err != nil {
			return PortSpec{}, err
		}
		if from > to {
			return PortSpec{}, fmt.Errorf("%w: port range %q: start after end", ErrBadValue, s)
		}
	}
	if from == 0 {
		return PortSpec{}, fmt.Errorf("%w: port range %q includes 0 (use any)", ErrBadValue, s)
	}
	return PortSpec{From: from, To: to}, nil
}

func parsePortNum(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%w: port %q (want 1-65535, a-b, any or fragment)", ErrBadValue, s)
	}
	return uint16(n), nil
}

// Match is the identity part of a rule or of a service allow entry. Every
// set field must match (AND); an empty Match with Host "any" matches every
// peer.
type Match struct {
	Host     string            // peer name, or "any"
	Groups   []string          // all must be among the peer's groups ("group" sets one)
	CIDR     netip.Prefix      // the peer's overlay address (packet source inbound, destination outbound)
	CAName   string            // issuing CA name
	CASHA    string            // issuing CA fingerprint (hex, case and colons ignored)
	Domain   string            // governance domain
	Attr     map[string]string // certificate attributes, all must be equal
	MinTrust float64           // minimum trust score in [0,1], 0 = none
}

// Rule is one inbound or outbound rule.
type Rule struct {
	Line     int // line in the YAML source (0 when built in code)
	Name     string
	Action   Action
	Proto    Proto
	Port     PortSpec
	Service  string // named local service: takes its proto and port
	Priority int    // higher is evaluated first; default 0
	Match
}

// Service is a named local service, optionally guarded by its own allow list
// (a second layer: an inbound flow to the service's port must pass both the
// node-wide rules and one entry of Allow).
type Service struct {
	Name  string
	Line  int
	Proto Proto
	Port  PortSpec
	Allow []Match // empty: no second layer
}

// TrustConfig tunes the trust score (see the package doc for the formula).
type TrustConfig struct {
	Threshold      float64       // below this the peer is quarantined; 0 disables quarantine
	Quarantine     time.Duration // cool-down
	HalfLife       time.Duration // recovery half-life of the distance to 1
	BlockedPenalty float64       // per blocked new flow, once per distinct (proto, port) and BlockedWindow
	// BlockedWindow is how long a blocked (proto, port) of a peer is
	// remembered after its penalty: retransmits, resends and new attempts
	// to it within the window cost nothing more. 0 charges every blocked
	// packet.
	BlockedWindow time.Duration
	// ICMPPenalty makes a blocked ICMP echo (ping) cost trust like any
	// blocked flow; off by default, a refused ping is dropped for free.
	ICMPPenalty  bool
	FloodPenalty float64 // per flood-violation window
	ExpiryWindow float64 // fraction of validity at the end of which the score is lowered
}

// FloodConfig sets the per-peer token buckets and the flow caps. A rate of
// 0 disables that bucket; bursts default to a fifth of a second of rate.
type FloodConfig struct {
	PacketsPerSec   float64
	PacketsBurst    float64
	BytesPerSec     float64
	BytesBurst      float64
	NewFlowsPerSec  float64
	NewFlowsBurst   float64
	MaxFlowsPerPeer int
	MaxFlows        int
}

// Test is one expectation of the `tests:` section.
type Test struct {
	Line      int
	Direction Direction
	Peer      PeerInfo // from: (inbound) or to: (outbound)
	Addr      netip.Addr
	Proto     Proto
	Port      uint16
	Trust     float64
	Expect    bool   // true = allow
	Rule      string // optional: expected deciding rule label prefix
}

// Config is the firewall section of the node configuration.
type Config struct {
	Services    []Service
	Inbound     []Rule
	Outbound    []Rule
	OutboundSet bool // an outbound: section was given (then outbound is default deny)
	Trust       TrustConfig
	Flood       FloodConfig
	Tests       []Test
}

// Defaults for the trust and flood sections.
const (
	DefaultTrustThreshold  = 0.3              // a few blocked attempts in a row are tolerated
	DefaultQuarantine      = 60 * time.Second // long enough to stop a scan, short enough to self-heal
	DefaultHalfLife        = 5 * time.Minute  // a blocked attempt is mostly forgiven after ~15 min
	DefaultBlockedPenalty  = 0.05             // 14 distinct blocked ports in a row reach 0.3
	DefaultBlockedWindow   = 60 * time.Second // a retried port costs once a minute; a scan of new ports costs every time
	DefaultFloodPenalty    = 0.02             // one per floodPenaltyWindow: ~0.2/s under sustained flood
	DefaultExpiryWindow    = 0.1              // last 10% of certificate validity
	DefaultPacketsPerSec   = 2_000_000        // 3× one TCP stream at the measured 6.7 Gbit/s (userspace, 1280-byte packets: 650,000/s); see docs/FIREWALL.md
	DefaultBytesPerSec     = 0                // off: packets/s and the flow caps bound a peer
	DefaultNewFlowsPerSec  = 1_000            // a port scan is slowed, a busy client is not
	DefaultMaxFlowsPerPeer = 4_096            // memory bound per peer
	DefaultMaxFlows        = 65_536           // memory bound per node (~10 MB of flows)
)

// DefaultConfig returns an empty rule set (inbound denied, outbound allowed)
// with default trust and flood settings.
func DefaultConfig() *Config {
	return &Config{
		Trust: TrustConfig{Threshold: DefaultTrustThreshold, Quarantine: DefaultQuarantine, HalfLife: DefaultHalfLife,
			BlockedPenalty: DefaultBlockedPenalty, BlockedWindow: DefaultBlockedWindow, FloodPenalty: DefaultFloodPenalty, ExpiryWindow: DefaultExpiryWindow},
		Flood: FloodConfig{PacketsPerSec: DefaultPacketsPerSec, BytesPerSec: DefaultBytesPerSec, NewFlowsPerSec: DefaultNewFlowsPerSec,
			MaxFlowsPerPeer: DefaultMaxFlowsPerPeer, MaxFlows: DefaultMaxFlows},
	}
}

// Config errors. Every error returned by ParseConfig wraps one of these
// inside a *ConfigError that names the line.
var (
	ErrUnknownKey     = errors.New("unknown key")
	ErrBadValue       = errors.New("bad value")
	ErrMissing        = errors.New("missing value")
	ErrUnknownService = errors.New("unknown service")
)

// ConfigError is a config problem at a line of the YAML source.
type ConfigError struct {
	Line, Column int
	Path         string // e.g. "inbound[2].port"
	Err          error
}

// Error returns "line N: path: problem".
func (e *ConfigError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %s: %v", e.Line, e.Path, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Path, e.Err)
}

// Unwrap returns the underlying error.
func (e *ConfigError) Unwrap() error { return e.Err }

func errAt(n *yaml.Node, path string, err error) error {
	return &ConfigError{Line: n.Line, Column: n.Column, Path: path, Err: err}
}

// Validate checks the cross references and values that single keys cannot:
// known services, identity present, min_trust only on allow rules, icmp
// rules with port any. Errors name the rule's line.
func (c *Config) Validate() error {
	svc := make(map[string]*Service, len(c.Services))
	for i := range c.Services {
		s := &c.Services[i]
		if s.Port.Fragment {
			return &ConfigError{Line: s.Line, Path: "services." + s.Name, Err: fmt.Errorf("%w: a service port cannot be fragment", ErrBadValue)}
		}
		svc[s.Name] = s
	}
	for _, dir := range []struct {
		name  string
		rules []Rule
	}{{"inbound", c.Inbound}, {"outbound", c.Outbound}} {
		for i := range dir.rules {
			r := &dir.rules[i]
			path := fmt.Sprintf("%s[%d]", dir.name, i)
			bad := func(err error) error { return &ConfigError{Line: r.Line, Path: path, Err: err} }
			if r.Service != "" {
				if _, ok := svc[r.Service]; !ok {
					return bad(fmt.Errorf("%w %q (declare it under services)", ErrUnknownService, r.Service))
				}
			}
			if r.empty() {
				return bad(fmt.Errorf("%w: a rule needs at least one of host, group, groups, cidr, ca_name, ca_sha, domain, attr (host: any matches every peer)", ErrMissing))
			}
			if r.Action == Deny && r.MinTrust > 0 {
				return bad(fmt.Errorf("%w: min_trust only applies to allow rules", ErrBadValue))
			}
			if r.Service == "" && r.Proto == ProtoICMP && !r.Port.Any && !r.Port.Fragment {
				return bad(fmt.Errorf("%w: icmp has no ports: use port: any", ErrBadValue))
			}
		}
	}
	if c.Trust.HalfLife <= 0 {
		return &ConfigError{Path: "trust.half_life", Err: fmt.Errorf("%w: must be > 0", ErrBadValue)}
	}
	if c.Flood.MaxFlows <= 0 || c.Flood.MaxFlowsPerPeer <= 0 {
		return &ConfigError{Path: "flood", Err: fmt.Errorf("%w: max_flows and max_flows_per_peer must be > 0", ErrBadValue)}
	}
	return nil
}

// sortedKeys returns the keys of m in order (deterministic labels and tests).
func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
