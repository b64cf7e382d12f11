package policy

import (
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// fullConfig sets every key the firewall section has, each to a value
// other than its default.
const fullConfig = `services:
  web:
    proto: tcp
    port: 443
    allow:
      - {groups: [web, ops], domain: corp.example}
      - {host: "true", attr: {team: "007"}}
  dns: {proto: udp, port: 53}
inbound:
  - {action: allow, service: web, host: any, min_trust: 0.5, priority: 10, name: web in}
  - {action: deny, proto: tcp, port: 1000-2000, group: bad, cidr: 100.64.0.9, ca_name: other, ca_sha: "AA:bb:cc", priority: -3}
  - {proto: icmp, port: any, domain: corp.example, attr: {}}
  - {proto: any, port: fragment, host: any, description: fragments}
outbound:
  - {proto: udp, port: 53, host: any}
trust:
  threshold: 0.25
  quarantine: 90s
  half_life: 2h
  blocked_penalty: 0.125
  blocked_window: 45s
  icmp_penalty: true
  flood_penalty: 0.01
  expiry_window: 0.2
flood:
  packets_per_sec: 1000.5
  packets_burst: 300
  bytes_per_sec: 1e6
  bytes_burst: 20000
  new_flows_per_sec: 20
  new_flows_burst: 5
  max_flows_per_peer: 100
  max_flows: 1000
tests:
  - {from: {name: a, groups: [web], domain: corp.example, ca_name: c, ca_sha: "AB", attr: {k: v}, addr: 100.64.0.7}, proto: tcp, port: 443, trust: 0.9, expect: allow, rule: "inbound[0]"}
  - {to: {name: b, group: x}, proto: icmp, expect: deny}
`

// withoutLines zeroes the line numbers, which a round trip changes.
func withoutLines(c *Config) *Config {
	out := *c
	out.Services = append([]Service(nil), c.Services...)
	for i := range out.Services {
		out.Services[i].Line = 0
	}
	for _, rules := range []*[]Rule{&out.Inbound, &out.Outbound} {
		*rules = append([]Rule(nil), (*rules)...)
		for i := range *rules {
			(*rules)[i].Line = 0
		}
	}
	out.Tests = append([]Test(nil), c.Tests...)
	for i := range out.Tests {
		out.Tests[i].Line = 0
	}
	return &out
}

// roundTrip prints c and parses the result.
func roundTrip(t testing.TB, c *Config) (*Config, string) {
	t.Helper()
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	back, err := ParseConfig(b)
	if err != nil {
		t.Fatalf("printed config does not parse: %v\n%s", err, b)
	}
	return back, string(b)
}

func TestMarshalYAMLRoundTrip(t *testing.T) {
	for _, src := range []string{fullConfig, "", "inbound: []\n", verdictRules} {
		c, err := ParseConfig([]byte(src))
		if err != nil {
			t.Fatal(err)
		}
		back, printed := roundTrip(t, c)
		if !reflect.DeepEqual(withoutLines(back), withoutLines(c)) {
			t.Errorf("round trip changed the config:\nsource:\n%s\nprinted:\n%s\nbefore %+v\nafter  %+v", src, printed, withoutLines(c), withoutLines(back))
		}
	}
}

// TestMarshalYAMLShowsDefaults: an empty section prints every trust and
// flood default, durations as duration strings, and says that outbound is
// open.
func TestMarshalYAMLShowsDefaults(t *testing.T) {
	b, err := yaml.Marshal(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	for _, want := range []string{
		"inbound: []\n",
		"# no outbound section: every outbound flow is allowed\n",
		"threshold: 0.3\n",
		"quarantine: 1m\n",
		"half_life: 5m\n",
		"blocked_penalty: 0.05\n",
		"packets_per_sec: 2000000\n",
		"max_flows: 65536\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("printed defaults lack %q:\n%s", want, out)
		}
	}
}

// TestFullConfigSetsEveryField keeps fullConfig, and so the round trip,
// complete: every field a YAML key can set is set there. A field added to
// Rule, Match, Service, Test, TrustConfig or FloodConfig fails here until
// fullConfig (and MarshalYAML) cover it.
func TestFullConfigSetsEveryField(t *testing.T) {
	c, err := ParseConfig([]byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	// Fields no key sets.
	skip := map[string]bool{"Rule.Line": true, "Service.Line": true, "Test.Line": true, "PeerInfo.NotBefore": true, "PeerInfo.NotAfter": true}
	set := map[string]bool{}
	pkg := reflect.TypeOf(Config{}).PkgPath()
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch {
		case v.Kind() == reflect.Slice:
			for i := 0; i < v.Len(); i++ {
				walk(v.Index(i))
			}
		case v.Kind() == reflect.Struct && v.Type().PkgPath() == pkg:
			for i := 0; i < v.NumField(); i++ {
				name := v.Type().Name() + "." + v.Type().Field(i).Name
				if skip[name] {
					continue
				}
				set[name] = set[name] || !v.Field(i).IsZero()
				walk(v.Field(i))
			}
		}
	}
	walk(reflect.ValueOf(*c))
	for name, ok := range set {
		if !ok {
			t.Errorf("fullConfig never sets %s", name)
		}
	}
	if len(set) < 40 {
		t.Fatalf("walked only %d fields: %v", len(set), set)
	}
}

// FuzzConfigRoundTrip: every config ParseConfig accepts prints as YAML
// that parses back into the same config.
func FuzzConfigRoundTrip(f *testing.F) {
	f.Add([]byte(fullConfig))
	f.Add([]byte(verdictRules))
	f.Add([]byte("inbound:\n  - {port: 22, proto: tcp, host: \"null\", attr: {\"\": \"~\"}}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		back, printed := roundTrip(t, c)
		if !reflect.DeepEqual(withoutLines(back), withoutLines(c)) {
			t.Fatalf("round trip changed the config:\nprinted:\n%s\nbefore %+v\nafter  %+v", printed, withoutLines(c), withoutLines(back))
		}
	})
}
