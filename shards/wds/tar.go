package wds

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unsafe"
)

// tarReader is a minimal streaming tar reader: just what a WebDataset shard
// needs (regular members with their names and sizes), parsed in place.
// archive/tar spent 80 % of its time per member on header checks a shard
// does not need (it scans every header byte as runes), which capped reading
// small samples at ~700 MB/s per core.
//
// It understands the formats shard writers produce: V7, USTAR (with the
// name prefix), GNU (long names, 'L') and PAX (per-member "path" and "size"
// records). Members of every other type are skipped with their data. Every
// header's checksum is verified; a bad one is errHeader.
type tarReader struct {
	r io.Reader // the stream; nil in the in-place mode

	// The in-place mode (newMemTarReader, newInPlaceTarReader): headers
	// and member data are read where they lie in data. data[:filled] holds
	// the shard's bytes so far; fill, until it ends, supplies the rest.
	data   []byte
	filled int
	fill   io.Reader
	off    int // read position in data

	blk    [blockSize]byte
	remain int64     // unread data bytes of the current member
	pad    int64     // padding after the current member's data
	name   [256]byte // the current header's name (see tarHeader.Name)
}

const (
	blockSize = 512
	// maxMetaBytes bounds a long-name or PAX member, which is read into
	// memory: a hostile shard cannot make the reader allocate more.
	maxMetaBytes = 1 << 20
)

// errHeader is a tar header that is not one.
var errHeader = errors.New("invalid tar header")

// tarHeader is one member: its name, data size and type flag.
type tarHeader struct {
	// Name may point into the reader's buffer: it is valid until the next
	// call to Next. Clone what must outlive that (one allocation per
	// sample instead of one per member).
	Name     string
	Size     int64
	Typeflag byte
}

// Tar type flags the reader acts on.
const (
	typeReg       = '0'
	typeRegOld    = '\x00' // pre-POSIX regular file
	typeGNULong   = 'L'
	typePAX       = 'x'
	typePAXGlobal = 'g'
)

func newTarReader(r io.Reader) *tarReader { return &tarReader{r: r} }

// newMemTarReader reads a shard held whole in memory: headers are parsed
// where they lie and slice hands out member data without copying.
func newMemTarReader(data []byte) *tarReader {
	if data == nil {
		data = []byte{} // non-nil marks the in-place mode
	}
	return &tarReader{data: data, filled: len(data)}
}

// newInPlaceTarReader reads the stream r into buf as parsing needs it, and
// parses it there: each header is read while the bytes that just arrived
// are still in the CPU's cache, and member data is never copied again.
// The shard must fit in buf: bytes past len(buf) are not read.
func newInPlaceTarReader(r io.Reader, buf []byte) *tarReader {
	t := newMemTarReader(buf)
	t.filled, t.fill = 0, r
	return t
}

// inPlace reports whether headers and data are read where they lie in
// t.data (made by newMemTarReader or newInPlaceTarReader).
func (t *tarReader) inPlace() bool { return t.data != nil }

// fillChunk bounds one read from the in-place source, so that parsing
// follows the arriving bytes closely (a file would otherwise arrive whole
// in one read, and be parsed cold).
const fillChunk = 256 << 10

// available makes up to n bytes past t.off readable in place, reading from
// the source as needed, and returns how many are: fewer than n only at
// the end of the shard. A source error other than io.EOF is returned.
func (t *tarReader) available(n int) (int, error) {
	for stalls := 0; t.filled-t.off < n && t.fill != nil && t.filled < len(t.data); {
		m, err := t.fill.Read(t.data[t.filled:min(len(t.data), t.filled+fillChunk)])
		t.filled += m
		switch {
		case err == io.EOF:
			t.fill = nil
		case err != nil:
			return 0, err
		case m == 0:
			if stalls++; stalls > 100 {
				return 0, io.ErrNoProgress
			}
		}
	}
	return min(n, t.filled-t.off), nil
}

// slice returns the next n bytes of the current member as a subslice of
// the shard's buffer. Only in the in-place mode.
func (t *tarReader) slice(n int64) ([]byte, error) {
	n = min(n, t.remain)
	b, err := t.advance(n)
	if err != nil {
		t.remain = 0
		return nil, err
	}
	t.remain -= n
	return b, nil
}

// advance moves past the next n bytes of the in-place buffer, reading them
// in first, and returns them (capacity capped, so an append cannot spill
// into what follows). A shard that ends first is io.ErrUnexpectedEOF.
func (t *tarReader) advance(n int64) ([]byte, error) {
	if n > int64(len(t.data)-t.off) {
		t.off = len(t.data)
		return nil, io.ErrUnexpectedEOF
	}
	got, err := t.available(int(n))
	if err != nil {
		return nil, err
	}
	if got < int(n) {
		t.off = t.filled
		return nil, io.ErrUnexpectedEOF
	}
	b := t.data[t.off : t.off+int(n) : t.off+int(n)]
	t.off += int(n)
	return b, nil
}

