// Package hf reads pretrained weights in Hugging Face's safetensors layout
// (https://github.com/huggingface/safetensors): one model.safetensors, or
// shards listed by a model.safetensors.index.json (weight_map: tensor name
// → shard file), from a local directory or an S3 prefix (package objstore).
// It validates every header before anything is allocated from it, streams
// tensors one at a time in file order (one ranged read per shard), converts
// F32, F16 and BF16 to float32 exactly, and maps the released EVA-CLIP and
// Llama-2 tensor names onto lavit's parameter names (mapping.go). It is
// pure Go: lavit-coord and tests use it without libtorch; the trainer
// package moves what it reads into a model.
package hf

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"path"
	"sort"
	"strings"

	"github.com/lavit-org/lavit/internal/objstore"
)

// File names of a Hugging Face checkpoint directory.
const (
	SingleFile = "model.safetensors"
	IndexFile  = "model.safetensors.index.json"
)

// Bounds on what is read before it is validated.
const (
	// MaxHeaderBytes bounds a safetensors header (the format's own
	// implementation refuses more than 100 MB).
	MaxHeaderBytes = 100 << 20
	// MaxIndexBytes bounds model.safetensors.index.json.
	MaxIndexBytes = 64 << 20
)

// dtypeSizes are the element sizes of the safetensors dtypes, for
// validating offsets; Read converts only F32, F16 and BF16.
var dtypeSizes = map[string]int64{
	"F64": 8, "I64": 8, "U64": 8,
	"F32": 4, "I32": 4, "U32": 4,
	"F16": 2, "BF16": 2, "I16": 2, "U16": 2,
	"I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}

// TensorInfo is one tensor of a checkpoint: where its bytes are.
type TensorInfo struct {
	Name  string
	DType string
	Shape []int64
	File  string // the object (shard) holding it, relative to the checkpoint
	Begin int64  // absolute byte offsets in File: [Begin, End)
	End   int64
}

// Numel is the number of elements (1 for a scalar).
func (t TensorInfo) Numel() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// ParseHeader validates the JSON header of a safetensors file of fileSize
// bytes whose header is hlen bytes long, and returns its tensors sorted by
// offset. It refuses: an unknown dtype, a negative dimension, an element
// count or byte size that overflows, a byte range that is not exactly
// numel × element size, that lies outside the data, or that overlaps
// another, a duplicate or empty name, and anything that is not a JSON
// object of objects. Errors name file and tensor.
func ParseHeader(file string, header []byte, fileSize int64) ([]TensorInfo, error) {
	dataStart := 8 + int64(len(header))
	if fileSize < dataStart {
		return nil, fmt.Errorf("%s: header of %d bytes does not fit in a %d-byte file", file, len(header), fileSize)
	}
	dataSize := fileSize - dataStart
	dec := json.NewDecoder(bytes.NewReader(header))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("%s: safetensors header is not a JSON object", file)
	}
	var out []TensorInfo
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: safetensors header: %w", file, err)
		}
		name, _ := tok.(string)
		if seen[name] {
			return nil, fmt.Errorf("%s: tensor %q appears twice in the header", file, name)
		}
		seen[name] = true
		if name == "__metadata__" {
			var meta map[string]string
			if err := dec.Decode(&meta); err != nil {
				return nil, fmt.Errorf("%s: __metadata__ is not a map of strings: %w", file, err)
			}
			continue
		}
		if name == "" {
			return nil, fmt.Errorf("%s: a tensor has an empty name", file)
		}
		var e struct {
			DType       *string  `json:"dtype"`
			Shape       *[]int64 `json:"shape"`
			DataOffsets *[]int64 `json:"data_offsets"`
		}
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("%s: tensor %q: %w", file, name, err)
		}
		if e.DType == nil || e.Shape == nil || e.DataOffsets == nil {
			return nil, fmt.Errorf("%s: tensor %q lacks dtype, shape or data_offsets", file, name)
		}
		t, err := checkEntry(name, *e.DType, *e.Shape, *e.DataOffsets, dataSize)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		t.File, t.Begin, t.End = file, t.Begin+dataStart, t.End+dataStart
		out = append(out, t)
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%s: safetensors header: %w", file, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: data after the safetensors header's JSON object", file)
	}
	if rest := bytes.TrimRight(header[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		return nil, fmt.Errorf("%s: data after the safetensors header's JSON object", file)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Begin != out[j].Begin {
			return out[i].Begin < out[j].Begin
		}
		return out[i].End < out[j].End
	})
	for i := 1; i < len(out); i++ {
		if out[i].Begin < out[i-1].End {
			return nil, fmt.Errorf("%s: tensors %q and %q overlap", file, out[i-1].Name, out[i].Name)
		}
	}
	return out, nil
}

