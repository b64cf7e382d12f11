// Package buildinfo reads what the Go toolchain recorded about the build
// of the running binary, for `gridnet version` (node/cli) and the
// gridnet_build_info metric (node).
package buildinfo

import "runtime/debug"

// Revision is the commit the binary was built from (12 hex digits,
// "+dirty" for a modified checkout), or "" when the build did not record
// one.
func Revision(info *debug.BuildInfo) string {
	var rev, modified string
	for _, kv := range info.Settings {
		switch kv.Key {
		case "vcs.revision":
			rev = kv.Value
		case "vcs.modified":
			modified = kv.Value
		}
	}
	if rev == "" {
		return ""
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified == "true" {
		rev += "+dirty"
	}
	return rev
}
