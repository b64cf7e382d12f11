package integration

import (
	"testing"
	"time"

	"github.com/aigrid/gridnet/discovery/baseline"
)

// memberlistBaseline runs memberlist alone with n members (see package
// baseline): the time until every member knows all n, then the time until
// a member shut down without leaving is gone everywhere. Each phase is
// bounded by two minutes; memberlist alone can leave stragglers until its
// next push/pull, and then the bound is what is reported.
func memberlistBaseline(b *testing.B, n int) fabricTimes {
	f, err := baseline.Run(n, 2*time.Minute, true)
	if err != nil {
		b.Fatal(err)
	}
	return fabricTimes{Mesh: f.Converged, Removal: f.Removed}
}
