package proxy

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzReadRequest: any bytes are refused or give a request whose
// destination, written back, reads again as the same request. Seeds in
// testdata/fuzz/FuzzReadRequest: CONNECT to IPv4, IPv6 and a name, UDP
// ASSOCIATE, a bad version, an unknown address type, truncations.
func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 100, 64, 0, 2, 0, 80})
	f.Add(append([]byte{5, 1, 0, 3, 4}, "web1\x00\x50"...))
	f.Add([]byte{5, 3, 0, 4, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53})
	f.Add([]byte{4, 1, 0, 80, 1, 2, 3, 4, 0})
	f.Add([]byte{5, 1, 0, 9})
	f.Add([]byte{5, 1, 0, 3, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := readRequest(bytes.NewReader(b))
		if err != nil {
			return
		}
		again, err := readRequest(bytes.NewReader(appendAddr([]byte{5, req.cmd, 0}, req.dst)))
		if err != nil {
			t.Fatalf("request %+v written back does not read: %v", req, err)
		}
		if again != req && !(req.dst.Addr.Is4In6() && again.dst.Addr == req.dst.Addr.Unmap()) {
			t.Fatalf("request %+v read back as %+v", req, again)
		}
	})
}

// FuzzHandshake: a greeting followed by an RFC 1929 request never makes
// the parsers panic or claim more bytes than they were given. Seeds in
// testdata/fuzz/FuzzHandshake.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte{5, 1, 0})
	f.Add(append([]byte{5, 2, 0, 2, 1, 3}, "app\x06s3cret"...))
	f.Add([]byte{5, 0})
	f.Add([]byte{5, 255, 2})
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		methods, err := readGreeting(r)
		if err != nil {
			return
		}
		if len(methods) == 0 || len(methods) > 255 {
			t.Fatalf("%d methods", len(methods))
		}
		user, pass, err := readUserPass(r)
		if err != nil {
			return
		}
		if len(user) > 255 || len(pass) > 255 || 2+len(methods)+3+len(user)+len(pass) > len(b) {
			t.Fatalf("user %q and password %q from %d bytes", user, pass, len(b))
		}
	})
}

// FuzzParseUDP: any datagram is refused or parses into a header and
// data that, written back, give the same datagram. Seeds in
// testdata/fuzz/FuzzParseUDP.
func FuzzParseUDP(f *testing.F) {
	f.Add(append([]byte{0, 0, 0, 1, 100, 64, 0, 2, 0, 53}, "query"...))
	f.Add(append([]byte{0, 0, 0, 3, 4}, "web1\x00\x35data"...))
	f.Add([]byte{0, 0, 1, 1, 1, 2, 3, 4, 0, 1})
	f.Add([]byte{0, 1, 0, 1})
	f.Add([]byte{0, 0, 0, 7})
	f.Fuzz(func(t *testing.T, b []byte) {
		frag, dst, data, err := parseUDP(b)
		if err != nil {
			if errors.Is(err, errAddressType) && len(b) >= 4 && b[3] == atypIPv4 {
				t.Fatal("IPv4 reported as an unknown address type")
			}
			return
		}
		back := append(appendAddr([]byte{0, 0, frag}, dst), data...)
		if !bytes.Equal(back, b) {
			t.Fatalf("datagram %x written back as %x", b, back)
		}
	})
}

// FuzzParseHostPort: a CONNECT target or URL host from a client is
// refused or gives a destination whose string parses back to it. Seeds
// in testdata/fuzz/FuzzParseHostPort.
func FuzzParseHostPort(f *testing.F) {
	for _, s := range []string{"web1:80", "[fd00::1]:443", "100.64.0.2", "web1", ":80", "[::1", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseHostPort(s, 80)
		if err != nil {
			return
		}
		again, err := parseHostPort(d.String(), 0)
		if err != nil || again != d {
			t.Fatalf("%q → %+v → %q → %+v, %v", s, d, d.String(), again, err)
		}
	})
}
