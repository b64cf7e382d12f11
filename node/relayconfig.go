package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/aigrid/gridnet/node/internal/configfile"
	"github.com/aigrid/gridnet/stack/proxy"
	"github.com/aigrid/gridnet/stack/relay"
)

// ProxyConfig is the `proxy:` section: local SOCKS5 and HTTP proxies
// into the overlay (docs/CONFIG.md). Both are off unless given an address.
type ProxyConfig struct {
	// SOCKS5 is the SOCKS5 proxy's local address; empty: none.
	SOCKS5 OptionalAddrPort `yaml:"socks5"`
	// HTTP is the HTTP proxy's local address; empty: none.
	HTTP OptionalAddrPort `yaml:"http"`
	// Users, if any, must authenticate to both proxies.
	Users []ProxyUser `yaml:"users"`
	// MaxConns caps each proxy's open connections.
	MaxConns int `yaml:"max_conns"`
	// IdleTimeout closes a proxied connection idle that long.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// ConnectTimeout bounds a connection to an overlay service.
	ConnectTimeout Duration `yaml:"connect_timeout"`
}

// ProxyUser is a user of the proxies; the password is read from a file,
// so that it is in no config and no `up --test` output.
type ProxyUser struct {
	// Name is the username.
	Name string `yaml:"name"`
	// PasswordFile holds the password (one line; a final newline is not
	// part of it).
	PasswordFile string `yaml:"password_file"`
}

// ServeConfig is one `serve:` entry: a local service exposed on the
// node's overlay address.
type ServeConfig struct {
	// Port is the overlay port.
	Port uint16 `yaml:"port"`
	// Proto is tcp (the default) or udp.
	Proto RelayProto `yaml:"proto"`
	// To is the local service, host:port.
	To string `yaml:"to"`
	// MaxConns caps the entry's connections (UDP: sessions).
	MaxConns int `yaml:"max_conns"`
	// MaxConnsPerPeer caps one peer's.
	MaxConnsPerPeer int `yaml:"max_conns_per_peer"`
	// IdleTimeout closes a connection (UDP: session) idle that long.
	IdleTimeout Duration `yaml:"idle_timeout"`
}

// ForwardConfig is one `forward:` entry: a local port carried to an
// overlay service.
type ForwardConfig struct {
	// Listen is the local address.
	Listen AddrPort `yaml:"listen"`
	// Proto is tcp (the default) or udp.
	Proto RelayProto `yaml:"proto"`
	// To is NAME:PORT, NAME.DOMAIN:PORT or an overlay address and port.
	To string `yaml:"to"`
	// MaxConns caps the entry's connections (UDP: sessions).
	MaxConns int `yaml:"max_conns"`
	// IdleTimeout closes a connection (UDP: session) idle that long.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// ConnectTimeout bounds the connection to the overlay service.
	ConnectTimeout Duration `yaml:"connect_timeout"`
}

// Defaults of the proxy, serve and forward sections.
const (
	// DefaultRelayMaxConns caps the connections of a proxy, a serve or a
	// forward entry.
	DefaultRelayMaxConns = 1024
	// DefaultServeMaxConnsPerPeer caps one peer's connections to a serve
	// entry: an eighth of the entry's cap, so that one peer cannot take
	// them all.
	DefaultServeMaxConnsPerPeer = 128
	// DefaultRelayIdleTCP closes idle TCP connections: less than the
	// firewall's 12 minutes of tracking for an established flow, so the
	// relay ends a connection with a FIN before the firewall forgets it.
	DefaultRelayIdleTCP = 10 * time.Minute
	// DefaultRelayIdleUDP ends idle UDP sessions: less than the
	// firewall's 3 minutes of tracking for a UDP flow.
	DefaultRelayIdleUDP = 2 * time.Minute
	// DefaultRelayConnectTimeout bounds a connection to an overlay
	// service: a SYN the far side's firewall drops is never answered.
	DefaultRelayConnectTimeout = 10 * time.Second
)

