package cert

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestOpenSSLInterop checks that a generic X.509 implementation reads and
// verifies what this package writes. It runs the openssl binary and is
// skipped only when the binary is not installed.
func TestOpenSSLInterop(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl binary not found in PATH; install openssl to run this interoperability test")
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	contains := func(what, out string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", what, w, out)
			}
		}
	}

	ca := newNetworksCA(t, "Corp CA", "corp.example", testNetworks...)
	k := newNodeKeys(t)
	csrDER, err := CreateCSR("web-1", k.identity, k.wg)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ParseCSR(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	node, err := ca.IssueFromCSR(csr, k.request("web-1").Addresses, []string{"web", "admins"}, map[string]string{"os": "linux"}, 0, testNow)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := ca.Revoke(nil, []*big.Int{big.NewInt(12345)}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	crl, err = ca.Revoke(crl, []*big.Int{big.NewInt(777)}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	caFile := write("ca.pem", EncodeCertPEM(ca.Cert))
	nodeFile := write("node.pem", EncodeCertPEM(node))
	csrFile := write("node.csr", EncodeCSRPEM(csrDER))
	crlFile := write("ca.crl", EncodeCRLPEM(crl))

	out := run("x509", "-in", caFile, "-noout", "-text")
	contains("CA", out, "Subject: CN = Corp CA", "CA:TRUE, pathlen:0", "Certificate Sign, CRL Sign",
		"X509v3 Name Constraints: critical", "URI:corp.example", "ED25519",
		"IP:100.64.0.0/255.192.0.0", "IP:FD7A:115C:A1E0:0:0:0:0:0/FFFF:FFFF:FFFF:0:0:0:0:0")

	out = run("x509", "-in", nodeFile, "-noout", "-text")
	contains("node", out, "Subject: O = admins, O = web, CN = web-1", "URI:spiffe://corp.example/web-1",
		"IP Address:100.64.0.2", "IP Address:FD7A:115C:A1E0:0:0:0:0:2", "TLS Web Client Authentication",
		"TLS Web Server Authentication", "Digital Signature", "CA:FALSE", "1.3.6.1.4.1.59999.1.1:",
		"1.3.6.1.4.1.59999.1.2:", "1.3.6.1.4.1.59999.1.3:", "Issuer: CN = Corp CA", "X509v3 Authority Key Identifier")
	// openssl prints the serial as hex, possibly with leading zeros.
	serialOut := strings.TrimSpace(run("x509", "-in", nodeFile, "-noout", "-serial"))
	if got, ok := new(big.Int).SetString(strings.TrimPrefix(serialOut, "serial="), 16); !ok || got.Cmp(node.SerialNumber) != 0 {
		t.Errorf("serial: openssl says %q, want %X", serialOut, node.SerialNumber)
	}

	out = run("req", "-in", csrFile, "-noout", "-text", "-verify")
	contains("CSR", out, "CN = web-1", "1.3.6.1.4.1.59999.1.1:", "ED25519")
	if !regexp.MustCompile(`(?m)verify OK`).MatchString(out) {
		t.Errorf("CSR: no 'verify OK':\n%s", out)
	}

	out = run("crl", "-in", crlFile, "-noout", "-text")
	contains("CRL", out, "Issuer: CN = Corp CA", "X509v3 CRL Number:", "Serial Number: 3039", "Serial Number: 0309")
	if !regexp.MustCompile(`X509v3 CRL Number:\s*\n\s*2\b`).MatchString(out) {
		t.Errorf("CRL number 2 not found:\n%s", out)
	}
	out = run("crl", "-in", crlFile, "-CAfile", caFile, "-noout")
	contains("CRL verify", out, "verify OK")

	// Chain verification at the tests' fixed clock.
	at := strconv.FormatInt(testNow.Unix(), 10)
	out = run("verify", "-attime", at, "-CAfile", caFile, nodeFile)
	contains("chain verify", out, nodeFile+": OK")
	out = run("verify", "-attime", at, "-CAfile", caFile, "-purpose", "sslclient", nodeFile)
	contains("chain verify sslclient", out, ": OK")
	out = run("verify", "-attime", at, "-CAfile", caFile, "-purpose", "sslserver", nodeFile)
	contains("chain verify sslserver", out, ": OK")
	out = run("verify", "-attime", at, "-CAfile", caFile, "-CRLfile", crlFile, "-crl_check", nodeFile)
	contains("chain verify with CRL", out, ": OK")

	// openssl enforces the CA's URI name constraint on a forged
	// out-of-domain certificate, as Verify does.
	evil := forge(t, ca, k, nodeTemplate(t, ca, "n1", k), func(c *x509.Certificate) {
		c.URIs[0].Host = "evil.example"
	})
	evilFile := write("evil.pem", pem.EncodeToMemory(&pem.Block{Type: PEMTypeCertificate, Bytes: evil}))
	cmd := exec.Command(bin, "verify", "-attime", at, "-CAfile", caFile, evilFile)
	if b, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("openssl accepted an out-of-domain certificate:\n%s", b)
	} else if !strings.Contains(string(b), "name constraint") && !strings.Contains(string(b), "permitted subtree") {
		t.Errorf("openssl rejected the out-of-domain certificate for another reason:\n%s", b)
	}

	// ... and the CA's IP name constraints on a forged certificate with
	// an address outside its networks, as Verify does.
	stray := forge(t, ca, k, nodeTemplate(t, ca, "n2", k), withAddresses(t, k, "100.64.0.3/10", "8.8.8.8/32"))
	strayFile := write("stray.pem", pem.EncodeToMemory(&pem.Block{Type: PEMTypeCertificate, Bytes: stray}))
	cmd = exec.Command(bin, "verify", "-attime", at, "-CAfile", caFile, strayFile)
	if b, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("openssl accepted a certificate outside the CA's networks:\n%s", b)
	} else if !strings.Contains(string(b), "name constraint") && !strings.Contains(string(b), "permitted subtree") {
		t.Errorf("openssl rejected the out-of-network certificate for another reason:\n%s", b)
	}
}
