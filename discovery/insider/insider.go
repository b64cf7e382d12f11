// Package insider is test support: it plays a malicious member of a
// gridnet fabric, one that holds a valid certificate and runs modified
// code. It builds arbitrary memberlist messages (alive, suspect, dead,
// user messages, compound packets, push/pull streams) and arbitrary
// gridnet discovery messages (records, leave notices, states), signed
// with whatever key the caller holds, and sends them from the member's
// overlay address.
//
// It is written apart from package discovery, as an attacker would write
// it: from the wire formats. Tests that use it should also send one
// genuine message through it (signed by the right key) and see it
// accepted, so that a refusal they check for cannot come from a mistake
// in the forgery.
package insider

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// memberlist v0.7.0 message types (net.go).
const (
	mlPing         = 0
	mlSuspect      = 3
	mlAlive        = 4
	mlDead         = 5
	mlPushPull     = 6
	mlCompound     = 7
	mlUser         = 8
	mlHasLabel     = 244
	mlStateAlive   = 0
	mlStateDead    = 2
	protocolVsn    = 2 // memberlist's default protocol version
	protocolMinVsn = 1
	protocolMaxVsn = 5
)

// gridnet discovery message types and field tags (discovery/state.go and
// discovery/record.go).
const (
	msgRecord = 1
	msgLeave  = 4
	msgState  = 6

	recordFormat  = 1
	fieldName     = 1
	fieldVersion  = 2
	fieldCert     = 3
	fieldEndpoint = 4
	fieldGossip   = 5
	fieldSig      = 6

	stateFormat = 1
	stateFrom   = 1
	stateRecord = 2

	annName    = 2
	annVersion = 3
	leaveTime  = 7
	leaveSig   = 8
)

// Signature contexts of gridnet statements (discovery/sign.go).
const (
	recordContext = "gridnet discovery record v1\x00"
	leaveContext  = "gridnet discovery leave v1\x00"
)

// MaxIncarnation is the largest memberlist incarnation number: a
// refutation of it wraps to 0.
const MaxIncarnation = ^uint32(0)

// Alive is memberlist's alive message (field names are its wire names).
type Alive struct {
	Incarnation uint32
	Node        string
	Addr        []byte
	Port        uint16
	Meta        []byte
	Vsn         []uint8
}

// Suspect is memberlist's suspect message.
type Suspect struct {
	Incarnation uint32
	Node        string
	From        string
}

// Dead is memberlist's dead message; From == Node means "left".
type Dead struct {
	Incarnation uint32
	Node        string
	From        string
}

// NodeState is one node in a memberlist push/pull.
type NodeState struct {
	Name        string
	Addr        []byte
	Port        uint16
	Meta        []byte
	Incarnation uint32
	State       int
	Vsn         []uint8
}

type pushPullHeader struct {
	Nodes        int
	UserStateLen int
	Join         bool
}

type userMsgHeader struct {
	UserMsgLen int
}

// encode returns memberlist's encoding of v after a type byte.
func encode(msgType byte, v any) []byte {
	var buf bytes.Buffer
	buf.WriteByte(msgType)
	if err := codec.NewEncoder(&buf, &codec.MsgpackHandle{}).Encode(v); err != nil {
		panic(fmt.Sprintf("insider: encode: %v", err)) // plain structs always encode
	}
	return buf.Bytes()
}

// Vsn is the version vector an honest member sends.
func Vsn() []uint8 { return []uint8{protocolMinVsn, protocolMaxVsn, protocolVsn, 0, 0, 0} }

// AliveMsg is a memberlist alive message about node at addr.
func AliveMsg(node string, inc uint32, addr netip.AddrPort, meta []byte) []byte {
	return encode(mlAlive, &Alive{Incarnation: inc, Node: node, Addr: addr.Addr().AsSlice(), Port: addr.Port(), Meta: meta, Vsn: Vsn()})
}

// SuspectMsg is a memberlist suspect message about node.
func SuspectMsg(node string, inc uint32, from string) []byte {
	return encode(mlSuspect, &Suspect{Incarnation: inc, Node: node, From: from})
}

// DeadMsg is a memberlist dead message about node (a leave if from ==
// node).
func DeadMsg(node string, inc uint32, from string) []byte {
	return encode(mlDead, &Dead{Incarnation: inc, Node: node, From: from})
}

