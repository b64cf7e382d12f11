package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aigrid/gridnet/node/internal/identity"
	"github.com/aigrid/gridnet/overlay/cert"
)

// cliEnv is an Env for in-process command runs with no terminal.
func cliEnv(stdin string, vars map[string]string) (Env, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return Env{
		Stdin:  strings.NewReader(stdin),
		Stdout: &out,
		Stderr: &errb,
		LookupEnv: func(k string) (string, bool) {
			v, ok := vars[k]
			return v, ok
		},
		Now:    time.Now,
		Prompt: func(string) ([]byte, error) { return nil, errors.New("no terminal in tests") },
	}, &out, &errb
}

// gridnet runs one command in-process and returns stdout, stderr and the
// exit code.
func gridnet(t *testing.T, vars map[string]string, stdin string, args ...string) (string, string, int) {
	t.Helper()
	env, out, errb := cliEnv(stdin, vars)
	code := run(context.Background(), rootCommand(), []string{"gridnet"}, args, env)
	return out.String(), errb.String(), code
}

func mustGridnet(t *testing.T, vars map[string]string, args ...string) string {
	t.Helper()
	out, errOut, code := gridnet(t, vars, "", args...)
	if code != 0 {
		t.Fatalf("gridnet %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// TestHelpForEveryCommand checks that every command and group explains
// itself and every flag it has.
func TestHelpForEveryCommand(t *testing.T) {
	var walk func(c *command, path []string)
	walk = func(c *command, path []string) {
		args := append(append([]string(nil), path[1:]...), "--help")
		out, _, code := gridnet(t, nil, "", args...)
		if code != 0 {
			t.Errorf("%v: exit %d", args, code)
		}
		if !strings.Contains(out, c.summary) {
			t.Errorf("%v: help lacks the summary %q:\n%s", args, c.summary, out)
		}
		for _, s := range c.sub {
			if !strings.Contains(out, s.name) {
				t.Errorf("%v: help does not list %q", args, s.name)
			}
			walk(s, append(append([]string(nil), path...), s.name))
		}
		if c.flags != nil {
			fsOut := out
			if !strings.Contains(fsOut, "Flags:") {
				t.Errorf("%v: help lists no flags:\n%s", args, out)
			}
		}
	}
	walk(rootCommand(), []string{"gridnet"})
}

func TestUnknownCommandAndFlag(t *testing.T) {
	if _, errOut, code := gridnet(t, nil, "", "frobnicate"); code != 2 || !strings.Contains(errOut, "unknown command") {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := gridnet(t, nil, "", "ca", "init", "--bogus"); code != 2 || !strings.Contains(errOut, "bogus") {
		t.Errorf("unknown flag: exit %d, stderr %q", code, errOut)
	}
}

// TestIdentityWorkflow walks the README's quick start: CA, keygen, issue
// from a request, import, show, revoke, and the one-step issue.
func TestIdentityWorkflow(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	mustGridnet(t, nil, "vault", "keyfile", p("ca.key"))
	mustGridnet(t, nil, "vault", "keyfile", p("node.key"))
	mustGridnet(t, nil, "ca", "init", "--name", "corp-ca", "--domain", "corp.example",
		"--vault", p("ca.vault"), "--vault-key-file", p("ca.key"), "--out", p("ca.crt"))
	mustGridnet(t, nil, "keygen", "--vault", p("node.vault"), "--vault-key-file", p("node.key"),
		"--name", "web1", "--csr", p("web1.csr"))
	mustGridnet(t, nil, "cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("ca.key"),
		"--ca-cert", p("ca.crt"), "--csr", p("web1.csr"), "--ip", "100.64.0.2/10",
		"--groups", "web,prod", "--attr", "env=prod", "--out", p("web1.crt"))
	mustGridnet(t, nil, "cert", "import", "--vault", p("node.vault"), "--vault-key-file", p("node.key"),
		p("web1.crt"), p("ca.crt"))

	out := mustGridnet(t, nil, "cert", "show", p("web1.crt"), "--json")
	var view certView
	if err := json.Unmarshal([]byte(out), &view); err != nil {
		t.Fatalf("cert show --json: %v\n%s", err, out)
	}
	if view.Name != "web1" || view.Domain != "corp.example" || strings.Join(view.Groups, ",") != "prod,web" ||
		view.Attributes["env"] != "prod" || len(view.Addresses) != 1 || view.Addresses[0] != "100.64.0.2/10" ||
		view.WireGuardKey == "" || view.Fingerprint == "" {
		t.Errorf("cert show: unexpected view %+v", view)
	}
	text := mustGridnet(t, nil, "cert", "show", p("ca.crt"))
	if !strings.Contains(text, "kind:         ca") || !strings.Contains(text, "corp.example") {
		t.Errorf("cert show of the CA:\n%s", text)
	}

	// The vault now holds the node's keys, certificate and CA bundle.
	ls := mustGridnet(t, nil, "vault", "ls", "--vault", p("node.vault"), "--vault-key-file", p("node.key"))
	for _, item := range []string{identity.ItemIdentityKey, identity.ItemWireGuardKey, identity.ItemNodeCert, identity.ItemCACert} {
		if !strings.Contains(ls, item) {
			t.Errorf("vault ls lacks %s:\n%s", item, ls)
		}
	}

	// Revoke twice: the CRL number grows and both serials stay listed.
	mustGridnet(t, nil, "ca", "revoke", "--ca-vault", p("ca.vault"), "--vault-key-file", p("ca.key"),
		"--ca-cert", p("ca.crt"), "--cert", p("web1.crt"), "--crl", p("crl.pem"))
	mustGridnet(t, nil, "cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("ca.key"),
		"--ca-cert", p("ca.crt"), "--name", "db1", "--out-vault", p("db1.vault"), "--out-vault-key-file", p("node.key"),
		"--ip", "100.64.0.3/10", "--out", p("db1.crt"))
	mustGridnet(t, nil, "ca", "revoke", "--ca-vault", p("ca.vault"), "--vault-key-file", p("ca.key"),
		"--ca-cert", p("ca.crt"), "--cert", p("db1.crt"), "--crl", p("crl.pem"))
	crlPEM, err := os.ReadFile(p("crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	crl, err := cert.ParseCRLPEM(crlPEM)
	if err != nil {
		t.Fatal(err)
	}
	if crl.Number.Int64() != 2 || len(crl.RevokedCertificateEntries) != 2 {
		t.Errorf("CRL number %v with %d entries, want 2 and 2", crl.Number, len(crl.RevokedCertificateEntries))
	}

	// The one-step vault holds everything a node needs.
	ls = mustGridnet(t, nil, "vault", "ls", "--vault", p("db1.vault"), "--vault-key-file", p("node.key"))
	for _, item := range []string{identity.ItemIdentityKey, identity.ItemWireGuardKey, identity.ItemNodeCert, identity.ItemCACert, identity.ItemNodeName} {
		if !strings.Contains(ls, item) {
			t.Errorf("one-step vault lacks %s:\n%s", item, ls)
		}
	}
}

func TestCertImportRefusesForeignCertificate(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	mustGridnet(t, nil, "vault", "keyfile", p("k"))
	mustGridnet(t, nil, "ca", "init", "--name", "ca", "--domain", "corp.example", "--vault", p("ca.vault"), "--vault-key-file", p("k"), "--out", p("ca.crt"))
	mustGridnet(t, nil, "keygen", "--vault", p("a.vault"), "--vault-key-file", p("k"), "--name", "a", "--csr", p("a.csr"))
	// A certificate for other keys (made by the one-step form) must not be
	// imported into a's vault.
	mustGridnet(t, nil, "cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"), "--ca-cert", p("ca.crt"),
		"--name", "a", "--out-vault", p("other.vault"), "--out-vault-key-file", p("k"), "--ip", "100.64.0.9/10", "--out", p("other.crt"))
	_, errOut, code := gridnet(t, nil, "", "cert", "import", "--vault", p("a.vault"), "--vault-key-file", p("k"), p("other.crt"), p("ca.crt"))
	if code == 0 || !strings.Contains(errOut, "another identity key") {
		t.Errorf("import of a foreign certificate: exit %d, stderr %q", code, errOut)
	}
	ls := mustGridnet(t, nil, "vault", "ls", "--vault", p("a.vault"), "--vault-key-file", p("k"))
	if strings.Contains(ls, identity.ItemNodeCert) {
		t.Errorf("refused import still stored a certificate:\n%s", ls)
	}
}

func TestCertIssueRefusesTamperedRequest(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	mustGridnet(t, nil, "vault", "keyfile", p("k"))
	mustGridnet(t, nil, "ca", "init", "--name", "ca", "--domain", "corp.example", "--vault", p("ca.vault"), "--vault-key-file", p("k"), "--out", p("ca.crt"))
	mustGridnet(t, nil, "keygen", "--vault", p("a.vault"), "--vault-key-file", p("k"), "--name", "alpha", "--csr", p("a.csr"))
	csrPEM, err := os.ReadFile(p("a.csr"))
	if err != nil {
		t.Fatal(err)
	}
	req, err := cert.ParseCSRPEM(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	// Change the requested name inside the signed request.
	raw := bytes.Replace(req.Raw, []byte("alpha"), []byte("omega"), 1)
	if err := os.WriteFile(p("bad.csr"), cert.EncodeCSRPEM(raw), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := gridnet(t, nil, "", "cert", "issue", "--ca-vault", p("ca.vault"), "--ca-vault-key-file", p("k"), "--ca-cert", p("ca.crt"),
		"--csr", p("bad.csr"), "--ip", "100.64.0.2/10", "--out", p("bad.crt"))
	if code == 0 || !strings.Contains(errOut, "refused") {
		t.Errorf("tampered request: exit %d, stderr %q", code, errOut)
	}
	if _, err := os.Stat(p("bad.crt")); err == nil {
		t.Error("a certificate was written for a tampered request")
	}
}

// TestVaultCommands covers put/get/ls/rm and rekey from the command line,
// with the passphrase taken from the environment.
func TestVaultCommands(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "user.vault")
	vars := map[string]string{"GRIDNET_VAULT_PASSPHRASE": "correct horse battery staple"}
	if _, errOut, code := gridnet(t, vars, "secret notes\x00\x01", "vault", "put", "--vault", path, "notes"); code != 0 {
		t.Fatalf("put: %s", errOut)
	}
	out := mustGridnet(t, vars, "vault", "get", "--vault", path, "notes")
	if out != "secret notes\x00\x01" {
		t.Errorf("get = %q", out)
	}
	if err := os.WriteFile(filepath.Join(dir, "in.bin"), []byte("from a file"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustGridnet(t, vars, "vault", "put", "--vault", path, "file", "--in", filepath.Join(dir, "in.bin"))
	mustGridnet(t, vars, "vault", "get", "--vault", path, "file", "--out", filepath.Join(dir, "out.bin"))
	if b, _ := os.ReadFile(filepath.Join(dir, "out.bin")); string(b) != "from a file" {
		t.Errorf("get --out wrote %q", b)
	}
	if ls := mustGridnet(t, vars, "vault", "ls", "--vault", path); !strings.Contains(ls, "notes") || !strings.Contains(ls, "user") {
		t.Errorf("ls:\n%s", ls)
	}
	// Wrong passphrase: a clear error, nothing lost.
	bad := map[string]string{"GRIDNET_VAULT_PASSPHRASE": "wrong"}
	if _, errOut, code := gridnet(t, bad, "", "vault", "ls", "--vault", path); code == 0 || !strings.Contains(strings.ToLower(errOut), "wrong") {
		t.Errorf("wrong passphrase: exit %d, stderr %q", code, errOut)
	}
	// Rekey to a key file: the passphrase stops working, the key file opens it.
	mustGridnet(t, nil, "vault", "keyfile", filepath.Join(dir, "new.key"))
	mustGridnet(t, vars, "vault", "rekey", "--vault", path, "--new-key-file", filepath.Join(dir, "new.key"))
	if _, _, code := gridnet(t, vars, "", "vault", "ls", "--vault", path); code == 0 {
		t.Error("old passphrase still opens the vault after rekey")
	}
	if out := mustGridnet(t, nil, "vault", "get", "--vault", path, "--vault-key-file", filepath.Join(dir, "new.key"), "notes"); out != "secret notes\x00\x01" {
		t.Errorf("after rekey get = %q", out)
	}
	mustGridnet(t, nil, "vault", "rm", "--vault", path, "--vault-key-file", filepath.Join(dir, "new.key"), "notes")
	if _, _, code := gridnet(t, nil, "", "vault", "get", "--vault", path, "--vault-key-file", filepath.Join(dir, "new.key"), "notes"); code == 0 {
		t.Error("removed item still readable")
	}
	// No key source at all: a clear error naming the options.
	if _, errOut, code := gridnet(t, nil, "", "vault", "ls", "--vault", path); code == 0 || !strings.Contains(errOut, "GRIDNET_VAULT_PASSPHRASE") {
		t.Errorf("no key: exit %d, stderr %q", code, errOut)
	}
}
