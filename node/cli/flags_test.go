package cli

import (
	"flag"
	"io"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/aigrid/gridnet/node"
)

// walkCommands calls fn for every runnable command (not the groups) with
// its path and a flag set holding its flags.
func walkCommands(t *testing.T, fn func(c *command, path []string, fs *flag.FlagSet)) {
	t.Helper()
	var walk func(c *command, path []string)
	walk = func(c *command, path []string) {
		for _, s := range c.sub {
			walk(s, append(slices.Clone(path), s.name))
		}
		if len(c.sub) > 0 {
			return
		}
		fs := flag.NewFlagSet(strings.Join(path, " "), flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		if c.flags != nil {
			c.flags(fs)
		}
		fn(c, path, fs)
	}
	walk(rootCommand(), []string{"gridnet"})
}

// helpFlagLine is a flag line of `--help` output: two spaces, then the
// flag as help spells it.
var helpFlagLine = regexp.MustCompile(`^  (-{1,2})([a-z0-9][a-z0-9-]*)`)

// TestHelpSpellsFlagsLikeUsage: every command's help lists each of its
// flags once, as --name (or -x for a one-letter flag, as the usage lines
// write ping -c and events -f), and never a hidden alias.
func TestHelpSpellsFlagsLikeUsage(t *testing.T) {
	walkCommands(t, func(c *command, path []string, fs *flag.FlagSet) {
		out, _, code := gridnet(t, nil, "", append(slices.Clone(path[1:]), "--help")...)
		if code != 0 {
			t.Fatalf("%v --help: exit %d", path, code)
		}
		var shown []string
		for _, line := range strings.Split(out, "\n") {
			m := helpFlagLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			if want := flagSpelling(m[2]); m[1]+m[2] != want {
				t.Errorf("%v help writes %s%s, want %s", path, m[1], m[2], want)
			}
			shown = append(shown, m[2])
		}
		var want []string
		fs.VisitAll(func(f *flag.Flag) {
			if !isHiddenFlag(f) {
				want = append(want, f.Name)
			}
		})
		if !slices.Equal(shown, want) {
			t.Errorf("%v help lists flags %v, want %v:\n%s", path, shown, want, out)
		}
	})
}

// usageFlag is a flag named in a usage line.
var usageFlag = regexp.MustCompile(`(^|[\s\[(|])(-{1,2})([a-z][a-z0-9-]*)`)

// TestUsageNamesVisibleFlags: every flag a usage line names is a flag of
// that command, spelled as help spells it, and not a hidden alias.
func TestUsageNamesVisibleFlags(t *testing.T) {
	walkCommands(t, func(c *command, path []string, fs *flag.FlagSet) {
		for _, m := range usageFlag.FindAllStringSubmatch(c.usage, -1) {
			name := m[3]
			f := fs.Lookup(name)
			switch {
			case f == nil:
				t.Errorf("%v usage %q names %s%s, which is no flag of the command", path, c.usage, m[2], name)
			case isHiddenFlag(f):
				t.Errorf("%v usage %q names the hidden alias %s", path, c.usage, name)
			case m[2]+name != flagSpelling(name):
				t.Errorf("%v usage %q writes %s%s, want %s", path, c.usage, m[2], name, flagSpelling(name))
			}
		}
	})
}

// TestVaultFlagsHaveOneNamePerMeaning: the vault a command works on is
// --vault/--vault-key-file, the CA's vault --ca-vault/--ca-vault-key-file
// and the new node vault of cert issue --out-vault/--out-vault-key-file;
// every command that opens a vault shows the pair for it in help.
func TestVaultFlagsHaveOneNamePerMeaning(t *testing.T) {
	want := map[string][]string{
		"gridnet ca init":      {"ca-vault", "ca-vault-key-file"},
		"gridnet ca revoke":    {"ca-vault", "ca-vault-key-file"},
		"gridnet cert issue":   {"ca-vault", "ca-vault-key-file", "out-vault", "out-vault-key-file"},
		"gridnet cert import":  {"vault", "vault-key-file"},
		"gridnet cert request": {"vault", "vault-key-file"},
		"gridnet keygen":       {"vault", "vault-key-file"},
		"gridnet vault ls":     {"vault", "vault-key-file"},
		"gridnet vault get":    {"vault", "vault-key-file"},
		"gridnet vault put":    {"vault", "vault-key-file"},
		"gridnet vault rm":     {"vault", "vault-key-file"},
		"gridnet vault check":  {"vault", "vault-key-file"},
		"gridnet vault rekey":  {"vault", "vault-key-file"},
	}
	seen := 0
	walkCommands(t, func(c *command, path []string, fs *flag.FlagSet) {
		var vaultFlags []string
		fs.VisitAll(func(f *flag.Flag) {
			if strings.Contains(f.Name, "vault") && !isHiddenFlag(f) {
				vaultFlags = append(vaultFlags, f.Name)
			}
		})
		name := strings.Join(path, " ")
		w, ok := want[name]
		if !ok {
			if len(vaultFlags) > 0 {
				t.Errorf("%s has vault flags %v; add it to this test", name, vaultFlags)
			}
			return
		}
		seen++
		if !slices.Equal(vaultFlags, w) {
			t.Errorf("%s shows vault flags %v, want %v", name, vaultFlags, w)
		}
	})
	if seen != len(want) {
		t.Errorf("found %d of the %d commands that open a vault", seen, len(want))
	}
}

// TestDocumentedVaultFlagSpellingsWork runs every spelling of the vault
// flags that README.md or docs/ ever showed, old and canonical: the old
// ones are hidden aliases and keep working.
func TestDocumentedVaultFlagSpellingsWork(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	mustGridnet(t, nil, "vault", "keyfile", p("k"))

	// ca init: --vault/--vault-key-file were documented (README, CERTS.md);
	// --ca-vault/--ca-vault-key-file are the names now.
	mustGridnet(t, nil, "ca", "init", "--name", "old", "--domain", "old.example",
		"--vault", p("old.vault"), "--vault-key-file", p("k"), "--out", p("old.crt"))
	mustGridnet(t, nil, "ca", "init", "--name", "corp", "--domain", "corp.example",
		"--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"), "--out", p("ca.crt"))

	// keygen, cert issue (request and one-step), cert import, vault ls.
	mustGridnet(t, nil, "keygen", "--vault", p("n.vault"), "--vault-key-file", p("k"), "--name", "web1", "--csr", p("web1.csr"))
	mustGridnet(t, nil, "cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"), "--ca-cert", p("ca.crt"),
		"--csr", p("web1.csr"), "--ip", "100.64.0.2/10", "--out", p("web1.crt"))
	mustGridnet(t, nil, "cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"), "--ca-cert", p("ca.crt"),
		"--name", "db1", "--out-vault", p("db1.vault"), "--out-vault-key-file", p("k"), "--ip", "100.64.0.3/10", "--out", p("db1.crt"))
	mustGridnet(t, nil, "cert", "import", "--vault", p("n.vault"), "--vault-key-file", p("k"), p("web1.crt"), p("ca.crt"))
	mustGridnet(t, nil, "vault", "ls", "--vault", p("n.vault"), "--vault-key-file", p("k"))

	// ca revoke: the README showed --ca-vault-key-file (which did not
	// work); --vault-key-file is what it took before.
	mustGridnet(t, nil, "ca", "revoke", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"),
		"--ca-cert", p("ca.crt"), "--cert", p("web1.crt"), "--crl", p("crl.pem"))
	mustGridnet(t, nil, "ca", "revoke", "--ca-vault", p("ca.vault"), "--vault-key-file", p("k"),
		"--ca-cert", p("ca.crt"), "--cert", p("db1.crt"), "--crl", p("crl.pem"))

	// The old spellings are in no help text.
	for _, args := range [][]string{{"ca", "init", "--help"}, {"ca", "revoke", "--help"}} {
		out := mustGridnet(t, nil, args...)
		for _, line := range strings.Split(out, "\n") {
			if m := helpFlagLine.FindStringSubmatch(line); m != nil && (m[2] == "vault" || m[2] == "vault-key-file") {
				t.Errorf("%v shows the hidden alias: %q", args, line)
			}
		}
	}
}

