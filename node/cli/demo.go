package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/policy"
)

// Demo limits: the demo must finish by itself on any machine.
const (
	demoTimeout      = 60 * time.Second
	demoAdmitTimeout = 15 * time.Second
	demoTransferSize = 8 << 20
	demoEchoPort     = 7000
)

func demoCommand() *command {
	type opts struct{ verbose bool }
	return &command{
		name:    "demo",
		summary: "run a small local fabric in this process and exit",
		usage:   "[--verbose]",
		help: `Starts three nodes on 127.0.0.1 with a throwaway CA, shows that they
admit each other, moves data over TCP and pings across the encrypted tunnels,
then shows a node with a certificate from a foreign CA being refused. Nothing
is written to disk and nothing leaves this machine.`,
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			fs.BoolVar(&o.verbose, "verbose", false, "print the nodes' logs")
			return o
		},
		run: func(ctx context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			logger := slog.New(slog.DiscardHandler)
			if o.verbose {
				logger = slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
			}
			ctx, cancel := context.WithTimeout(ctx, demoTimeout)
			defer cancel()
			return runDemo(ctx, env.Stdout, logger)
		},
	}
}

// demoFirewall is the demo's rule set: ping from anyone admitted, the echo
// service from the demo group, nothing else.
const demoFirewall = `inbound:
  - {proto: icmp, port: any, host: any}
  - {proto: tcp, port: 7000, group: demo}
`

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

// localCA is a throwaway CA that makes ready-to-start node options on
// 127.0.0.1. The demo and this package's tests use it; node/nodetest
// has the same for the tests of other packages.
type localCA struct {
	CA  *cert.CA
	Now func() time.Time
}

// newLocalCA makes a CA for domain, valid from a day ago until a day from
// now, so that tests can also issue back-dated (expired) certificates.
func newLocalCA(name, domain string) (*localCA, error) {
	ca, err := cert.NewCA(name, domain, 48*time.Hour, time.Now().Add(-24*time.Hour))
	if err != nil {
		return nil, err
	}
	return &localCA{CA: ca, Now: time.Now}, nil
}

// NodeOptions makes keys for a node called name at overlay address addr
// (with prefix, e.g. 100.64.0.1/10), signs its certificate and returns
// options that listen on 127.0.0.1 with a random port and trust this CA.
func (l *localCA) NodeOptions(name string, addr netip.Prefix, groups []string, validity time.Duration) (node.Options, error) {
	keys, err := identity.GenerateKeys()
	if err != nil {
		return node.Options{}, err
	}
	pub, err := keys.WireGuardPublic()
	if err != nil {
		return node.Options{}, err
	}
	c, err := l.CA.Issue(cert.IssueRequest{
		Name: name, IdentityKey: keys.Identity.Public().(ed25519.PublicKey), WireGuardKey: pub,
		Addresses: []netip.Prefix{addr}, Groups: groups, Validity: validity,
	}, l.Now())
	if err != nil {
		return node.Options{}, err
	}
	return node.Options{
		IdentityKey:  keys.Identity,
		WireGuardKey: keys.WireGuard,
		Certificate:  c.Raw,
		CAs:          []*x509.Certificate{l.CA.Cert},
		Listen:       netip.MustParseAddrPort("127.0.0.1:0"),
	}, nil
}

