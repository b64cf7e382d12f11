package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/aigrid/gridnet/overlay/cert"
)

// caInit runs `gridnet ca init` for a CA named name in dir with key file
// dir/k (made if missing) and extra flags; it returns stdout.
func caInit(t *testing.T, dir, name, domain string, extra ...string) string {
	t.Helper()
	p := func(f string) string { return filepath.Join(dir, f) }
	if _, err := os.Stat(p("k")); err != nil {
		mustGridnet(t, nil, "vault", "keyfile", p("k"))
	}
	args := []string{"ca", "init", "--name", name, "--domain", domain, "--vault", p(name + ".vault"),
		"--vault-key-file", p("k"), "--out", p(name + ".crt")}
	return mustGridnet(t, nil, append(args, extra...)...)
}

func TestCAInitNetworks(t *testing.T) {
	dir := t.TempDir()
	p := func(f string) string { return filepath.Join(dir, f) }
	want := []string{"100.64.0.0/10", "fd7a:115c:a1e0::/48"}

	// Repeated and comma-separated forms give the same constraint.
	out := caInit(t, dir, "rep-ca", "corp.example", "--networks", want[0], "--networks", want[1])
	if !strings.Contains(out, "networks: 100.64.0.0/10, fd7a:115c:a1e0::/48") {
		t.Errorf("ca init output lacks the networks:\n%s", out)
	}
	caInit(t, dir, "list-ca", "corp.example", "--networks", strings.Join(want, ","))
	for _, name := range []string{"rep-ca", "list-ca"} {
		c, err := readCertFile(p(name + ".crt"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, n := range c.PermittedIPRanges {
			got = append(got, n.String())
		}
		if !slices.Equal(got, want) || !slices.Equal(c.PermittedURIDomains, []string{"corp.example"}) {
			t.Errorf("%s: IP constraints %v, URI constraints %v", name, got, c.PermittedURIDomains)
		}

		// cert show, text and JSON.
		text := mustGridnet(t, nil, "cert", "show", p(name+".crt"))
		if !strings.Contains(text, "networks:     100.64.0.0/10, fd7a:115c:a1e0::/48\n") {
			t.Errorf("%s: cert show:\n%s", name, text)
		}
		var view certView
		if err := json.Unmarshal([]byte(mustGridnet(t, nil, "cert", "show", "--json", p(name+".crt"))), &view); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(view.Networks, want) {
			t.Errorf("%s: cert show --json networks %v", name, view.Networks)
		}
	}

	// A CA without --networks permits any address and says so.
	out = caInit(t, dir, "any-ca", "corp.example")
	if !strings.Contains(out, "networks: any") {
		t.Errorf("ca init without --networks:\n%s", out)
	}
	if text := mustGridnet(t, nil, "cert", "show", p("any-ca.crt")); !strings.Contains(text, "networks:     any") {
		t.Errorf("cert show of a CA without networks:\n%s", text)
	}
	raw := mustGridnet(t, nil, "cert", "show", "--json", p("any-ca.crt"))
	if strings.Contains(raw, `"networks"`) {
		t.Errorf("cert show --json of a CA without networks: %s", raw)
	}

	// Refused networks leave nothing behind.
	for _, tc := range []struct {
		networks, msg string
		code          int
	}{
		{"100.64.0.1/10", "did you mean 100.64.0.0/10", 1},
		{"100.64.0.0/10,100.64.1.0/24", "overlap", 1},
		{"corp.example", "want a network prefix", 2},
	} {
		_, errOut, code := gridnet(t, nil, "", "ca", "init", "--name", "bad-ca", "--domain", "corp.example",
			"--vault", p("bad.vault"), "--vault-key-file", p("k"), "--out", p("bad.crt"), "--networks", tc.networks)
		if code != tc.code || !strings.Contains(errOut, tc.msg) {
			t.Errorf("--networks %s: exit %d, stderr %q; want exit %d mentioning %q", tc.networks, code, errOut, tc.code, tc.msg)
		}
		for _, f := range []string{"bad.vault", "bad.crt"} {
			if _, err := os.Stat(p(f)); err == nil {
				t.Errorf("--networks %s: %s was written", tc.networks, f)
			}
		}
	}
}

func TestCertIssueRefusesAddressOutsideNetworks(t *testing.T) {
	dir := t.TempDir()
	p := func(f string) string { return filepath.Join(dir, f) }
	caInit(t, dir, "corp-ca", "corp.example", "--networks", "100.64.0.0/10,fd7a:115c:a1e0::/48")
	caInit(t, dir, "old-ca", "corp.example") // no networks
	mustGridnet(t, nil, "keygen", "--vault", p("web1.vault"), "--vault-key-file", p("k"), "--name", "web1", "--csr", p("web1.csr"))
	issue := func(ca string, form []string, ip string) (string, int) {
		args := append([]string{"cert", "issue", "--ca-vault", p(ca + ".vault"), "--ca-vault-key-file", p("k"),
			"--ca-cert", p(ca + ".crt"), "--ip", ip, "--out", p("out.crt")}, form...)
		_, errOut, code := gridnet(t, nil, "", args...)
		return errOut, code
	}
	csrForm := []string{"--csr", p("web1.csr")}
	oneStep := []string{"--name", "db1", "--out-vault", p("db1.vault"), "--out-vault-key-file", p("k")}

	for _, tc := range []struct {
		name, ca string
		form     []string
		ip, msg  string
	}{
		{"outside", "corp-ca", csrForm, "8.8.8.8/32", "8.8.8.8/32 is not in 100.64.0.0/10, fd7a:115c:a1e0::/48"},
		{"outside, one-step", "corp-ca", oneStep, "8.8.8.8/32", "8.8.8.8/32 is not in 100.64.0.0/10"},
		{"IPv6 outside", "corp-ca", csrForm, "2001:db8::2/64", "is not in"},
		{"wider prefix", "corp-ca", csrForm, "100.64.0.2/8", "wider than the CA's 100.64.0.0/10"},
		{"network address", "corp-ca", csrForm, "100.64.0.0/10", "network address of 100.64.0.0/10"},
		{"broadcast address", "corp-ca", csrForm, "100.127.255.255/10", "broadcast address of 100.64.0.0/10"},
		{"broadcast address, one-step", "corp-ca", oneStep, "100.127.255.255/10", "broadcast address"},
		{"old CA: network address", "old-ca", csrForm, "100.64.0.0/10", "network address of 100.64.0.0/10"},
		{"old CA: broadcast, one-step", "old-ca", oneStep, "100.127.255.255/10", "broadcast address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errOut, code := issue(tc.ca, tc.form, tc.ip)
			if code == 0 || !strings.Contains(errOut, tc.msg) {
				t.Fatalf("exit %d, stderr %q; want a refusal mentioning %q", code, errOut, tc.msg)
			}
			for _, f := range []string{"out.crt", "db1.vault"} {
				if _, err := os.Stat(p(f)); err == nil {
					t.Fatalf("refused issue wrote %s", f)
				}
			}
		})
	}

	// In range works in both forms, and the old CA still signs any address.
	for _, tc := range []struct {
		ca   string
		form []string
		ip   string
	}{
		{"corp-ca", csrForm, "100.64.0.2/10"},
		{"corp-ca", oneStep, "fd7a:115c:a1e0::3/48"},
		{"old-ca", csrForm, "8.8.8.8/32"},
	} {
		if errOut, code := issue(tc.ca, tc.form, tc.ip); code != 0 {
			t.Fatalf("issue %s by %s: exit %d: %s", tc.ip, tc.ca, code, errOut)
		}
		if err := os.Remove(p("out.crt")); err != nil {
			t.Fatal(err)
		}
		os.Remove(p("db1.vault"))
	}
}

func TestCARevokeRefusesForeignCertificate(t *testing.T) {
	dir := t.TempDir()
	p := func(f string) string { return filepath.Join(dir, f) }
	caInit(t, dir, "corp-ca", "corp.example")
	caInit(t, dir, "partner-ca", "partner.example")
	for _, ca := range []string{"corp-ca", "partner-ca"} {
		mustGridnet(t, nil, "cert", "issue", "--ca-vault", p(ca+".vault"), "--ca-vault-key-file", p("k"), "--ca-cert", p(ca+".crt"),
			"--name", "admin", "--out-vault", p(ca+"-admin.vault"), "--out-vault-key-file", p("k"), "--ip", "100.64.0.2/10",
			"--out", p(ca+"-admin.crt"))
	}
	revoke := func(certFile string) (string, int) {
		_, errOut, code := gridnet(t, nil, "", "ca", "revoke", "--ca-vault", p("corp-ca.vault"), "--vault-key-file", p("k"),
			"--ca-cert", p("corp-ca.crt"), "--cert", certFile, "--crl", p("crl.pem"))
		return errOut, code
	}

	// Without a CRL yet: refused, and no CRL is made.
	errOut, code := revoke(p("partner-ca-admin.crt"))
	if code == 0 {
		t.Fatal("revoking a partner CA's certificate succeeded")
	}
	for _, want := range []string{`CA "partner-ca"`, `this CA "corp-ca"`, "partner-ca-admin.crt"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr %q lacks %q", errOut, want)
		}
	}
	if _, err := os.Stat(p("crl.pem")); err == nil {
		t.Error("a refused revocation wrote a CRL")
	}

	// With a CRL: the own certificate is revoked, the foreign one still
	// refused, and the CRL keeps only the own serial.
	if errOut, code := revoke(p("corp-ca-admin.crt")); code != 0 {
		t.Fatalf("revoking own certificate: exit %d: %s", code, errOut)
	}
	before, err := os.ReadFile(p("crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, code := revoke(p("partner-ca-admin.crt")); code == 0 {
		t.Fatal("revoking a partner CA's certificate succeeded with a CRL present")
	}
	after, err := os.ReadFile(p("crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Error("a refused revocation changed the CRL")
	}
	crl, err := cert.ParseCRLPEM(after)
	if err != nil {
		t.Fatal(err)
	}
	own, err := readCertFile(p("corp-ca-admin.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(own.SerialNumber) != 0 {
		t.Errorf("CRL entries %v, want only %x", crl.RevokedCertificateEntries, own.SerialNumber)
	}
}
