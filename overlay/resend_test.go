package overlay

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/aigrid/gridnet/overlay/handshake"
)

// TestAttemptResendsMsg1: an attempt that has no answer sends the same
// msg1 again, on its own clock, before its AttemptTimeout ends, and at
// most maxResends times. Before, a lost msg1 cost the whole
// AttemptTimeout.
func TestAttemptResendsMsg1(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	fr := newFakeResponder(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.Admit(ctx, fr.ep)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	first, _ := fr.nextMsg1(t)
	raw := msg1Raw(first)
	same := 0
	for {
		m, _ := fr.nextMsg1(t)
		if m.Sender != first.Sender {
			break // the next attempt
		}
		if !bytes.Equal(msg1Raw(m), raw) || m.MAC != nil {
			t.Fatal("a resend differs from the msg1 it repeats")
		}
		same++
	}
	if same == 0 {
		t.Fatal("the attempt did not send its msg1 again before it timed out")
	}
	if same > maxResends {
		t.Fatalf("the attempt sent its msg1 %d more times, want at most %d", same, maxResends)
	}
	if st := a.Stats(); st.Resent == 0 {
		t.Fatalf("no resend counted: %+v", st)
	}
}

// TestRepeatedMsg1AnsweredOnce: a msg1 that comes again while its
// handshake is half-open is answered with the same msg2, without a second
// half-open entry or a second Noise run, at most maxRepeatAnswers times.
func TestRepeatedMsg1AnsweredOnce(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{rate: 1e9, burst: 1e6})
	sock := udpSender(t)
	_, msg1 := msg1With(t, 42)
	send := func() {
		t.Helper()
		if _, err := sock.WriteToUDPAddrPort(msg1, b.ep); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 4096)
	read := func() []byte {
		t.Helper()
		sock.SetReadDeadline(time.Now().Add(sessionTimeout))
		n, err := readFromPeer(sock, b.ep, buf)
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Clone(buf[:n])
	}
	send()
	msg2 := read()
	if m := mustParseMessage(t, msg2); m.Kind != handshake.KindResponse || m.Receiver != 42 {
		t.Fatalf("answer to msg1: kind %d receiver %d", m.Kind, m.Receiver)
	}
	send()
	if again := read(); !bytes.Equal(again, msg2) {
		t.Fatal("the repeated msg1 got another msg2")
	}
	// Each counter moves before its datagram leaves, so both answers
	// that came are counted.
	waitFor(t, sessionTimeout, "the repeat and the msg2 counted", func() bool {
		st := b.Stats()
		return st.RepeatsAnswered == 1 && st.Responded >= 1
	})
	if st := b.Stats(); st.Responded != 1 {
		t.Fatalf("b ran the handshake %d times for one msg1", st.Responded)
	}
	b.hsMu.Lock()
	open := len(b.halfOpen)
	b.hsMu.Unlock()
	if open != 1 {
		t.Fatalf("%d half-open entries for one msg1", open)
	}

	// The answers to repeats are bounded.
	const more = maxRepeatAnswers + 3
	for i := range more {
		send()
		waitFor(t, sessionTimeout, "the repeat counted", func() bool { return b.Stats().RepeatsAnswered == uint64(2+i) })
	}
	answers := 0
	sock.SetReadDeadline(time.Now().Add(time.Second)) // the last answer leaves right after its count
	for {
		n, err := readFromPeer(sock, b.ep, buf)
		if err != nil {
			break
		}
		if !bytes.Equal(buf[:n], msg2) {
			t.Fatal("a repeat got another msg2")
		}
		answers++
	}
	if want := maxRepeatAnswers - 1; answers != want {
		t.Fatalf("%d more answers to %d more repeats, want %d", answers, more, want)
	}
	if st := b.Stats(); st.Responded != 1 {
		t.Fatalf("b ran the handshake %d times for one msg1", st.Responded)
	}
}

// lossyRelay forwards UDP between one client and a target on 127.0.0.1,
// dropping the client's datagrams for which drop returns true. The target
// sees the relay's own socket as the client.
type lossyRelay struct {
	addr netip.AddrPort // where the client sends
}

