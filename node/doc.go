// Package node is gridnet's Go API for embedding a node in a program, as
// Tailscale's tsnet does: the program joins a fabric as a node of its own
// and reaches the other nodes through it, with no privileges and nothing
// changed on the host.
//
// Start starts a node from Options made in code, or by OptionsFromVault
// from a vault that `gridnet cert import` or `gridnet cert issue
// --out-vault` filled. StartFromConfig starts one from the YAML config
// file `gridnet up` reads (docs/CONFIG.md); LoadConfig, ParseConfig,
// OptionsFromConfig and OptionsFromConfigKeys are its steps. A running
// Node offers:
//
//   - Dial, Listen and ListenPacket, net-style, on the node's own overlay
//     addresses, and Resolve for node names;
//   - ListenTLS, DialTLS, TLSClientConfig and PeerIdentity: mutual TLS
//     with the nodes' certificates, each side knowing the other's
//     verified identity;
//   - Identity, Addr and UnderlayPort to say who and where it is; Ping,
//     Peers, Members, Status and Firewall to look at the fabric; Admit
//     and AddPeer to reach a node by its underlay address;
//     ApplyCRL, PushCRL, ReloadFirewall and RenewCertificate to change
//     what the node trusts and allows;
//   - ServeControl, the control API the gridnet commands (status, ping,
//     events, ...) use, on a listener the program chooses;
//   - Close.
//
// The gridnet command line is package node/cli; node/nodetest is test
// support (a throwaway CA, nodes with test-only controls).
package node
