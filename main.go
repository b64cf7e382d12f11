// Command gridnet is a zero-trust overlay network node: it joins hosts into
// one fabric over mutually authenticated WireGuard tunnels. Its commands
// live in package node/cli, the node itself in package node; see
// README.md.
package main

import (
	"os"

	"github.com/aigrid/gridnet/node/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], cli.StdEnv()))
}
