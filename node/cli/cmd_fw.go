package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/internal/control"
	"github.com/aigrid/gridnet/overlay/cert"
	"github.com/aigrid/gridnet/policy"
)

// errDenied is returned by `fw check` when the flow would not pass, so the
// exit code tells scripts the answer.
var errDenied = errors.New("denied")

// exitBadConfig is `fw check`'s exit code for rules that cannot be read or
// parsed, the same as for a wrong invocation: 1 means only "denied" (or a
// failed expectation).
const exitBadConfig = 2

func fwCommand() *command {
	return &command{
		name:    "fw",
		summary: "check and reload the firewall rules",
		help: `The firewall judges every packet between WireGuard and the stack by the
peer's certificate identity; see docs/FIREWALL.md for the rule language.`,
		sub: []*command{fwCheckCommand(), fwReloadCommand()},
	}
}

type fwCheckOpts struct {
	config, rules                       string
	localDomain                         string
	from, groups, domain, caName, caSHA string
	addr                                string
	attrs                               stringList
	proto, direction                    string
	port                                int
	trust                               float64
}

func fwCheckCommand() *command {
	return &command{
		name:    "check",
		summary: "answer offline whether a flow would pass, and by which rule",
		usage:   "(--config node.yaml | --rules fw.yaml) [--local-domain D] [--from NAME] [--groups a,b] [--domain D] [--ca-name N] [--ca-sha HEX] [--attr k=v] [--proto tcp --port 22] [--direction inbound] [--trust 0.4]",
		help: `With flow flags it prints "allowed by RULE" or why the flow is denied
(the deny rule, no rule matched, or trust too low), and the domain the
deciding rule matched. Without them it runs the rule set's tests: section,
like an ACL test suite.

A rule that names a host, groups or attributes without domain, ca_name or
ca_sha matches only peers of this node's domain: --local-domain, else the
domain of the config's cert: file. A peer given without --domain is of this
node's domain.

--rules takes the firewall section alone or under a firewall: key.

Exit status: 0 allowed (or every test passed), 1 denied (or a test
failed), 2 a wrong invocation or rules that cannot be read or parsed.`,
		flags: func(fs *flag.FlagSet) any {
			o := &fwCheckOpts{}
			fs.StringVar(&o.config, "config", "", "node config whose firewall section to check")
			fs.StringVar(&o.rules, "rules", "", "a file holding only a firewall section (bare or under firewall:)")
			fs.StringVar(&o.localDomain, "local-domain", "", "this node's domain (default: the domain of the config's cert: file)")
			fs.StringVar(&o.from, "from", "", "the peer's node name")
			fs.StringVar(&o.groups, "groups", "", "the peer's groups, comma-separated")
			fs.StringVar(&o.domain, "domain", "", "the peer's domain")
			fs.StringVar(&o.caName, "ca-name", "", "the peer's CA name")
			fs.StringVar(&o.caSHA, "ca-sha", "", "the peer's CA fingerprint (hex)")
			fs.StringVar(&o.addr, "addr", "", "the peer's overlay address (for cidr rules)")
			fs.Var(&o.attrs, "attr", "a certificate attribute key=value (repeatable)")
			fs.StringVar(&o.proto, "proto", "", "tcp, udp, icmp or any")
			fs.IntVar(&o.port, "port", 0, "destination port")
			fs.StringVar(&o.direction, "direction", "inbound", "inbound (the peer connects to us) or outbound")
			fs.Float64Var(&o.trust, "trust", 1, "the peer's trust score in [0,1]")
			return o
		},
		run: runFwCheck,
	}
}

// loadRules reads the firewall rules from a node config or a rules file,
// and, with readCert, this node's domain from the config's cert: file when
// the config has one (else "").
func loadRules(config, rules string, readCert bool) (*policy.Config, string, error) {
	switch {
	case (config == "") == (rules == ""):
		return nil, "", usageError("give one of --config and --rules")
	case config != "":
		cfg, err := node.LoadConfig(config)
		if err != nil {
			return nil, "", err
		}
		domain := ""
		if readCert && cfg.Cert != "" {
			if domain, err = certDomain(cfg.Cert); err != nil {
				return nil, "", fmt.Errorf("%w (or give --local-domain)", err)
			}
		}
		return cfg.FirewallRules, domain, nil
	default:
		b, err := os.ReadFile(rules)
		if err != nil {
			return nil, "", fmt.Errorf("rules: %w", err)
		}
		c, err := policy.ParseConfig(b)
		if err != nil {
			return nil, "", fmt.Errorf("rules %s: %w", rules, err)
		}
		return c, "", nil
	}
}

