package discovery

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// The transport reads memberlist's messages with this small msgpack
// reader (only the types memberlist's messages use) and hands memberlist
// its own canonical encoding of exactly the fields it checked: what
// memberlist decodes is what the rules judged, whatever tricks of the
// encoding (duplicate keys, unusual number formats, unknown fields) an
// insider plays. It is also several times cheaper than the reflection
// codec, which matters at the seed of a joining fabric.

// Limits of the msgpack reader.
const (
	// maxMLValue caps one msgpack value read from a stream (a push/pull
	// header or node state): a node state is a name (253 bytes), metadata
	// (memberlist caps it at 512), an address, a version vector and field
	// names, well under 4 KiB.
	maxMLValue = 4 << 10
	// maxMLDepth caps the nesting of skipped values; memberlist's
	// messages are flat maps.
	maxMLDepth = 4
)

// msgpack format bytes.
const (
	mpNil    = 0xc0
	mpFalse  = 0xc2
	mpTrue   = 0xc3
	mpBin8   = 0xc4
	mpBin16  = 0xc5
	mpBin32  = 0xc6
	mpExt8   = 0xc7
	mpExt16  = 0xc8
	mpExt32  = 0xc9
	mpFloat  = 0xca
	mpDouble = 0xcb
	mpUint8  = 0xcc
	mpUint16 = 0xcd
	mpUint32 = 0xce
	mpUint64 = 0xcf
	mpInt8   = 0xd0
	mpInt16  = 0xd1
	mpInt32  = 0xd2
	mpInt64  = 0xd3
	mpFixExt = 0xd4 // to 0xd8
	mpStr8   = 0xd9
	mpStr16  = 0xda
	mpStr32  = 0xdb
	mpArr16  = 0xdc
	mpArr32  = 0xdd
	mpMap16  = 0xde
	mpMap32  = 0xdf
)

var errMsgpack = fmt.Errorf("msgpack: %w", ErrMalformed)

// mpReader reads msgpack values from untrusted bytes.
type mpReader struct {
	b   []byte
	err error
}

func (r *mpReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s: %w", what, errMsgpack)
	}
}

func (r *mpReader) next(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.fail("value past the end")
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *mpReader) byte() byte {
	v := r.next(1)
	if v == nil {
		return 0
	}
	return v[0]
}

// be reads an n-byte big-endian unsigned number.
func (r *mpReader) be(n int) uint64 {
	v := r.next(n)
	var x uint64
	for _, c := range v {
		x = x<<8 | uint64(c)
	}
	return x
}

// mapLen reads a map header.
func (r *mpReader) mapLen() int {
	c := r.byte()
	switch {
	case c&0xf0 == 0x80:
		return int(c & 0x0f)
	case c == mpMap16:
		return int(r.be(2))
	case c == mpMap32:
		return int(min(r.be(4), math.MaxInt32))
	}
	r.fail("not a map")
	return 0
}

// int reads an integer in any msgpack integer format.
func (r *mpReader) int() (int64, bool) {
	c := r.byte()
	switch {
	case c <= 0x7f:
		return int64(c), true
	case c >= 0xe0:
		return int64(int8(c)), true
	case c == mpUint8:
		return int64(r.be(1)), true
	case c == mpUint16:
		return int64(r.be(2)), true
	case c == mpUint32:
		return int64(r.be(4)), true
	case c == mpUint64:
		v := r.be(8)
		if v > math.MaxInt64 {
			r.fail("integer out of range")
			return 0, false
		}
		return int64(v), true
	case c == mpInt8:
		return int64(int8(r.be(1))), true
	case c == mpInt16:
		return int64(int16(r.be(2))), true
	case c == mpInt32:
		return int64(int32(r.be(4))), true
	case c == mpInt64:
		return int64(r.be(8)), true
	}
	r.fail("not an integer")
	return 0, false
}

// uint reads an integer in [0, max].
func (r *mpReader) uint(max uint64) uint64 {
	v, ok := r.int()
	if ok && (v < 0 || uint64(v) > max) {
		r.fail("integer out of range")
		return 0
	}
	return uint64(v)
}

// raw reads a str, bin or nil value's bytes (nil for nil).
func (r *mpReader) raw() []byte {
	c := r.byte()
	var n int
	switch {
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == mpNil:
		return nil
	case c == mpStr8 || c == mpBin8:
		n = int(r.be(1))
	case c == mpStr16 || c == mpBin16:
		n = int(r.be(2))
	case c == mpStr32 || c == mpBin32:
		n = int(min(r.be(4), math.MaxInt32))
	default:
		r.fail("not a string")
		return nil
	}
	return r.next(n)
}

