package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aigrid/gridnet/discovery"
	"github.com/aigrid/gridnet/stack"
)

func TestParseConfigErrorsNameTheLine(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown key", "vault:\n  path: v\nlisten: 0.0.0.0:1\nbogus: 1\n", "line 4"},
		{"unknown nested key", "vault:\n  path: v\n  passphrase: x\n", "line 3"},
		{"bad listen", "vault:\n  path: v\nlisten: nowhere\n", "line 3"},
		{"listen without port", "vault:\n  path: v\nlisten: 127.0.0.1\n", "line 3"},
		{"bad peer", "vault:\n  path: v\npeers:\n  - 127.0.0.1:1\n  - host:x\n", "line 5"},
		{"listen on one address", "vault:\n  path: v\nlisten: 192.0.2.1:4242\n", "line 3"},
		{"bad tun mode", "vault:\n  path: v\ntun:\n  mode: magic\n", "line 4"},
		{"mtu too small", "vault:\n  path: v\ntun:\n  mtu: 576\n", "line 4"},
		{"mtu not a number", "vault:\n  path: v\ntun:\n  mtu: big\n", "line 4"},
		{"bad log level", "vault:\n  path: v\nlog:\n  level: loud\n", "line 4"},
		{"wrong type", "vault: [1, 2]\n", "line 1"},
		{"two documents", "vault:\n  path: v\n---\nvault:\n  path: w\n", "line 3"},
		{"no vault", "listen: 0.0.0.0:1\n", "vault.path is required"},
		{"bad log format", "vault:\n  path: v\nlog:\n  format: xml\n", "log.format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("accepted:\n%s", tt.yaml)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestLoadConfigDefaultsAndPaths(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "node.yaml")
	yaml := `vault:
  path: node.vault
  key_file: /etc/gridnet/vault.key
ca: ca.crt
crl: crl.pem
listen: "[::]:4300"
peers: ["127.0.0.1:4242", "[::1]:4243"]
tun:
  mode: kernel
  mtu: 1400
log:
  level: debug
  format: json
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Vault.Path != filepath.Join(dir, "node.vault") || cfg.Vault.KeyFile != "/etc/gridnet/vault.key" {
		t.Errorf("vault paths: %+v", cfg.Vault)
	}
	if cfg.CA != filepath.Join(dir, "ca.crt") || cfg.Cert != "" {
		t.Errorf("ca %q cert %q", cfg.CA, cfg.Cert)
	}
	if cfg.Listen.String() != "[::]:4300" || len(cfg.Peers) != 2 || cfg.Peers[1].String() != "[::1]:4243" {
		t.Errorf("addresses: %v %v", cfg.Listen, cfg.Peers)
	}
	if cfg.Tun.Mode != TunKernel || cfg.Tun.MTU != 1400 || cfg.Tun.Name != "gridnet0" {
		t.Errorf("tun: %+v", cfg.Tun)
	}
	if cfg.Log.Level.String() != "DEBUG" || cfg.Log.Format != "json" {
		t.Errorf("log: %+v", cfg.Log)
	}

	// Minimal config: defaults fill the rest.
	min, err := ParseConfig([]byte("vault:\n  path: v\n"))
	if err != nil {
		t.Fatal(err)
	}
	if min.Listen.AddrPort.AddrPort != defaultListen || min.Tun.Mode != TunUserspace || min.Tun.MTU != stack.DefaultMTU || min.Gossip.Port != discovery.DefaultPort {
		t.Errorf("defaults: %+v", min)
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "none.yaml")); err == nil {
		t.Fatal("missing config accepted")
	}
}

// FuzzParseConfig: any bytes give a config or an error, never a panic, and
// an accepted config always has its required fields.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("vault:\n  path: v\n"))
	f.Add([]byte("vault:\n  path: v\nlisten: 0.0.0.0:4242\npeers: [\"127.0.0.1:1\"]\ntun:\n  mode: kernel\n  mtu: 1400\n"))
	f.Add([]byte("vault: {path: v}\nlog: {level: warn, format: json}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			return
		}
		if cfg.Vault.Path == "" || !cfg.Listen.IsValid() || cfg.Tun.Mode == "" {
			t.Fatalf("accepted an incomplete config: %+v", cfg)
		}
	})
}
