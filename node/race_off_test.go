//go:build !race

package node

// concurrentConns is how many connections TestProxyManyConcurrentConnections
// holds open at once, as the issue asks.
const concurrentConns = 1000

// largeTransferSize is what TestForwardCarriesLargeTransferIntact carries
// through forward: 1 GiB, as the issue asks (run by `make test`'s line
// without the race detector).
const largeTransferSize = 1 << 30
