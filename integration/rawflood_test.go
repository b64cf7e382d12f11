package integration

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// floodTun is a tun.Device whose Read never waits: every call fills the
// whole batch with new-flow packets from src to dst (UDP to udpPort from a
// fresh source port, and one in four a TCP SYN to tcpPort), so the
// WireGuard device on top of it sends as fast as it can encrypt. It plays
// an admitted peer whose software was changed to flood: no stack, no
// congestion control, no dial timeouts in the way.
type floodTun struct {
	src, dst         netip.Addr
	udpPort, tcpPort uint16

	events    chan tun.Event
	stop      chan struct{}                 // closed: Read stops producing
	resume    atomic.Pointer[chan struct{}] // set while paused; closed to resume
	closed    chan struct{}                 // closed by Close
	stopOnce  sync.Once
	closeOnce sync.Once
	made      atomic.Uint64
	srcPort   uint16
}

var _ tun.Device = (*floodTun)(nil)

const floodPayload = 64

func newFloodTun(src, dst netip.Addr, udpPort, tcpPort uint16) *floodTun {
	t := &floodTun{src: src, dst: dst, udpPort: udpPort, tcpPort: tcpPort,
		events: make(chan tun.Event, 1), stop: make(chan struct{}), closed: make(chan struct{}), srcPort: 1024}
	t.events <- tun.EventUp
	return t
}

// Stop makes Read stop producing packets (it then waits for Close).
func (t *floodTun) Stop() { t.stopOnce.Do(func() { close(t.stop) }) }

// Pause makes Read wait until Resume; the flood stops once wireguard-go's
// queues have drained.
func (t *floodTun) Pause() {
	ch := make(chan struct{})
	t.resume.CompareAndSwap(nil, &ch)
}

// Resume lets a paused Read produce again.
func (t *floodTun) Resume() {
	if ch := t.resume.Swap(nil); ch != nil {
		close(*ch)
	}
}

// Made returns how many packets Read produced.
func (t *floodTun) Made() uint64 { return t.made.Load() }

func (t *floodTun) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-t.stop:
		<-t.closed
		return 0, os.ErrClosed
	case <-t.closed:
		return 0, os.ErrClosed
	default:
	}
	if ch := t.resume.Load(); ch != nil {
		select {
		case <-*ch:
		case <-t.stop:
			<-t.closed
			return 0, os.ErrClosed
		case <-t.closed:
			return 0, os.ErrClosed
		}
	}
	for i := range bufs {
		t.srcPort++
		if t.srcPort < 1024 {
			t.srcPort = 1024
		}
		if t.srcPort%4 == 0 {
			sizes[i] = t.syn(bufs[i][offset:], t.srcPort)
		} else {
			sizes[i] = t.udp(bufs[i][offset:], t.srcPort)
		}
	}
	t.made.Add(uint64(len(bufs)))
	return len(bufs), nil
}

// ipv4 writes an IPv4 header for a payload of n bytes of proto.
func (t *floodTun) ipv4(b []byte, proto tcpip.TransportProtocolNumber, n int) header.IPv4 {
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + n), TTL: 64, Protocol: uint8(proto),
		SrcAddr: tcpip.AddrFrom4(t.src.As4()), DstAddr: tcpip.AddrFrom4(t.dst.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	return ip
}

func (t *floodTun) udp(b []byte, sport uint16) int {
	n := header.UDPMinimumSize + floodPayload
	ip := t.ipv4(b, header.UDPProtocolNumber, n)
	u := header.UDP(b[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: sport, DstPort: t.udpPort, Length: uint16(n)})
	clear(u.Payload())
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(n))
	u.SetChecksum(^u.CalculateChecksum(checksum.Checksum(u.Payload(), xsum)))
	return header.IPv4MinimumSize + n
}

func (t *floodTun) syn(b []byte, sport uint16) int {
	n := header.TCPMinimumSize
	ip := t.ipv4(b, header.TCPProtocolNumber, n)
	tc := header.TCP(b[header.IPv4MinimumSize:])
	tc.Encode(&header.TCPFields{SrcPort: sport, DstPort: t.tcpPort, SeqNum: uint32(sport) << 16,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(n))
	tc.SetChecksum(^tc.CalculateChecksum(xsum))
	return header.IPv4MinimumSize + n
}

// Write discards what the victim sends back (SYN-ACKs, resets, ICMP).
func (t *floodTun) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }

func (t *floodTun) File() *os.File           { return nil }
func (t *floodTun) MTU() (int, error)        { return 1280, nil }
func (t *floodTun) Name() (string, error)    { return "flood", nil }
func (t *floodTun) Events() <-chan tun.Event { return t.events }
func (t *floodTun) BatchSize() int           { return 128 }

func (t *floodTun) Close() error {
	t.closeOnce.Do(func() { close(t.closed); close(t.events) })
	return nil
}

// rawFlooder is a bare wireguard-go device that floods one peer through a
// floodTun.
type rawFlooder struct {
	dev *device.Device
	tun *floodTun
}

// startRawFlooder brings up a WireGuard device with privateKey on
// listenPort whose only peer is the victim (its WireGuard key, underlay
// endpoint and overlay address), and floods it at once.
func startRawFlooder(privateKey, victimKey [32]byte, listenPort uint16, victimEndpoint netip.AddrPort, src, victim netip.Addr) (*rawFlooder, error) {
	ft := newFloodTun(src, victim, 9200, 9100)
	dev := device.NewDevice(ft, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	cfg := fmt.Sprintf("private_key=%s\nlisten_port=%d\npublic_key=%s\nendpoint=%s\nallowed_ip=%s/32\n",
		hex.EncodeToString(privateKey[:]), listenPort, hex.EncodeToString(victimKey[:]), victimEndpoint, victim)
	if err := dev.IpcSet(cfg); err != nil {
		dev.Close()
		return nil, fmt.Errorf("configure flooder: %w", err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("flooder up: %w", err)
	}
	return &rawFlooder{dev: dev, tun: ft}, nil
}

// Close stops the flood and the device; it returns the packets made.
func (r *rawFlooder) Close() uint64 {
	r.tun.Stop()
	r.dev.Close()
	return r.tun.Made()
}

// Pause stops the flood until Resume.
func (r *rawFlooder) Pause() { r.tun.Pause() }

// Resume restarts a paused flood.
func (r *rawFlooder) Resume() { r.tun.Resume() }

// txBytes returns the device's transmitted bytes to its one peer.
func (r *rawFlooder) txBytes() uint64 {
	s, err := r.dev.IpcGet()
	if err != nil {
		return 0
	}
	var total uint64
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(line, "tx_bytes="); ok {
			n, _ := strconv.ParseUint(v, 10, 64)
			total += n
		}
	}
	return total
}
