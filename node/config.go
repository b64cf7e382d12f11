package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/aigrid/gridnet/discovery"
	"github.com/aigrid/gridnet/node/internal/configfile"
	"github.com/aigrid/gridnet/policy"
	"github.com/aigrid/gridnet/stack"
)

// Config is the YAML configuration of `gridnet up`. Every field is
// documented in docs/CONFIG.md; paths are relative to the config file.
type Config struct {
	// Vault says where the node's keys live and how to open the vault.
	Vault VaultConfig `yaml:"vault"`
	// CA is a PEM bundle of trusted CA certificates (several CAs federate
	// domains). Empty: the bundle stored in the vault by 'cert import'.
	CA string `yaml:"ca"`
	// Cert is the node certificate (PEM). Empty: the one in the vault.
	Cert string `yaml:"cert"`
	// CRL is an optional CRL file, re-read on SIGHUP.
	CRL string `yaml:"crl"`
	// Listen is the underlay UDP address for WireGuard and admission. The
	// address must be unspecified (0.0.0.0 or [::]): the socket listens on
	// every address, IPv4 and IPv6, as wireguard-go's does.
	Listen ListenAddr `yaml:"listen"`
	// Peers are static peers or seeds by underlay address.
	Peers []AddrPort `yaml:"peers"`
	// Tun selects the virtual interface.
	Tun TunConfig `yaml:"tun"`
	// Control is the control API socket.
	Control ControlConfig `yaml:"control"`
	// Log sets logging.
	Log LogConfig `yaml:"log"`
	// Gossip turns on discovery: memberlist over the overlay.
	Gossip GossipConfig `yaml:"gossip"`
	// Proxy runs local SOCKS5 and HTTP proxies into the overlay.
	Proxy ProxyConfig `yaml:"proxy"`
	// Serve exposes local services on the node's overlay address.
	Serve []ServeConfig `yaml:"serve"`
	// Forward carries local ports to overlay services.
	Forward []ForwardConfig `yaml:"forward"`
	// DNS runs the node's DNS responder on its overlay addresses.
	DNS DNSConfig `yaml:"dns"`
	// Metrics serves Prometheus metrics over HTTP.
	Metrics MetricsConfig `yaml:"metrics"`
	// MemoryLimitMiB is the process's soft memory limit (Go's GOMEMLIMIT)
	// in MiB; 0 means DefaultMemoryLimitMiB, -1 means none. A GOMEMLIMIT in
	// the environment wins.
	MemoryLimitMiB int `yaml:"memory_limit_mib"`
	// Firewall is the rule set (see docs/FIREWALL.md), parsed by package
	// policy so that its errors name their lines too. Without it inbound
	// traffic is denied.
	Firewall yaml.Node `yaml:"firewall" json:"-"`
	// FirewallRules is the parsed Firewall section.
	FirewallRules *policy.Config `yaml:"-" json:"firewall"`
	// path is the file the config was loaded from (for reloads).
	path string
	// lines maps the dotted path of every key in the file ("vault.path")
	// to its line, so that later checks can name the line at fault.
	lines map[string]int
}

// DefaultMemoryLimitMiB is a ceiling on a node's heap (a soft limit: the
// garbage collector works harder as the heap nears it). wireguard-go's
// buffers are 64 KiB each and its queues hold thousands; the overlay
// bounds how many packets wait inside it (overlay/backlog.go), so a busy
// node's live heap stays near 40 MiB and the limit is rarely reached.
// Without that bound it was: under 4-stream bulk load the collector ran
// every 5–8 ms and the node lost a third of its throughput.
const DefaultMemoryLimitMiB = 128

// DefaultGCPercent is the garbage collector's target (Go's GOGC) that
// `gridnet up` sets unless GOGC is in the environment. The heap of a busy
// node is mostly wireguard-go's packet buffers, which hold no pointers and
// cost the collector little, so collecting at 1.5× the live heap rather
// than Go's 2× keeps a node's resident set lower after bulk transfers for
// a CPU cost too small to measure (kernel mode, `make bench-netns`, 4
// streams: RSS after the transfers 58–74 MiB at 50 in two runs, 62–97 MiB
// at 100 in one).
const DefaultGCPercent = 50

// VaultConfig locates the node vault and its key.
type VaultConfig struct {
	// Path of the vault file.
	Path string `yaml:"path"`
	// KeyFile holds the vault key; empty means $GRIDNET_VAULT_PASSPHRASE,
	// $CREDENTIALS_DIRECTORY/gridnet-vault-key or a prompt.
	KeyFile string `yaml:"key_file"`
}

