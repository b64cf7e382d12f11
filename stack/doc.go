// Package stack is a gridnet node's virtual network interface: the
// tun.Device that wireguard-go reads and writes, and the network stack that
// applications use to reach other nodes over the overlay.
//
// The package knows nothing about identities or rules. It runs a Filter
// (Hooks) on every packet crossing the device and counts what it accepts and
// drops; the firewall plugs in there and is swapped atomically with
// Stack.SetHooks.
//
//	peer ─ wireguard-go decrypt ─► Device().Write ─► Hooks.Inbound  ─► stack
//	peer ◄ wireguard-go encrypt ◄─ Device().Read  ◄─ Hooks.Outbound ◄─ stack
//
// # Modes
//
// Userspace runs gVisor's TCP/IP stack in-process; the package owns the
// stack and its link endpoint (a gVisor channel endpoint with segmentation
// offload, see Offload), so it controls
// shutdown: Close stops gVisor's goroutines before the device's queue is
// closed, and gVisor never blocks on a reader. It needs no privilege and touches nothing on the host; only
// this process reaches the overlay, through Stack.DialContext, ListenTCP,
// ListenUDP and Ping. Its TCP connections are *TCPConn: besides net.Conn
// they offer CloseWrite, SetLinger (0: Close sends a RST) and errors that
// errors.Is matches with the kernel's errnos (ECONNRESET, ECONNREFUSED),
// so relays (package stack/relay) treat them as host sockets.
//
// Kernel creates a real TUN interface (default name "gridnet0"), assigns the
// overlay addresses with their prefix (which makes the kernel route the
// overlay prefix through the interface), sets the MTU and brings the link up
// through rtnetlink (no iproute2 needed on the host). Every process on the host can then use the overlay; the
// Stack methods use the host stack bound to the overlay addresses. Closing
// the Stack closes the TUN device, which removes the interface together with
// its addresses and routes. It needs CAP_NET_ADMIN and /dev/net/tun.
//
// # MTU
//
// The default MTU is DefaultMTU, 1280 bytes. It is the IPv6 minimum link
// MTU, so one value serves IPv4 and IPv6 overlays, and after WireGuard adds
// its 60 (IPv4) or 80 (IPv6) bytes of outer headers the UDP datagrams stay at
// most 1360 bytes. Those cross cloud networks (1460 on GCP, 1500 elsewhere),
// PPPoE links and nested tunnels without IP fragmentation and without relying
// on path-MTU discovery, whose ICMP messages are often filtered. Tailscale and
// NetBird chose the same value. Config.MTU accepts MinMTU (576) to MaxMTU
// (9000), and at least 1280 when any overlay address is IPv6.
//
// # Why large transfers do not stall
//
// Every packet that crosses the device is at most the MTU, so WireGuard never
// has to send an encrypted datagram the path cannot carry:
//
//   - TCP segment size is derived from the MTU at both ends. gVisor computes
//     its MSS from the NIC MTU (MTU minus IP and TCP headers, 1240 for IPv4 at
//     1280) and announces it in its SYN; the Linux kernel does the same from
//     the TUN interface's MTU. Each side also caps what it sends at the MSS
//     the other announced, so neither side ever builds a larger segment; no
//     explicit MSS clamping is needed for traffic that ends on the node.
//   - UDP and ICMP datagrams larger than the MTU are fragmented by the
//     sending stack (gVisor or kernel) before they reach the device. In
//     kernel mode, a local socket that forbids fragmentation gets EMSGSIZE,
//     i.e. the kernel's local "fragmentation needed"/"packet too big" signal,
//     and shrinks its packets, so path-MTU discovery never waits for an ICMP
//     message from the network.
//   - With the kernel's TCP segmentation offload the TUN hands wireguard-go
//     super-packets; wireguard-go's tun package splits them into MTU-sized
//     segments inside Read, before the hooks see them.
//   - In userspace mode with offload on (Config.NoOffload unset), gVisor's
//     TCP builds segments of up to 64 KiB; the device splits each into
//     MTU-sized packets inside Read, before the hooks see them, as the
//     kernel's TUN offload does above.
//
// # Offload (userspace mode)
//
// Per-packet work in gVisor dominates the userspace stack's cost, so the
// device moves TCP data in large segments on the stack's side and in
// MTU-sized packets on WireGuard's side:
//
//   - Outbound (gso.go): the link endpoint advertises host GSO; gVisor hands
//     it TCP segments of up to 64 KiB with a partial checksum, and Read cuts
//     them into MTU-sized packets straight into wireguard-go's buffers, with
//     sequence numbers, lengths, IPv4 IDs, flags (FIN and PSH on the last,
//     CWR on the first) and checksums of their own.
//   - Inbound (gro.go): Write merges in-order data segments of one TCP flow
//     within a batch into one segment before injecting it, with a checksum
//     derived from the segments' so that gVisor verifies every byte once.
//     Out-of-order, retransmitted and control segments (SYN, FIN, RST, URG),
//     IP options and fragments are never merged.
//
// Both happen inside the device, below the hook layer: the Outbound hook
// judges each packet after the split and the Inbound hook each packet
// before the merge, so filters see exactly the packets that cross the
// device and give exactly the verdicts they would give without offload.
// Nothing per packet allocates on either path.
//
// Forwarding traffic from other networks (subnet routing) would need MSS
// clamping on forwarded SYNs; this package carries only the node's own
// traffic.
//
// # Hook layer contract
//
// Filters always judge packets of at most the MTU, the packets that cross
// the device, whatever the offload (see Offload). Filters are called from
// several goroutines at once, in batches, and must
// neither block nor allocate; the hook layer itself allocates nothing per
// packet. Packets that are not well-formed IPv4/IPv6 (see PacketAddrs) are
// dropped and counted as invalid before any Filter sees them. Dropped packets
// are never errors: a Write whose packets are all dropped succeeds, and a
// Read whose whole batch is dropped reads the next batch.
package stack