// str reads a string (a str, bin or nil value).
func (r *mpReader) str() string { return string(r.raw()) }

// bool reads a boolean.
func (r *mpReader) bool() bool {
	switch r.byte() {
	case mpTrue:
		return true
	case mpFalse:
		return false
	}
	r.fail("not a boolean")
	return false
}

// uint8s reads a byte string, or an array of integers under 256 (both
// decode into memberlist's []uint8 fields).
func (r *mpReader) uint8s() []byte {
	if r.err != nil || len(r.b) == 0 {
		r.fail("missing value")
		return nil
	}
	c := r.b[0]
	var n int
	switch {
	case c&0xf0 == 0x90:
		r.next(1)
		n = int(c & 0x0f)
	case c == mpArr16:
		r.next(1)
		n = int(r.be(2))
	case c == mpArr32:
		r.next(1)
		n = int(min(r.be(4), math.MaxInt32))
	default:
		return r.raw()
	}
	if n > len(r.b) {
		r.fail("array past the end")
		return nil
	}
	out := make([]byte, 0, n)
	for range n {
		out = append(out, byte(r.uint(math.MaxUint8)))
	}
	return out
}

// skip reads and drops one value of any type.
func (r *mpReader) skip(depth int) {
	if depth > maxMLDepth {
		r.fail("nested too deep")
		return
	}
	if r.err != nil || len(r.b) == 0 {
		r.fail("missing value")
		return
	}
	c := r.b[0]
	switch {
	case c <= 0x7f || c >= 0xe0 || c == mpNil || c == mpFalse || c == mpTrue:
		r.next(1)
	case c&0xf0 == 0x80 || c == mpMap16 || c == mpMap32:
		n := r.mapLen()
		if n > len(r.b) {
			r.fail("map past the end")
			return
		}
		for i := 0; i < 2*n && r.err == nil; i++ {
			r.skip(depth + 1)
		}
	case c&0xf0 == 0x90 || c == mpArr16 || c == mpArr32:
		r.next(1)
		var n int
		switch c {
		case mpArr16:
			n = int(r.be(2))
		case mpArr32:
			n = int(min(r.be(4), math.MaxInt32))
		default:
			n = int(c & 0x0f)
		}
		if n > len(r.b) {
			r.fail("array past the end")
			return
		}
		for i := 0; i < n && r.err == nil; i++ {
			r.skip(depth + 1)
		}
	case c&0xe0 == 0xa0 || c == mpStr8 || c == mpStr16 || c == mpStr32 || c == mpBin8 || c == mpBin16 || c == mpBin32:
		r.raw()
	case c == mpUint8 || c == mpInt8:
		r.next(2)
	case c == mpUint16 || c == mpInt16:
		r.next(3)
	case c == mpUint32 || c == mpInt32:
		r.next(5)
	case c == mpUint64 || c == mpInt64:
		r.next(9)
	case c == mpFloat:
		r.next(5)
	case c == mpDouble:
		r.next(9)
	case c >= mpFixExt && c <= mpFixExt+4:
		r.next(2 + 1<<(c-mpFixExt))
	case c == mpExt8:
		r.next(1)
		r.next(int(r.be(1)) + 1)
	case c == mpExt16:
		r.next(1)
		r.next(int(r.be(2)) + 1)
	case c == mpExt32:
		r.next(1)
		r.next(int(min(r.be(4), math.MaxInt32-1)) + 1)
	default:
		r.fail("unknown type")
	}
}

// fields reads a map whose keys are strings, calling field for each
// known key (once each: a repeated key is an error) and skipping the
// values of the others.
func (r *mpReader) fields(known []string, field func(key string)) {
	n := r.mapLen()
	if n > len(r.b) {
		r.fail("map past the end")
		return
	}
	var seen uint32
	for range n {
		if r.err != nil {
			return
		}
		k := r.raw()
		i := -1
		for j, name := range known {
			if string(k) == name {
				i = j
				break
			}
		}
		if i < 0 {
			r.skip(1)
			continue
		}
		if seen&(1<<i) != 0 {
			r.fail("key " + known[i] + " twice")
			return
		}
		seen |= 1 << i
		field(known[i])
	}
}

// mpWriter appends msgpack values: the canonical encoding handed to
// memberlist.
type mpWriter []byte