// certDomain returns the domain of the certificate in the PEM file path.
func certDomain(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cert: %w", err)
	}
	c, err := cert.ParseCertPEM(b)
	if err != nil {
		return "", fmt.Errorf("cert %s: %w", path, err)
	}
	id, err := cert.Describe(c)
	if err != nil {
		return "", fmt.Errorf("cert %s: %w", path, err)
	}
	return id.Domain, nil
}

func runFwCheck(_ context.Context, env Env, a any, args []string) error {
	o := a.(*fwCheckOpts)
	if len(args) != 0 {
		return usageError("unexpected arguments %q", args)
	}
	local := o.localDomain
	// The flag wins: then the cert: file need not exist here.
	rules, certLocal, err := loadRules(o.config, o.rules, local == "")
	if err != nil {
		if errors.Is(err, errUsage) {
			return err
		}
		return &exitError{code: exitBadConfig, err: err}
	}
	if local == "" {
		local = certLocal
	}
	fw, err := policy.New(rules, policy.Options{Self: policy.PeerInfo{Domain: local}})
	if err != nil {
		return &exitError{code: exitBadConfig, err: fmt.Errorf("firewall: %w", err)}
	}
	defer fw.Close()

	if o.proto == "" && o.from == "" && o.groups == "" {
		return runFwTests(env.Stdout, rules, fw)
	}
	q := policy.Query{Port: uint16(o.port)}
	if o.port < 0 || o.port > 65535 {
		return usageError("--port %d: want 0..65535", o.port)
	}
	switch o.direction {
	case "inbound":
		q.Direction = policy.Inbound
	case "outbound":
		q.Direction = policy.Outbound
	default:
		return usageError("--direction %q: want inbound or outbound", o.direction)
	}
	if o.proto == "" {
		o.proto = "tcp"
	}
	if q.Proto, err = policy.ParseProto(o.proto); err != nil {
		return usageError("--proto: %v", err)
	}
	if o.trust < 0 || o.trust > 1 {
		return usageError("--trust %v: want 0..1", o.trust)
	}
	q.Trust = o.trust
	if o.trust == 0 {
		q.Trust = -1 // policy.Query: negative means a score of 0
	}
	attrs, err := parseAttrs(o.attrs)
	if err != nil {
		return err
	}
	q.Peer = policy.PeerInfo{Name: o.from, Groups: splitList(o.groups), Domain: o.domain, CAName: o.caName, CAFingerprint: o.caSHA, Attributes: attrs}
	if o.addr != "" {
		if q.Addr, err = netip.ParseAddr(o.addr); err != nil {
			return usageError("--addr %q: %v", o.addr, err)
		}
		q.Peer.Addresses = []netip.Addr{q.Addr}
	}
	d := fw.Check(q)
	if d.Allowed {
		fmt.Fprintf(env.Stdout, "allowed by %s\n", d.Rule)
	} else {
		fmt.Fprintf(env.Stdout, "denied: %s\n", d.Reason)
	}
	peerDomain := o.domain
	if peerDomain == "" {
		peerDomain = local
	}
	if d.Rule != "" || peerDomain != local {
		fmt.Fprintln(env.Stdout, describeDomain(d, peerDomain))
	}
	if d.Hint != "" {
		fmt.Fprintf(env.Stdout, "hint: %s\n", d.Hint)
		if d.LocalDomain == "" {
			fmt.Fprintln(env.Stdout, "hint: this node's domain is not known here: give --local-domain, or cert: in the config")
		}
	}
	if !d.Allowed {
		return errDenied
	}
	return nil
}

// describeDomain says which domain the deciding rule matched.
func describeDomain(d policy.Decision, peerDomain string) string {
	show := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	switch {
	case d.Scope == policy.ScopeLocal && d.Domain == "":
		return "domain: this node's matched, its name not known here (the rule names a host, groups or attributes and no domain, ca_name or ca_sha; --local-domain names it)"
	case d.Scope == policy.ScopeLocal:
		return fmt.Sprintf("domain: %s matched as this node's domain (the rule names a host, groups or attributes and no domain, ca_name or ca_sha)", d.Domain)
	case d.Scope == policy.ScopeNamed:
		return fmt.Sprintf("domain: %s matched, named by the rule (domain, ca_name or ca_sha)", show(d.Domain))
	case d.Rule != "":
		return "domain: any (the rule matches peers of every domain)"
	}
	return fmt.Sprintf("domain: the peer's is %s, this node's %s", show(peerDomain), show(d.LocalDomain))
}

