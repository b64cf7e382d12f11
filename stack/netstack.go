package stack

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// netstackNIC is the ID of the single NIC of the userspace stack.
const netstackNIC tcpip.NICID = 1

// netstackQueueLen is the default capacity of the outbound packet queue
// between gVisor and Read (the channel endpoint's queue). When it is full
// gVisor drops the packet as a NIC with a full transmit ring would; TCP
// recovers. docs/TUNING.md has the figures that chose it.
const netstackQueueLen = 1024

// Per-connection TCP buffer limits of the userspace stack by default (see
// setup and docs/TUNING.md).
const (
	tcpMaxReceiveBuffer = 8 << 20
	tcpMaxSendBuffer    = 6 << 20
)

// netstackBatch is the default number of packets Read moves per call at
// most, and the batch size the device reports (docs/TUNING.md).
const netstackBatch = 128

// Tuning overrides the userspace stack's defaults, which were chosen by
// measurement (docs/TUNING.md). It is there to measure alternatives and
// for troubleshooting; the zero value is the defaults, and kernel mode
// ignores it.
type Tuning struct {
	// CongestionControl is gVisor's TCP congestion control, "reno" or
	// "cubic"; "" means the default (reno).
	CongestionControl string
	// RACK turns RACK-TLP loss detection on (gVisor's own default). The
	// default is off: TCP marks a segment lost by SACK and three
	// duplicate acknowledgements, and by its retransmission timer; under
	// a packet cap that drops (the firewall's per-peer cap), RACK made one
	// stream 6–13 times slower (docs/TUNING.md).
	RACK bool
	// QueueLen is the capacity of the outbound packet queue; 0 means
	// 1024.
	QueueLen int
	// Batch is the most packets one Read returns; 0 means 128.
	Batch int
	// MaxReceiveBuffer and MaxSendBuffer bound one connection's TCP
	// buffers, which grow with the measured rate up to them; 0 means
	// 8 MiB and 6 MiB.
	MaxReceiveBuffer, MaxSendBuffer int
}

// withDefaults returns t with its zero fields set to the defaults.
func (t Tuning) withDefaults() Tuning {
	if t.CongestionControl == "" {
		t.CongestionControl = "reno"
	}
	if t.QueueLen <= 0 {
		t.QueueLen = netstackQueueLen
	}
	if t.Batch <= 0 {
		t.Batch = netstackBatch
	}
	if t.MaxReceiveBuffer <= 0 {
		t.MaxReceiveBuffer = tcpMaxReceiveBuffer
	}
	if t.MaxSendBuffer <= 0 {
		t.MaxSendBuffer = tcpMaxSendBuffer
	}
	return t
}

// netstackDev is the userspace stack's tun.Device: a gVisor stack whose only
// NIC is a channel.Endpoint (wrapped by gsoEndpoint). Write injects packets
// into the stack, Read takes the packets gVisor sends out of the endpoint's
// queue.
//
// # Offload
//
// With offload on (the default), gVisor's TCP hands Read segments of up to
// 64 KiB, which Read splits into MTU-sized packets (gso.go), and Write
// merges in-order TCP segments of one flow within a batch before injecting
// them (gro.go). Both happen inside this device, below the hook layer: the
// hooks see exactly the MTU-sized packets that cross the device, as without
// offload. Every packet Read returns is at most the MTU.
//
// # Shutdown
//
// wireguard-go's tun/netstack moves outbound packets from a gVisor write
// notification into an unbuffered channel that Close closes without waiting
// for gVisor's goroutines; a TCP timer firing during Close could then send on
// the closed channel. netstackDev has no channel of its own that gVisor
// sends on: gVisor's goroutines only ever call channel.Endpoint's queue
// Write, which checks the queue's closed flag under the queue's read lock,
// while the queue's Close closes its channel under the write lock. Read
// receives from that queue (ReadContext) and is woken by ctx on Close. gVisor
// goroutines never block on the way out (a full queue drops), so no reader is
// needed for the stack to shut down: the old drain goroutine is gone.
//
// Close, in order:
//  1. takes mu for writing and sets closed: Writes in flight (injecting
//     inbound packets into the stack) finish first, later ones return
//     os.ErrClosed;
//  2. cancels ctx: blocked Reads return os.ErrClosed; then, under the
//     Read lock, releases a segment left half split;
//  3. removes the NIC, aborts every endpoint (stack.Close) and waits for
//     gVisor's worker goroutines (stack.Wait);
//  4. closes the endpoint (its queue refuses further packets and is
//     drained, releasing queued packet buffers);
//  5. closes the events channel (wireguard-go's event reader ends).
type netstackDev struct {
	ep      *gsoEndpoint
	stack   *gstack.Stack
	mtu     int
	offload bool
	tuning  Tuning // with its defaults set
	events  chan tun.Event

	rmu   sync.Mutex  // serializes Read: split holds a segment across calls
	split tcpSplitter // guarded by rmu

	stats offloadStats

	ctx    context.Context // done once Close starts
	cancel context.CancelFunc

	mu     sync.RWMutex // write-locked by Close, read-locked by Write
	closed bool         // guarded by mu

	closeOnce sync.Once
}

