// Package relay carries connections between two networks as the network
// between two endpoints would: it is what gridnet's serve and forward
// entries (a local service exposed on the overlay, a local port carried to
// an overlay service) and its proxies are built on. It knows nothing about
// the overlay: a relay gets a listener (or a UDP socket) and a DialFunc.
//
// Pipe joins two connections: half-closes (CloseWrite), resets
// (SetLinger(0)) and backpressure pass through, and idle connections are
// closed. A Group holds the connections of one listener: it caps them (in
// all and per source address), refuses what is beyond the caps at once
// while the others are served, and closes everything on Close. ServeTCP
// and ServeUDP are the accept loops of TCP and UDP relays.
package relay
