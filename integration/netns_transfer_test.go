package integration

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread that has entered the network namespace
// ns (made by `ip netns add`): sockets fn creates belong to ns and keep
// working from any goroutine afterwards. The thread goes back to this
// process's namespace; if it cannot, it stays locked and the runtime ends
// it with the goroutine.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		err = fn()
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// transferIntact sends size bytes of a seeded pseudo-random stream over
// TCP from namespace nsFrom to addr (listened on in nsTo) and checks that
// the receiver read the same bytes (SHA-256 of both sides). It returns the
// rate in Mbit/s.
func transferIntact(t *testing.T, nsFrom, nsTo, addr string, size int64) float64 {
	t.Helper()
	var ln net.Listener
	if err := inNetns(nsTo, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", nsTo, err)
	}
	defer ln.Close()
	type result struct {
		n   int64
		sum [32]byte
		err error
	}
	received := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		r.n, r.err = n, err
		copy(r.sum[:], h.Sum(nil))
		received <- r
	}()
	var c net.Conn
	if err := inNetns(nsFrom, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 30*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s from %s: %v", addr, nsFrom, err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{7}), size), h)
	start := time.Now()
	if _, err := io.Copy(c, src); err != nil {
		c.Close()
		t.Fatalf("send: %v", err)
	}
	c.Close()
	r := <-received
	elapsed := time.Since(start)
	if r.err != nil {
		t.Fatalf("receive: %v", r.err)
	}
	var sent [32]byte
	copy(sent[:], h.Sum(nil))
	if r.n != size || r.sum != sent {
		t.Fatalf("received %d bytes (SHA-256 %x), sent %d (SHA-256 %x)", r.n, r.sum[:8], size, sent[:8])
	}
	return float64(size*8) / elapsed.Seconds() / 1e6
}