var _ tun.Device = (*netstackDev)(nil)

// offloadStats counts the work of the offload paths, added to once per
// Read or Write call.
type offloadStats struct {
	splitSegments atomic.Uint64 // segments larger than one packet, split by Read
	splitPackets  atomic.Uint64 // packets cut from them
	merges        atomic.Uint64 // merged segments injected by Write
	mergedPackets atomic.Uint64 // packets that went into them
}

// newNetstackDev creates the gVisor stack, gives its NIC the node addresses
// (as /32 and /128) and routes everything of their families to it. offload
// turns segmentation offload and coalescing on; tuning overrides defaults.
func newNetstackDev(addrs []netip.Addr, mtu int, offload bool, tuning Tuning) (*netstackDev, error) {
	tuning = tuning.withDefaults()
	s := gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	ctx, cancel := context.WithCancel(context.Background())
	d := &netstackDev{
		ep:      &gsoEndpoint{Endpoint: channel.New(tuning.QueueLen, uint32(mtu), ""), offload: offload},
		stack:   s,
		mtu:     mtu,
		offload: offload,
		tuning:  tuning,
		events:  make(chan tun.Event, 1),
		ctx:     ctx,
		cancel:  cancel,
	}
	if err := d.setup(addrs); err != nil {
		d.Close()
		return nil, err
	}
	d.events <- tun.EventUp
	return d, nil
}

func (d *netstackDev) setup(addrs []netip.Addr) error {
	// SACK and receive buffer auto-tuning are gVisor's defaults at the
	// version pinned; they are set here so that they stay on whatever its
	// defaults become.
	sack := tcpip.TCPSACKEnabled(true)
	if err := d.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fmt.Errorf("enable TCP SACK: %v", err)
	}
	// Buffers: the receive buffer is auto-tuned (grows with the measured
	// rate) up to MaxReceiveBuffer, and the send buffer may grow to
	// MaxSendBuffer (docs/TUNING.md: held at 1 MiB, one stream ran at
	// 0.80×; the ceiling is for paths with a longer round trip).
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: min(tcp.DefaultReceiveBufferSize, d.tuning.MaxReceiveBuffer), Max: d.tuning.MaxReceiveBuffer}
	if err := d.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return fmt.Errorf("set TCP receive buffer range: %v", err)
	}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: min(tcp.DefaultSendBufferSize, d.tuning.MaxSendBuffer), Max: d.tuning.MaxSendBuffer}
	if err := d.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return fmt.Errorf("set TCP send buffer range: %v", err)
	}
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	if err := d.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &moderate); err != nil {
		return fmt.Errorf("enable TCP receive buffer auto-tuning: %v", err)
	}
	cc := tcpip.CongestionControlOption(d.tuning.CongestionControl)
	if err := d.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &cc); err != nil {
		return fmt.Errorf("set TCP congestion control %q: %v", d.tuning.CongestionControl, err)
	}
	var recovery tcpip.TCPRecovery // no RACK
	if d.tuning.RACK {
		recovery = tcpip.TCPRACKLossDetection
	}
	if err := d.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &recovery); err != nil {
		return fmt.Errorf("set TCP loss detection: %v", err)
	}
	if err := d.stack.CreateNIC(netstackNIC, d.ep); err != nil {
		return fmt.Errorf("create NIC: %v", err)
	}
	var has4, has6 bool
	for _, a := range addrs {
		pa := tcpip.ProtocolAddress{
			Protocol:          ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix(),
		}
		if a.Is6() {
			pa.Protocol = ipv6.ProtocolNumber
		}
		if err := d.stack.AddProtocolAddress(netstackNIC, pa, gstack.AddressProperties{}); err != nil {
			return fmt.Errorf("add address %v: %v", a, err)
		}
		has4, has6 = has4 || a.Is4(), has6 || a.Is6()
	}
	if has4 {
		d.stack.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: netstackNIC})
	}
	if has6 {
		d.stack.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: netstackNIC})
	}
	return nil
}

