package node

import (
	"fmt"
	"time"

	"github.com/aigrid/gridnet/overlay"
)

// RefusalView is a refusal this node received, in Status.
type RefusalView struct {
	// Peer is the refuser's certificate name; empty if this node did not
	// verify it (it refused this node's answer, or was busy).
	Peer        string    `json:"peer,omitempty"`
	Endpoint    string    `json:"endpoint"`
	Reason      string    `json:"reason"`
	Description string    `json:"description"`
	At          time.Time `json:"at"`
	Count       uint64    `json:"count"`
}

// refusalViews is the overlay's refusal records for Status.
func refusalViews(rs []overlay.Refusal) []RefusalView {
	out := make([]RefusalView, 0, len(rs))
	for _, r := range rs {
		out = append(out, RefusalView{
			Peer: r.Name, Endpoint: r.Endpoint.String(), Reason: r.Code.String(),
			Description: r.Code.Description(), At: r.At, Count: r.Count,
		})
	}
	return out
}

// describeRefusal says who refused this node, why and when.
func describeRefusal(r overlay.Refusal, now time.Time) string {
	who := r.Endpoint.String()
	if r.Name != "" {
		who = fmt.Sprintf("%s at %s", r.Name, r.Endpoint)
	}
	return fmt.Sprintf("%s refused this node %s ago (%s): %s", who, now.Sub(r.At).Round(time.Second), r.Code, r.Code.Description())
}
