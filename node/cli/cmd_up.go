package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/internal/configfile"
	"github.com/aigrid/gridnet/node/internal/control"
	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/vault"
)

func upCommand() *command {
	type opts struct {
		config string
		test   bool
	}
	return &command{
		name:    "up",
		summary: "run a node from a YAML config",
		usage:   "--config node.yaml [--test]",
		help: `Opens the node's vault, verifies its certificate against the CA bundle,
brings up the virtual interface and the WireGuard device, admits the static
peers and serves the control API. SIGINT/SIGTERM stop it cleanly; SIGHUP
re-reads the CRL file and the certificate (renewal with the same keys).

One node per vault: up refuses a vault another node runs on, naming its
pid and control socket. The control socket (control.socket, else
$GRIDNET_SOCKET, else /run/gridnet/gridnet.sock for root and
$XDG_RUNTIME_DIR/gridnet/gridnet.sock for other users) is created before
the node starts; a running node's socket is refused, so a second
instance never joins the fabric.

--test checks without starting anything: the config's keys and values,
every file it names (vault, key file, CA bundle, certificate, CRL), the
certificate against the CA bundle and the CRL and against the vault's
keys, that the listen port can be bound and the control socket created.
It lists every problem found and exits 1, or prints the effective
configuration as YAML (defaults filled in), which up reads back as is.`,
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			fs.StringVar(&o.config, "config", "", "config file (YAML)")
			fs.BoolVar(&o.test, "test", false, "check the config and what it names, print the effective configuration and exit")
			return o
		},
		run: func(ctx context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 0 || o.config == "" {
				return usageError("--config is required")
			}
			cfg, err := node.LoadConfig(o.config)
			if err != nil {
				return err
			}
			resolveControlSocket(cfg, o.config, env)
			if o.test {
				return testConfig(env, o.config, cfg)
			}
			return runUp(ctx, env, o.config, cfg)
		},
	}
}

// testConfig is `up --test` of cfg, loaded from path: every problem found,
// or the effective configuration as YAML.
func testConfig(env Env, path string, cfg *node.Config) error {
	if problems := checkConfig(cfg, path, env); len(problems) > 0 {
		ce := configfile.NewError(problems)
		ce.Path = path
		return ce
	}
	out, err := effectiveYAML(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "# effective configuration of %s: defaults filled in, paths absolute\n", path)
	_, err = env.Stdout.Write(out)
	return err
}

// runUp runs a node from cfg, loaded from path, until ctx ends.
func runUp(ctx context.Context, env Env, path string, cfg *node.Config) error {
	// Catch SIGHUP from the start: its default action would kill a node
	// that is still starting.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if _, set := env.LookupEnv("GOMEMLIMIT"); !set && cfg.MemoryLimitMiB > 0 {
		debug.SetMemoryLimit(int64(cfg.MemoryLimitMiB) << 20)
	}
	if _, set := env.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(node.DefaultGCPercent)
	}
	// One node per vault: a second up on it stops here, naming the first.
	claim, err := vault.ClaimVault(cfg.Vault.Path, vault.Holder{PID: os.Getpid(), Socket: cfg.Control.Socket}, vault.DefaultLockTimeout)
	if err != nil {
		if errors.Is(err, vault.ErrClaimed) {
			return fmt.Errorf("%w (one node per vault: stop that node first, or give this one its own vault)", err)
		}
		return err
	}
	defer claim.Release()
	opts, err := node.OptionsFromConfigKeys(cfg, (&vaultKeyFlags{keyFile: cfg.Vault.KeyFile}).keySource(cfg.Vault.Path, env))
	if err != nil {
		return err
	}
	if env.Stderr != nil {
		// The node logs where the command writes its errors.
		opts.Logger = configfile.NewLogger(env.Stderr, cfg.Log.Level.Level, cfg.Log.Format)
	}
	log := opts.Logger
	// The control socket first: a second instance with the same socket
	// stops here, before it joins the fabric.
	ln, err := control.Listen(cfg.Control.Socket)
	if err != nil {
		return err
	}
	n, err := node.Start(ctx, opts)
	if err != nil {
		ln.Close() // removes the socket
		return err
	}
	defer n.Close()
	// SIGHUP and the control API may ask at once; one reload at a time.
	var reloadMu sync.Mutex
	reload := func() error {
		reloadMu.Lock()
		defer reloadMu.Unlock()
		return reloadNode(path, cfg, env, n, log)
	}
	cs := n.ServeControl(ln, reload)
	defer cs.Close()

	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			return nil
		case <-hup:
			if err := reload(); err != nil {
				log.Error("reload incomplete; what failed keeps its old state", "err", err)
			}
		}
	}
}

