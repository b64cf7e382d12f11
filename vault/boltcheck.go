package vault

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// bbolt on-disk constants (go.etcd.io/bbolt v1.5.0, format version 2). The
// checker below re-reads the page structure with ReadAt before bbolt maps
// the file, because bbolt trusts its pages: garbage can make it fault,
// recurse forever or allocate without bound, which recover cannot catch.
// Integers are in host byte order (binary.NativeEndian), as bbolt writes them.
const (
	boltMagic          = 0xED0CDAED        // bbolt meta magic
	boltVersion        = 2                 // bbolt data format version
	boltPageHeaderSize = 16                // id(8) flags(2) count(2) overflow(4)
	boltElemSize       = 16                // branch and leaf element sizes
	boltMetaSize       = 64                // meta struct, checksum last
	boltMetaSumLen     = 56                // bytes covered by the meta checksum
	boltBucketHdrSize  = 16                // root pgid(8) sequence(8)
	boltBranchFlag     = 0x01              // branch page
	boltLeafFlag       = 0x02              // leaf page
	boltFreelistFlag   = 0x10              // freelist page
	boltBucketElemFlag = 0x01              // leaf element is a sub-bucket
	boltNoFreelist     = ^uint64(0)        // meta.freelist when the freelist is not persisted
	boltFirstMetaRead  = 0x1000            // bbolt reads meta 0 with a 4 KiB buffer
	boltMinPageSize    = 1024              // smallest page size bbolt probes for
	boltMaxPageSize    = 64 << 10          // larger pages are refused (bbolt's default is the OS page size)
	boltMaxDepth       = 64                // tree depth plus bucket nesting; real files stay far below
	boltMaxFreelistLen = 0xFFFF            // count value that means "count stored in first element"
	boltFreelistIDSize = 8                 // a freelist entry is a pgid
	boltMetaPages      = 2                 // pages 0 and 1 hold the metas
	boltPgidMask       = uint64(1<<63) - 1 // pgids above this cannot be valid offsets
	boltMetaRootOff    = 16                // offset of the root bucket inside meta
	boltMetaFreeOff    = 32                // offset of the freelist pgid inside meta
	boltMetaPgidOff    = 40                // offset of the high-water mark inside meta
	boltMetaTxidOff    = 48                // offset of the txid inside meta
	boltMetaPageSzOff  = 8                 // offset of the page size inside meta
	boltMetaVersionOff = 4                 // offset of the version inside meta
)

// boltMeta is the decoded meta page content that the checker needs.
type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	hwm      uint64
	txid     uint64
}

