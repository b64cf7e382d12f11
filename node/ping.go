package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/aigrid/gridnet/overlay"
	"github.com/aigrid/gridnet/policy"
)

// pingTimeout is how long the control API waits for one echo reply.
const pingTimeout = 2 * time.Second

// pingFacts is what the node knows about a ping target that did not
// answer; explainNoReply turns it into a sentence.
type pingFacts struct {
	addr netip.Addr
	own  bool // addr is this node's
	// peer is the admitted peer holding addr; empty if none.
	peer string
	// fwDrop is why this node's firewall drops an echo request to peer,
	// empty if it passes.
	fwDrop      string
	quarantined bool
	state       overlay.PeerState
	// refusal describes the last refusal by peer (or, without a peer, by
	// anyone), empty if none.
	refusal string
}

// explainNoReply says why an echo request probably got no reply.
func explainNoReply(f pingFacts) string {
	withRefusal := func(s string) string {
		if f.refusal != "" {
			return s + "; " + f.refusal
		}
		return s
	}
	switch {
	case f.own:
		return "this is the node's own address: its own stack did not answer"
	case f.peer == "":
		return withRefusal(fmt.Sprintf("no route to %s: no admitted peer holds this address", f.addr))
	case f.fwDrop != "":
		return fmt.Sprintf("this node's firewall drops the echo request to %s: %s", f.peer, f.fwDrop)
	case f.quarantined:
		return fmt.Sprintf("this node's firewall has quarantined %s: its packets, the echo replies too, are dropped until the cool-down ends", f.peer)
	case f.state != overlay.PeerConnected:
		return withRefusal(fmt.Sprintf("no WireGuard session with %s (admitted, state %s)", f.peer, f.state))
	}
	return fmt.Sprintf("tunnel up, no reply: %s's firewall probably does not allow ICMP", f.peer)
}

// pingFacts gathers what explainNoReply needs about addr.
func (n *Node) pingFacts(addr netip.Addr) pingFacts {
	f := pingFacts{addr: addr}
	for _, a := range n.Identity().Addresses {
		if a.Addr() == addr {
			f.own = true
			return f
		}
	}
	now := n.opts.Now()
	id, ok := n.ov.IdentityByAddr(addr)
	if !ok {
		if rs := n.ov.Refusals(); len(rs) > 0 {
			f.refusal = "the last refusal: " + describeRefusal(rs[0], now)
		}
		return f
	}
	f.peer = id.Name
	f.refusal = n.refusalBy(id.Name, now)
	for _, ps := range n.fw.Peers() {
		if ps.Name == id.Name {
			f.quarantined = ps.Quarantined
		}
	}
	d := n.fw.Check(policy.Query{Direction: policy.Outbound, Peer: peerInfo(id), Addr: addr, Proto: policy.ProtoICMP})
	if !d.Allowed {
		f.fwDrop = d.Reason
	}
	f.state = overlay.PeerAdmitted
	if ps, ok := n.ov.Peer(id.WireGuardKey); ok {
		f.state = ps.State
	}
	return f
}

// refusalBy describes the last refusal by the peer called name, empty if
// none is recorded.
func (n *Node) refusalBy(name string, now time.Time) string {
	for _, r := range n.ov.Refusals() {
		if r.Name == name {
			return describeRefusal(r, now)
		}
	}
	return ""
}

// explainUnresolved says why target (a name) has no overlay address here.
func (n *Node) explainUnresolved(target string) string {
	now := n.opts.Now()
	msg := fmt.Sprintf("no route to %q: no admitted peer has that name", target)
	for _, m := range n.Members() {
		if m.Name == target && !m.Admitted {
			msg = fmt.Sprintf("no route to %q: a gossip member (%s) that is not admitted", target, m.State)
		}
	}
	if r := n.refusalBy(target, now); r != "" {
		return msg + "; " + r
	}
	if rs := n.ov.Refusals(); len(rs) > 0 {
		return msg + "; the last refusal: " + describeRefusal(rs[0], now)
	}
	return msg
}

// pingOnce sends echo request seq to addr and returns its reply line: the
// round trip, or why there was none.
func (n *Node) pingOnce(ctx context.Context, addr netip.Addr, seq int) PingReply {
	reply := PingReply{Seq: seq, To: addr.String()}
	f := n.pingFacts(addr)
	if !f.own && f.peer == "" {
		// Nothing would carry the request: say so at once.
		reply.Error, reply.Hint = "no route", explainNoReply(f)
		return reply
	}
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	rtt, err := n.stack.Ping(ctx, addr, pingPayload)
	cancel()
	switch {
	case err == nil:
		reply.RTTms = float64(rtt.Microseconds()) / 1000
	case errors.Is(err, context.DeadlineExceeded):
		reply.Error = fmt.Sprintf("no reply within %s", pingTimeout)
		reply.Hint = explainNoReply(n.pingFacts(addr))
	default:
		reply.Error = err.Error()
	}
	return reply
}