func (c *Config) applyRelayDefaults() {
	or := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	dur := func(v *Duration, d time.Duration) {
		if *v == 0 {
			*v = Duration(d)
		}
	}
	idle := func(p RelayProto) time.Duration {
		if p == RelayUDP {
			return DefaultRelayIdleUDP
		}
		return DefaultRelayIdleTCP
	}
	or(&c.Proxy.MaxConns, DefaultRelayMaxConns)
	dur(&c.Proxy.IdleTimeout, DefaultRelayIdleTCP)
	dur(&c.Proxy.ConnectTimeout, DefaultRelayConnectTimeout)
	for i := range c.Serve {
		s := &c.Serve[i]
		if s.Proto == "" {
			s.Proto = RelayTCP
		}
		or(&s.MaxConns, DefaultRelayMaxConns)
		or(&s.MaxConnsPerPeer, DefaultServeMaxConnsPerPeer)
		dur(&s.IdleTimeout, idle(s.Proto))
	}
	for i := range c.Forward {
		f := &c.Forward[i]
		if f.Proto == "" {
			f.Proto = RelayTCP
		}
		or(&f.MaxConns, DefaultRelayMaxConns)
		dur(&f.IdleTimeout, idle(f.Proto))
		dur(&f.ConnectTimeout, DefaultRelayConnectTimeout)
	}
}

// validateRelays checks the proxy, serve and forward sections.
func (c *Config) validateRelays() []error {
	var problems []error
	bad := func(key string, format string, args ...any) {
		line := c.lines[key]
		for k := key; line == 0 && strings.Contains(k, "."); {
			k = k[:strings.LastIndex(k, ".")]
			line = c.lines[k]
		}
		problems = append(problems, &configfile.LineError{Line: line, Err: fmt.Errorf("%s: "+format, append([]any{key}, args...)...)})
	}
	nonNegative := func(key string, v int) {
		if v < 0 {
			bad(key, "%d: want 0 (the default) or more", v)
		}
	}
	nonNegative("proxy.max_conns", c.Proxy.MaxConns)
	for i, u := range c.Proxy.Users {
		key := fmt.Sprintf("proxy.users[%d]", i)
		if u.Name == "" || len(u.Name) > 255 {
			bad(key+".name", "want a name of 1 to 255 bytes")
		}
		if u.PasswordFile == "" {
			bad(key+".password_file", "required: a file holding the user's password")
		}
	}
	type slot struct {
		proto RelayProto
		key   string
	}
	taken := map[slot]string{}
	claim := func(key string, s slot) {
		if prev, ok := taken[s]; ok {
			bad(key, "%s %s is %s too", s.proto, s.key, prev)
			return
		}
		taken[s] = key
	}
	for _, p := range []struct {
		key string
		a   OptionalAddrPort
	}{{"proxy.socks5", c.Proxy.SOCKS5}, {"proxy.http", c.Proxy.HTTP}, {"metrics.listen", c.Metrics.Listen}} {
		if p.a.IsValid() {
			claim(p.key, slot{RelayTCP, "local address " + p.a.String()})
		}
	}
	for i, s := range c.Serve {
		key := fmt.Sprintf("serve[%d]", i)
		if s.Port == 0 {
			bad(key+".port", "required: the port on the overlay address")
		} else {
			claim(key+".port", slot{s.Proto, "overlay port " + strconv.Itoa(int(s.Port))})
			if c.Gossip.Enabled && s.Port == c.Gossip.Port {
				bad(key+".port", "%d is the gossip port", s.Port)
			}
		}
		if err := checkHostPort(s.To); err != nil {
			bad(key+".to", "%v", err)
		}
		nonNegative(key+".max_conns", s.MaxConns)
		nonNegative(key+".max_conns_per_peer", s.MaxConnsPerPeer)
	}
	for i, f := range c.Forward {
		key := fmt.Sprintf("forward[%d]", i)
		if !f.Listen.IsValid() {
			bad(key+".listen", "required: the local address to listen on")
		} else {
			claim(key+".listen", slot{f.Proto, "local address " + f.Listen.String()})
		}
		if err := checkHostPort(f.To); err != nil {
			bad(key+".to", "%v: want NAME:PORT, NAME.DOMAIN:PORT or an overlay address and port", err)
		}
		nonNegative(key+".max_conns", f.MaxConns)
	}
	return problems
}

