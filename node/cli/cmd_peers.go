package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/internal/control"
)

func peersCommand() *command {
	type opts struct {
		socketFlag
		json bool
	}
	return &command{
		name:    "peers",
		summary: "list the fabric's members: state, certificate expiry, where each was learned",
		usage:   "[--json] [--socket PATH | --config FILE]",
		help: `With gossip on, every member the node knows of: alive, dead or left
(memberlist does not expose its suspect state: a suspect shows as alive
until it is declared dead), whether it is admitted (a WireGuard peer now) and how its record
arrived (join, gossip, push-pull). Without gossip, the admitted static peers.`,
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
			var members []node.MemberView
			if err := o.getJSON(ctx, env, control.PathPeers, &members); err != nil {
				return err
			}
			if o.json {
				return printJSON(env.Stdout, members)
			}
			tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tADDRESS\tSTATE\tADMITTED\tCERT EXPIRES\tLEARNED FROM")
			for _, m := range members {
				exp := "-"
				if !m.CertExpiry.IsZero() {
					exp = m.CertExpiry.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", m.Name, m.Addr, m.State, m.Admitted, exp, m.LearnedFrom)
			}
			return tw.Flush()
		},
	}
}

func crlCommand() *command {
	return &command{
		name:    "crl",
		summary: "spread a CRL through the fabric",
		sub: []*command{{
			name:    "push",
			summary: "give the running node a CRL; if valid and newer it is applied and gossiped to every node",
			usage:   "crl.pem [--socket PATH | --config FILE]",
			help: `Every node checks the CRL's signature and number, keeps only the newest,
cuts the revoked nodes off at once and refuses them when they come back.`,
			flags: func(fs *flag.FlagSet) any { o := &socketFlag{}; o.register(fs); return o },
			run: func(ctx context.Context, env Env, a any, args []string) error {
				o := a.(*socketFlag)
				if len(args) != 1 {
					return usageError("want one CRL file")
				}
				b, err := os.ReadFile(args[0])
				if err != nil {
					return fmt.Errorf("read CRL: %w", err)
				}
				ctx, cancel := context.WithTimeout(ctx, control.Timeout)
				defer cancel()
				cc, err := o.client(env)
				if err != nil {
					return err
				}
				body, err := cc.Send(ctx, "POST", control.PathCRL, bytes.NewReader(b))
				if err != nil {
					return err
				}
				defer body.Close()
				var res node.CRLResult
				if err := json.NewDecoder(body).Decode(&res); err != nil {
					return fmt.Errorf("decode the node's answer: %w", err)
				}
				if res.Applied {
					fmt.Fprintf(env.Stdout, "CRL number %s applied and spreading (%d revoked entries)\n", res.Number, res.Removed)
				} else {
					fmt.Fprintf(env.Stdout, "CRL number %s is not newer than the one the node holds; nothing to do\n", res.Number)
				}
				return nil
			},
		}},
	}
}