// parseBoltMeta decodes and validates a meta page (header included), as
// bbolt's Meta.Validate does.
func parseBoltMeta(page []byte) (boltMeta, bool) {
	if len(page) < boltPageHeaderSize+boltMetaSize {
		return boltMeta{}, false
	}
	m := page[boltPageHeaderSize : boltPageHeaderSize+boltMetaSize]
	if binary.NativeEndian.Uint32(m) != boltMagic || binary.NativeEndian.Uint32(m[boltMetaVersionOff:]) != boltVersion {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	h.Write(m[:boltMetaSumLen])
	if h.Sum64() != binary.NativeEndian.Uint64(m[boltMetaSumLen:]) {
		return boltMeta{}, false
	}
	return boltMeta{
		pageSize: binary.NativeEndian.Uint32(m[boltMetaPageSzOff:]),
		root:     binary.NativeEndian.Uint64(m[boltMetaRootOff:]),
		freelist: binary.NativeEndian.Uint64(m[boltMetaFreeOff:]),
		hwm:      binary.NativeEndian.Uint64(m[boltMetaPgidOff:]),
		txid:     binary.NativeEndian.Uint64(m[boltMetaTxidOff:]),
	}, true
}

// boltChecker walks a bbolt file's reachable pages with ReadAt.
type boltChecker struct {
	r        io.ReaderAt
	size     int64
	ps       uint64
	hwm      uint64
	seen     map[uint64]bool
	header   []byte // value of gridnet-vault/header, if found
	hasMeta  bool   // root bucket has a gridnet-vault sub-bucket
	hasItems bool   // root bucket has an items sub-bucket
}

// checkBoltFile validates f's bbolt structure the way bbolt will read it
// (page size detection, meta choice, every reachable page and the
// freelist) and returns the vault header value found in it. All failures
// wrap ErrCorrupt.
func checkBoltFile(f *os.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: not a regular file", ErrCorrupt)
	}
	c := &boltChecker{r: f, size: st.Size(), seen: map[uint64]bool{}}
	if err := c.check(); err != nil {
		return nil, err
	}
	if !c.hasMeta || c.header == nil || !c.hasItems {
		return nil, fmt.Errorf("%w: bbolt file without gridnet vault buckets", ErrCorrupt)
	}
	return c.header, nil
}

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// readAt reads exactly n bytes at off, or fewer when allowShort and EOF.
func (c *boltChecker) readAt(off int64, n int, allowShort bool) ([]byte, error) {
	buf := make([]byte, n)
	got, err := c.r.ReadAt(buf, off)
	if got == n {
		return buf, nil
	}
	if err == io.EOF && allowShort {
		return buf[:got], nil
	}
	if err == nil || err == io.EOF {
		return nil, corruptf("file truncated at offset %d", off)
	}
	return nil, fmt.Errorf("reading at %d: %w", off, err)
}

// pageSize emulates bbolt's getPageSize: meta 0 if valid, else the first
// valid meta found at 1 KiB << i.
func (c *boltChecker) pageSize() (uint64, error) {
	if c.size >= boltFirstMetaRead {
		buf, err := c.readAt(0, boltFirstMetaRead, false)
		if err != nil {
			return 0, err
		}
		if m, ok := parseBoltMeta(buf); ok {
			return uint64(m.pageSize), nil
		}
	}
	for i := 0; i <= 14; i++ {
		pos := int64(boltMinPageSize) << i
		if pos >= c.size-boltMinPageSize {
			break
		}
		buf, err := c.readAt(pos, boltFirstMetaRead, true)
		if err != nil {
			return 0, err
		}
		if m, ok := parseBoltMeta(buf); ok {
			return uint64(m.pageSize), nil
		}
	}
	return 0, corruptf("no valid bbolt meta page (truncated, garbage or not a vault)")
}

func (c *boltChecker) check() error {
	if c.size < 2*boltMinPageSize {
		return corruptf("file too small (%d bytes)", c.size)
	}
	ps, err := c.pageSize()
	if err != nil {
		return err
	}
	if ps < boltMinPageSize || ps > boltMaxPageSize || ps&(ps-1) != 0 {
		return corruptf("unsupported page size %d", ps)
	}
	if uint64(c.size) < 2*ps {
		return corruptf("file smaller than two pages")
	}
	c.ps = ps
	var metas [boltMetaPages]boltMeta
	var valid [boltMetaPages]bool
	for i := range metas {
		buf, err := c.readAt(int64(uint64(i)*ps), boltPageHeaderSize+boltMetaSize, false)
		if err != nil {
			return err
		}
		metas[i], valid[i] = parseBoltMeta(buf)
	}
	// bbolt's DB.meta: the higher txid if valid, else the other one.
	a, b := 0, 1
	if metas[1].txid > metas[0].txid {
		a, b = 1, 0
	}
	var m boltMeta
	switch {
	case valid[a]:
		m = metas[a]
	case valid[b]:
		m = metas[b]
	default:
		return corruptf("both bbolt meta pages invalid")
	}
	if uint64(m.pageSize) != ps {
		return corruptf("meta page size %d differs from detected %d", m.pageSize, ps)
	}
	if m.hwm > boltPgidMask/ps {
		return corruptf("high-water mark %d out of range", m.hwm)
	}
	c.hwm = m.hwm
	if m.root < boltMetaPages || m.root >= m.hwm {
		return corruptf("root page %d outside [2, %d)", m.root, m.hwm)
	}
	if err := c.walk(m.root, nil, 0); err != nil {
		return err
	}
	if m.freelist != boltNoFreelist {
		return c.checkFreelist(m.freelist)
	}
	return nil
}