// TestFlagErrorsSpellFlagsLikeHelp: a parse error names the flag as help
// does.
func TestFlagErrorsSpellFlagsLikeHelp(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"ca", "init", "--bogus"}, "gridnet ca init: unknown flag --bogus\n"},
		{[]string{"ca", "init", "-bogus"}, "gridnet ca init: unknown flag --bogus\n"},
		{[]string{"cert", "issue", "--ip"}, "gridnet cert issue: flag needs an argument: --ip\n"},
		{[]string{"fw", "check", "--port", "x"}, "gridnet fw check: invalid value \"x\" for flag --port: parse error\n"},
		{[]string{"events", "-f=maybe"}, "gridnet events: invalid boolean value \"maybe\" for -f: parse error\n"},
	}
	for _, c := range cases {
		_, errOut, code := gridnet(t, nil, "", c.args...)
		first, _, _ := strings.Cut(errOut, "Usage:")
		if code != 2 || first != c.want {
			t.Errorf("%v: exit %d, first line %q, want %q", c.args, code, first, c.want)
		}
	}
}

// TestVersion: `gridnet version`, `gridnet --version` and `gridnet -v`
// print the release; root help lists --version.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-v"}} {
		out, errOut, code := gridnet(t, nil, "", args...)
		if code != 0 || !strings.HasPrefix(out, "gridnet "+node.Version) || strings.Count(out, "\n") != 1 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	if out := mustGridnet(t, nil, "--help"); !strings.Contains(out, "  --version, -v\n") {
		t.Errorf("root help does not list --version:\n%s", out)
	}
}
