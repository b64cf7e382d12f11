package stack

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// ICMP protocol numbers (IANA) as expected by icmp.ParseMessage.
const (
	protoICMPv4 = 1
	protoICMPv6 = 58
	// icmpEchoHeaderLen is the ICMP echo header: type, code, checksum,
	// identifier, sequence number.
	icmpEchoHeaderLen = 8
	// pingReadBuf is large enough for any echo reply within MaxMTU.
	pingReadBuf = MaxMTU
)

// echo is one outstanding ICMP echo request.
type echo struct {
	v6      bool
	id, seq int
	payload []byte
}

func newEcho(v6 bool, payload []byte) echo {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return echo{
		v6:      v6,
		id:      int(binary.BigEndian.Uint16(r[:2])),
		seq:     int(binary.BigEndian.Uint16(r[2:])),
		payload: payload,
	}
}

// request marshals the echo request. The checksum of ICMPv6 depends on a
// pseudo-header the sending stack fills in (gVisor and the kernel both
// compute it for ping/raw ICMPv6 sockets).
func (e echo) request() ([]byte, error) {
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if e.v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	m := icmp.Message{Type: typ, Body: &icmp.Echo{ID: e.id, Seq: e.seq, Data: e.payload}}
	b, err := m.Marshal(nil)
	if err != nil {
		return nil, fmt.Errorf("marshal echo request: %w", err)
	}
	return b, nil
}

// matches reports whether b is the echo reply to e. Ping sockets (gVisor's
// and the kernel's unprivileged ones) rewrite the identifier, so it is only
// checked when checkID is set (raw sockets).
func (e echo) matches(b []byte, checkID bool) bool {
	proto := protoICMPv4
	var want icmp.Type = ipv4.ICMPTypeEchoReply
	if e.v6 {
		proto, want = protoICMPv6, ipv6.ICMPTypeEchoReply
	}
	m, err := icmp.ParseMessage(proto, b)
	if err != nil || m.Type != want {
		return false
	}
	body, ok := m.Body.(*icmp.Echo)
	if !ok || body.Seq != e.seq || (checkID && body.ID != e.id) {
		return false
	}
	return bytes.Equal(body.Data, e.payload)
}

// pingConn is what both backends' ICMP sockets provide.
type pingConn interface {
	WriteTo(b []byte, addr net.Addr) (int, error)
	ReadFrom(b []byte) (int, net.Addr, error)
	SetReadDeadline(t time.Time) error
}

const (
	// pingResendInterval is how long Ping waits for a reply before it sends
	// another request (with the next sequence number). A socket that only
	// reads after a wake-up (as wireguard-go's netstack PingConn did) misses
	// a reply arriving before ReadFrom registered its waiter; reading from a
	// goroutine started before the first request avoids that (the userspace
	// backend's socket also tries a read before waiting), and resending
	// recovers from lost requests or replies.
	pingResendInterval = 250 * time.Millisecond
	// maxPingAttempts bounds the requests of one Ping (and the list of
	// outstanding requests matched against replies).
	maxPingAttempts = 64
)

// arrival is one ICMP message and the time it was read.
type arrival struct {
	b  []byte
	at time.Time
}

// roundTrip sends echo requests to dst over c until a reply matches one of
// them or ctx ends, and returns the RTT of the answered request. The caller
// closes c after roundTrip returns.
func roundTrip(ctx context.Context, c pingConn, dst net.Addr, v6 bool, payload []byte, checkID bool) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	arrivals := make(chan arrival)
	done := make(chan struct{})
	started := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(arrivals)
		close(started)
		buf := make([]byte, pingReadBuf)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case arrivals <- arrival{append([]byte(nil), buf[:n]...), time.Now()}:
			case <-done:
				return
			}
		}
	}()
	defer func() {
		close(done)
		_ = c.SetReadDeadline(time.Now().Add(-time.Second)) // unblock ReadFrom
		wg.Wait()
	}()
	<-started
	runtime.Gosched() // let the reader block in ReadFrom before the first request

	first := newEcho(v6, payload)
	sent := make([]echo, 0, 4)
	sentAt := make([]time.Time, 0, 4)
	send := func() error {
		e := first
		e.seq = (first.seq + len(sent)) & 0xffff
		req, err := e.request()
		if err != nil {
			return err
		}
		sent, sentAt = append(sent, e), append(sentAt, time.Now())
		if _, err := c.WriteTo(req, dst); err != nil {
			return fmt.Errorf("send echo request: %w", err)
		}
		return nil
	}
	if err := send(); err != nil {
		return 0, err
	}
	ticker := time.NewTicker(pingResendInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("wait for echo reply: %w", ctx.Err())
		case <-ticker.C:
			if len(sent) < maxPingAttempts {
				if err := send(); err != nil {
					return 0, err
				}
			}
		case a, ok := <-arrivals:
			if !ok {
				return 0, errors.New("wait for echo reply: ICMP socket failed")
			}
			for i, e := range sent {
				if e.matches(a.b, checkID) {
					// A coarse clock could measure zero; report the
					// smallest positive duration instead.
					return max(a.at.Sub(sentAt[i]), time.Nanosecond), nil
				}
			}
		}
	}
}
