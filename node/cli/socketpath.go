package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/internal/control"
)

// SocketEnv is the environment variable that names the control socket
// when neither --socket nor the config names one; `up` honours it too,
// so one setting makes the node and its client commands agree.
const SocketEnv = "GRIDNET_SOCKET"

// DefaultControlSocket is where the control API listens when the config
// and $GRIDNET_SOCKET name no socket and the node runs as root; other
// users get $XDG_RUNTIME_DIR/gridnet/gridnet.sock, or gridnet.sock in the
// config's folder when XDG_RUNTIME_DIR is not set.
const DefaultControlSocket = "/run/gridnet/gridnet.sock"

// defaultControlSocket is where the control socket lives when neither the
// config nor SocketEnv names one: DefaultControlSocket for root; for any
// other user $XDG_RUNTIME_DIR/gridnet/gridnet.sock (the user's own runtime
// folder, which only the user can enter), or without XDG_RUNTIME_DIR the
// config's folder (configDir; "" when there is no config, and then
// DefaultControlSocket).
func defaultControlSocket(env Env, configDir string) string {
	if env.euid() == 0 {
		return DefaultControlSocket
	}
	if dir, ok := env.lookup("XDG_RUNTIME_DIR"); ok && filepath.IsAbs(dir) {
		return filepath.Join(dir, "gridnet", "gridnet.sock")
	}
	if configDir != "" {
		return filepath.Join(configDir, "gridnet.sock")
	}
	return DefaultControlSocket
}

// resolveControlSocket fills in control.socket of c, loaded from path,
// when the config file has none: $GRIDNET_SOCKET, else the default for
// this user and config folder. The result is absolute, as every path of
// a loaded config.
func resolveControlSocket(c *node.Config, path string, env Env) {
	if c.Control.Socket != "" {
		return
	}
	if s, ok := env.lookup(SocketEnv); ok && s != "" {
		c.Control.Socket = s
	} else {
		dir := ""
		if path != "" {
			dir = filepath.Dir(path)
		}
		c.Control.Socket = defaultControlSocket(env, dir)
	}
	if abs, err := filepath.Abs(c.Control.Socket); err == nil {
		c.Control.Socket = abs
	}
}

// socketFlag is how a client command finds the running node's control
// socket: --socket, else the socket of the node config given by --config
// (what `up --config` of that file uses), else $GRIDNET_SOCKET, else the
// default for this user.
type socketFlag struct{ socket, config string }

func (s *socketFlag) register(fs *flag.FlagSet) {
	fs.StringVar(&s.socket, "socket", "", "control API socket of the running node (default: --config's, $"+SocketEnv+", or "+DefaultControlSocket+" for root and $XDG_RUNTIME_DIR/gridnet/gridnet.sock for other users)")
	fs.StringVar(&s.config, "config", "", "the running node's config file: use the control socket `up` uses with it")
}

// path returns the control socket the command talks to.
func (s *socketFlag) path(env Env) (string, error) {
	switch {
	case s.socket != "" && s.config != "":
		return "", usageError("give --socket or --config, not both")
	case s.socket != "":
		return s.socket, nil
	case s.config != "":
		cfg, err := node.LoadConfig(s.config)
		if err != nil {
			return "", fmt.Errorf("control socket from --config: %w", err)
		}
		resolveControlSocket(cfg, s.config, env)
		return cfg.Control.Socket, nil
	}
	if p, ok := env.lookup(SocketEnv); ok && p != "" {
		return p, nil
	}
	return defaultControlSocket(env, ""), nil
}

// client returns a control API client for the socket path finds.
func (s *socketFlag) client(env Env) (*control.Client, error) {
	p, err := s.path(env)
	if err != nil {
		return nil, err
	}
	return control.NewClient(p), nil
}

// getJSON fetches the control API's path from the running node into v.
func (s *socketFlag) getJSON(ctx context.Context, env Env, path string, v any) error {
	cc, err := s.client(env)
	if err != nil {
		return err
	}
	return cc.GetJSON(ctx, path, v)
}

// printJSON writes v to w as indented JSON, as the --json flags print.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// euid is the effective user id the defaults are chosen for.
func (e Env) euid() int {
	if e.Geteuid != nil {
		return e.Geteuid()
	}
	return os.Geteuid()
}

// lookup reads an environment variable; an Env without LookupEnv has none.
func (e Env) lookup(key string) (string, bool) {
	if e.LookupEnv == nil {
		return "", false
	}
	return e.LookupEnv(key)
}
