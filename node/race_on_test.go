//go:build race

package node

// concurrentConns is how many connections TestProxyManyConcurrentConnections
// holds open at once: 200 under -race, whose per-goroutine cost (and
// limit on live goroutines) makes 1,000 a test of the detector.
const concurrentConns = 200

// largeTransferSize is what TestForwardCarriesLargeTransferIntact carries
// through forward under -race: 64 MiB, since the detector slows every byte
// about tenfold; `make test` runs the 1 GiB case without it.
const largeTransferSize = 64 << 20
