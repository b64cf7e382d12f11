package policy

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/aigrid/gridnet/policy/suggest"
)

// ParseConfig parses the firewall section as a YAML document: either the
// section itself (services, inbound, ...) or a document whose only key is
// firewall, as the section is written in a node config. Unknown keys and
// bad values are refused with the line.
func ParseConfig(data []byte) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("policy config: %w", err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return ConfigFromYAML(nil)
	}
	root, err := unwrapFirewall(doc.Content[0])
	if err != nil {
		return nil, err
	}
	return ConfigFromYAML(root)
}

// unwrapFirewall returns the value of a top-level firewall key, or n itself
// when n has none. A firewall key next to other keys is refused: the other
// keys would be silently ignored.
func unwrapFirewall(n *yaml.Node) (*yaml.Node, error) {
	if n.Kind != yaml.MappingNode {
		return n, nil
	}
	var fw *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "firewall" {
			fw = n.Content[i+1]
		}
	}
	if fw == nil {
		return n, nil
	}
	if len(n.Content) != 2 {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Value != "firewall" {
				return nil, errAt(k, k.Value, fmt.Errorf("%w %q next to firewall (a rules file holds only the firewall section, bare or under a single firewall: key)", ErrUnknownKey, k.Value))
			}
		}
	}
	return fw, nil
}

// ConfigFromYAML reads the firewall section from an already parsed YAML node
// (a mapping), so a caller holding a larger document keeps its line numbers.
// A nil node gives DefaultConfig.
func ConfigFromYAML(n *yaml.Node) (*Config, error) {
	c := DefaultConfig()
	if n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null") {
		return c, nil
	}
	err := forMap(n, "firewall", func(key string, k, v *yaml.Node) error {
		switch key {
		case "services":
			return parseServices(c, v)
		case "inbound":
			return parseRules(&c.Inbound, v, "inbound")
		case "outbound":
			c.OutboundSet = true
			return parseRules(&c.Outbound, v, "outbound")
		case "trust":
			return parseTrust(&c.Trust, v)
		case "flood":
			return parseFlood(&c.Flood, v)
		case "tests":
			return parseTests(c, v)
		}
		return unknownKey(k, key, key, "services", "inbound", "outbound", "trust", "flood", "tests")
	})
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// unknownKey is the error for an unknown key at k: a "did you mean" hint
// when a known key of that level is close, else the list of known keys.
func unknownKey(k *yaml.Node, path, key string, known ...string) error {
	return errAt(k, path, fmt.Errorf("%w %q%s", ErrUnknownKey, key, suggest.Hint(key, known...)))
}

// matchKeys are the identity keys of a rule or allow entry (parseMatchKey).
func matchKeys() []string {
	return []string{"host", "group", "groups", "cidr", "ca_name", "ca_sha", "domain", "attr", "min_trust"}
}

// forMap calls fn for every key of mapping n, refusing duplicates.
func forMap(n *yaml.Node, path string, fn func(key string, k, v *yaml.Node) error) error {
	if n.Kind != yaml.MappingNode {
		return errAt(n, path, fmt.Errorf("%w: want a mapping", ErrBadValue))
	}
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if seen[k.Value] {
			return errAt(k, path+"."+k.Value, fmt.Errorf("%w: duplicate key", ErrBadValue))
		}
		seen[k.Value] = true
		if err := fn(k.Value, k, v); err != nil {
			return err
		}
	}
	return nil
}

func scalar(n *yaml.Node, path string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", errAt(n, path, fmt.Errorf("%w: want a single value", ErrBadValue))
	}
	return n.Value, nil
}

func floatIn(n *yaml.Node, path string, lo, hi float64) (float64, error) {
	s, err := scalar(n, path)
	if err != nil {
		return 0, err
	}
	f, perr := strconv.ParseFloat(s, 64)
	if perr != nil || math.IsNaN(f) || f < lo || f > hi {
		return 0, errAt(n, path, fmt.Errorf("%w: %q (want a number in [%g, %g])", ErrBadValue, s, lo, hi))
	}
	return f, nil
}

func boolean(n *yaml.Node, path string) (bool, error) {
	s, err := scalar(n, path)
	if err != nil {
		return false, err
	}
	switch strings.ToLower(s) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, errAt(n, path, fmt.Errorf("%w: %q (want true or false)", ErrBadValue, s))
}

func duration(n *yaml.Node, path string) (time.Duration, error) {
	s, err := scalar(n, path)
	if err != nil {
		return 0, err
	}
	d, perr := time.ParseDuration(s)
	if perr != nil || d < 0 {
		return 0, errAt(n, path, fmt.Errorf("%w: duration %q (e.g. 60s, 5m)", ErrBadValue, s))
	}
	return d, nil
}

