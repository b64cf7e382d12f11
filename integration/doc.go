// Package integration holds gridnet's multi-node tests: in-process fabrics
// of userspace nodes on 127.0.0.1 (no privileges needed) and real gridnet
// processes in network namespaces joined by veth pairs (root only; skipped
// with the reason elsewhere). Traffic goes only to loopback and to the
// namespaces a test makes itself.
package integration