// checkHostPort checks "host:port" with a numeric port.
func checkHostPort(s string) error {
	if s == "" {
		return errors.New("required")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 || host == "" {
		return fmt.Errorf("%q: want host:port with a port from 1 to 65535", s)
	}
	return nil
}

// relayOptions turns the proxy, serve and forward sections into Options,
// reading the users' password files.
func relayOptions(c *Config) (*ProxyOptions, []ServeOptions, []ForwardOptions, error) {
	var p *ProxyOptions
	if c.Proxy.SOCKS5.IsValid() || c.Proxy.HTTP.IsValid() {
		p = &ProxyOptions{SOCKS5: c.Proxy.SOCKS5.String(), HTTP: c.Proxy.HTTP.String(), Limits: relay.Limits{
			MaxConns: c.Proxy.MaxConns, IdleTimeout: time.Duration(c.Proxy.IdleTimeout), ConnectTimeout: time.Duration(c.Proxy.ConnectTimeout),
		}}
		for _, u := range c.Proxy.Users {
			pass, err := configfile.ReadPasswordFile(u.PasswordFile)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("proxy user %s: %w", u.Name, err)
			}
			p.Users = append(p.Users, proxy.User{Name: u.Name, Password: pass})
		}
	}
	var serve []ServeOptions
	for _, s := range c.Serve {
		serve = append(serve, ServeOptions{Proto: string(s.Proto), Port: s.Port, To: s.To, Limits: relay.Limits{
			MaxConns: s.MaxConns, MaxConnsPerSource: s.MaxConnsPerPeer, IdleTimeout: time.Duration(s.IdleTimeout),
		}})
	}
	var forward []ForwardOptions
	for _, f := range c.Forward {
		forward = append(forward, ForwardOptions{Proto: string(f.Proto), Listen: f.Listen.String(), To: f.To, Limits: relay.Limits{
			MaxConns: f.MaxConns, IdleTimeout: time.Duration(f.IdleTimeout), ConnectTimeout: time.Duration(f.ConnectTimeout),
		}})
	}
	return p, serve, forward, nil
}

// RelayProto is tcp or udp.
type RelayProto string

// The relay protocols.
const (
	RelayTCP RelayProto = "tcp"
	RelayUDP RelayProto = "udp"
)

// UnmarshalYAML accepts tcp or udp.
func (p *RelayProto) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || (n.Value != string(RelayTCP) && n.Value != string(RelayUDP)) {
		return configfile.ValueError(n, "proto %q: want tcp or udp", n.Value)
	}
	*p = RelayProto(n.Value)
	return nil
}

// OptionalAddrPort is an IP address and port, or empty for none.
type OptionalAddrPort struct{ netip.AddrPort }

// UnmarshalYAML parses "ip:port" or "".
func (a *OptionalAddrPort) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Value == "" {
		a.AddrPort = netip.AddrPort{}
		return nil
	}
	var ap AddrPort
	if err := ap.UnmarshalYAML(n); err != nil {
		return err
	}
	a.AddrPort = ap.AddrPort
	return nil
}

// MarshalYAML writes "ip:port" or "".
func (a OptionalAddrPort) MarshalYAML() (any, error) {
	if !a.IsValid() {
		return "", nil
	}
	return a.AddrPort.String(), nil
}

// String is "ip:port" or "".
func (a OptionalAddrPort) String() string {
	if !a.IsValid() {
		return ""
	}
	return a.AddrPort.String()
}

// Duration is a time.Duration read from and written to YAML as a Go
// duration string ("10s", "1m30s").
type Duration time.Duration

// UnmarshalYAML parses a duration such as 30s, 10m or 1h; 0 means the
// default.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return configfile.ValueError(n, "want a duration like 30s or 10m")
	}
	if n.Value == "0" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return configfile.ValueError(n, "duration %q: want a duration like 30s or 10m", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration without zero units: 10m, 1h30m, 1.5s.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// String is the duration without zero units.
func (d Duration) String() string {
	s := time.Duration(d).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