func stringList(n *yaml.Node, path string) ([]string, error) {
	if n.Kind == yaml.ScalarNode {
		return []string{n.Value}, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, errAt(n, path, fmt.Errorf("%w: want a list of names", ErrBadValue))
	}
	out := make([]string, 0, len(n.Content))
	for i, e := range n.Content {
		s, err := scalar(e, fmt.Sprintf("%s[%d]", path, i))
		if err != nil {
			return nil, err
		}
		if s == "" {
			return nil, errAt(e, path, fmt.Errorf("%w: empty name", ErrBadValue))
		}
		out = append(out, s)
	}
	return out, nil
}

// parseMatchKey handles one identity key of a rule or allow entry; it
// reports false when key is not an identity key.
func parseMatchKey(m *Match, key string, k, v *yaml.Node, path string, groupSet *bool) (bool, error) {
	p := path + "." + key
	var err error
	switch key {
	case "host":
		m.Host, err = scalar(v, p)
		if err == nil && m.Host == "" {
			err = errAt(v, p, fmt.Errorf("%w: empty host", ErrBadValue))
		}
	case "group", "groups":
		if *groupSet {
			return true, errAt(k, p, fmt.Errorf("%w: give group or groups, not both", ErrBadValue))
		}
		*groupSet = true
		if key == "group" {
			var g string
			if g, err = scalar(v, p); err == nil {
				m.Groups = []string{g}
			}
		} else {
			m.Groups, err = stringList(v, p)
		}
		if err == nil && len(m.Groups) == 0 {
			err = errAt(v, p, fmt.Errorf("%w: empty group list", ErrBadValue))
		}
	case "cidr":
		var s string
		if s, err = scalar(v, p); err == nil {
			pfx, perr := netip.ParsePrefix(s)
			if perr != nil {
				if a, aerr := netip.ParseAddr(s); aerr == nil {
					pfx, perr = netip.PrefixFrom(a, a.BitLen()), nil
				}
			}
			if perr != nil {
				err = errAt(v, p, fmt.Errorf("%w: cidr %q: %w", ErrBadValue, s, perr))
			} else {
				m.CIDR = pfx.Masked()
			}
		}
	case "ca_name":
		m.CAName, err = scalar(v, p)
	case "ca_sha":
		var s string
		if s, err = scalar(v, p); err == nil {
			m.CASHA = normFingerprint(s)
			if m.CASHA == "" {
				err = errAt(v, p, fmt.Errorf("%w: empty ca_sha", ErrBadValue))
			}
		}
	case "domain":
		m.Domain, err = scalar(v, p)
	case "attr":
		m.Attr = map[string]string{}
		err = forMap(v, p, func(ak string, _, av *yaml.Node) error {
			s, err := scalar(av, p+"."+ak)
			m.Attr[ak] = s
			return err
		})
	case "min_trust":
		m.MinTrust, err = floatIn(v, p, 0, 1)
	default:
		return false, nil
	}
	return true, err
}

// normFingerprint lower-cases a hex fingerprint and removes colons.
func normFingerprint(s string) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
}

func parseServices(c *Config, n *yaml.Node) error {
	return forMap(n, "services", func(name string, k, v *yaml.Node) error {
		path := "services." + name
		s := Service{Name: name, Line: k.Line}
		var havePort, haveProto bool
		err := forMap(v, path, func(key string, kk, vv *yaml.Node) error {
			var err error
			switch key {
			case "proto":
				var w string
				if w, err = scalar(vv, path+".proto"); err == nil {
					s.Proto, err = ParseProto(w)
					if err != nil {
						err = errAt(vv, path+".proto", err)
					}
				}
				haveProto = true
			case "port":
				s.Port, err = portNode(vv, path+".port")
				havePort = true
			case "allow":
				s.Allow, err = parseAllow(vv, path+".allow")
			default:
				err = unknownKey(kk, path+"."+key, key, "proto", "port", "allow")
			}
			return err
		})
		if err != nil {
			return err
		}
		if !havePort || !haveProto {
			return errAt(k, path, fmt.Errorf("%w: a service needs proto and port", ErrMissing))
		}
		c.Services = append(c.Services, s)
		return nil
	})
}