// UserMsg wraps a gridnet message as a memberlist user message.
func UserMsg(payload []byte) []byte { return append([]byte{mlUser}, payload...) }

// Compound packs several memberlist messages into one packet (at most
// 255, each under 64 KiB).
func Compound(msgs ...[]byte) []byte {
	b := []byte{mlCompound, byte(len(msgs))}
	for _, m := range msgs {
		b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
	}
	for _, m := range msgs {
		b = append(b, m...)
	}
	return b
}

func appendField(b []byte, tag uint64, v []byte) []byte {
	b = binary.AppendUvarint(b, tag)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// Leave is a gridnet leave notice for name signed by key (type byte
// included). Signed by name's own identity key it is genuine; signed by
// any other key it is a forgery a receiver must refuse.
func Leave(key ed25519.PrivateKey, name string, version uint64, at time.Time) []byte {
	b := []byte{msgLeave}
	b = appendField(b, annName, []byte(name))
	b = appendField(b, annVersion, u64(version))
	b = appendField(b, leaveTime, u64(uint64(at.UnixNano())))
	msg := append([]byte(leaveContext), b[1:]...)
	return appendField(b, leaveSig, ed25519.Sign(key, msg))
}

// UnsignedLeave is a leave notice as gridnet sent it before statements
// were signed: name and version only.
func UnsignedLeave(name string, version uint64) []byte {
	b := []byte{msgLeave}
	b = appendField(b, annName, []byte(name))
	return appendField(b, annVersion, u64(version))
}

// Record is a node record as a member would gossip it.
type Record struct {
	Name        string
	Certificate []byte
	Endpoints   []netip.AddrPort
	Version     uint64
	// Gossip is the overlay ip:port the record's owner gossips on.
	Gossip netip.AddrPort
}

// EncodeRecord encodes r and signs it with key (nil: unsigned, the
// format before records were signed).
func EncodeRecord(r Record, key ed25519.PrivateKey) []byte {
	b := []byte{recordFormat}
	b = appendField(b, fieldName, []byte(r.Name))
	b = appendField(b, fieldVersion, u64(r.Version))
	b = appendField(b, fieldCert, r.Certificate)
	for _, ep := range r.Endpoints {
		v, _ := ep.MarshalBinary()
		b = appendField(b, fieldEndpoint, v)
	}
	if r.Gossip.IsValid() {
		v, _ := r.Gossip.MarshalBinary()
		b = appendField(b, fieldGossip, v)
	}
	if key != nil {
		b = appendField(b, fieldSig, ed25519.Sign(key, append([]byte(recordContext), b...)))
	}
	return b
}

// RecordMsg is a gossip message carrying one encoded record.
func RecordMsg(encoded []byte) []byte { return append([]byte{msgRecord}, encoded...) }

// State is a gridnet push/pull state (the user state of a push/pull, or
// the body of a pull answer) from the named sender holding the encoded
// records.
func State(from string, records ...[]byte) []byte {
	b := []byte{stateFormat}
	b = appendField(b, stateFrom, []byte(from))
	for _, r := range records {
		b = appendField(b, stateRecord, r)
	}
	return b
}

// StateMsg is a pull answer carrying state (sent over a stream).
func StateMsg(state []byte) []byte { return append([]byte{msgState}, state...) }

// Member is the malicious member: its name and keys, and the overlay
// network it sends from (its own overlay address: the receiving
// transport knows it).
type Member struct {
	// Name is the member's node name (its certificate's).
	Name string
	// Key is the member's own identity key.
	Key ed25519.PrivateKey
	// Packets is a UDP socket on the member's overlay address.
	Packets net.PacketConn
	// Dial opens a stream from the member's overlay address.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// Send sends one memberlist packet to an overlay ip:port.
func (m *Member) Send(to netip.AddrPort, packet []byte) error {
	if _, err := m.Packets.WriteTo(packet, net.UDPAddrFromAddrPort(to)); err != nil {
		return fmt.Errorf("insider: send to %s: %w", to, err)
	}
	return nil
}

// SendUserStream sends a gridnet message over a stream, as memberlist's
// SendReliable does.
func (m *Member) SendUserStream(ctx context.Context, to netip.AddrPort, payload []byte) error {
	c, err := m.Dial(ctx, "tcp", to.String())
	if err != nil {
		return fmt.Errorf("insider: dial %s: %w", to, err)
	}
	defer c.Close()
	b := encode(mlUser, &userMsgHeader{UserMsgLen: len(payload)})
	if _, err := c.Write(append(b, payload...)); err != nil {
		return fmt.Errorf("insider: user stream to %s: %w", to, err)
	}
	return nil
}

// PushPull opens a stream to an overlay ip:port and sends a push/pull
// with the given memberlist nodes and gridnet user state; it returns the
// answer's nodes and user state (if the other side answers within ctx).
func (m *Member) PushPull(ctx context.Context, to netip.AddrPort, nodes []NodeState, userState []byte, join bool) ([]NodeState, []byte, error) {
	c, err := m.Dial(ctx, "tcp", to.String())
	if err != nil {
		return nil, nil, fmt.Errorf("insider: dial %s: %w", to, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	var buf bytes.Buffer
	buf.WriteByte(mlPushPull)
	enc := codec.NewEncoder(&buf, &codec.MsgpackHandle{})
	if err := enc.Encode(&pushPullHeader{Nodes: len(nodes), UserStateLen: len(userState), Join: join}); err != nil {
		return nil, nil, fmt.Errorf("insider: encode: %w", err)
	}
	for i := range nodes {
		if err := enc.Encode(&nodes[i]); err != nil {
			return nil, nil, fmt.Errorf("insider: encode: %w", err)
		}
	}
	buf.Write(userState)
	if _, err := c.Write(buf.Bytes()); err != nil {
		return nil, nil, fmt.Errorf("insider: push to %s: %w", to, err)
	}
	r := bufio.NewReader(c)
	t, err := r.ReadByte()
	if err != nil {
		return nil, nil, fmt.Errorf("insider: pull from %s: %w", to, err)
	}
	if t != mlPushPull {
		return nil, nil, fmt.Errorf("insider: pull from %s: message type %d", to, t)
	}
	dec := codec.NewDecoder(r, &codec.MsgpackHandle{})
	var h pushPullHeader
	if err := dec.Decode(&h); err != nil {
		return nil, nil, fmt.Errorf("insider: pull header: %w", err)
	}
	got := make([]NodeState, 0, min(h.Nodes, 4096))
	for range h.Nodes {
		var n NodeState
		if err := dec.Decode(&n); err != nil {
			return nil, nil, fmt.Errorf("insider: pull node: %w", err)
		}
		got = append(got, n)
	}
	user := make([]byte, h.UserStateLen)
	if _, err := io.ReadFull(r, user); err != nil {
		return nil, nil, fmt.Errorf("insider: pull user state: %w", err)
	}
	return got, user, nil
}

// AliveNode is an alive push/pull node state for node at addr.
func AliveNode(node string, inc uint32, addr netip.AddrPort, meta []byte) NodeState {
	return NodeState{Name: node, Addr: addr.Addr().AsSlice(), Port: addr.Port(), Meta: meta, Incarnation: inc, State: mlStateAlive, Vsn: Vsn()}
}

// DeadNode is a dead push/pull node state.
func DeadNode(node string, inc uint32, addr netip.AddrPort) NodeState {
	return NodeState{Name: node, Addr: addr.Addr().AsSlice(), Port: addr.Port(), Incarnation: inc, State: mlStateDead, Vsn: Vsn()}
}

// IdleStreams opens n streams to an overlay ip:port and sends nothing on
// them; each one that the other side closes is opened again (50 ms
// later), until ctx ends. It returns at once; the streams are held in
// the background.
func (m *Member) IdleStreams(ctx context.Context, to netip.AddrPort, n int) {
	for range n {
		go func() {
			for ctx.Err() == nil {
				c, err := m.Dial(ctx, "tcp", to.String())
				if err != nil {
					select {
					case <-ctx.Done():
						return
					case <-time.After(10 * time.Millisecond):
					}
					continue
				}
				// Held until the other side closes it (a read returns) or ctx ends.
				done := make(chan struct{})
				go func() { io.Copy(io.Discard, c); close(done) }()
				select {
				case <-ctx.Done():
				case <-done:
				}
				c.Close()
				select { // refused at once: try again a moment later
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
	}
}
