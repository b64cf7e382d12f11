package overlay

import (
	"runtime"
	"time"

	"github.com/aigrid/gridnet/overlay/internal/inflight"
	"golang.zx2c4.com/wireguard/tun"
)

// The backlog bound: how many packets may wait inside wireguard-go in each
// direction, and how long an unseen packet is counted (package inflight).
//
// wireguard-go holds every packet in a 64 KiB buffer and queues up to 1,024
// batches per queue, so without a bound the packets of a few bulk TCP
// flows pile up inside the device until the flows' windows stop them.
// Measured on the namespace benchmark (`make bench-netns`, kernel mode, 4
// streams, 2 cores): 250–570 MiB of RSS, or, under the node's 128 MiB soft
// memory limit, a garbage collection every 5–8 ms and 0.62× raw
// wireguard-go's throughput at 1.5× its CPU per byte. With 128 packets per
// direction (8 MiB of buffers, plus the batch being read: wireguard-go
// reads up to 128 at once) the heap stays near 42 MiB, the collector runs
// every few seconds, and the same benchmark runs at 1.03–1.12× raw
// wireguard-go's throughput at 0.87–0.94× its CPU per byte, with no
// retransmits; 64 and 256 did no better. wireguard-go encrypts and
// decrypts on every core, so the bound grows with them: backlogPerCPU per
// core, at least backlogMin.
//
// The horizon only matters for packets wireguard-go drops unseen (no peer
// for a destination, a failed decryption, an inner source outside the
// peer's addresses): each holds a place for at most the horizon, and only
// datagrams from an admitted peer's exact endpoint are counted. Whoever
// makes packets go missing in numbers (four times the bound more packets
// in than out within 100 ms) turns the bound off for a second (package
// inflight): the node then runs as it would without it, so the bound gives
// no one a way to slow it.
const (
	backlogPerCPU  = 64
	backlogMin     = 128
	backlogHorizon = 2 * time.Millisecond
)

// DataPath describes the overlay's side of the data path: the UDP
// offloads of the underlay socket and the backlog bound inside
// wireguard-go.
type DataPath struct {
	// UDPSegmentation: the kernel offers UDP GSO for the underlay socket,
	// so wireguard-go sends a batch of datagrams to one peer in one call.
	UDPSegmentation bool
	// UDPCoalescing: the kernel offers UDP GRO, so wireguard-go receives
	// runs of datagrams from one peer in one buffer.
	UDPCoalescing bool
	// BacklogLimit is how many packets may wait inside wireguard-go in
	// each direction.
	BacklogLimit int
	// BacklogWaits counts the times a reader (the TUN's, or the
	// underlay socket's) waited for room, both directions.
	BacklogWaits uint64
	// BacklogExpired counts packets wireguard-go dropped without a trace
	// (or held longer than the horizon), no longer counted.
	BacklogExpired uint64
	// BacklogBypasses counts the times so many packets went missing that
	// the bound stepped aside for a while (package inflight).
	BacklogBypasses uint64
}

// DataPath returns the overlay's data-path description and counters.
func (o *Overlay) DataPath() DataPath {
	d := DataPath{UDPSegmentation: o.udpGSO, UDPCoalescing: o.udpGRO, BacklogLimit: o.backlogLimit}
	for _, l := range []*inflight.Limiter{o.bind.received, o.bind.sent} {
		if l == nil {
			continue
		}
		w, e, by := l.Stats()
		d.BacklogWaits += w
		d.BacklogExpired += e
		d.BacklogBypasses += by
	}
	return d
}

// backlogTUN counts the packets wireguard-go reads from the TUN (let into
// the send backlog) and writes to it (out of the receive backlog), and
// makes its TUN reader wait while the send backlog is full.
type backlogTUN struct {
	tun.Device
	sent, received *inflight.Limiter
	room           *inflight.Waiter
}

// boundBacklog bounds both directions' backlogs of the device built on dev:
// the Bind counts received datagrams and sent packets, the returned TUN
// the rest.
func (o *Overlay) boundBacklog(dev tun.Device) tun.Device {
	limit, horizon := max(backlogMin, backlogPerCPU*runtime.GOMAXPROCS(0)), backlogHorizon
	o.backlogLimit = limit
	o.udpGSO, o.udpGRO = probeUDPOffload()
	o.bind.received = inflight.New(limit, horizon, nil)
	o.bind.sent = inflight.New(limit, horizon, nil)
	return &backlogTUN{Device: dev, sent: o.bind.sent, received: o.bind.received, room: o.bind.sent.NewWaiter()}
}

// Read waits for room in the send backlog, then reads a batch.
// wireguard-go reads from one goroutine, which owns the Waiter.
func (t *backlogTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.room.Wait()
	n, err := t.Device.Read(bufs, sizes, offset)
	t.sent.Add(n)
	return n, err
}

// Write counts the packets out of the receive backlog (those the firewall
// drops included: they are out of wireguard-go) and writes them.
func (t *backlogTUN) Write(bufs [][]byte, offset int) (int, error) {
	t.received.Done(len(bufs))
	return t.Device.Write(bufs, offset)
}