func parseAllow(n *yaml.Node, path string) ([]Match, error) {
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	}
	out := make([]Match, 0, len(items))
	for i, it := range items {
		p := fmt.Sprintf("%s[%d]", path, i)
		var m Match
		var groupSet bool
		err := forMap(it, p, func(key string, k, v *yaml.Node) error {
			ok, err := parseMatchKey(&m, key, k, v, p, &groupSet)
			if !ok {
				return errAt(k, p+"."+key, fmt.Errorf("%w %q in an allow entry%s", ErrUnknownKey, key, suggest.Hint(key, matchKeys()...)))
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		if m.empty() {
			return nil, errAt(it, p, fmt.Errorf("%w: an allow entry needs host, group(s), cidr, ca_name, ca_sha, domain or attr", ErrMissing))
		}
		out = append(out, m)
	}
	return out, nil
}

func portNode(n *yaml.Node, path string) (PortSpec, error) {
	s, err := scalar(n, path)
	if err != nil {
		return PortSpec{}, err
	}
	ps, err := ParsePort(s)
	if err != nil {
		return PortSpec{}, errAt(n, path, err)
	}
	return ps, nil
}

// empty reports whether m names no identity at all.
func (m *Match) empty() bool {
	return m.Host == "" && len(m.Groups) == 0 && !m.CIDR.IsValid() && m.CAName == "" && m.CASHA == "" && m.Domain == "" && len(m.Attr) == 0
}

func parseRules(dst *[]Rule, n *yaml.Node, dir string) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		return errAt(n, dir, fmt.Errorf("%w: want a list of rules", ErrBadValue))
	}
	for i, it := range n.Content {
		path := fmt.Sprintf("%s[%d]", dir, i)
		r := Rule{Line: it.Line}
		var havePort, haveProto, groupSet bool
		err := forMap(it, path, func(key string, k, v *yaml.Node) error {
			if ok, err := parseMatchKey(&r.Match, key, k, v, path, &groupSet); ok {
				return err
			}
			p := path + "." + key
			var err error
			switch key {
			case "action":
				var s string
				if s, err = scalar(v, p); err == nil {
					switch strings.ToLower(s) {
					case "allow", "accept":
						r.Action = Allow
					case "deny", "drop", "reject":
						r.Action = Deny
					default:
						err = errAt(v, p, fmt.Errorf("%w: action %q (want allow or deny)", ErrBadValue, s))
					}
				}
			case "proto":
				var s string
				if s, err = scalar(v, p); err == nil {
					if r.Proto, err = ParseProto(s); err != nil {
						err = errAt(v, p, err)
					}
				}
				haveProto = true
			case "port":
				r.Port, err = portNode(v, p)
				havePort = true
			case "service":
				r.Service, err = scalar(v, p)
			case "priority":
				var f float64
				if f, err = floatIn(v, p, -1e6, 1e6); err == nil {
					if f != math.Trunc(f) {
						err = errAt(v, p, fmt.Errorf("%w: priority must be an integer", ErrBadValue))
					}
					r.Priority = int(f)
				}
			case "name", "description":
				r.Name, err = scalar(v, p)
			default:
				err = unknownKey(k, p, key, append([]string{"action", "proto", "port", "service", "priority", "name", "description"}, matchKeys()...)...)
			}
			return err
		})
		if err != nil {
			return err
		}
		if r.Service != "" && (havePort || haveProto) {
			return errAt(it, path, fmt.Errorf("%w: a rule with service takes the service's proto and port; remove port/proto", ErrBadValue))
		}
		if r.Service == "" && (!havePort || !haveProto) {
			return errAt(it, path, fmt.Errorf("%w: a rule needs port and proto (or service)", ErrMissing))
		}
		*dst = append(*dst, r)
	}
	return nil
}

func parseTrust(t *TrustConfig, n *yaml.Node) error {
	return forMap(n, "trust", func(key string, k, v *yaml.Node) error {
		p := "trust." + key
		var err error
		switch key {
		case "threshold":
			t.Threshold, err = floatIn(v, p, 0, 1)
		case "quarantine":
			t.Quarantine, err = duration(v, p)
		case "half_life":
			t.HalfLife, err = duration(v, p)
			if err == nil && t.HalfLife == 0 {
				err = errAt(v, p, fmt.Errorf("%w: half_life must be > 0", ErrBadValue))
			}
		case "blocked_penalty":
			t.BlockedPenalty, err = floatIn(v, p, 0, 1)
		case "blocked_window":
			t.BlockedWindow, err = duration(v, p)
		case "icmp_penalty":
			t.ICMPPenalty, err = boolean(v, p)
		case "flood_penalty":
			t.FloodPenalty, err = floatIn(v, p, 0, 1)
		case "expiry_window":
			t.ExpiryWindow, err = floatIn(v, p, 0, 1)
		default:
			err = unknownKey(k, p, key, "threshold", "quarantine", "half_life", "blocked_penalty", "blocked_window", "icmp_penalty", "flood_penalty", "expiry_window")
		}
		return err
	})
}