func newLossyRelay(t *testing.T, target netip.AddrPort, drop func([]byte) bool) *lossyRelay {
	t.Helper()
	front, back := udpSender(t), udpSender(t)
	var mu sync.Mutex
	var client netip.AddrPort
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // client → target
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := front.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			if !client.IsValid() {
				client = from // the relay's one client: the first to send
			}
			ours := client == from
			mu.Unlock()
			if ours && !drop(buf[:n]) {
				_, _ = back.WriteToUDPAddrPort(buf[:n], target)
			}
		}
	}()
	go func() { // target → client
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := back.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if from != target {
				continue // not from the target: another process's leftover
			}
			mu.Lock()
			to := client
			mu.Unlock()
			_, _ = front.WriteToUDPAddrPort(buf[:n], to)
		}
	}()
	t.Cleanup(func() { front.Close(); back.Close(); wg.Wait() })
	return &lossyRelay{addr: front.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// TestLostMsg1RecoveredWithinAttempt: when the first msg1 is lost, the
// one that reaches the responder is the same attempt's resend, not the
// next attempt's msg1 after AttemptTimeout, and the admission completes.
func TestLostMsg1RecoveredWithinAttempt(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	a := startNode(t, f, "node-a", "100.64.0.1", nodeOpts{})
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{})
	var mu sync.Mutex
	var dropped, passed []uint32 // sender indices of the msg1s
	relay := newLossyRelay(t, b.ep, func(pkt []byte) bool {
		m, err := handshake.ParseMessage(pkt)
		if err != nil || m.Kind != handshake.KindInit {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if len(dropped) == 0 {
			dropped = append(dropped, m.Sender)
			return true
		}
		passed = append(passed, m.Sender)
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), sessionTimeout)
	defer cancel()
	if _, err := a.Admit(ctx, relay.addr); err != nil {
		t.Fatalf("admission after a lost msg1: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(passed) == 0 || passed[0] != dropped[0] {
		t.Fatalf("the first msg1 to pass (index %v) is not the lost one's resend (index %d): the lost msg1 cost an attempt", passed, dropped[0])
	}
}

// TestRepeatsPayThePerSourceLimit: answers to a repeated msg1 count
// against the per-source limit like first messages, so one msg1 repeated
// from a spoofed address gets no more msg2s sent there than the limit
// lets through.
func TestRepeatsPayThePerSourceLimit(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t, "alpha")
	const burst = 3
	b := startNode(t, f, "node-b", "100.64.0.2", nodeOpts{rate: 1e-3, burst: burst})
	sock := udpSender(t)
	_, msg1 := msg1With(t, 42)
	const sends = maxRepeatAnswers + 1
	for i := range sends {
		if _, err := sock.WriteToUDPAddrPort(msg1, b.ep); err != nil {
			t.Fatal(err)
		}
		// Each repeat is handled (counted) before the next goes.
		waitFor(t, sessionTimeout, "the msg1 handled", func() bool {
			st := b.Stats()
			return st.Responded+st.RepeatsAnswered == uint64(i+1)
		})
	}
	buf := make([]byte, 4096)
	answers := 0
	sock.SetReadDeadline(time.Now().Add(time.Second)) // each answer leaves right after its count
	for {
		if _, err := readFromPeer(sock, b.ep, buf); err != nil {
			break
		}
		answers++
	}
	if answers != burst {
		t.Fatalf("%d msg2s for one msg1 sent %d times, want %d (the per-source burst)", answers, sends, burst)
	}
}

// TestResendPacing: an attempt resends its msg1 every Msg1Resend
// (jittered to [3/4, 5/4) of it) during its first two seconds, half as
// often after, and its resends fit in AttemptTimeout: the last of them at
// the shortest delays still goes before the attempt ends.
func TestResendPacing(t *testing.T) {
	var shortest time.Duration
	for n := range maxResends {
		want := Msg1Resend
		if n >= quickResends {
			want *= 2
		}
		for range 200 {
			if d := resendDelay(n); d < want*3/4 || d >= want*5/4 {
				t.Fatalf("resend %d after %v, want within [%v, %v)", n, d, want*3/4, want*5/4)
			}
		}
		shortest += want * 3 / 4
	}
	if time.Duration(quickResends)*Msg1Resend != 2*time.Second {
		t.Fatalf("%d quick resends of %v: not the attempt's first two seconds", quickResends, Msg1Resend)
	}
	if shortest >= AttemptTimeout {
		t.Fatalf("%d resends take at least %v, not within AttemptTimeout %v", maxResends, shortest, AttemptTimeout)
	}
}