// File returns nil: there is no file descriptor behind the device.
func (d *netstackDev) File() *os.File { return nil }

// MTU returns the NIC MTU.
func (d *netstackDev) MTU() (int, error) { return d.mtu, nil }

// Name returns a fixed name; the device has no kernel interface.
func (d *netstackDev) Name() (string, error) { return "netstack", nil }

// Events delivers tun.EventUp once and is closed by Close.
func (d *netstackDev) Events() <-chan tun.Event { return d.events }

// BatchSize is the largest batch Read returns.
func (d *netstackDev) BatchSize() int { return d.tuning.Batch }

// Write injects each packet (starting at offset) into the stack; with
// offload on, in-order TCP segments of one flow are merged first (gro.go).
// Packets are copied; bufs can be reused when Write returns. A buffer
// shorter than offset fails with EINVAL and a packet that is neither IPv4
// nor IPv6 with EAFNOSUPPORT; the packets before it are injected and
// counted.
func (d *netstackDev) Write(bufs [][]byte, offset int) (int, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return 0, os.ErrClosed
	}
	var g groBatch
	for start := 0; start < len(bufs); start += groWindow {
		end := min(start+groWindow, len(bufs))
		var err error
		empty := 0
		for i := start; i < end; i++ {
			if offset < 0 || offset > len(bufs[i]) {
				end, err = i, syscall.EINVAL
				break
			}
			if len(bufs[i]) == offset {
				empty++
			} else if v := ipVersion(bufs[i][offset:]); v != 4 && v != 6 {
				end, err = i, syscall.EAFNOSUPPORT
				break
			}
		}
		win := bufs[start:end]
		if !d.offload || len(win) == 1 { // nothing to merge
			for _, b := range win {
				d.inject(b[offset:])
			}
		} else {
			g.plan(win, offset)
			merges := 0
			for j := range g.nout {
				if !g.merged(j) {
					d.inject(win[g.out[j]][offset:])
					continue
				}
				// Headers and payload in views of their own: gVisor copies
				// the whole chunk under a header it reads while another
				// reference holds it, and the header's chunk is small.
				n := g.headerLen(win, offset, j)
				hv, pv := buffer.NewViewSize(n), buffer.NewViewSize(g.size(win, offset, j)-n)
				g.buildMerged(hv.AsSlice(), pv.AsSlice(), win, offset, j)
				buf := buffer.MakeWithView(hv)
				buf.Append(pv)
				d.injectBuffer(buf, win[g.out[j]][offset])
				merges++
			}
			if merges > 0 {
				d.stats.merges.Add(uint64(merges))
				d.stats.mergedPackets.Add(uint64(len(win) - empty - g.nout + merges))
			}
		}
		if err != nil {
			return end, err
		}
	}
	return len(bufs), nil
}

// inject copies the IP packet pkt into a packet buffer and delivers it to
// the stack. Empty packets are skipped.
func (d *netstackDev) inject(pkt []byte) {
	if len(pkt) == 0 {
		return
	}
	d.injectBuffer(buffer.MakeWithData(pkt), pkt[0])
}

// injectBuffer delivers the IP packet in buf, whose first byte is first, to
// the stack and releases buf.
func (d *netstackDev) injectBuffer(buf buffer.Buffer, first byte) {
	proto := header.IPv4ProtocolNumber
	if first>>4 == 6 {
		proto = header.IPv6ProtocolNumber
	}
	pb := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buf})
	d.ep.InjectInbound(proto, pb)
	pb.DecRef() // the stack took its own references
}

