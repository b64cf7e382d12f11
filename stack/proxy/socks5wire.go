package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// SOCKS5 wire constants (RFC 1928, RFC 1929).
const (
	socksVersion  = 0x05
	userPassVer   = 0x01 // RFC 1929 subnegotiation version
	methodNone    = 0x00
	methodUser    = 0x02
	methodNoneOK  = 0xff // no acceptable method
	cmdConnect    = 0x01
	cmdBind       = 0x02
	cmdUDP        = 0x03
	atypIPv4      = 0x01
	atypDomain    = 0x03
	atypIPv6      = 0x04
	userPassOK    = 0x00
	userPassFail  = 0x01
	maxDomainName = 255
)

// SOCKS5 reply codes (RFC 1928, section 6).
const (
	repSucceeded          = 0x00
	repGeneralFailure     = 0x01
	repNotAllowed         = 0x02
	repNetworkUnreachable = 0x03
	repHostUnreachable    = 0x04
	repConnectionRefused  = 0x05
	repTTLExpired         = 0x06
	repCommandUnsupported = 0x07
	repAddressUnsupported = 0x08
)

// errBadVersion: the client does not speak SOCKS5 (SOCKS4 starts with 4,
// HTTP with a letter).
var errBadVersion = errors.New("socks5: not a SOCKS5 client")

// errAddressType is an unknown ATYP; the server answers 0x08.
var errAddressType = errors.New("socks5: address type not supported")

// readGreeting reads the client's version and method list.
func readGreeting(r io.Reader) (methods []byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("socks5 greeting: %w", err)
	}
	if hdr[0] != socksVersion {
		return nil, fmt.Errorf("%w (version byte %#x)", errBadVersion, hdr[0])
	}
	if hdr[1] == 0 {
		return nil, errors.New("socks5 greeting: no methods")
	}
	methods = make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return nil, fmt.Errorf("socks5 greeting: %w", err)
	}
	return methods, nil
}

// readUserPass reads an RFC 1929 username/password request.
func readUserPass(r io.Reader) (user, pass string, err error) {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", "", fmt.Errorf("socks5 auth: %w", err)
	}
	if b[0] != userPassVer {
		return "", "", fmt.Errorf("socks5 auth: version %#x, want 1", b[0])
	}
	u := make([]byte, b[1])
	if _, err := io.ReadFull(r, u); err != nil {
		return "", "", fmt.Errorf("socks5 auth: %w", err)
	}
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return "", "", fmt.Errorf("socks5 auth: %w", err)
	}
	p := make([]byte, b[0])
	if _, err := io.ReadFull(r, p); err != nil {
		return "", "", fmt.Errorf("socks5 auth: %w", err)
	}
	return string(u), string(p), nil
}

// request is a SOCKS5 request: a command and its destination.
type request struct {
	cmd byte
	dst Destination
}

// readRequest reads a SOCKS5 request. An unknown address type is
// errAddressType (the caller answers 0x08); anything malformed is an
// error.
func readRequest(r io.Reader) (request, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return request{}, fmt.Errorf("socks5 request: %w", err)
	}
	if hdr[0] != socksVersion {
		return request{}, fmt.Errorf("socks5 request: %w (version byte %#x)", errBadVersion, hdr[0])
	}
	if hdr[2] != 0 {
		return request{}, fmt.Errorf("socks5 request: reserved byte %#x, want 0", hdr[2])
	}
	dst, err := readAddr(r, hdr[3])
	if err != nil {
		return request{}, fmt.Errorf("socks5 request: %w", err)
	}
	return request{cmd: hdr[1], dst: dst}, nil
}

// readAddr reads DST.ADDR (of type atyp) and DST.PORT.
func readAddr(r io.Reader, atyp byte) (Destination, error) {
	var d Destination
	switch atyp {
	case atypIPv4:
		var a [4]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return d, err
		}
		d.Addr = netip.AddrFrom4(a)
	case atypIPv6:
		var a [16]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return d, err
		}
		d.Addr = netip.AddrFrom16(a)
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return d, err
		}
		if n[0] == 0 {
			return d, errors.New("empty domain name")
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(r, name); err != nil {
			return d, err
		}
		d.Name = string(name)
	default:
		return d, fmt.Errorf("%w: %#x", errAddressType, atyp)
	}
	var port [2]byte
	if _, err := io.ReadFull(r, port[:]); err != nil {
		return d, err
	}
	d.Port = binary.BigEndian.Uint16(port[:])
	return d, nil
}

// appendAddr appends ATYP, ADDR and PORT for d: a name as a domain, an
// address as IPv4 or IPv6 (a zero address as 0.0.0.0).
func appendAddr(b []byte, d Destination) []byte {
	switch {
	case d.Name != "":
		name := d.Name[:min(len(d.Name), maxDomainName)]
		b = append(b, atypDomain, byte(len(name)))
		b = append(b, name...)
	case d.Addr.Is6() && !d.Addr.Is4In6():
		a := d.Addr.As16()
		b = append(b, atypIPv6)
		b = append(b, a[:]...)
	default:
		a := d.Addr.Unmap()
		if !a.Is4() {
			a = netip.IPv4Unspecified()
		}
		a4 := a.As4()
		b = append(b, atypIPv4)
		b = append(b, a4[:]...)
	}
	return binary.BigEndian.AppendUint16(b, d.Port)
}

// reply is a SOCKS5 reply with code rep and bound address bnd.
func reply(rep byte, bnd netip.AddrPort) []byte {
	return appendAddr([]byte{socksVersion, rep, 0}, Destination{Addr: bnd.Addr(), Port: bnd.Port()})
}

// udpHeaderMax is the longest SOCKS5 UDP request header: RSV, FRAG, ATYP,
// a 255-byte name with its length, and the port.
const udpHeaderMax = 2 + 1 + 1 + 1 + maxDomainName + 2

// parseUDP parses a SOCKS5 UDP request datagram (RFC 1928, section 7):
// RSV (2 bytes), FRAG, ATYP, DST.ADDR, DST.PORT, DATA.
func parseUDP(b []byte) (frag byte, dst Destination, data []byte, err error) {
	if len(b) < 4 {
		return 0, dst, nil, errors.New("socks5 udp: short header")
	}
	if b[0] != 0 || b[1] != 0 {
		return 0, dst, nil, errors.New("socks5 udp: reserved bytes not zero")
	}
	r := &sliceReader{b: b[4:]}
	dst, err = readAddr(r, b[3])
	if err != nil {
		return 0, dst, nil, fmt.Errorf("socks5 udp: %w", err)
	}
	return b[2], dst, r.b, nil
}

// sliceReader reads from a byte slice without copying what is left.
type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