// checkEntry validates one header entry; offsets are relative to the data.
func checkEntry(name, dtype string, shape, offs []int64, dataSize int64) (TensorInfo, error) {
	size, ok := dtypeSizes[dtype]
	if !ok {
		return TensorInfo{}, fmt.Errorf("tensor %q has unknown dtype %q", name, dtype)
	}
	numel := uint64(1)
	for _, d := range shape {
		if d < 0 {
			return TensorInfo{}, fmt.Errorf("tensor %q has negative dimension in shape %v", name, shape)
		}
		hi, lo := bits.Mul64(numel, uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return TensorInfo{}, fmt.Errorf("tensor %q: shape %v overflows", name, shape)
		}
		numel = lo
	}
	hi, nbytes := bits.Mul64(numel, uint64(size))
	if hi != 0 || nbytes > math.MaxInt64 {
		return TensorInfo{}, fmt.Errorf("tensor %q: shape %v of %s overflows", name, shape, dtype)
	}
	if len(offs) != 2 || offs[0] < 0 || offs[1] < offs[0] || offs[1] > dataSize {
		return TensorInfo{}, fmt.Errorf("tensor %q: data_offsets %v outside the %d data bytes", name, offs, dataSize)
	}
	if uint64(offs[1]-offs[0]) != nbytes {
		return TensorInfo{}, fmt.Errorf("tensor %q: data_offsets %v hold %d bytes, shape %v of %s needs %d", name, offs, offs[1]-offs[0], shape, dtype, nbytes)
	}
	return TensorInfo{Name: name, DType: dtype, Shape: append([]int64{}, shape...), Begin: offs[0], End: offs[1]}, nil
}

// ReadHeader reads and validates the header of the safetensors object name
// in src: two small ranged reads (the length, then the header), never the
// data.
func ReadHeader(ctx context.Context, src objstore.Source, name string) ([]TensorInfo, error) {
	info, err := src.Stat(ctx, name)
	if err != nil {
		return nil, err
	}
	if info.Size < 8 {
		return nil, fmt.Errorf("%s: not a safetensors file (%d bytes)", name, info.Size)
	}
	var n [8]byte
	if err := readRange(ctx, src, name, 0, n[:]); err != nil {
		return nil, err
	}
	hlen := binary.LittleEndian.Uint64(n[:])
	if hlen > MaxHeaderBytes || hlen > uint64(info.Size-8) {
		return nil, fmt.Errorf("%s: safetensors header length %d is beyond the file (%d bytes) or the %d-byte bound", name, hlen, info.Size, MaxHeaderBytes)
	}
	header := make([]byte, hlen)
	if err := readRange(ctx, src, name, 8, header); err != nil {
		return nil, err
	}
	return ParseHeader(name, header, info.Size)
}

// readRange fills buf from name at off.
func readRange(ctx context.Context, src objstore.Source, name string, off int64, buf []byte) error {
	rc, err := src.Open(ctx, name, off, int64(len(buf)))
	if err != nil {
		return err
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, buf); err != nil {
		return fmt.Errorf("%s: reading bytes [%d, %d): %w", name, off, off+int64(len(buf)), err)
	}
	return nil
}

// Checkpoint is an opened checkpoint: every shard's header read and checked
// against the index.
type Checkpoint struct {
	src     objstore.Source
	url     string
	tensors []TensorInfo // by file, then offset
}

// URL is where the checkpoint was opened from.
func (c *Checkpoint) URL() string { return c.url }

// Tensors lists the checkpoint's tensors in reading order (by shard, then
// offset). The slice is the caller's.
func (c *Checkpoint) Tensors() []TensorInfo { return append([]TensorInfo(nil), c.tensors...) }

// Open opens the checkpoint a URL names (file:///abs/path or
// s3://bucket/prefix): a directory holding model.safetensors.index.json and
// its shards or model.safetensors, or one .safetensors or .index.json
// object named directly.
func Open(ctx context.Context, rawURL string) (*Checkpoint, error) {
	dir, name := strings.TrimRight(rawURL, "/"), ""
	if base := path.Base(dir); strings.HasSuffix(base, ".safetensors") || strings.HasSuffix(base, ".json") {
		dir, name = strings.TrimSuffix(dir, "/"+base), base
	}
	src, err := objstore.Open(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", rawURL, err)
	}
	c, err := OpenSource(ctx, src, name)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", rawURL, err)
	}
	c.url = rawURL
	return c, nil
}