// Read blocks until gVisor sends at least one packet, then returns up to
// len(bufs) packets, each copied to bufs[i][offset:] with its length in
// sizes[i]. A large TCP segment (offload) is split into MTU-sized packets
// straight into bufs; when bufs run out, the rest of the segment comes
// first in the next Read. After Close it returns os.ErrClosed.
func (d *netstackDev) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := min(len(bufs), len(sizes))
	if n == 0 {
		return 0, nil
	}
	d.rmu.Lock()
	defer d.rmu.Unlock()
	if d.ctx.Err() != nil {
		return 0, os.ErrClosed
	}
	k := d.splitInto(bufs, sizes, offset, 0, n)
	for k == 0 {
		pkt := d.ep.ReadContext(d.ctx)
		if pkt == nil {
			return 0, os.ErrClosed // ctx canceled or queue closed
		}
		k = d.take(pkt, bufs, sizes, offset, k, n)
	}
	for k < n && !d.split.busy {
		pkt := d.ep.Read()
		if pkt == nil {
			break
		}
		k = d.take(pkt, bufs, sizes, offset, k, n)
	}
	return k, nil
}

// take moves pkt into bufs from index k on and returns the next free index:
// a packet as it is, or any TCP segment gVisor sent with GSO options (it may
// be larger than the MTU, and its checksum is partial) through the
// splitter. It takes ownership of pkt. Called with rmu held.
func (d *netstackDev) take(pkt *gstack.PacketBuffer, bufs [][]byte, sizes []int, offset, k, n int) int {
	if pkt.GSOOptions.Type == gstack.GSONone {
		if copyPacket(bufs[k], sizes, k, offset, pkt) {
			k++
		}
		return k
	}
	if size := pkt.Size(); size <= d.mtu && pkt.Data().Size() <= int(pkt.GSOOptions.MSS) && offset >= 0 && offset+size <= len(bufs[k]) {
		// One packet (an ACK, a small write): copy it and complete its
		// checksum, no splitting. A segment that fits the MTU but carries
		// more than the MSS (a peer that asked for smaller segments) is
		// split like any other.
		if copyPacket(bufs[k], sizes, k, offset, pkt) && completeTCPChecksum(bufs[k][offset:offset+size]) {
			k++
		}
		return k
	}
	views, skip := pkt.AsViewList()
	if !d.split.start(viewCursor(views.Front(), skip), pkt.Size(), int(pkt.GSOOptions.MSS), d.mtu) {
		pkt.DecRef() // not a TCP segment over IPv4/IPv6: cannot happen with gVisor's TCP
		return k
	}
	d.split.pkt = pkt
	if n := d.split.packets(); n > 1 {
		d.stats.splitSegments.Add(1)
		d.stats.splitPackets.Add(uint64(n))
	}
	return d.splitInto(bufs, sizes, offset, k, n)
}

// splitInto writes the pending segment's next packets into bufs[k:n] and
// returns the next free index, releasing the segment when it is done.
// Called with rmu held.
func (d *netstackDev) splitInto(bufs [][]byte, sizes []int, offset, k, n int) int {
	for k < n && d.split.busy {
		var dst []byte
		if offset >= 0 && offset <= len(bufs[k]) {
			dst = bufs[k][offset:]
		}
		if m := d.split.next(dst); m > 0 {
			sizes[k] = m
			k++
		}
	}
	if !d.split.busy && d.split.pkt != nil {
		d.split.pkt.DecRef()
		d.split.pkt = nil
	}
	return k
}

// copyPacket copies pkt to buf[offset:], records its size in sizes[i] and
// releases pkt. It reports false (dropping the packet) when buf is too small,
// which cannot happen with wireguard-go's buffers (larger than MaxMTU).
func copyPacket(buf []byte, sizes []int, i, offset int, pkt *gstack.PacketBuffer) bool {
	defer pkt.DecRef()
	size := pkt.Size()
	if offset < 0 || offset+size > len(buf) {
		return false
	}
	dst := buf[offset : offset+size]
	views, skip := pkt.AsViewList()
	for v := views.Front(); v != nil && len(dst) > 0; v = v.Next() {
		s := v.AsSlice()
		if skip >= len(s) {
			skip -= len(s)
			continue
		}
		s = s[skip:]
		skip = 0
		dst = dst[copy(dst, s):]
	}
	sizes[i] = size
	return true
}

// Close shuts the stack down; see the type's documentation for the order.
// It is idempotent.
func (d *netstackDev) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.mu.Unlock()
		d.cancel()
		d.rmu.Lock() // a Read in progress returns: ctx is done
		if d.split.pkt != nil {
			d.split.pkt.DecRef()
			d.split.pkt, d.split.busy = nil, false
		}
		d.rmu.Unlock()
		d.stack.RemoveNIC(netstackNIC)
		d.stack.Close()
		d.stack.Wait()
		d.ep.Close()
		close(d.events)
	})
	return nil
}
