package policy

import (
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// MarshalYAML returns c as the YAML firewall section, every trust and
// flood setting written out (the effective configuration). ParseConfig
// reads it back into a Config equal to c except for line numbers. Rules,
// allow entries and tests are written one per line in flow style, with
// the keys of the config file: action, proto and port (or service), the
// identity keys, then min_trust, priority and name where set.
func (c *Config) MarshalYAML() (any, error) {
	root := mapNode()
	if len(c.Services) > 0 {
		svcs := mapNode()
		for _, s := range c.Services {
			sv := mapNode("proto", plain(s.Proto.String()), "port", plain(s.Port.String()))
			if s.Allow != nil {
				allow := seqNode()
				for i := range s.Allow {
					allow.Content = append(allow.Content, matchNode(&s.Allow[i]))
				}
				addPair(sv, "allow", allow)
			}
			addPair(svcs, s.Name, sv)
		}
		addPair(root, "services", svcs)
	}
	addPair(root, "inbound", rulesNode(c.Inbound))
	if c.OutboundSet {
		addPair(root, "outbound", rulesNode(c.Outbound))
	}
	t := c.Trust
	trust := mapNode(
		"threshold", number(t.Threshold),
		"quarantine", plain(formatDuration(t.Quarantine)),
		"half_life", plain(formatDuration(t.HalfLife)),
		"blocked_penalty", number(t.BlockedPenalty),
		"blocked_window", plain(formatDuration(t.BlockedWindow)),
		"icmp_penalty", plain(strconv.FormatBool(t.ICMPPenalty)),
		"flood_penalty", number(t.FloodPenalty),
		"expiry_window", number(t.ExpiryWindow),
	)
	addPair(root, "trust", trust)
	if !c.OutboundSet {
		// The key node of trust, just added.
		root.Content[len(root.Content)-2].HeadComment = "no outbound section: every outbound flow is allowed"
	}
	f := c.Flood
	addPair(root, "flood", mapNode(
		"packets_per_sec", number(f.PacketsPerSec),
		"packets_burst", number(f.PacketsBurst),
		"bytes_per_sec", number(f.BytesPerSec),
		"bytes_burst", number(f.BytesBurst),
		"new_flows_per_sec", number(f.NewFlowsPerSec),
		"new_flows_burst", number(f.NewFlowsBurst),
		"max_flows_per_peer", plain(strconv.Itoa(f.MaxFlowsPerPeer)),
		"max_flows", plain(strconv.Itoa(f.MaxFlows)),
	))
	if len(c.Tests) > 0 {
		tests := seqNode()
		for i := range c.Tests {
			tests.Content = append(tests.Content, testNode(&c.Tests[i]))
		}
		addPair(root, "tests", tests)
	}
	return root, nil
}

// formatDuration writes d as a Go duration without zero tails: "60s" is
// "1m", "1h0m0s" is "1h", "1m30s" stays.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func rulesNode(rules []Rule) *yaml.Node {
	seq := seqNode()
	for i := range rules {
		r := &rules[i]
		n := mapNode("action", plain(r.Action.String()))
		if r.Service != "" {
			addPair(n, "service", str(r.Service))
		} else {
			addPair(n, "proto", plain(r.Proto.String()))
			addPair(n, "port", plain(r.Port.String()))
		}
		addMatch(n, &r.Match)
		if r.Priority != 0 {
			addPair(n, "priority", plain(strconv.Itoa(r.Priority)))
		}
		if r.Name != "" {
			addPair(n, "name", str(r.Name))
		}
		n.Style = yaml.FlowStyle
		seq.Content = append(seq.Content, n)
	}
	return seq
}

func matchNode(m *Match) *yaml.Node {
	n := mapNode()
	addMatch(n, m)
	n.Style = yaml.FlowStyle
	return n
}

// addMatch adds the identity keys of m that are set.
func addMatch(n *yaml.Node, m *Match) {
	if m.Host != "" {
		addPair(n, "host", str(m.Host))
	}
	if m.Groups != nil {
		addPair(n, "groups", strSeq(m.Groups))
	}
	if m.CIDR.IsValid() {
		addPair(n, "cidr", plain(m.CIDR.String()))
	}
	if m.CAName != "" {
		addPair(n, "ca_name", str(m.CAName))
	}
	if m.CASHA != "" {
		addPair(n, "ca_sha", str(m.CASHA))
	}
	if m.Domain != "" {
		addPair(n, "domain", str(m.Domain))
	}
	if m.Attr != nil {
		addPair(n, "attr", strMap(m.Attr))
	}
	if m.MinTrust != 0 {
		addPair(n, "min_trust", number(m.MinTrust))
	}
}

func testNode(t *Test) *yaml.Node {
	p := &t.Peer
	peer := mapNode()
	if p.Name != "" {
		addPair(peer, "name", str(p.Name))
	}
	if p.Groups != nil {
		addPair(peer, "groups", strSeq(p.Groups))
	}
	if p.Domain != "" {
		addPair(peer, "domain", str(p.Domain))
	}
	if p.CAName != "" {
		addPair(peer, "ca_name", str(p.CAName))
	}
	if p.CAFingerprint != "" {
		addPair(peer, "ca_sha", str(p.CAFingerprint))
	}
	if p.Attributes != nil {
		addPair(peer, "attr", strMap(p.Attributes))
	}
	if t.Addr.IsValid() {
		addPair(peer, "addr", plain(t.Addr.String()))
	}
	peer.Style = yaml.FlowStyle
	dir := "from"
	if t.Direction == Outbound {
		dir = "to"
	}
	expect := "deny"
	if t.Expect {
		expect = "allow"
	}
	n := mapNode(dir, peer,
		"proto", plain(t.Proto.String()),
		"port", plain(strconv.Itoa(int(t.Port))),
		"trust", number(t.Trust),
		"expect", plain(expect))
	if t.Rule != "" {
		addPair(n, "rule", str(t.Rule))
	}
	n.Style = yaml.FlowStyle
	return n
}

// mapNode returns a block mapping of the key/value pairs in kv (string,
// *yaml.Node alternating).
func mapNode(kv ...any) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for i := 0; i+1 < len(kv); i += 2 {
		addPair(n, kv[i].(string), kv[i+1].(*yaml.Node))
	}
	return n
}

func addPair(m *yaml.Node, key string, v *yaml.Node) {
	m.Content = append(m.Content, str(key), v)
}

func seqNode() *yaml.Node { return &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"} }

// str is a string scalar: quoted when it would otherwise read as a number,
// a boolean or null.
func str(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

// plain is a scalar written as is: a number, a duration, a config word.
func plain(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: s} }

func number(f float64) *yaml.Node { return plain(strconv.FormatFloat(f, 'f', -1, 64)) }

func strSeq(ss []string) *yaml.Node {
	n := seqNode()
	n.Style = yaml.FlowStyle
	for _, s := range ss {
		n.Content = append(n.Content, str(s))
	}
	return n
}

func strMap(m map[string]string) *yaml.Node {
	n := mapNode()
	n.Style = yaml.FlowStyle
	for _, k := range sortedKeys(m) {
		addPair(n, k, str(m[k]))
	}
	return n
}
