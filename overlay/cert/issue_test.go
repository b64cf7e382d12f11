package cert

import (
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIssueVerifyRoundTrip(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	k := newNodeKeys(t)
	req := k.request("web-1")
	req.Groups = []string{"web", "admins", "web", "db:readers"}
	c, err := ca.Issue(req, testNow)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	id, err := mustPool(t, ca.Cert).Verify(c, testNow)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}

	if id.Name != "web-1" {
		t.Errorf("Name = %q", id.Name)
	}
	if id.Domain != "corp.example" {
		t.Errorf("Domain = %q", id.Domain)
	}
	if want := []string{"admins", "db:readers", "web"}; !slices.Equal(id.Groups, want) {
		t.Errorf("Groups = %q, want %q", id.Groups, want)
	}
	if !maps.Equal(id.Attributes, req.Attributes) {
		t.Errorf("Attributes = %v, want %v", id.Attributes, req.Attributes)
	}
	if !slices.Equal(id.Addresses, req.Addresses) {
		t.Errorf("Addresses = %v, want %v", id.Addresses, req.Addresses)
	}
	if id.WireGuardKey != k.wg {
		t.Errorf("WireGuardKey = %x, want %x", id.WireGuardKey, k.wg)
	}
	if !id.IdentityKey.Equal(k.identity.Public()) {
		t.Errorf("IdentityKey = %x", id.IdentityKey)
	}
	if !id.NotBefore.Equal(testNow.Add(-Backdate)) {
		t.Errorf("NotBefore = %v, want now-%v", id.NotBefore, Backdate)
	}
	if !id.NotAfter.Equal(testNow.Add(DefaultNodeValidity)) {
		t.Errorf("NotAfter = %v, want now+%v", id.NotAfter, DefaultNodeValidity)
	}
	if id.Serial == nil || id.Serial.Cmp(c.SerialNumber) != 0 || id.Serial.Sign() <= 0 || id.Serial.BitLen() > serialBits {
		t.Errorf("Serial = %v, cert serial %v", id.Serial, c.SerialNumber)
	}
	if id.Fingerprint != Fingerprint(c.Raw) || len(id.Fingerprint) != 64 || strings.ToLower(id.Fingerprint) != id.Fingerprint {
		t.Errorf("Fingerprint = %q", id.Fingerprint)
	}
	if id.CAName != "Corp CA" {
		t.Errorf("CAName = %q", id.CAName)
	}
	if id.CAFingerprint != Fingerprint(ca.Cert.Raw) {
		t.Errorf("CAFingerprint = %q, want %q", id.CAFingerprint, Fingerprint(ca.Cert.Raw))
	}
	if string(id.Raw) != string(c.Raw) {
		t.Error("Raw differs from certificate DER")
	}

	// X.509 fields a generic tool sees.
	if want := []string{"admins", "db:readers", "web"}; !slices.Equal(c.Subject.Organization, want) {
		t.Errorf("subject O = %q, want one per group in order %q", c.Subject.Organization, want)
	}
	if c.Subject.CommonName != "web-1" || c.URIs[0].String() != "spiffe://corp.example/web-1" {
		t.Errorf("CN %q URI %v", c.Subject.CommonName, c.URIs)
	}
	if c.KeyUsage != x509.KeyUsageDigitalSignature || !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}) || c.IsCA {
		t.Errorf("usage %v %v IsCA %v", c.KeyUsage, c.ExtKeyUsage, c.IsCA)
	}
	if string(c.AuthorityKeyId) != string(ca.Cert.SubjectKeyId) || len(c.SubjectKeyId) != keyIDLen {
		t.Errorf("key ids: AKI %x CA SKI %x SKI %x", c.AuthorityKeyId, ca.Cert.SubjectKeyId, c.SubjectKeyId)
	}

	// Describe sees the same fields without a pool.
	d, err := Describe(c)
	if err != nil {
		t.Fatalf("Describe: %v", err)
	}
	if d.Name != id.Name || d.Domain != id.Domain || !slices.Equal(d.Groups, id.Groups) ||
		!slices.Equal(d.Addresses, id.Addresses) || d.WireGuardKey != id.WireGuardKey ||
		d.CAName != "Corp CA" || d.CAFingerprint != "" {
		t.Errorf("Describe = %+v, Verify = %+v", d, id)
	}
}

