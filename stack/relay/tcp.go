package relay

import (
	"context"
	"errors"
	"net"
)

// DialFunc connects to a relay's target for a connection or session that
// came from from.
type DialFunc func(ctx context.Context, from net.Addr) (net.Conn, error)

// ServeTCP accepts connections on l within g's limits and relays each
// one to a connection that dial makes (within ConnectTimeout), with Pipe:
// half-closes, resets and backpressure pass through, idle connections are
// closed after IdleTimeout. A connection beyond the limits, or one whose
// target cannot be reached, is reset at once. ServeTCP returns nil when g
// is closed, or the error that ends l.
func ServeTCP(g *Group, l net.Listener, dial DialFunc) error {
	ln, err := g.Listen(l, nil) // closes l if g is closed
	if err != nil {
		return nil
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) && g.Context().Err() != nil {
				return nil
			}
			return err
		}
		if !g.Go(func() { relayTCP(g, c, dial) }) {
			c.Close()
			return nil
		}
	}
}

// relayTCP connects c to its target and pipes the two.
func relayTCP(g *Group, c net.Conn, dial DialFunc) {
	ctx := g.Context()
	if d := g.limits.ConnectTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	out, err := dial(ctx, c.RemoteAddr())
	if err != nil {
		if g.Context().Err() == nil {
			g.Warn("relay: target unreachable; connection reset", "from", c.RemoteAddr(), "err", err)
		}
		Abort(c)
		return
	}
	untrack, err := g.Track(out)
	if err != nil {
		c.Close()
		return
	}
	defer untrack()
	g.Pipe(c, out)
}