func (w *mpWriter) mapLen(n int) {
	if n < 16 {
		*w = append(*w, 0x80|byte(n))
		return
	}
	*w = binary.BigEndian.AppendUint16(append(*w, mpMap16), uint16(n))
}

func (w *mpWriter) uint(v uint64) {
	switch {
	case v <= 0x7f:
		*w = append(*w, byte(v))
	case v <= math.MaxUint8:
		*w = append(*w, mpUint8, byte(v))
	case v <= math.MaxUint16:
		*w = binary.BigEndian.AppendUint16(append(*w, mpUint16), uint16(v))
	case v <= math.MaxUint32:
		*w = binary.BigEndian.AppendUint32(append(*w, mpUint32), uint32(v))
	default:
		*w = binary.BigEndian.AppendUint64(append(*w, mpUint64), v)
	}
}

// raw appends b as a str (nil as nil), as memberlist's codec writes byte
// slices and strings.
func (w *mpWriter) raw(b []byte) {
	switch n := len(b); {
	case b == nil:
		*w = append(*w, mpNil)
		return
	case n < 32:
		*w = append(*w, 0xa0|byte(n))
	case n <= math.MaxUint16:
		*w = binary.BigEndian.AppendUint16(append(*w, mpStr16), uint16(n))
	default:
		*w = binary.BigEndian.AppendUint32(append(*w, mpStr32), uint32(n))
	}
	*w = append(*w, b...)
}

func (w *mpWriter) str(s string) {
	switch n := len(s); {
	case n < 32:
		*w = append(*w, 0xa0|byte(n))
	case n <= math.MaxUint16:
		*w = binary.BigEndian.AppendUint16(append(*w, mpStr16), uint16(n))
	default:
		*w = binary.BigEndian.AppendUint32(append(*w, mpStr32), uint32(n))
	}
	*w = append(*w, s...)
}

func (w *mpWriter) bool(v bool) {
	if v {
		*w = append(*w, mpTrue)
	} else {
		*w = append(*w, mpFalse)
	}
}

// readMLValue reads one complete msgpack value (at most maxMLValue
// bytes) from a stream, for mpReader.
func readMLValue(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	if err := copyMLValue(r, &buf, 0); err != nil {
		return nil, err
	}
	return buf, nil
}

