//go:build race

package discovery

// raceEnabled: the race detector slows the in-process fabrics several
// times, so time bounds that are goals without it get headroom with it.
const raceEnabled = true