// TunConfig selects the virtual interface.
type TunConfig struct {
	// Mode is "userspace" (gVisor netstack, no privileges; the default) or
	// "kernel" (a real TUN device; needs CAP_NET_ADMIN).
	Mode TunMode `yaml:"mode"`
	// Name of the kernel TUN device (kernel mode).
	Name string `yaml:"name"`
	// MTU of the overlay interface; 0 means the default, stack.DefaultMTU
	// (1280).
	MTU MTU `yaml:"mtu"`
}

// GossipConfig configures discovery.
type GossipConfig struct {
	// Enabled turns gossip on: the node then needs only one seed in peers.
	Enabled bool `yaml:"enabled"`
	// Port is the gossip port on the overlay; 0 means the default,
	// discovery.DefaultPort (7946).
	Port uint16 `yaml:"port"`
	// Advertise are the underlay addresses (IP:port) other nodes use to
	// reach this node; required with gossip unless all nodes share
	// 127.0.0.1.
	Advertise []AddrPort `yaml:"advertise"`
}

// DNSConfig is the `dns:` section: the node's DNS responder for the
// overlay's names (docs/CONFIG.md).
type DNSConfig struct {
	// Enabled turns the responder on.
	Enabled bool `yaml:"enabled"`
	// Port is its UDP and TCP port on the overlay addresses; 0 means
	// DefaultDNSPort (53).
	Port uint16 `yaml:"port"`
}

// ControlConfig places the control API socket of `gridnet up`
// (StartFromConfig and OptionsFromConfig leave it out).
type ControlConfig struct {
	// Socket is the unix socket path; created 0600. Empty in the file:
	// $GRIDNET_SOCKET or the default for the user (/run/gridnet/gridnet.sock
	// for root; docs/CONFIG.md), filled in when `up` loads the config.
	Socket string `yaml:"socket"`
}

// MetricsConfig is the `metrics:` section: a Prometheus endpoint, off
// unless given an address.
type MetricsConfig struct {
	// Listen is the endpoint's TCP address (ip:port), serving /metrics;
	// empty: no endpoint.
	Listen OptionalAddrPort `yaml:"listen"`
}

// LogConfig sets logging.
type LogConfig struct {
	// Level is debug, info, warn or error.
	Level LogLevel `yaml:"level"`
	// Format is text or json.
	Format string `yaml:"format"`
}

// DefaultListen is the underlay address used when the config names none:
// all interfaces, the port Nebula users know.
var defaultListen = netip.MustParseAddrPort("0.0.0.0:4242")

// LoadConfig reads and validates the YAML config at path. Relative paths in
// it are resolved against the config file's directory. Errors name the line.
func LoadConfig(path string) (*Config, error) {
	data, err := configfile.Read(path)
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		var ce *configfile.Error
		if errors.As(err, &ce) {
			ce.Path = path
			return nil, ce
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	cfg.resolvePaths(dir)
	cfg.path = path
	return cfg, nil
}

// ParseConfig parses and validates YAML config bytes. Unknown keys (with
// a "did you mean" hint when a known key is close) and bad values are
// errors that name their line; every problem found is reported, not only
// the first.
func ParseConfig(data []byte) (*Config, error) {
	cfg := &Config{lines: map[string]int{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, &configfile.Error{Problems: []error{errors.New(strings.TrimPrefix(err.Error(), "yaml: "))}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &configfile.Error{Problems: []error{&configfile.LineError{Line: extra.Line, Err: errors.New("only one YAML document is allowed")}}}
	}
	var problems []error
	if len(doc.Content) > 0 {
		problems = configfile.CheckKeys(doc.Content[0], reflect.TypeFor[Config](), "", cfg.lines)
		problems = append(problems, configfile.DecodeProblems(doc.Decode(cfg), problems)...)
	}
	cfg.applyDefaults()
	for _, p := range cfg.validate() {
		// A section that did not decode is empty: no need to also say that
		// its keys are missing.
		if errors.Is(p, errVaultPathRequired) && configfile.HasLine(problems, cfg.lines["vault"]) {
			continue
		}
		problems = append(problems, p)
	}
	var fwNode *yaml.Node
	if cfg.Firewall.Kind != 0 {
		fwNode = &cfg.Firewall
	}
	rules, err := policy.ConfigFromYAML(fwNode)
	if err != nil {
		problems = append(problems, configfile.FirewallProblem(err))
	}
	if len(problems) > 0 {
		return nil, configfile.NewError(problems)
	}
	cfg.FirewallRules = rules
	return cfg, nil
}

func (c *Config) applyDefaults() {
	if !c.Listen.IsValid() {
		c.Listen = ListenAddr{AddrPort{defaultListen}}
	}
	if c.Tun.Mode == "" {
		c.Tun.Mode = TunUserspace
	}
	if c.Tun.Name == "" {
		c.Tun.Name = "gridnet0"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.MemoryLimitMiB == 0 {
		c.MemoryLimitMiB = DefaultMemoryLimitMiB
	}
	if c.Tun.MTU == 0 {
		c.Tun.MTU = stack.DefaultMTU
	}
	if c.Gossip.Port == 0 {
		c.Gossip.Port = discovery.DefaultPort
	}
	if c.DNS.Port == 0 {
		c.DNS.Port = DefaultDNSPort
	}
	c.applyRelayDefaults()
}

// errVaultPathRequired is the problem of a config without vault.path.
var errVaultPathRequired = errors.New("vault.path is required")

// validate checks what a single field's parser cannot, and returns every
// problem.
func (c *Config) validate() []error {
	var problems []error
	if c.Vault.Path == "" {
		problems = append(problems, &configfile.LineError{Line: c.lines["vault"], Err: errVaultPathRequired})
	}
	if c.MemoryLimitMiB < -1 || (c.MemoryLimitMiB > 0 && c.MemoryLimitMiB < 32) {
		problems = append(problems, &configfile.LineError{Line: c.lines["memory_limit_mib"], Err: fmt.Errorf("memory_limit_mib %d: want -1 (none), 0 (default %d) or at least 32", c.MemoryLimitMiB, DefaultMemoryLimitMiB)})
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		problems = append(problems, &configfile.LineError{Line: c.lines["log.format"], Err: fmt.Errorf("log.format %q: want text or json", c.Log.Format)})
	}
	problems = append(problems, c.validateRelays()...)
	return append(problems, c.validateDNS()...)
}

func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Vault.Path)
	abs(&c.Vault.KeyFile)
	abs(&c.CA)
	abs(&c.Cert)
	abs(&c.CRL)
	abs(&c.Control.Socket)
	for i := range c.Proxy.Users {
		abs(&c.Proxy.Users[i].PasswordFile)
	}
}

// AddrPort is a netip.AddrPort that reads from YAML and names the line of
// a bad value.
type AddrPort struct{ netip.AddrPort }

// UnmarshalYAML parses "host:port" with a literal IP address.
func (a *AddrPort) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return configfile.ValueError(n, "want an address like 192.0.2.1:4242")
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return configfile.ValueError(n, "%q is not an IP address with port (like 192.0.2.1:4242 or [2001:db8::1]:4242)", s)
	}
	a.AddrPort = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return nil
}