func copyMLValue(r *bufio.Reader, buf *[]byte, depth int) error {
	if depth > maxMLDepth {
		return fmt.Errorf("nested too deep: %w", errMsgpack)
	}
	take := func(n int) error {
		if n < 0 || len(*buf)+n > maxMLValue {
			return fmt.Errorf("value over %d bytes: %w", maxMLValue, ErrTooLarge)
		}
		start := len(*buf)
		*buf = append(*buf, make([]byte, n)...)
		if _, err := io.ReadFull(r, (*buf)[start:]); err != nil {
			return fmt.Errorf("msgpack value: %w", err)
		}
		return nil
	}
	be := func(n int) (int, error) {
		if err := take(n); err != nil {
			return 0, err
		}
		var x uint64
		for _, c := range (*buf)[len(*buf)-n:] {
			x = x<<8 | uint64(c)
		}
		return int(min(x, maxMLValue+1)), nil
	}
	if err := take(1); err != nil {
		return err
	}
	c := (*buf)[len(*buf)-1]
	var n, items int
	var err error
	switch {
	case c <= 0x7f || c >= 0xe0 || c == mpNil || c == mpFalse || c == mpTrue:
		return nil
	case c&0xf0 == 0x80:
		items = 2 * int(c&0x0f)
	case c == mpMap16:
		n, err = be(2)
		items = 2 * n
	case c == mpMap32:
		n, err = be(4)
		items = 2 * n
	case c&0xf0 == 0x90:
		items = int(c & 0x0f)
	case c == mpArr16:
		items, err = be(2)
	case c == mpArr32:
		items, err = be(4)
	case c&0xe0 == 0xa0:
		return take(int(c & 0x1f))
	case c == mpStr8 || c == mpBin8:
		if n, err = be(1); err == nil {
			err = take(n)
		}
		return err
	case c == mpStr16 || c == mpBin16:
		if n, err = be(2); err == nil {
			err = take(n)
		}
		return err
	case c == mpStr32 || c == mpBin32:
		if n, err = be(4); err == nil {
			err = take(n)
		}
		return err
	case c == mpUint8 || c == mpInt8:
		return take(1)
	case c == mpUint16 || c == mpInt16:
		return take(2)
	case c == mpUint32 || c == mpInt32 || c == mpFloat:
		return take(4)
	case c == mpUint64 || c == mpInt64 || c == mpDouble:
		return take(8)
	case c >= mpFixExt && c <= mpFixExt+4:
		return take(1 + 1<<(c-mpFixExt))
	case c == mpExt8:
		if n, err = be(1); err == nil {
			err = take(n + 1)
		}
		return err
	case c == mpExt16:
		if n, err = be(2); err == nil {
			err = take(n + 1)
		}
		return err
	case c == mpExt32:
		if n, err = be(4); err == nil {
			err = take(n + 1)
		}
		return err
	default:
		return fmt.Errorf("unknown type %#x: %w", c, errMsgpack)
	}
	if err != nil {
		return err
	}
	if items > maxMLValue {
		return fmt.Errorf("container of %d items: %w", items, ErrTooLarge)
	}
	for range items {
		if err := copyMLValue(r, buf, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// Decoders and encoders of memberlist's messages (the field names are
// its wire names).

var (
	pingKeys         = []string{"SeqNo", "Node", "SourceAddr", "SourcePort", "SourceNode"}
	indirectPingKeys = []string{"SeqNo", "Target", "Port", "Node", "Nack", "SourceAddr", "SourcePort", "SourceNode"}
	aliveKeys        = []string{"Incarnation", "Node", "Addr", "Port", "Meta", "Vsn"}
	verdictKeys      = []string{"Incarnation", "Node", "From"}
	pushHeaderKeys   = []string{"Nodes", "UserStateLen", "Join"}
	userHeaderKeys   = []string{"UserMsgLen"}
	nodeStateKeys    = []string{"Name", "Addr", "Port", "Meta", "Incarnation", "State", "Vsn"}
)

// done checks that a message's bytes were read to the end.
func (r *mpReader) done(what string) error {
	if r.err == nil && len(r.b) != 0 {
		r.fail(what + ": bytes after the message")
	}
	if r.err != nil {
		return fmt.Errorf("%s: %w", what, r.err)
	}
	return nil
}

func decodePing(b []byte) (m mlPingMsg, err error) {
	r := &mpReader{b: b}
	r.fields(pingKeys, func(k string) {
		switch k {
		case "SeqNo":
			m.SeqNo = uint32(r.uint(math.MaxUint32))
		case "Node":
			m.Node = r.str()
		case "SourceAddr":
			m.SourceAddr = r.raw()
		case "SourcePort":
			m.SourcePort = uint16(r.uint(math.MaxUint16))
		case "SourceNode":
			m.SourceNode = r.str()
		}
	})
	return m, r.done("ping")
}

func (m *mlPingMsg) encode() []byte {
	w := mpWriter{mlPing}
	n := 2
	if len(m.SourceAddr) > 0 {
		n += 3
	}
	w.mapLen(n)
	w.str("SeqNo")
	w.uint(uint64(m.SeqNo))
	w.str("Node")
	w.str(m.Node)
	if len(m.SourceAddr) > 0 {
		w.str("SourceAddr")
		w.raw(m.SourceAddr)
		w.str("SourcePort")
		w.uint(uint64(m.SourcePort))
		w.str("SourceNode")
		w.str(m.SourceNode)
	}
	return w
}

func decodeIndirectPing(b []byte) (m mlIndirectPingMsg, err error) {
	r := &mpReader{b: b}
	r.fields(indirectPingKeys, func(k string) {
		switch k {
		case "SeqNo":
			m.SeqNo = uint32(r.uint(math.MaxUint32))
		case "Target":
			m.Target = r.raw()
		case "Port":
			m.Port = uint16(r.uint(math.MaxUint16))
		case "Node":
			m.Node = r.str()
		case "Nack":
			m.Nack = r.bool()
		case "SourceAddr":
			m.SourceAddr = r.raw()
		case "SourcePort":
			m.SourcePort = uint16(r.uint(math.MaxUint16))
		case "SourceNode":
			m.SourceNode = r.str()
		}
	})
	return m, r.done("indirect ping")
}

func (m *mlIndirectPingMsg) encode() []byte {
	w := mpWriter{mlIndirectPing}
	n := 5
	if len(m.SourceAddr) > 0 {
		n += 3
	}
	w.mapLen(n)
	w.str("SeqNo")
	w.uint(uint64(m.SeqNo))
	w.str("Target")
	w.raw(m.Target)
	w.str("Port")
	w.uint(uint64(m.Port))
	w.str("Node")
	w.str(m.Node)
	w.str("Nack")
	w.bool(m.Nack)
	if len(m.SourceAddr) > 0 {
		w.str("SourceAddr")
		w.raw(m.SourceAddr)
		w.str("SourcePort")
		w.uint(uint64(m.SourcePort))
		w.str("SourceNode")
		w.str(m.SourceNode)
	}
	return w
}

func decodeAlive(b []byte) (m mlAliveMsg, err error) {
	r := &mpReader{b: b}
	r.fields(aliveKeys, func(k string) {
		switch k {
		case "Incarnation":
			m.Incarnation = uint32(r.uint(math.MaxUint32))
		case "Node":
			m.Node = r.str()
		case "Addr":
			m.Addr = r.raw()
		case "Port":
			m.Port = uint16(r.uint(math.MaxUint16))
		case "Meta":
			m.Meta = r.raw()
		case "Vsn":
			m.Vsn = r.uint8s()
		}
	})
	return m, r.done("alive")
}

func (m *mlAliveMsg) encode() []byte {
	w := mpWriter{mlAlive}
	w.mapLen(6)
	w.str("Incarnation")
	w.uint(uint64(m.Incarnation))
	w.str("Node")
	w.str(m.Node)
	w.str("Addr")
	w.raw(m.Addr)
	w.str("Port")
	w.uint(uint64(m.Port))
	w.str("Meta")
	w.raw(m.Meta)
	w.str("Vsn")
	w.raw(m.Vsn)
	return w
}

func decodeVerdict(b []byte) (m mlVerdictMsg, err error) {
	r := &mpReader{b: b}
	r.fields(verdictKeys, func(k string) {
		switch k {
		case "Incarnation":
			m.Incarnation = uint32(r.uint(math.MaxUint32))
		case "Node":
			m.Node = r.str()
		case "From":
			m.From = r.str()
		}
	})
	return m, r.done("verdict")
}

// encode encodes the verdict as message type t (suspect or dead).
func (m *mlVerdictMsg) encode(t byte) []byte {
	w := mpWriter{t}
	w.mapLen(3)
	w.str("Incarnation")
	w.uint(uint64(m.Incarnation))
	w.str("Node")
	w.str(m.Node)
	w.str("From")
	w.str(m.From)
	return w
}

func decodePushHeader(b []byte) (h mlPushPullHeader, err error) {
	r := &mpReader{b: b}
	r.fields(pushHeaderKeys, func(k string) {
		switch k {
		case "Nodes":
			h.Nodes = int(r.uint(math.MaxInt32))
		case "UserStateLen":
			h.UserStateLen = int(r.uint(math.MaxInt32))
		case "Join":
			h.Join = r.bool()
		}
	})
	return h, r.done("push/pull header")
}

func (h *mlPushPullHeader) encode(w *mpWriter) {
	w.mapLen(3)
	w.str("Nodes")
	w.uint(uint64(h.Nodes))
	w.str("UserStateLen")
	w.uint(uint64(h.UserStateLen))
	w.str("Join")
	w.bool(h.Join)
}

func decodeUserHeader(b []byte) (h mlUserMsgHeader, err error) {
	r := &mpReader{b: b}
	r.fields(userHeaderKeys, func(string) { h.UserMsgLen = int(r.uint(math.MaxInt32)) })
	return h, r.done("user message header")
}

func decodeNodeState(b []byte) (n mlPushNodeState, err error) {
	r := &mpReader{b: b}
	r.fields(nodeStateKeys, func(k string) {
		switch k {
		case "Name":
			n.Name = r.str()
		case "Addr":
			n.Addr = r.raw()
		case "Port":
			n.Port = uint16(r.uint(math.MaxUint16))
		case "Meta":
			n.Meta = r.raw()
		case "Incarnation":
			n.Incarnation = uint32(r.uint(math.MaxUint32))
		case "State":
			n.State = int(r.uint(math.MaxUint8))
		case "Vsn":
			n.Vsn = r.uint8s()
		}
	})
	return n, r.done("node state")
}

func (n *mlPushNodeState) encode(w *mpWriter) {
	w.mapLen(7)
	w.str("Name")
	w.str(n.Name)
	w.str("Addr")
	w.raw(n.Addr)
	w.str("Port")
	w.uint(uint64(n.Port))
	w.str("Meta")
	w.raw(n.Meta)
	w.str("Incarnation")
	w.uint(uint64(n.Incarnation))
	w.str("State")
	w.uint(uint64(n.State))
	w.str("Vsn")
	w.raw(n.Vsn)
}