// reloadNode re-reads what can change without a restart: the firewall
// rules in the config file at path, the CRL file and the node certificate
// (renewal for the same keys). Each part is applied
// only if it verifies; a failure keeps the old state and is returned.
func reloadNode(path string, cfg *node.Config, env Env, n *node.Node, log *slog.Logger) error {
	var errs []error
	if path != "" {
		next, err := node.LoadConfig(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("firewall rules not reloaded: %w", err))
		} else if err := n.ReloadFirewall(next.FirewallRules); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.CRL != "" {
		crl, err := identity.ReadCRL(cfg.CRL)
		switch {
		case err != nil:
			errs = append(errs, err)
		case crl != nil:
			applied, err := n.ApplyCRL(crl)
			if err != nil {
				errs = append(errs, fmt.Errorf("CRL %s: %w", cfg.CRL, err))
			} else {
				log.Info("CRL checked", "applied", applied, "number", crl.Number)
			}
		}
	}
	certPEM, err := readNodeCert(cfg, env)
	if err != nil {
		errs = append(errs, err)
	} else if c, err := cert.ParseCertPEM(certPEM); err != nil {
		errs = append(errs, fmt.Errorf("node certificate: %w", err))
	} else if !bytes.Equal(c.Raw, n.Identity().Raw) {
		if err := n.RenewCertificate(c.Raw); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// readNodeCert reads the node certificate from the configured file or the
// vault.
func readNodeCert(cfg *node.Config, env Env) ([]byte, error) {
	if cfg.Cert != "" {
		b, err := os.ReadFile(cfg.Cert)
		if err != nil {
			return nil, fmt.Errorf("node certificate: %w", err)
		}
		return b, nil
	}
	v, err := openVault(cfg.Vault.Path, vaultKeyFlags{keyFile: cfg.Vault.KeyFile}, env)
	if err != nil {
		return nil, err
	}
	defer v.Close()
	b, _, err := v.Get(identity.ItemNodeCert)
	if err != nil {
		return nil, fmt.Errorf("node certificate from vault: %w", err)
	}
	return b, nil
}

func reloadCommand() *command {
	return &command{
		name:    "reload",
		summary: "make the running node re-read its CRL and certificate (as SIGHUP does)",
		usage:   "[--socket PATH | --config FILE]",
		flags:   func(fs *flag.FlagSet) any { o := &socketFlag{}; o.register(fs); return o },
		run: func(ctx context.Context, env Env, a any, args []string) error {
			o := a.(*socketFlag)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			ctx, cancel := context.WithTimeout(ctx, control.Timeout)
			defer cancel()
			cc, err := o.client(env)
			if err != nil {
				return err
			}
			body, err := cc.Do(ctx, "POST", control.PathReload)
			if err != nil {
				return err
			}
			body.Close()
			fmt.Fprintln(env.Stdout, "reloaded")
			return nil
		},
	}
}

func statusCommand() *command {
	type opts struct {
		socketFlag
		json bool
	}
	return &command{
		name:    "status",
		summary: "show the running node and its peers",
		usage:   "[--json] [--socket PATH | --config FILE]",
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			o.register(fs)
			fs.BoolVar(&o.json, "json", false, "print JSON")
			return o
		},
		run: func(ctx context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			var st node.Status
			if err := o.getJSON(ctx, env, control.PathStatus, &st); err != nil {
				return err
			}
			if o.json {
				return printJSON(env.Stdout, st)
			}
			printStatus(env.Stdout, st, time.Now())
			return nil
		},
	}
}

func printStatus(w io.Writer, st node.Status, now time.Time) {
	fmt.Fprintf(w, "%s (%s) %s  underlay port %d  certificate valid until %s\n",
		st.Name, st.Domain, strings.Join(st.Addresses, ", "), st.UnderlayPort, st.CertExpiry.UTC().Format(time.RFC3339))
	if dp := st.DataPath; dp.Mode != "" {
		fmt.Fprintf(w, "data path: %s stack, TCP segmentation %s, UDP GSO %s, UDP GRO %s; backlog in WireGuard %d packets each way (readers waited %d times, %d packets lost unseen, bound stepped aside %d times)\n",
			dp.Mode, onOff(dp.TCPSegmentation), onOff(dp.UDPSegmentation), onOff(dp.UDPCoalescing), dp.BacklogLimit,
			dp.BacklogWaits, dp.BacklogExpired, dp.BacklogBypasses)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tADDRESS\tENDPOINT\tHANDSHAKE\tRX\tTX\tSTATE")
	for _, p := range st.Peers {
		hs := "never"
		if !p.LastHandshake.IsZero() {
			hs = now.Sub(p.LastHandshake).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, strings.Join(p.Addresses, ","), p.Endpoint, hs, humanBytes(p.RxBytes), humanBytes(p.TxBytes), p.State)
	}
	tw.Flush()
	printRefusals(w, st.Refusals, now)
}

// onOff is "on" or "off".
func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func pingCommand() *command {
	type opts struct {
		socketFlag
		count    int
		interval time.Duration
	}
	return &command{
		name:    "ping",
		summary: "ping a peer over the overlay",
		usage:   "NAME|ADDR [-c N] [--interval D] [--socket PATH | --config FILE]",
		help: `Sends N ICMP echo requests through the tunnel (each waits up to 2 s for
its reply) and ends with ping(8)'s summary: packets transmitted and
received, loss, time, and rtt min/avg/max/mdev. When requests go
unanswered it says what this node knows of why: no admitted peer has the
name or address (and the last refusal this node received, if any), this
node's own firewall drops the request or has quarantined the peer, no
WireGuard session, or a tunnel that is up with no reply (the far side's
firewall probably does not allow ICMP). Exit status 1 when no reply came.`,
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			o.register(fs)
			fs.IntVar(&o.count, "c", 4, "number of echo requests")
			fs.DurationVar(&o.interval, "interval", time.Second, "time between requests")
			return o
		},
		run: func(ctx context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 1 {
				return usageError("want one peer name or overlay address")
			}
			q := url.Values{"target": {args[0]}, "count": {fmt.Sprint(o.count)}, "interval": {o.interval.String()}}
			start := time.Now()
			cc, err := o.client(env)
			if err != nil {
				return err
			}
			body, err := cc.Get(ctx, control.PathPing+"?"+q.Encode())
			if err != nil {
				return err
			}
			defer body.Close()
			stats := pingStats{target: args[0]}
			hint := ""
			dec := json.NewDecoder(body)
			for {
				var r node.PingReply
				if err := dec.Decode(&r); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					if ctx.Err() != nil {
						break // interrupted: sum up what came, as ping(8) does
					}
					return fmt.Errorf("ping: %w", err)
				}
				stats.transmitted++
				if r.Error != "" {
					hint = cmp.Or(r.Hint, hint)
					fmt.Fprintf(env.Stdout, "seq=%d %s: %s\n", r.Seq, r.To, r.Error)
					continue
				}
				stats.rtts = append(stats.rtts, r.RTTms)
				fmt.Fprintf(env.Stdout, "seq=%d reply from %s: time=%.3f ms\n", r.Seq, r.To, r.RTTms)
			}
			stats.elapsed = time.Since(start)
			fmt.Fprint(env.Stdout, "\n"+stats.summary())
			switch {
			case len(stats.rtts) == 0 && hint != "":
				return fmt.Errorf("no reply from %s: %s", args[0], hint)
			case len(stats.rtts) == 0:
				return fmt.Errorf("no reply from %s", args[0])
			case hint != "":
				fmt.Fprintf(env.Stdout, "lost requests: %s\n", hint)
			}
			return nil
		},
	}
}

// printRefusals adds the refusals to the status text: who refused this
// node, when, how often and why.
func printRefusals(w io.Writer, rs []node.RefusalView, now time.Time) {
	if len(rs) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REFUSED BY\tENDPOINT\tLAST\tCOUNT\tREASON")
	for _, r := range rs {
		peer := r.Peer
		if peer == "" {
			peer = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s ago\t%d\t%s: %s\n", peer, r.Endpoint, now.Sub(r.At).Round(time.Second), r.Count, r.Reason, r.Description)
	}
	tw.Flush()
}