// ListenAddr is the underlay listen address: an unspecified IP and a port.
type ListenAddr struct{ AddrPort }

// UnmarshalYAML parses "0.0.0.0:PORT" or "[::]:PORT".
func (l *ListenAddr) UnmarshalYAML(n *yaml.Node) error {
	if err := l.AddrPort.UnmarshalYAML(n); err != nil {
		return err
	}
	if !l.Addr().IsUnspecified() {
		return configfile.ValueError(n, "listen %s: gridnet listens on every address; write 0.0.0.0:%d", l.AddrPort, l.Port())
	}
	return nil
}

// TunMode selects the virtual interface implementation.
type TunMode string

// The tun modes.
const (
	TunUserspace TunMode = "userspace"
	TunKernel    TunMode = "kernel"
)

// UnmarshalYAML accepts "userspace" or "kernel".
func (m *TunMode) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil || (s != string(TunUserspace) && s != string(TunKernel)) {
		return configfile.ValueError(n, "tun mode %q: want userspace or kernel", n.Value)
	}
	*m = TunMode(s)
	return nil
}

// LogLevel is a slog level read from YAML.
type LogLevel struct{ slog.Level }

// UnmarshalYAML accepts debug, info, warn or error.
func (l *LogLevel) UnmarshalYAML(n *yaml.Node) error {
	if err := l.Level.UnmarshalText([]byte(n.Value)); err != nil || n.Kind != yaml.ScalarNode {
		return configfile.ValueError(n, "log level %q: want debug, info, warn or error", n.Value)
	}
	return nil
}

// MarshalYAML writes the level as the config file does: "info", "warn+2".
func (l LogLevel) MarshalYAML() (any, error) {
	return strings.ToLower(l.Level.String()), nil
}

// MTU is an interface MTU read from YAML.
type MTU int

// Limits of a configured MTU: IPv6 needs at least 1280; 9000 is a jumbo frame.
const (
	minMTU = 1280
	maxMTU = 9000
)

// UnmarshalYAML accepts an integer in [minMTU, maxMTU].
func (m *MTU) UnmarshalYAML(n *yaml.Node) error {
	var v int
	if err := n.Decode(&v); err != nil || v < minMTU || v > maxMTU {
		return configfile.ValueError(n, "mtu %q: want an integer from %d to %d", n.Value, minMTU, maxMTU)
	}
	*m = MTU(v)
	return nil
}