func parseFlood(f *FloodConfig, n *yaml.Node) error {
	return forMap(n, "flood", func(key string, k, v *yaml.Node) error {
		p := "flood." + key
		var err error
		var x float64
		switch key {
		case "packets_per_sec":
			f.PacketsPerSec, err = floatIn(v, p, 0, 1e12)
		case "packets_burst":
			f.PacketsBurst, err = floatIn(v, p, 0, 1e12)
		case "bytes_per_sec":
			f.BytesPerSec, err = floatIn(v, p, 0, 1e15)
		case "bytes_burst":
			f.BytesBurst, err = floatIn(v, p, 0, 1e15)
		case "new_flows_per_sec":
			f.NewFlowsPerSec, err = floatIn(v, p, 0, 1e9)
		case "new_flows_burst":
			f.NewFlowsBurst, err = floatIn(v, p, 0, 1e9)
		case "max_flows_per_peer":
			x, err = floatIn(v, p, 1, 1<<24)
			f.MaxFlowsPerPeer = int(x)
		case "max_flows":
			x, err = floatIn(v, p, 1, 1<<26)
			f.MaxFlows = int(x)
		default:
			err = unknownKey(k, p, key, "packets_per_sec", "packets_burst", "bytes_per_sec", "bytes_burst", "new_flows_per_sec", "new_flows_burst", "max_flows_per_peer", "max_flows")
		}
		return err
	})
}

func parseTests(c *Config, n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		return errAt(n, "tests", fmt.Errorf("%w: want a list", ErrBadValue))
	}
	for i, it := range n.Content {
		path := fmt.Sprintf("tests[%d]", i)
		t := Test{Line: it.Line, Trust: 1}
		var haveExpect, havePeer, havePort, haveProto bool
		err := forMap(it, path, func(key string, k, v *yaml.Node) error {
			p := path + "." + key
			var err error
			switch key {
			case "from", "to":
				if havePeer {
					return errAt(k, p, fmt.Errorf("%w: give from (inbound) or to (outbound), not both", ErrBadValue))
				}
				havePeer = true
				t.Direction = Inbound
				if key == "to" {
					t.Direction = Outbound
				}
				err = parseTestPeer(&t, v, p)
			case "proto":
				var s string
				if s, err = scalar(v, p); err == nil {
					if t.Proto, err = ParseProto(s); err != nil {
						err = errAt(v, p, err)
					}
				}
				haveProto = true
			case "port":
				var s string
				if s, err = scalar(v, p); err == nil {
					var n uint16
					if n, err = parsePortNum(s); err != nil {
						err = errAt(v, p, err)
					}
					t.Port = n
				}
				havePort = true
			case "trust":
				t.Trust, err = floatIn(v, p, 0, 1)
			case "expect":
				var s string
				if s, err = scalar(v, p); err == nil {
					switch strings.ToLower(s) {
					case "allow", "accept", "pass":
						t.Expect = true
					case "deny", "drop":
						t.Expect = false
					default:
						err = errAt(v, p, fmt.Errorf("%w: expect %q (want allow or deny)", ErrBadValue, s))
					}
				}
				haveExpect = true
			case "rule":
				t.Rule, err = scalar(v, p)
			default:
				err = unknownKey(k, p, key, "from", "to", "proto", "port", "trust", "expect", "rule")
			}
			return err
		})
		if err != nil {
			return err
		}
		if !haveExpect || !havePeer || !haveProto || (!havePort && t.Proto != ProtoICMP && t.Proto != ProtoAny) {
			return errAt(it, path, fmt.Errorf("%w: a test needs from or to, proto, port and expect", ErrMissing))
		}
		c.Tests = append(c.Tests, t)
	}
	return nil
}

func parseTestPeer(t *Test, n *yaml.Node, path string) error {
	return forMap(n, path, func(key string, k, v *yaml.Node) error {
		p := path + "." + key
		var err error
		switch key {
		case "name":
			t.Peer.Name, err = scalar(v, p)
		case "groups", "group":
			t.Peer.Groups, err = stringList(v, p)
		case "domain":
			t.Peer.Domain, err = scalar(v, p)
		case "ca_name":
			t.Peer.CAName, err = scalar(v, p)
		case "ca_sha":
			t.Peer.CAFingerprint, err = scalar(v, p)
		case "attr":
			t.Peer.Attributes = map[string]string{}
			err = forMap(v, p, func(ak string, _, av *yaml.Node) error {
				s, err := scalar(av, p+"."+ak)
				t.Peer.Attributes[ak] = s
				return err
			})
		case "addr":
			var s string
			if s, err = scalar(v, p); err == nil {
				a, perr := netip.ParseAddr(s)
				if perr != nil {
					return errAt(v, p, fmt.Errorf("%w: addr %q: %w", ErrBadValue, s, perr))
				}
				t.Addr = a
				t.Peer.Addresses = []netip.Addr{a}
			}
		default:
			err = unknownKey(k, p, key, "name", "group", "groups", "domain", "ca_name", "ca_sha", "attr", "addr")
		}
		return err
	})
}
