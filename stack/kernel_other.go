//go:build !linux

package stack

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
)

// configure is Linux-only: newKernel refuses other systems before it.
func (k *kernel) configure([]netip.Prefix, int) error {
	return fmt.Errorf("kernel mode on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
