//go:build !race

package node

// concurrentConns is how many connections TestProxyManyConcurrentConnections
// holds open at once, as the issue asks.
const concurrentConns = 1000