// readPage reads page id with its overflow pages, checking bounds, the
// self-identifying id and that no page is reached twice.
func (c *boltChecker) readPage(id uint64) ([]byte, error) {
	if id < boltMetaPages || id >= c.hwm {
		return nil, corruptf("page id %d outside [2, %d)", id, c.hwm)
	}
	if c.seen[id] {
		return nil, corruptf("page %d reached twice", id)
	}
	hdr, err := c.readAt(int64(id*c.ps), boltPageHeaderSize, false)
	if err != nil {
		return nil, err
	}
	if got := binary.NativeEndian.Uint64(hdr); got != id {
		return nil, corruptf("page %d identifies as %d", id, got)
	}
	overflow := uint64(binary.NativeEndian.Uint32(hdr[12:]))
	end := id + overflow + 1
	if end > c.hwm || end*c.ps > uint64(c.size) {
		return nil, corruptf("page %d with %d overflow pages runs past the file", id, overflow)
	}
	for p := id; p < end; p++ {
		if c.seen[p] {
			return nil, corruptf("page %d reached twice", p)
		}
		c.seen[p] = true
	}
	return c.readAt(int64(id*c.ps), int((overflow+1)*c.ps), false)
}

// walk checks the tree rooted at page id, belonging to the bucket at path.
func (c *boltChecker) walk(id uint64, path []string, depth int) error {
	if depth > boltMaxDepth {
		return corruptf("bbolt tree deeper than %d", boltMaxDepth)
	}
	page, err := c.readPage(id)
	if err != nil {
		return err
	}
	flags := binary.NativeEndian.Uint16(page[8:])
	count := int(binary.NativeEndian.Uint16(page[10:]))
	switch flags {
	case boltLeafFlag:
		return c.leaf(page, path, depth)
	case boltBranchFlag:
	default:
		return corruptf("page %d has type %#x, want branch or leaf", id, flags)
	}
	if count == 0 || boltPageHeaderSize+count*boltElemSize > len(page) {
		return corruptf("branch page %d has bad element count %d", id, count)
	}
	var prev []byte
	for i := 0; i < count; i++ {
		e := boltPageHeaderSize + i*boltElemSize
		pos, ksize := uint64(binary.NativeEndian.Uint32(page[e:])), uint64(binary.NativeEndian.Uint32(page[e+4:]))
		key, ok := span(page, uint64(e)+pos, ksize)
		if !ok {
			return corruptf("branch page %d element %d out of bounds", id, i)
		}
		if i > 0 && bytes.Compare(prev, key) >= 0 {
			return corruptf("branch page %d keys out of order", id)
		}
		prev = key
		if err := c.walk(binary.NativeEndian.Uint64(page[e+8:]), path, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// span returns b[off:off+n] if it lies inside b.
func span(b []byte, off, n uint64) ([]byte, bool) {
	if off > uint64(len(b)) || n > uint64(len(b))-off {
		return nil, false
	}
	return b[off : off+n], true
}

// leaf checks a leaf page (a tree page or an inline bucket's page) and
// descends into sub-buckets.
func (c *boltChecker) leaf(page []byte, path []string, depth int) error {
	if len(page) < boltPageHeaderSize {
		return corruptf("leaf page too short")
	}
	count := int(binary.NativeEndian.Uint16(page[10:]))
	if boltPageHeaderSize+count*boltElemSize > len(page) {
		return corruptf("leaf page has bad element count %d", count)
	}
	var prev []byte
	for i := 0; i < count; i++ {
		e := uint64(boltPageHeaderSize + i*boltElemSize)
		flags := binary.NativeEndian.Uint32(page[e:])
		pos, ksize, vsize := uint64(binary.NativeEndian.Uint32(page[e+4:])), uint64(binary.NativeEndian.Uint32(page[e+8:])), uint64(binary.NativeEndian.Uint32(page[e+12:]))
		key, ok1 := span(page, e+pos, ksize)
		val, ok2 := span(page, e+pos+ksize, vsize)
		if !ok1 || !ok2 || flags&^boltBucketElemFlag != 0 {
			return corruptf("leaf element %d malformed", i)
		}
		if i > 0 && bytes.Compare(prev, key) >= 0 {
			return corruptf("leaf keys out of order")
		}
		prev = key
		if flags&boltBucketElemFlag == 0 {
			c.visit(path, key, val)
			continue
		}
		if err := c.bucket(path, key, val, depth); err != nil {
			return err
		}
	}
	return nil
}

// bucket checks a sub-bucket entry: an inline bucket (root 0, leaf page
// embedded in the value) or a root page id.
func (c *boltChecker) bucket(path []string, key, val []byte, depth int) error {
	if len(val) < boltBucketHdrSize {
		return corruptf("bucket entry %q too short", key)
	}
	sub := append(append([]string(nil), path...), string(key))
	if len(path) == 0 {
		switch string(key) {
		case metaBucketName:
			c.hasMeta = true
		case itemsBucketName:
			c.hasItems = true
		}
	}
	root := binary.NativeEndian.Uint64(val)
	if root != 0 {
		return c.walk(root, sub, depth+1)
	}
	inline := val[boltBucketHdrSize:]
	if len(inline) < boltPageHeaderSize || binary.NativeEndian.Uint16(inline[8:]) != boltLeafFlag {
		return corruptf("inline bucket %q malformed", key)
	}
	count := int(binary.NativeEndian.Uint16(inline[10:]))
	for i := 0; i < count && boltPageHeaderSize+(i+1)*boltElemSize <= len(inline); i++ {
		if binary.NativeEndian.Uint32(inline[boltPageHeaderSize+i*boltElemSize:])&boltBucketElemFlag != 0 {
			return corruptf("inline bucket %q contains a bucket", key)
		}
	}
	return c.leaf(inline, sub, depth+1)
}

// visit records the values the vault needs from the walk.
func (c *boltChecker) visit(path []string, key, val []byte) {
	if len(path) == 1 && path[0] == metaBucketName && string(key) == headerKeyName {
		c.header = bytes.Clone(val)
	}
}

// checkFreelist checks the freelist page: type, bounds, and that every
// free id is a valid, unique page not reachable from the tree.
func (c *boltChecker) checkFreelist(id uint64) error {
	page, err := c.readPage(id)
	if err != nil {
		return fmt.Errorf("freelist: %w", err)
	}
	if flags := binary.NativeEndian.Uint16(page[8:]); flags != boltFreelistFlag {
		return corruptf("freelist page %d has type %#x", id, flags)
	}
	start, count := uint64(boltPageHeaderSize), uint64(binary.NativeEndian.Uint16(page[10:]))
	if count == boltMaxFreelistLen {
		if len(page) < boltPageHeaderSize+boltFreelistIDSize {
			return corruptf("freelist page too short")
		}
		count = binary.NativeEndian.Uint64(page[boltPageHeaderSize:])
		start += boltFreelistIDSize
	}
	ids, ok := span(page, start, count*boltFreelistIDSize)
	if !ok || count > uint64(len(page)) {
		return corruptf("freelist count %d exceeds its page", count)
	}
	free := make(map[uint64]bool, count)
	for i := uint64(0); i < count; i++ {
		p := binary.NativeEndian.Uint64(ids[i*boltFreelistIDSize:])
		if p < boltMetaPages || p >= c.hwm || free[p] || c.seen[p] {
			return corruptf("freelist entry %d invalid, duplicated or in use", p)
		}
		free[p] = true
	}
	return nil
}
