// Package proxy is a SOCKS5 and HTTP proxy into the overlay, for programs
// that know nothing of gridnet: curl --socks5-hostname, ALL_PROXY,
// HTTP_PROXY/HTTPS_PROXY.
//
// A Server reaches destinations through a Dialer and resolves names
// through a Resolver, both given by its user (package node: the node's
// stack, its admitted peers and gossip records); it knows nothing about
// nodes. It reaches the overlay networks (Config.Networks) and nothing
// else: any other destination is refused before the Dialer sees it, so a
// proxied connection can never leave through the host's own network.
//
// SOCKS5 (RFC 1928): CONNECT and, with a PacketDialer, UDP ASSOCIATE;
// BIND is answered "command not supported". Authentication: none, or
// username and password (RFC 1929), compared in constant time. HTTP:
// CONNECT to any port, and absolute-form plain http:// requests forwarded
// without hop-by-hop headers. Refusals use each protocol's own codes:
//
//	destination outside the overlay, or a rule forbids it  0x02  403
//	unknown name, no node holds the address                0x04  502
//	connection refused                                     0x05  502
//	no answer within the connect timeout                   0x04  504
//
// Every listener has its own relay.Group: connections beyond MaxConns
// are refused at once while the others are served, idle connections are
// closed, and relayed bytes pass with half-close, reset and backpressure
// as over a real network (relay.Pipe).
package proxy