// OpenSource opens the checkpoint in src: name is the index, a single
// safetensors object, or "" to look for model.safetensors.index.json, then
// model.safetensors.
func OpenSource(ctx context.Context, src objstore.Source, name string) (*Checkpoint, error) {
	if name == "" {
		name = IndexFile
		if _, err := src.Stat(ctx, IndexFile); errors.Is(err, objstore.ErrNotFound) {
			name = SingleFile
		} else if err != nil {
			return nil, err
		}
	}
	c := &Checkpoint{src: src, url: src.URL() + "/" + name}
	if !strings.HasSuffix(name, ".json") {
		ts, err := ReadHeader(ctx, src, name)
		if err != nil {
			return nil, err
		}
		c.tensors = ts
		return c, nil
	}
	raw, err := readSmall(ctx, src, name, MaxIndexBytes)
	if err != nil {
		return nil, err
	}
	weightMap, err := ParseIndex(name, raw)
	if err != nil {
		return nil, err
	}
	shards := map[string][]string{} // shard → tensor names the index puts there
	for t, f := range weightMap {
		shards[f] = append(shards[f], t)
	}
	files := make([]string, 0, len(shards))
	for f := range shards {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		ts, err := ReadHeader(ctx, src, f)
		if err != nil {
			return nil, err
		}
		for _, t := range ts {
			if weightMap[t.Name] != f {
				return nil, fmt.Errorf("%s: shard has tensor %q, which %s does not place there", f, t.Name, name)
			}
		}
		if len(ts) != len(shards[f]) {
			have := map[string]bool{}
			for _, t := range ts {
				have[t.Name] = true
			}
			sort.Strings(shards[f])
			for _, t := range shards[f] {
				if !have[t] {
					return nil, fmt.Errorf("%s: %s places tensor %q in this shard, which lacks it", f, name, t)
				}
			}
		}
		c.tensors = append(c.tensors, ts...)
	}
	return c, nil
}

// ParseIndex validates a model.safetensors.index.json and returns its
// weight_map. Shard names must be plain relative names (no "..", no
// absolute paths, no backslashes).
func ParseIndex(name string, raw []byte) (map[string]string, error) {
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("%s: not a safetensors index: %w", name, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, fmt.Errorf("%s: weight_map is missing or empty", name)
	}
	for t, f := range idx.WeightMap {
		if t == "" {
			return nil, fmt.Errorf("%s: weight_map has an empty tensor name", name)
		}
		if f == "" || path.IsAbs(f) || path.Clean(f) != f || f == ".." || strings.HasPrefix(f, "../") || strings.ContainsAny(f, "\\\x00") {
			return nil, fmt.Errorf("%s: tensor %q is placed in shard %q, not a plain relative name", name, t, f)
		}
	}
	return idx.WeightMap, nil
}

