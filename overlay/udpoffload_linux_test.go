package overlay

import (
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestProbeUDPOffload: the kernels this project supports (5.x and later)
// offer UDP GSO (4.18) and GRO (5.0), and the probe finds both.
func TestProbeUDPOffload(t *testing.T) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	if major, err := strconv.Atoi(strings.SplitN(release, ".", 2)[0]); err != nil || major < 5 {
		t.Skipf("kernel %s is older than 5.0, which brought UDP GRO", release)
	}
	gso, gro := probeUDPOffload()
	if !gso || !gro {
		t.Errorf("kernel %s: UDP GSO %v, GRO %v; want both", release, gso, gro)
	}
}
