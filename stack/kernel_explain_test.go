package stack

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestKernelPermissionErrorsSayWhatIsNeeded: when the host refuses a TUN
// device (EPERM from the TUNSETIFF ioctl, EACCES opening /dev/net/tun, or
// EPERM from a netlink request), the error names CAP_NET_ADMIN and
// /dev/net/tun and still wraps the cause. The netlink requests that
// configure the interface say the same when the kernel answers EPERM.
func TestKernelPermissionErrorsSayWhatIsNeeded(t *testing.T) {
	explained := map[string]error{
		"EPERM": explainTUNError(fmt.Errorf("create TUN %q: %w", "gridnet0", syscall.EPERM)),
		"EACCES opening the device": explainTUNError(fmt.Errorf("create TUN %q: %w", "gridnet0",
			&os.PathError{Op: "open", Path: "/dev/net/tun", Err: syscall.EACCES})),
		"netlink refused": netlinkError("gridnet0", "set link up", syscall.EPERM),
	}
	for name, err := range explained {
		msg := err.Error()
		if !strings.Contains(msg, "CAP_NET_ADMIN") || !strings.Contains(msg, "/dev/net/tun") || !strings.Contains(msg, "userspace mode") {
			t.Errorf("%s: %q does not say what kernel mode needs", name, msg)
		}
	}
	if msg := explained["EPERM"].Error(); !strings.HasPrefix(msg, `create TUN "gridnet0": operation not permitted (`) {
		t.Errorf("EPERM: %q lost the original message", msg)
	}
	if msg := explained["netlink refused"].Error(); !strings.HasPrefix(msg, "configure TUN gridnet0: set link up: operation not permitted (") {
		t.Errorf("netlink: %q lost the original message", msg)
	}
	for _, name := range []string{"EPERM", "netlink refused"} {
		if !errors.Is(explained[name], syscall.EPERM) {
			t.Errorf("%s: explained error %v no longer wraps EPERM", name, explained[name])
		}
	}

	missing := explainTUNError(errors.New(`CreateTUN("gridnet0") failed; /dev/net/tun does not exist`))
	if !strings.Contains(missing.Error(), "load the tun module") {
		t.Errorf("missing device: %q", missing)
	}

	// Anything else is left alone.
	busy := fmt.Errorf("create TUN %q: %w", "gridnet0", syscall.EBUSY)
	if got := explainTUNError(busy); got != busy {
		t.Errorf("EBUSY changed to %q", got)
	}
	other := netlinkError("gridnet0", "add address 100.64.0.2/10", syscall.EEXIST)
	if strings.Contains(other.Error(), "CAP_NET_ADMIN") || !errors.Is(other, syscall.EEXIST) {
		t.Errorf("unrelated netlink failure explained as a privilege problem: %q", other)
	}
}
