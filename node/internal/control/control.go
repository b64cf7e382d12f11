// Package control is the contract between a running node's control API
// and its clients, the gridnet commands: the request paths and limits, the
// error body, the unix socket the API listens on and the client. The API
// is HTTP with JSON bodies on a socket only the node's user can open
// (0600); package node serves it (Node.ServeControl) and node/cli's
// status, peers, ping, events, crl push and reload commands talk to it.
package control

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// The control API's requests and limits.
const (
	PathStatus = "/v1/status"
	PathPing   = "/v1/ping"
	PathReload = "/v1/reload"
	PathEvents = "/v1/events"
	PathPeers  = "/v1/members"
	PathCRL    = "/v1/crl"
	// MaxCRLBody bounds a pushed CRL (discovery refuses larger ones too).
	MaxCRLBody = 1 << 20
	// MaxPingCount bounds one ping request.
	MaxPingCount = 1000
	// Timeout bounds a control request that is not a stream.
	Timeout = 10 * time.Second
)

// APIError is the body of a failed request.
type APIError struct {
	Error string `json:"error"`
}

// Listen creates the control socket at path, 0600, replacing only a
// stale socket: a running node's socket (one that accepts a connection)
// and any file that is not a socket are refused, and so is a directory
// another user could replace the socket in. `up` calls it before the node
// starts, so a second instance on the same socket fails before it joins
// the fabric. Closing the listener removes the socket.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	if err := CheckSocketDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("control socket %s: a file that is not a socket is in the way", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s is in use by another gridnet (a node runs with it; stop it, or give this one another control.socket)", path)
		}
		// A stale socket from a node that did not shut down cleanly.
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket: %w", err)
		}
	}
	// Create the socket 0600 from the start: no moment where others could
	// connect.
	oldMask := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(oldMask)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// CheckSocketDir refuses a control socket directory that another user
// could replace the socket in: one owned by someone else than this user
// or root, or one that others may write to without the sticky bit (as
// /tmp has it, where nobody can remove another's file).
func CheckSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("control socket directory %s belongs to uid %d: another user could replace the socket; use a directory of this user (control.socket)", dir, st.Uid)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("control socket directory %s is writable by other users (mode %v) without the sticky bit: they could replace the socket; use a directory only this user writes (control.socket)", dir, fi.Mode().Perm())
	}
	return nil
}