// runFwTests runs the rule set's tests: section.
func runFwTests(w io.Writer, rules *policy.Config, fw *policy.Firewall) error {
	results := rules.RunTests(fw)
	if len(results) == 0 {
		return usageError("no flow given (--from/--groups/--proto) and the rule set has no tests: section")
	}
	failed := 0
	for _, r := range results {
		if r.Pass {
			fmt.Fprintf(w, "PASS line %d: %s\n", r.Test.Line, describeDecision(r.Decision))
			continue
		}
		failed++
		fmt.Fprintf(w, "FAIL line %d: %s\n", r.Test.Line, r.Problem)
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", len(results)-failed, failed)
	if failed > 0 {
		return fmt.Errorf("%d firewall test(s) failed", failed)
	}
	return nil
}

func describeDecision(d policy.Decision) string {
	if d.Allowed {
		return "allowed by " + d.Rule
	}
	return "denied: " + d.Reason
}

func fwReloadCommand() *command {
	return &command{
		name:    "reload",
		summary: "make the running node re-read its firewall rules (and CRL and certificate)",
		usage:   "[--socket PATH | --config FILE]",
		help: `The same as SIGHUP and 'gridnet reload'. New rules apply at once;
established flows the new rules still allow survive, the others are cut. A
config with a bad rule is refused with its line and the old rules stay.`,
		flags: func(fs *flag.FlagSet) any { o := &socketFlag{}; o.register(fs); return o },
		run:   reloadCommand().run,
	}
}

func eventsCommand() *command {
	type opts struct {
		socketFlag
		follow, json bool
	}
	return &command{
		name:    "events",
		summary: "show the running node's recent firewall events; -f follows new ones",
		usage:   "[-f] [--json] [--socket PATH | --config FILE]",
		help: `Every drop becomes an event (peer, 5-tuple, rule or reason); events are
rate-limited per peer and reason, and "suppressed N" says how many of the
same kind were folded into one.`,
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			o.register(fs)
			fs.BoolVar(&o.follow, "f", false, "keep streaming new events")
			fs.BoolVar(&o.json, "json", false, "print one JSON object per line")
			return o
		},
		run: func(ctx context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			path := control.PathEvents
			if o.follow {
				path += "?follow=1"
			}
			cc, err := o.client(env)
			if err != nil {
				return err
			}
			body, err := cc.Get(ctx, path)
			if err != nil {
				return err
			}
			defer body.Close()
			dec := json.NewDecoder(body)
			for {
				var e node.EventView
				if err := dec.Decode(&e); errors.Is(err, io.EOF) || ctx.Err() != nil {
					return nil
				} else if err != nil {
					return fmt.Errorf("decode event: %w", err)
				}
				if o.json {
					b, _ := json.Marshal(e)
					fmt.Fprintf(env.Stdout, "%s\n", b)
					continue
				}
				printEvent(env.Stdout, e)
			}
		},
	}
}

func printEvent(w io.Writer, e node.EventView) {
	flow := e.Src
	if e.SrcPort != 0 {
		flow += ":" + strconv.Itoa(int(e.SrcPort))
	}
	flow += " -> " + e.Dst
	if e.DstPort != 0 {
		flow += ":" + strconv.Itoa(int(e.DstPort))
	}
	fmt.Fprintf(w, "%s %-10s %-8s peer=%s proto=%d %s reason=%s", e.Time.Format("15:04:05.000"), e.Kind, e.Direction, e.Peer, e.Proto, flow, e.Reason)
	if e.Rule != "" {
		fmt.Fprintf(w, " rule=%q", e.Rule)
	}
	if e.Kind == "quarantine" {
		fmt.Fprintf(w, " trust=%.2f", e.Trust)
	}
	if e.Suppressed > 0 {
		fmt.Fprintf(w, " (suppressed %d)", e.Suppressed)
	}
	fmt.Fprintln(w)
}
