package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestRevision(t *testing.T) {
	settings := func(kv ...string) *debug.BuildInfo {
		info := &debug.BuildInfo{}
		for i := 0; i+1 < len(kv); i += 2 {
			info.Settings = append(info.Settings, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return info
	}
	for _, tc := range []struct {
		info *debug.BuildInfo
		want string
	}{
		{settings(), ""},
		{settings("vcs.modified", "true"), ""},
		{settings("vcs.revision", "0123456789abcdef0123"), "0123456789ab"},
		{settings("vcs.revision", "0123456789abcdef0123", "vcs.modified", "true"), "0123456789ab+dirty"},
		{settings("vcs.revision", "abc", "vcs.modified", "false"), "abc"},
	} {
		if got := Revision(tc.info); got != tc.want {
			t.Errorf("Revision(%v) = %q, want %q", tc.info.Settings, got, tc.want)
		}
	}
}
