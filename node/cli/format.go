package cli

import "fmt"

// humanBytes writes a byte count for people, in binary units as ls -h and
// ip -h do: "812 B", "1.2 KiB", "34.5 MiB", "2.0 GiB". Machine-readable
// output (--json) keeps the exact number.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	if v >= 1023.95 && exp < 5 { // would print as "1024.0"
		v /= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[exp])
}
