//go:build race

package node

// concurrentConns is how many connections TestProxyManyConcurrentConnections
// holds open at once: 200 under -race, whose per-goroutine cost (and
// limit on live goroutines) makes 1,000 a test of the detector.
const concurrentConns = 200