// block returns the next 512-byte block: in place, or read into t.blk
// from the stream. Like io.ReadFull, it returns io.EOF only when the
// stream ended exactly before the block.
func (t *tarReader) block() ([]byte, error) {
	if !t.inPlace() {
		_, err := io.ReadFull(t.r, t.blk[:])
		return t.blk[:], err
	}
	if got, err := t.available(blockSize); err == nil && got == 0 {
		return nil, io.EOF
	}
	return t.advance(blockSize)
}

var zeroBlock [blockSize]byte

// Next skips the rest of the current member and returns the next header.
// It returns io.EOF at the end-of-archive marker or at a clean end of the
// stream between members; a stream that ends inside a header or a member is
// io.ErrUnexpectedEOF.
func (t *tarReader) Next() (tarHeader, error) {
	if err := t.skip(t.remain + t.pad); err != nil {
		return tarHeader{}, err
	}
	t.remain, t.pad = 0, 0
	var longName string
	var pax map[string]string
	for {
		b, err := t.block()
		if err != nil {
			return tarHeader{}, err // io.EOF only when the stream ended exactly here
		}
		if bytes.Equal(b, zeroBlock[:]) {
			// End of archive: two zero blocks (a missing second one, as
			// some writers leave, is tolerated).
			b, err := t.block()
			if err != nil {
				return tarHeader{}, err
			}
			if !bytes.Equal(b, zeroBlock[:]) {
				return tarHeader{}, fmt.Errorf("%w: data after a zero block", errHeader)
			}
			return tarHeader{}, io.EOF
		}
		hdr, err := t.parse(b)
		if err != nil {
			return tarHeader{}, err
		}
		t.remain, t.pad = hdr.Size, -hdr.Size&(blockSize-1)
		switch hdr.Typeflag {
		case typeGNULong, typePAX, typePAXGlobal:
			meta, err := t.readMeta(hdr)
			if err != nil {
				return tarHeader{}, err
			}
			switch hdr.Typeflag {
			case typeGNULong:
				longName, _, _ = strings.Cut(string(meta), "\x00")
			case typePAX:
				if pax, err = parsePAX(meta); err != nil {
					return tarHeader{}, err
				}
			}
			continue // the member these describe follows
		}
		if longName != "" {
			hdr.Name = longName
		}
		if p, ok := pax["path"]; ok {
			hdr.Name = p
		}
		if s, ok := pax["size"]; ok {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < 0 {
				return tarHeader{}, fmt.Errorf("%w: PAX size %q", errHeader, s)
			}
			hdr.Size = n
			t.remain, t.pad = n, -n&(blockSize-1)
		}
		if hdr.Typeflag == typeRegOld {
			hdr.Typeflag = typeReg
		}
		return hdr, nil
	}
}

// Read reads the current member's data.
func (t *tarReader) Read(p []byte) (int, error) {
	if t.remain <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > t.remain {
		p = p[:t.remain]
	}
	if t.inPlace() {
		b, err := t.slice(int64(len(p)))
		return copy(p, b), err
	}
	n, err := t.r.Read(p)
	t.remain -= int64(n)
	if err == io.EOF && t.remain > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err == io.EOF {
		err = nil // the member is complete; the next Read says EOF
	}
	return n, err
}

// parse decodes the header block b.
func (t *tarReader) parse(b []byte) (tarHeader, error) {
	want, err := parseOctal(b[148:156])
	if err != nil {
		return tarHeader{}, fmt.Errorf("%w: checksum field: %v", errHeader, err)
	}
	// The checksum is the sum of the header bytes with the checksum field
	// read as spaces; some old writers summed signed bytes.
	if unsigned := headerSum(b); want != unsigned && want != signedHeaderSum(b) {
		return tarHeader{}, fmt.Errorf("%w: checksum mismatch", errHeader)
	}
	size, err := parseNumber(b[124:136])
	if err != nil || size < 0 {
		return tarHeader{}, fmt.Errorf("%w: size field", errHeader)
	}
	// USTAR (magic "ustar\x00") splits long names into prefix + "/" + name;
	// GNU (magic "ustar  \x00") uses those bytes for other things.
	n := 0
	if string(b[257:263]) == "ustar\x00" {
		if prefix := cBytes(b[345:500]); len(prefix) > 0 {
			n = copy(t.name[:], prefix)
			t.name[n] = '/'
			n++
		}
	}
	n += copy(t.name[n:], cBytes(b[0:100]))
	name := ""
	if n > 0 {
		name = unsafe.String(&t.name[0], n)
	}
	return tarHeader{Name: name, Size: size, Typeflag: b[156]}, nil
}