func runDemo(ctx context.Context, out io.Writer, logger *slog.Logger) error {
	step := func(format string, args ...any) { fmt.Fprintf(out, "==> "+format+"\n", args...) }
	start := time.Now()

	step("creating a throwaway CA for domain demo.gridnet")
	lca, err := newLocalCA("demo-ca", "demo.gridnet")
	if err != nil {
		return err
	}
	rules, err := policy.ParseConfig([]byte(demoFirewall))
	if err != nil {
		return fmt.Errorf("demo firewall: %w", err)
	}
	step("firewall on every node (inbound default deny):\n%s", indent(demoFirewall))
	names := []string{"alpha", "beta", "gamma"}
	nodes := make([]*node.Node, 0, len(names))
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()
	for i, name := range names {
		opts, err := lca.NodeOptions(name, netip.MustParsePrefix(fmt.Sprintf("100.64.0.%d/10", i+1)), []string{"demo"}, time.Hour)
		if err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		opts.Logger = logger
		opts.Firewall = rules
		for _, prev := range nodes {
			opts.Peers = append(opts.Peers, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), prev.UnderlayPort()))
		}
		n, err := node.Start(ctx, opts)
		if err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
		nodes = append(nodes, n)
		step("started %s: overlay %s, underlay 127.0.0.1:%d, userspace stack", name, n.Identity().Addresses[0], n.UnderlayPort())
	}

	step("waiting until every node has admitted every other (mutual certificate check)")
	if err := waitFullMesh(ctx, nodes, demoAdmitTimeout); err != nil {
		return err
	}
	for _, n := range nodes {
		var peers []string
		for _, p := range n.Peers() {
			peers = append(peers, fmt.Sprintf("%s (%s via %s)", p.Name, p.Addresses[0].Addr(), p.Endpoint))
		}
		fmt.Fprintf(out, "    %-6s admitted: %s\n", n.Identity().Name, strings.Join(peers, ", "))
	}

	step("TCP: alpha sends %d MiB to an echo service on beta and checks what comes back", demoTransferSize>>20)
	rate, err := demoEcho(ctx, nodes[0], nodes[1])
	if err != nil {
		return fmt.Errorf("TCP exchange: %w", err)
	}
	fmt.Fprintf(out, "    %d MiB echoed intact through the tunnel (%.0f Mbit/s each way)\n", demoTransferSize>>20, rate)

	step("ping: alpha pings gamma over the overlay")
	for i := 0; i < 3; i++ {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		rtt, err := nodes[0].Ping(pctx, "gamma")
		cancel()
		if err != nil {
			return fmt.Errorf("ping gamma: %w", err)
		}
		fmt.Fprintf(out, "    reply from gamma (%s): time=%.3f ms\n", nodes[2].Addr(), float64(rtt.Microseconds())/1000)
	}

	step("firewall: alpha tries beta's port 22, which no rule allows")
	events := nodes[1].Firewall().Events(0)
	defer events.Close()
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	if c, err := nodes[0].Dial(dctx, "tcp", "beta:22"); err == nil {
		c.Close()
		cancel()
		return errors.New("alpha reached beta:22 through the firewall")
	}
	cancel()
	seen, err := awaitEvent(ctx, events, 2*time.Second, func(e policy.Event) bool { return e.DstPort == 22 && e.Peer == "alpha" })
	if err != nil {
		return errors.New("beta recorded no event for the blocked flow")
	}
	fmt.Fprintf(out, "    blocked; beta's event: %s %s from %s (%s:%d -> %s:%d): %s\n",
		seen.Kind, seen.Direction, seen.Peer, seen.Src, seen.SrcPort, seen.Dst, seen.DstPort, seen.Reason)
	fw := nodes[1].Firewall().Stats()
	fmt.Fprintf(out, "    beta's firewall: %d packets accepted, %d dropped\n", fw.Accepted, fw.Dropped)

	step("intruder: mallory holds a valid certificate from a foreign CA and tries to join alpha")
	rogue, err := newLocalCA("rogue-ca", "demo.gridnet")
	if err != nil {
		return err
	}
	mopts, err := rogue.NodeOptions("mallory", netip.MustParsePrefix("100.64.0.66/10"), []string{"demo"}, time.Hour)
	if err != nil {
		return err
	}
	mopts.Logger = logger
	mopts.Firewall = rules
	// The CA certificate is public: mallory trusts it, so the decision is
	// alpha's alone.
	mopts.CAs = append(mopts.CAs, lca.CA.Cert)
	mallory, err := node.Start(ctx, mopts)
	if err != nil {
		return fmt.Errorf("start mallory: %w", err)
	}
	nodes = append(nodes, mallory)
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = mallory.Admit(actx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), nodes[0].UnderlayPort()))
	cancel()
	if err == nil {
		return errors.New("mallory was admitted: the fabric is broken")
	}
	fmt.Fprintf(out, "    mallory got no session: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
	actx, cancel = context.WithTimeout(ctx, 3*time.Second)
	_, err = nodes[0].Admit(actx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), mallory.UnderlayPort()))
	cancel()
	if err == nil {
		return errors.New("alpha admitted mallory: the fabric is broken")
	}
	fmt.Fprintf(out, "    alpha's check of mallory: %v\n", err)
	for _, p := range nodes[0].Peers() {
		if p.Name == "mallory" {
			return errors.New("alpha lists mallory as a peer: the fabric is broken")
		}
	}
	fmt.Fprintf(out, "    alpha's peers are still: %s\n", peerNames(nodes[0]))
	var refusals []string
	for name, v := range nodes[0].Status().Admission {
		if r, ok := strings.CutPrefix(name, "rejected_"); ok {
			refusals = append(refusals, fmt.Sprintf("%s=%d", r, v))
		}
	}
	fmt.Fprintf(out, "    alpha's refusal counters: %s\n", strings.Join(refusals, " "))
	step("demo finished in %s; all nodes shut down", time.Since(start).Round(time.Millisecond))
	return nil
}

