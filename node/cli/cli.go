// Package cli is the gridnet command line: every `gridnet` command, its
// flags and help, and what they print. The root main.go only calls Main.
// It runs nodes through package node's exported API (`up` starts one from
// its config and serves its control API on a socket; `demo` runs three in
// this process), talks to a running node over that socket (status, peers,
// ping, events, crl push, reload), and makes and checks identities in
// vaults (ca, keygen, cert, vault, `up --test`). Nothing imports cli but
// main.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/internal/buildinfo"
)

// Env is everything a command touches outside its arguments, so that tests
// can run commands in-process with their own streams, environment and clock.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// LookupEnv reads an environment variable.
	LookupEnv func(string) (string, bool)
	// Now returns the current time.
	Now func() time.Time
	// StdinIsTerminal reports whether interactive prompts are possible.
	StdinIsTerminal bool
	// Prompt reads a secret from the terminal without echo.
	Prompt func(prompt string) ([]byte, error)
	// Geteuid returns the effective user id, which chooses the default
	// control socket; nil means os.Geteuid.
	Geteuid func() int
}

// StdEnv returns the Env of the running process.
func StdEnv() Env {
	isTTY := term.IsTerminal(int(os.Stdin.Fd()))
	return Env{
		Stdin:           os.Stdin,
		Stdout:          os.Stdout,
		Stderr:          os.Stderr,
		LookupEnv:       os.LookupEnv,
		Now:             time.Now,
		StdinIsTerminal: isTTY,
		Geteuid:         os.Geteuid,
		Prompt: func(prompt string) ([]byte, error) {
			fmt.Fprint(os.Stderr, prompt)
			b, err := term.ReadPassword(int(os.Stdin.Fd()))
			fmt.Fprintln(os.Stderr)
			return b, err
		},
	}
}

// command is one `gridnet` command or command group.
type command struct {
	name    string
	summary string
	// usage is the argument synopsis printed after the command path.
	usage string
	// help is a longer description printed by --help.
	help string
	// flags declares the command's flags; run receives the parsed set.
	flags func(fs *flag.FlagSet) any
	run   func(ctx context.Context, env Env, opts any, args []string) error
	// sub lists the subcommands of a group.
	sub []*command
}

// errUsage marks an error that should be followed by the command's usage.
var errUsage = errors.New("usage")

// usageError reports a wrong invocation.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// exitError is a failure with its own process exit code (not 1), printed
// without the command's usage.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func rootCommand() *command {
	return &command{
		name:    "gridnet",
		summary: "zero-trust overlay network node",
		help: `gridnet joins hosts into one private fabric. Every node reaches the
others only through WireGuard tunnels that exist after both sides verified
each other's CA-signed certificate; keys live in an encrypted vault.

Vaults are named the same way everywhere: --vault and --vault-key-file for
the vault a command works on (a node's, or any vault for 'gridnet vault'),
--ca-vault and --ca-vault-key-file for the CA's (ca init, ca revoke, cert
issue), --out-vault and --out-vault-key-file for the new node vault that
'cert issue' makes.

Vault keys are never taken from the command line. Each command that opens a
vault takes the key from, in order: the --...vault-key-file flag, the
environment variable GRIDNET_VAULT_PASSPHRASE,
$CREDENTIALS_DIRECTORY/gridnet-vault-key (systemd credentials), or a prompt
when stdin is a terminal.`,
		sub: []*command{
			caCommand(),
			certCommand(),
			keygenCommand(),
			vaultCommand(),
			upCommand(),
			statusCommand(),
			reloadCommand(),
			fwCommand(),
			peersCommand(),
			crlCommand(),
			eventsCommand(),
			pingCommand(),
			demoCommand(),
			versionCommand(),
		},
	}
}

// Main runs the gridnet command line with args (without the program name)
// and returns the process exit code.
func Main(args []string, env Env) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, rootCommand(), []string{"gridnet"}, args, env)
}

