package stack

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestKernelPermissionErrorsSayWhatIsNeeded: when the host refuses a TUN
// device (EPERM from the TUNSETIFF ioctl, EACCES opening /dev/net/tun, or
// ip's "Operation not permitted"), the error names CAP_NET_ADMIN and
// /dev/net/tun and still wraps the cause.
func TestKernelPermissionErrorsSayWhatIsNeeded(t *testing.T) {
	explained := map[string]error{
		"EPERM": explainTUNError(fmt.Errorf("create TUN %q: %w", "gridnet0", syscall.EPERM)),
		"EACCES opening the device": explainTUNError(fmt.Errorf("create TUN %q: %w", "gridnet0",
			&os.PathError{Op: "open", Path: "/dev/net/tun", Err: syscall.EACCES})),
		"ip refused": ipError([]string{"link", "set", "dev", "gridnet0", "up"}, &exec.ExitError{},
			[]byte("RTNETLINK answers: Operation not permitted\n")),
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
	if msg := explained["ip refused"].Error(); !strings.HasPrefix(msg, "ip link set dev gridnet0 up: ") || !strings.Contains(msg, "RTNETLINK answers: Operation not permitted") {
		t.Errorf("ip: %q lost the original message", msg)
	}
	if !errors.Is(explained["EPERM"], syscall.EPERM) {
		t.Errorf("explained error %v no longer wraps EPERM", explained["EPERM"])
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
	other := ipError([]string{"addr", "add"}, &exec.ExitError{}, []byte("Error: ipv4: Address already assigned.\n"))
	if strings.Contains(other.Error(), "CAP_NET_ADMIN") {
		t.Errorf("unrelated ip failure explained as a privilege problem: %q", other)
	}
}