// awaitEvent returns the first event from sub that match accepts, waiting
// at most timeout.
func awaitEvent(ctx context.Context, sub *policy.Subscription, timeout time.Duration, match func(policy.Event) bool) (policy.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		select {
		case e, ok := <-sub.C:
			if !ok {
				return policy.Event{}, errors.New("the firewall's events ended")
			}
			if match(e) {
				return e, nil
			}
		case <-ctx.Done():
			return policy.Event{}, ctx.Err()
		}
	}
}

func peerNames(n *node.Node) string {
	var names []string
	for _, p := range n.Peers() {
		names = append(names, p.Name)
	}
	return strings.Join(names, ", ")
}

// waitFullMesh waits until every node lists every other as a peer with a
// WireGuard session.
func waitFullMesh(ctx context.Context, nodes []*node.Node, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		missing := ""
		for _, n := range nodes {
			have := map[string]bool{}
			for _, p := range n.Peers() {
				have[p.Name] = !p.LastHandshake.IsZero()
			}
			for _, m := range nodes {
				if m != n && !have[m.Identity().Name] {
					missing = n.Identity().Name + " has not admitted " + m.Identity().Name
				}
			}
		}
		if missing == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %s", timeout, missing)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// demoEcho runs an echo server on b and streams demoTransferSize random
// bytes from a through it, comparing checksums. It returns Mbit/s.
func demoEcho(ctx context.Context, a, b *node.Node) (float64, error) {
	ln, err := b.Listen("tcp", fmt.Sprintf(":%d", demoEchoPort))
	if err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	defer func() {
		ln.Close()
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	conn, err := a.Dial(ctx, "tcp", net.JoinHostPort(b.Identity().Name, fmt.Sprint(demoEchoPort)))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	payload := make([]byte, demoTransferSize)
	if _, err := rand.Read(payload); err != nil {
		return 0, err
	}
	want := sha256.Sum256(payload)
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		errc <- err
	}()
	h := sha256.New()
	if _, err := io.CopyN(h, conn, demoTransferSize); err != nil {
		return 0, fmt.Errorf("read echo: %w", err)
	}
	if err := <-errc; err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	elapsed := time.Since(start)
	if !bytes.Equal(h.Sum(nil), want[:]) {
		return 0, errors.New("echoed data differs from what was sent")
	}
	return float64(demoTransferSize*8) / elapsed.Seconds() / 1e6, nil
}
