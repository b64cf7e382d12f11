// Command gridnet is a zero-trust overlay network node: it joins hosts into
// one fabric over mutually authenticated WireGuard tunnels. All of its logic
// lives in package node; see README.md.
package main

import (
	"os"

	"github.com/aigrid/gridnet/node"
)

func main() {
	os.Exit(node.Main(os.Args[1:], node.StdEnv()))
}