// headerSum is the unsigned byte sum of a header with its checksum field
// (bytes 148..155) counted as spaces. It adds eight bytes at a time in
// 16-bit lanes: 64 words of at most 2×255 per lane cannot overflow.
func headerSum(b []byte) int64 {
	const lo = 0x00ff00ff00ff00ff
	var lanes uint64
	for i := 0; i < blockSize; i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		lanes += w&lo + (w>>8)&lo
	}
	sum := int64(lanes&0xffff + (lanes>>16)&0xffff + (lanes>>32)&0xffff + lanes>>48)
	for _, c := range b[148:156] {
		sum += ' ' - int64(c)
	}
	return sum
}

// signedHeaderSum is headerSum with the bytes read as signed.
func signedHeaderSum(b []byte) int64 {
	var sum int64
	for i, c := range b[:blockSize] {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(int8(c))
	}
	return sum
}

// readMeta reads a long-name or PAX member's data whole.
func (t *tarReader) readMeta(hdr tarHeader) ([]byte, error) {
	if hdr.Size > maxMetaBytes {
		return nil, fmt.Errorf("%w: %d-byte metadata member (limit %d)", errHeader, hdr.Size, maxMetaBytes)
	}
	meta := make([]byte, hdr.Size)
	if _, err := io.ReadFull(t, meta); err != nil {
		return nil, eofIsUnexpected(err)
	}
	if err := t.skip(t.pad); err != nil {
		return nil, err
	}
	t.remain, t.pad = 0, 0
	return meta, nil
}

// skip discards n bytes of the stream: through Discard when the stream
// has it (a bufio.Reader), else through the header buffer (padding is
// under one block, so that is one read).
func (t *tarReader) skip(n int64) error {
	if n <= 0 {
		return nil
	}
	if t.inPlace() {
		_, err := t.advance(n)
		return err
	}
	if d, ok := t.r.(interface{ Discard(int) (int, error) }); ok && n <= math.MaxInt32 {
		if got, err := d.Discard(int(n)); got < int(n) {
			return eofIsUnexpected(err)
		}
		return nil
	}
	for n > 0 {
		chunk := min(n, blockSize)
		if _, err := io.ReadFull(t.r, t.blk[:chunk]); err != nil {
			return eofIsUnexpected(err)
		}
		n -= chunk
	}
	return nil
}

func eofIsUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parsePAX decodes PAX records: "LEN KEY=VALUE\n", LEN counting the whole
// record.
func parsePAX(b []byte) (map[string]string, error) {
	out := map[string]string{}
	for len(b) > 0 {
		sp := bytes.IndexByte(b, ' ')
		if sp <= 0 {
			return nil, fmt.Errorf("%w: PAX record without a length", errHeader)
		}
		n, err := strconv.Atoi(string(b[:sp]))
		if err != nil || n <= sp+1 || n > len(b) || b[n-1] != '\n' {
			return nil, fmt.Errorf("%w: bad PAX record length", errHeader)
		}
		key, value, ok := strings.Cut(string(b[sp+1:n-1]), "=")
		if !ok {
			return nil, fmt.Errorf("%w: PAX record without '='", errHeader)
		}
		out[key] = value
		b = b[n:]
	}
	return out, nil
}

// parseNumber reads a numeric field: octal text, or GNU base-256 when the
// top bit of the first byte is set (sizes of 8 GiB and more).
func parseNumber(b []byte) (int64, error) {
	if len(b) > 0 && b[0]&0x80 != 0 {
		if b[0]&0x40 != 0 {
			return 0, errors.New("negative base-256 number")
		}
		var v int64
		for i, c := range b {
			if i == 0 {
				c &= 0x7f
			}
			if v>>55 != 0 {
				return 0, errors.New("base-256 number overflows")
			}
			v = v<<8 | int64(c)
		}
		return v, nil
	}
	return parseOctal(b)
}

// parseOctal reads octal digits surrounded by spaces or NULs.
func parseOctal(b []byte) (int64, error) {
	for len(b) > 0 && (b[0] == ' ' || b[0] == 0) {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == 0) {
		b = b[:len(b)-1]
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '7' {
			return 0, fmt.Errorf("not octal: %q", b)
		}
		if v>>60 != 0 {
			return 0, errors.New("octal number overflows")
		}
		v = v<<3 | int64(c-'0')
	}
	return v, nil
}

// cBytes is b up to its first NUL.
func cBytes(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return b
}
