package cli

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestCommandErrorsSayEachThingOnce: what a command prints on failure
// names each thing once: the command, then what failed with its path, then
// the cause ("gridnet vault ls: vault: open PATH: wrong vault key or
// passphrase", not "open vault: vault: open PATH: vault: cannot unwrap
// data key: ...").
func TestCommandErrorsSayEachThingOnce(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	mustGridnet(t, nil, "vault", "keyfile", p("k"))
	mustGridnet(t, nil, "vault", "keyfile", p("other.key"))
	mustGridnet(t, nil, "vault", "put", "--vault", p("v"), "--vault-key-file", p("k"), "item", "--in", p("k"))
	mustGridnet(t, nil, "ca", "init", "--name", "corp", "--domain", "corp.example",
		"--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"), "--out", p("ca.crt"))

	cases := []struct {
		args []string
		want string
	}{
		{[]string{"vault", "ls", "--vault", p("v"), "--vault-key-file", p("other.key")},
			"gridnet vault ls: vault: open " + p("v") + ": wrong vault key or passphrase"},
		{[]string{"vault", "ls", "--vault", p("missing"), "--vault-key-file", p("k")},
			"gridnet vault ls: vault: open " + p("missing") + ": not found"},
		{[]string{"vault", "ls", "--vault", p("v"), "--vault-key-file", p("missing.key")},
			"gridnet vault ls: vault: key for " + p("v") + ": key file " + p("missing.key") + ": not found"},
		{[]string{"vault", "get", "--vault", p("v"), "--vault-key-file", p("k"), "nothing"},
			`gridnet vault get: vault: get "nothing": not found`},
		{[]string{"vault", "rm", "--vault", p("v"), "--vault-key-file", p("k"), "nothing"},
			`gridnet vault rm: vault: delete "nothing": not found`},
		// Two vaults in one command: the message says which one lacks a key.
		{[]string{"cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"), "--ca-cert", p("ca.crt"),
			"--name", "db1", "--out-vault", p("db1.vault"), "--ip", "100.64.0.3/10", "--out", p("db1.crt")},
			"gridnet cert issue: vault: key for " + p("db1.vault") + ": no vault key available: give a key file, set GRIDNET_VAULT_PASSPHRASE, or provide the systemd credential gridnet-vault-key (or run on a terminal to be prompted)"},
		{[]string{"status", "--socket", p("no.sock")},
			"gridnet status: control socket " + p("no.sock") + " (is 'gridnet up' running?): connect: no such file or directory"},
		{[]string{"reload", "--socket", p("no.sock")},
			"gridnet reload: control socket " + p("no.sock") + " (is 'gridnet up' running?): connect: no such file or directory"},
	}
	for _, c := range cases {
		_, errOut, code := gridnet(t, nil, "", c.args...)
		first, _, _ := strings.Cut(errOut, "\n")
		if code != 1 || first != c.want {
			t.Errorf("gridnet %s: exit %d\n got %q\nwant %q", strings.Join(c.args, " "), code, first, c.want)
		}
	}
}