// readSmall reads a whole object of at most limit bytes.
func readSmall(ctx context.Context, src objstore.Source, name string, limit int64) ([]byte, error) {
	info, err := src.Stat(ctx, name)
	if err != nil {
		return nil, err
	}
	if info.Size > limit {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d-byte bound", name, info.Size, limit)
	}
	buf := make([]byte, info.Size)
	if err := readRange(ctx, src, name, 0, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// ErrDType is wrapped by the error for a tensor whose dtype is not F32,
// F16 or BF16.
var ErrDType = errors.New("unsupported dtype (want F32, F16 or BF16)")

// CheckDType is nil when t can be read as float32.
func CheckDType(t TensorInfo) error {
	switch t.DType {
	case "F32", "F16", "BF16":
		return nil
	}
	return fmt.Errorf("%s: tensor %q has dtype %s: %w", t.File, t.Name, t.DType, ErrDType)
}

// Stream reads the tensors (which must be this checkpoint's) in reading
// order and calls fn with each one's values as float32; fn owns vals. Each
// shard is read with one ranged request from its first wanted tensor to
// its last, skipping the bytes between; only one tensor's values are in
// memory at a time (plus fn's). The dtypes are checked before any data is
// read.
func (c *Checkpoint) Stream(ctx context.Context, tensors []TensorInfo, fn func(t TensorInfo, vals []float32) error) error {
	return c.walk(ctx, tensors, func(t TensorInfo, r io.Reader) error {
		vals := make([]float32, t.Numel())
		if err := decode(r, t.DType, vals); err != nil {
			return fmt.Errorf("%s: reading tensor %q: %w", t.File, t.Name, err)
		}
		return fn(t, vals)
	})
}

// StreamF32 is Stream without holding a tensor: fn reads the tensor's
// values from r as little-endian float32 bytes (4 × numel), converted as
// they are read, so nothing of the checkpoint is held beyond a read
// buffer. A NaN or an infinity is a read error naming the tensor and the
// element. What fn leaves unread is skipped.
func (c *Checkpoint) StreamF32(ctx context.Context, tensors []TensorInfo, fn func(t TensorInfo, r io.Reader) error) error {
	return c.walk(ctx, tensors, func(t TensorInfo, r io.Reader) error {
		return fn(t, &f32Reader{t: t, src: r, left: t.Numel()})
	})
}

// walk calls fn for each tensor (in reading order) with a reader of its
// bytes, one ranged read per shard; what fn leaves unread is skipped.
func (c *Checkpoint) walk(ctx context.Context, tensors []TensorInfo, fn func(TensorInfo, io.Reader) error) error {
	ts := append([]TensorInfo(nil), tensors...)
	for _, t := range ts {
		if err := CheckDType(t); err != nil {
			return err
		}
	}
	sort.SliceStable(ts, func(i, j int) bool {
		if ts[i].File != ts[j].File {
			return ts[i].File < ts[j].File
		}
		return ts[i].Begin < ts[j].Begin
	})
	for i := 0; i < len(ts); {
		j := i
		for j < len(ts) && ts[j].File == ts[i].File {
			j++
		}
		if err := c.walkFile(ctx, ts[i:j], fn); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// walkFile reads ts (one file's, by offset) through one ranged read.
func (c *Checkpoint) walkFile(ctx context.Context, ts []TensorInfo, fn func(TensorInfo, io.Reader) error) error {
	file, start, end := ts[0].File, ts[0].Begin, ts[len(ts)-1].End
	rc, err := c.src.Open(ctx, file, start, end-start)
	if err != nil {
		return err
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 1<<20)
	pos := start
	for _, t := range ts {
		if t.Begin < pos {
			return fmt.Errorf("%s: tensor %q read twice or overlapping", file, t.Name)
		}
		if _, err := br.Discard(int(t.Begin - pos)); err != nil {
			return fmt.Errorf("%s: skipping to tensor %q: %w", file, t.Name, err)
		}
		lr := &io.LimitedReader{R: br, N: t.End - t.Begin}
		if err := fn(t, lr); err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, lr); err != nil {
			return fmt.Errorf("%s: reading tensor %q: %w", file, t.Name, err)
		}
		if lr.N != 0 {
			return fmt.Errorf("%s: tensor %q: %w", file, t.Name, io.ErrUnexpectedEOF)
		}
		pos = t.End
	}
	return nil
}

// f32Reader converts a tensor's bytes to little-endian float32 bytes as
// they are read, refusing NaN and infinities.
type f32Reader struct {
	t    TensorInfo
	src  io.Reader
	left int64 // values not yet read
	done int64
	buf  []byte
}

func (r *f32Reader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)/4), r.left, 1<<16)
	if n == 0 {
		return 0, io.ErrShortBuffer
	}
	size := int64(4)
	if r.t.DType != "F32" {
		size = 2
	}
	if int64(cap(r.buf)) < n*size {
		r.buf = make([]byte, n*size)
	}
	in := r.buf[:n*size]
	if _, err := io.ReadFull(r.src, in); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, fmt.Errorf("%s: reading tensor %q: %w", r.t.File, r.t.Name, err)
	}
	for i := int64(0); i < n; i++ {
		var bits uint32
		switch r.t.DType {
		case "F32":
			bits = binary.LittleEndian.Uint32(in[4*i:])
		case "BF16":
			bits = uint32(binary.LittleEndian.Uint16(in[2*i:])) << 16
		default:
			bits = math.Float32bits(HalfToFloat32(binary.LittleEndian.Uint16(in[2*i:])))
		}
		if bits&0x7f800000 == 0x7f800000 {
			return 0, fmt.Errorf("%s: tensor %q holds %v at element %d", r.t.File, r.t.Name, math.Float32frombits(bits), r.done+i)
		}
		binary.LittleEndian.PutUint32(p[4*i:], bits)
	}
	r.left -= n
	r.done += n
	return int(4 * n), nil
}

// decode reads len(dst) values of dtype from r into dst, exactly.
func decode(r io.Reader, dtype string, dst []float32) error {
	var buf [1 << 16]byte
	size := 4
	if dtype != "F32" {
		size = 2
	}
	for done := 0; done < len(dst); {
		n := min(len(buf)/size, len(dst)-done)
		b := buf[:n*size]
		if _, err := io.ReadFull(r, b); err != nil {
			return err
		}
		out := dst[done : done+n]
		switch dtype {
		case "F32":
			for i := range out {
				out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			}
		case "BF16":
			for i := range out {
				out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
			}
		case "F16":
			for i := range out {
				out[i] = HalfToFloat32(binary.LittleEndian.Uint16(b[2*i:]))
			}
		default:
			return fmt.Errorf("dtype %s: %w", dtype, ErrDType)
		}
		done += n
	}
	return nil
}

// HalfToFloat32 widens an IEEE 754 half to float32 exactly (subnormals,
// infinities and NaN payloads included).
func HalfToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: mant × 2^-24, normal in float32
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	case exp == 31:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	default:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	}
}