// run dispatches args to cmd or one of its subcommands.
func run(ctx context.Context, cmd *command, path []string, args []string, env Env) int {
	if len(cmd.sub) > 0 {
		if len(path) == 1 && len(args) > 0 && isVersionFlag(args[0]) {
			fmt.Fprintln(env.Stdout, versionString())
			return 0
		}
		if len(args) == 0 || isHelp(args[0]) {
			printGroupHelp(env.Stdout, cmd, path)
			if len(args) == 0 {
				return 2
			}
			return 0
		}
		for _, s := range cmd.sub {
			if s.name == args[0] {
				return run(ctx, s, append(path, s.name), args[1:], env)
			}
		}
		fmt.Fprintf(env.Stderr, "%s: unknown command %q\n", strings.Join(path, " "), args[0])
		printGroupHelp(env.Stderr, cmd, path)
		return 2
	}
	fs := flag.NewFlagSet(strings.Join(path, " "), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var opts any
	if cmd.flags != nil {
		opts = cmd.flags(fs)
	}
	positional, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		printCommandHelp(env.Stdout, cmd, path, fs)
		return 0
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", strings.Join(path, " "), explainFlagError(err))
		printCommandHelp(env.Stderr, cmd, path, fs)
		return 2
	}
	if err := cmd.run(ctx, env, opts, positional); err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", strings.Join(path, " "), err)
		if errors.Is(err, errUsage) {
			printCommandHelp(env.Stderr, cmd, path, fs)
			return 2
		}
		if ee := (*exitError)(nil); errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

func isHelp(s string) bool { return s == "-h" || s == "--help" || s == "help" || s == "-help" }

// isVersionFlag reports whether s asks the root command for the version.
func isVersionFlag(s string) bool { return s == "--version" || s == "-v" || s == "-version" }

// parseInterspersed parses flags that may appear before, between or after
// positional arguments ("cert show FILE --json"). "--" ends flag parsing.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		// fs.Parse consumed a "--" terminator if the remainder is shorter
		// than what followed the last flag; keep everything after it.
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func printGroupHelp(w io.Writer, cmd *command, path []string) {
	fmt.Fprintf(w, "%s — %s\n\nUsage: %s COMMAND [flags]\n", strings.Join(path, " "), cmd.summary, strings.Join(path, " "))
	if cmd.help != "" {
		fmt.Fprintf(w, "\n%s\n", cmd.help)
	}
	fmt.Fprintf(w, "\nCommands:\n")
	subs := append([]*command(nil), cmd.sub...)
	sort.Slice(subs, func(i, j int) bool { return subs[i].name < subs[j].name })
	for _, s := range subs {
		fmt.Fprintf(w, "  %-10s %s\n", s.name, s.summary)
	}
	if len(path) == 1 {
		fmt.Fprintf(w, "\nFlags:\n  --version, -v\n      print the gridnet version and exit\n")
	}
	fmt.Fprintf(w, "\nRun '%s COMMAND --help' for a command's flags.\n", strings.Join(path, " "))
}

func printCommandHelp(w io.Writer, cmd *command, path []string, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s %s\n\n%s\n", strings.Join(path, " "), cmd.usage, cmd.summary)
	if cmd.help != "" {
		fmt.Fprintf(w, "\n%s\n", cmd.help)
	}
	if hasVisibleFlags(fs) {
		fmt.Fprintf(w, "\nFlags:\n")
		printFlags(w, fs)
	}
}

// stringList is a repeatable flag (--attr k=v --attr k2=v2).
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

// Set appends one value.
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func versionCommand() *command {
	return &command{
		name:    "version",
		summary: "print the gridnet version",
		usage:   "",
		run: func(_ context.Context, env Env, _ any, args []string) error {
			if len(args) != 0 {
				return usageError("no arguments expected")
			}
			fmt.Fprintln(env.Stdout, versionString())
			return nil
		},
	}
}

// versionString is what `gridnet version` and `gridnet --version` print:
// the release, the Go version and, when the binary was built from a git
// checkout, the commit.
func versionString() string {
	s := "gridnet " + node.Version
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return s
	}
	var extra []string
	if info.GoVersion != "" {
		extra = append(extra, info.GoVersion)
	}
	if rev := buildinfo.Revision(info); rev != "" {
		extra = append(extra, "commit "+rev)
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return s
}