func TestIssueMinimal(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	k := newNodeKeys(t)
	c, err := ca.Issue(IssueRequest{Name: "n", IdentityKey: k.identity.Public().(ed25519.PublicKey), WireGuardKey: k.wg}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	id, err := mustPool(t, ca.Cert).Verify(c, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if id.Groups != nil || id.Attributes != nil || id.Addresses != nil {
		t.Errorf("want nil groups/attributes/addresses, got %v %v %v", id.Groups, id.Attributes, id.Addresses)
	}
}

func TestIssueValidityCappedAtCA(t *testing.T) {
	ca, err := NewCA("Short CA", "corp.example", 10*24*time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.NotBefore.Equal(testNow.Add(-Backdate)) || !ca.Cert.NotAfter.Equal(testNow.Add(10*24*time.Hour)) {
		t.Fatalf("CA validity %v..%v", ca.Cert.NotBefore, ca.Cert.NotAfter)
	}
	k := newNodeKeys(t)
	tests := []struct {
		name                string
		validity            time.Duration
		now                 time.Time
		wantBefore, wantEnd time.Time
	}{
		{"default capped", 0, testNow.Add(time.Hour), testNow.Add(time.Hour - Backdate), ca.Cert.NotAfter},
		{"short kept", 2 * time.Hour, testNow.Add(time.Hour), testNow.Add(time.Hour - Backdate), testNow.Add(3 * time.Hour)},
		{"backdate clamped to CA start", time.Hour, testNow, ca.Cert.NotBefore, testNow.Add(time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := k.request("n1")
			req.Validity = tt.validity
			c, err := ca.Issue(req, tt.now)
			if err != nil {
				t.Fatal(err)
			}
			if !c.NotBefore.Equal(tt.wantBefore) || !c.NotAfter.Equal(tt.wantEnd) {
				t.Errorf("validity %v..%v, want %v..%v", c.NotBefore, c.NotAfter, tt.wantBefore, tt.wantEnd)
			}
		})
	}
}

func TestIssueRejects(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	other := newTestCA(t, "Other CA", "corp.example")
	k := newNodeKeys(t)
	tests := []struct {
		name   string
		ca     *CA
		now    time.Time
		mutate func(*IssueRequest)
		want   error // optional sentinel
	}{
		{name: "uppercase name", mutate: func(r *IssueRequest) { r.Name = "Web" }, want: ErrInvalidName},
		{name: "empty name", mutate: func(r *IssueRequest) { r.Name = "" }, want: ErrInvalidName},
		{name: "name with dot", mutate: func(r *IssueRequest) { r.Name = "a.b" }, want: ErrInvalidName},
		{name: "name too long", mutate: func(r *IssueRequest) { r.Name = strings.Repeat("a", 64) }, want: ErrInvalidName},
		{name: "short identity key", mutate: func(r *IssueRequest) { r.IdentityKey = r.IdentityKey[:31] }},
		{name: "zero WireGuard key", mutate: func(r *IssueRequest) { r.WireGuardKey = [32]byte{} }},
		{name: "4in6 address", mutate: func(r *IssueRequest) { r.Addresses = []netip.Prefix{netip.MustParsePrefix("::ffff:100.64.0.1/106")} }, want: ErrInvalidName},
		{name: "multicast address", mutate: func(r *IssueRequest) { r.Addresses = []netip.Prefix{netip.MustParsePrefix("ff02::1/16")} }, want: ErrInvalidName},
		{name: "loopback address", mutate: func(r *IssueRequest) { r.Addresses = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")} }, want: ErrInvalidName},
		{name: "unspecified address", mutate: func(r *IssueRequest) { r.Addresses = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")} }, want: ErrInvalidName},
		{name: "invalid prefix", mutate: func(r *IssueRequest) { r.Addresses = []netip.Prefix{{}} }, want: ErrInvalidName},
		{name: "duplicate address", mutate: func(r *IssueRequest) {
			r.Addresses = []netip.Prefix{netip.MustParsePrefix("100.64.0.2/10"), netip.MustParsePrefix("100.64.0.2/32")}
		}, want: ErrInvalidName},
		{name: "bad group", mutate: func(r *IssueRequest) { r.Groups = []string{"Admins"} }, want: ErrInvalidName},
		{name: "empty group", mutate: func(r *IssueRequest) { r.Groups = []string{""} }, want: ErrInvalidName},
		{name: "bad attribute key", mutate: func(r *IssueRequest) { r.Attributes = map[string]string{"a b": "x"} }, want: ErrInvalidName},
		{name: "control char in value", mutate: func(r *IssueRequest) { r.Attributes = map[string]string{"os": "li\nnux"} }, want: ErrInvalidName},
		{name: "value too long", mutate: func(r *IssueRequest) { r.Attributes = map[string]string{"os": strings.Repeat("x", 256)} }, want: ErrInvalidName},
		{name: "negative validity", mutate: func(r *IssueRequest) { r.Validity = -time.Second }},
		{name: "CA expired", now: testNow.Add(2 * DefaultCAValidity)},
		{name: "CA not yet valid", now: testNow.Add(-48 * time.Hour)},
		{name: "nil CA", ca: &CA{}, want: ErrInvalidCA},
		{name: "key mismatch", ca: &CA{Cert: ca.Cert, Key: other.Key}, want: ErrInvalidCA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := k.request("web-1")
			if tt.mutate != nil {
				tt.mutate(&req)
			}
			c, now := ca, testNow
			if tt.ca != nil {
				c = tt.ca
			}
			if !tt.now.IsZero() {
				now = tt.now
			}
			_, err := c.Issue(req, now)
			if err == nil {
				t.Fatal("Issue succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("error %q does not wrap %v", err, tt.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	tests := []struct {
		name  string
		check func(string) error
		in    string
		ok    bool
	}{
		{"node simple", ValidateName, "web-1", true},
		{"node digit start", ValidateName, "1a", true},
		{"node single char", ValidateName, "a", true},
		{"node 63", ValidateName, strings.Repeat("a", 63), true},
		{"node 64", ValidateName, strings.Repeat("a", 64), false},
		{"node empty", ValidateName, "", false},
		{"node leading dash", ValidateName, "-a", false},
		{"node trailing dash", ValidateName, "a-", false},
		{"node underscore", ValidateName, "a_b", false},
		{"node upper", ValidateName, "A", false},
		{"node dot", ValidateName, "a.b", false},
		{"node unicode", ValidateName, "é", false},
		{"domain simple", ValidateDomain, "corp.example", true},
		{"domain single label", ValidateDomain, "lab", true},
		{"domain 253", ValidateDomain, strings.Repeat(strings.Repeat("a", 63)+".", 3) + strings.Repeat("a", 61), true},
		{"domain 254", ValidateDomain, strings.Repeat(strings.Repeat("a", 63)+".", 3) + strings.Repeat("a", 62), false},
		{"domain trailing dot", ValidateDomain, "corp.example.", false},
		{"domain empty label", ValidateDomain, "corp..example", false},
		{"domain upper", ValidateDomain, "Corp.example", false},
		{"domain label 64", ValidateDomain, strings.Repeat("a", 64) + ".x", false},
		{"domain port", ValidateDomain, "corp.example:80", false},
		{"domain empty", ValidateDomain, "", false},
		{"group colon", ValidateGroup, "role:db", true},
		{"group dot underscore", ValidateGroup, "a.b_c-d", true},
		{"group leading dot", ValidateGroup, ".a", false},
		{"group space", ValidateGroup, "a b", false},
		{"attr key", ValidateAttributeKey, "os.version", true},
		{"attr key upper", ValidateAttributeKey, "OS", false},
		{"attr value empty", ValidateAttributeValue, "", true},
		{"attr value unicode", ValidateAttributeValue, "Zürich", true},
		{"attr value tab", ValidateAttributeValue, "a\tb", false},
		{"attr value bad utf8", ValidateAttributeValue, "\xff", false},
		{"ca name", ValidateCAName, "Corp Root CA 2026", true},
		{"ca name empty", ValidateCAName, "", false},
		{"ca name 65", ValidateCAName, strings.Repeat("x", 65), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.check(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("validate(%q) = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidName) {
				t.Fatalf("error %q does not wrap ErrInvalidName", err)
			}
		})
	}
}

func TestNewCA(t *testing.T) {
	ca, err := NewCA("Corp CA", "corp.example", 0, testNow)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Cert
	if c.Subject.CommonName != "Corp CA" || !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("CA basics: CN %q IsCA %v MaxPathLen %d zero %v", c.Subject.CommonName, c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage = %v", c.KeyUsage)
	}
	if !slices.Equal(c.PermittedURIDomains, []string{"corp.example"}) || !c.PermittedDNSDomainsCritical || ca.Domain() != "corp.example" {
		t.Errorf("name constraints %v critical %v", c.PermittedURIDomains, c.PermittedDNSDomainsCritical)
	}
	if !c.NotAfter.Equal(testNow.Add(DefaultCAValidity)) || !c.NotBefore.Equal(testNow.Add(-Backdate)) {
		t.Errorf("validity %v..%v", c.NotBefore, c.NotAfter)
	}
	if string(c.SubjectKeyId) != string(keyID(ca.Key.Public().(ed25519.PublicKey))) {
		t.Errorf("SubjectKeyId %x", c.SubjectKeyId)
	}
	for _, bad := range []struct{ name, domain string }{{"", "corp.example"}, {"CA", "Corp.Example"}, {"CA", ""}} {
		if _, err := NewCA(bad.name, bad.domain, 0, testNow); !errors.Is(err, ErrInvalidName) {
			t.Errorf("NewCA(%q, %q) = %v, want ErrInvalidName", bad.name, bad.domain, err)
		}
	}
	if _, err := NewCA("CA", "corp.example", -time.Hour, testNow); err == nil {
		t.Error("negative validity accepted")
	}
}

func TestLoadCA(t *testing.T) {
	ca := newTestCA(t, "Corp CA", "corp.example")
	other := newTestCA(t, "Other CA", "other.example")
	node, _ := issue(t, ca, "n1")
	keyPEM, err := EncodeKeyPEM(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(EncodeCertPEM(ca.Cert), key)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if loaded.Domain() != "corp.example" || loaded.Name() != "Corp CA" {
		t.Errorf("loaded %q %q", loaded.Name(), loaded.Domain())
	}
	if _, err := LoadCA(EncodeCertPEM(ca.Cert), other.Key); !errors.Is(err, ErrInvalidCA) {
		t.Errorf("mismatched key: %v, want ErrInvalidCA", err)
	}
	if _, err := LoadCA(EncodeCertPEM(node), ca.Key); !errors.Is(err, ErrInvalidCA) {
		t.Errorf("node cert as CA: %v, want ErrInvalidCA", err)
	}
	if _, err := LoadCA([]byte("junk"), ca.Key); !errors.Is(err, ErrMalformed) {
		t.Errorf("junk: %v, want ErrMalformed", err)
	}
}
