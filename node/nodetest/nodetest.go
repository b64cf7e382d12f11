// Package nodetest is test support for programs and packages that run
// gridnet nodes in tests: a throwaway CA that makes ready-to-start
// Options, and nodes with the controls only tests need (crash without
// leaving, a pass-through firewall, a node that skips its own
// certificate check, the overlay's counters and WireGuard state). Nothing
// in it belongs in a production program.
package nodetest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/crypto/curve25519"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/internal/testhooks"
	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/stack"
)

// LocalCA is a throwaway CA that makes ready-to-start node options on
// 127.0.0.1.
type LocalCA struct {
	// CA issues the certificates.
	CA *cert.CA
	// Now is the issuing time of NodeOptions' certificates.
	Now func() time.Time
}

// NewLocalCA makes a CA for domain, valid from a day ago until a day from
// now, so that tests can also issue back-dated (expired) certificates.
func NewLocalCA(name, domain string) (*LocalCA, error) {
	ca, err := cert.NewCA(name, domain, 48*time.Hour, time.Now().Add(-24*time.Hour))
	if err != nil {
		return nil, fmt.Errorf("local CA: %w", err)
	}
	return &LocalCA{CA: ca, Now: time.Now}, nil
}

// NodeOptions makes keys for a node called name at overlay address addr
// (with prefix, e.g. 100.64.0.1/10), signs its certificate and returns
// options that listen on 127.0.0.1 with a random port and trust this CA.
func (l *LocalCA) NodeOptions(name string, addr netip.Prefix, groups []string, validity time.Duration) (node.Options, error) {
	_, idKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return node.Options{}, fmt.Errorf("generate identity key: %w", err)
	}
	var wg [32]byte
	if _, err := rand.Read(wg[:]); err != nil {
		return node.Options{}, fmt.Errorf("generate WireGuard key: %w", err)
	}
	wg[0] &= 248
	wg[31] = (wg[31] & 127) | 64
	pub, err := WireGuardPublicKey(wg)
	if err != nil {
		return node.Options{}, err
	}
	c, err := l.CA.Issue(cert.IssueRequest{
		Name: name, IdentityKey: idKey.Public().(ed25519.PublicKey), WireGuardKey: pub,
		Addresses: []netip.Prefix{addr}, Groups: groups, Validity: validity,
	}, l.Now())
	if err != nil {
		return node.Options{}, fmt.Errorf("issue %s: %w", name, err)
	}
	return node.Options{
		IdentityKey:  idKey,
		WireGuardKey: wg,
		Certificate:  c.Raw,
		CAs:          []*x509.Certificate{l.CA.Cert},
		Listen:       netip.MustParseAddrPort("127.0.0.1:0"),
	}, nil
}

// WireGuardPublicKey is the public key of a WireGuard private key.
func WireGuardPublicKey(private [32]byte) ([32]byte, error) {
	var pub [32]byte
	out, err := curve25519.X25519(private[:], curve25519.Basepoint)
	if err != nil {
		return pub, fmt.Errorf("derive WireGuard public key: %w", err)
	}
	copy(pub[:], out)
	return pub, nil
}

// Switches change how a node started by Start runs; the zero value is a
// node as production runs it.
type Switches struct {
	// Unfiltered leaves the packet hook a pass-through (counters only):
	// benchmarks compare it with the firewall.
	Unfiltered bool
	// SkipSelfCheck starts the node even if its own certificate does not
	// verify or is not for its keys, to play a node that an honest peer
	// must refuse.
	SkipSelfCheck bool
	// StackTuning overrides the userspace stack's defaults (stack.Tuning),
	// for the benchmark that measures alternatives to them.
	StackTuning stack.Tuning
}

// Node is a node started by Start: the node and its test-only controls.
type Node struct {
	*node.Node
	hooks *testhooks.Hooks
}

// Start starts a node with opts as node.Start does, with the switches
// set.
func Start(ctx context.Context, opts node.Options, sw Switches) (*Node, error) {
	h := &testhooks.Hooks{Unfiltered: sw.Unfiltered, SkipSelfCheck: sw.SkipSelfCheck, StackTuning: sw.StackTuning}
	opts.TestHooks = h
	n, err := node.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &Node{Node: n, hooks: h}, nil
}

// errNoHooks is returned for a Node not made by Start.
var errNoHooks = errors.New("nodetest: node not started by nodetest.Start")

// Crash stops the node without leaving the gossip fabric, as a killed
// process would: the others must notice by failure detection.
func (n *Node) Crash() error {
	if n.hooks == nil || n.hooks.Crash == nil {
		return errNoHooks
	}
	return n.hooks.Crash()
}

// OverlayStats are the node's admission and underlay counters.
func (n *Node) OverlayStats() overlay.Stats {
	if n.hooks == nil || n.hooks.OverlayStats == nil {
		return overlay.Stats{}
	}
	return n.hooks.OverlayStats()
}

// WireGuardConfig is the node's WireGuard device configuration as
// wireguard-go reports it (keys, peers, endpoints, allowed IPs).
func (n *Node) WireGuardConfig() (string, error) {
	if n.hooks == nil || n.hooks.WireGuardConfig == nil {
		return "", errNoHooks
	}
	return n.hooks.WireGuardConfig()
}
