package trainer

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/checkpoint/hf"
)

// InitFromURL loads released pretrained weights into one module of the
// model: module "encoder" takes an EVA-CLIP ViT checkpoint, "lm" a Llama-2
// checkpoint in Hugging Face's format (checkpoint/hf.ForModule). url names
// a file:// or s3:// directory holding model.safetensors.index.json and
// its shards, or model.safetensors, or one such file.
func (m *Model) InitFromURL(ctx context.Context, module, url string) error {
	mp, err := hf.ForModule(module)
	if err != nil {
		return err
	}
	ck, err := hf.Open(ctx, url)
	if err != nil {
		return fmt.Errorf("init %s: %w", module, err)
	}
	if err := m.InitFrom(ctx, ck, mp); err != nil {
		return fmt.Errorf("init %s from %s: %w", module, url, err)
	}
	return nil
}

// InitFrom loads a pretrained checkpoint into the parameters the mapping
// owns. Everything is checked before any data is read (hf.Plan): a missing,
// unexpected or mis-shaped tensor, or one of another dtype than F32, F16 or
// BF16, is an error naming it, and the model is untouched. The tensors are
// then streamed in file order, converted to float32 as they are read, and
// written straight into a float32 safetensors file per block (hf.Groups;
// its header is known from the plan) in a temporary directory; when a
// block's file is whole the shim copies it into the model (its only entry
// for weights) and it is deleted. The host holds no tensor, only read
// buffers (the disk holds the blocks not yet whole: tensors of a block are
// usually adjacent). A tensor that fills only the first rows of a
// parameter (Llama's 32000-row embedding and head in lavit's enlarged
// vocabulary) keeps the parameter's other rows as the model initialised
// them (a device model's are read through its host staging buffer). An
// error while reading (a shard cut short, a NaN) can leave earlier blocks
// loaded: the model should then be discarded.
func (m *Model) InitFrom(ctx context.Context, ck *hf.Checkpoint, mp hf.Mapping) error {
	all := append(append([]ParamInfo(nil), m.info.Params...), m.info.Frozen...)
	params := make([]hf.Param, len(all))
	names := make([]string, len(all))
	for i, p := range all {
		params[i], names[i] = hf.Param{Name: p.Name, Shape: p.Shape}, p.Name
	}
	loads, err := hf.Plan(ck.Tensors(), params, mp)
	if err != nil {
		return err
	}
	groups, err := hf.Groups(loads, names)
	if err != nil {
		return err
	}
	// The rows a partial tensor leaves are the model's own: read them now.
	tails := map[string][]byte{}
	for _, l := range loads {
		if len(l.Param.Shape) > 0 && l.Rows < l.Param.Shape[0] {
			numel := int64(1)
			for _, d := range l.Param.Shape {
				numel *= d
			}
			vals, err := m.hostValues(l.Param.Name, numel/l.Param.Shape[0]*l.Rows)
			if err != nil {
				return fmt.Errorf("tensor %q fills %d of parameter %q's %d rows: %w", l.Tensor.Name, l.Rows, l.Param.Name, l.Param.Shape[0], err)
			}
			tails[l.Param.Name] = f32Bytes(vals)
		}
	}
	dir, err := os.MkdirTemp("", "lavit-init-")
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer os.RemoveAll(dir)

	files := make([]*groupFile, len(groups))
	byTensor := map[string]*groupFile{}
	loadOf := map[string]hf.Load{}
	var order []hf.TensorInfo
	for i, g := range groups {
		files[i] = &groupFile{group: g, path: filepath.Join(dir, fmt.Sprintf("group-%06d.safetensors", i))}
		for _, l := range g.Loads {
			byTensor[l.Tensor.Name] = files[i]
			loadOf[l.Tensor.Name] = l
			order = append(order, l.Tensor)
		}
	}
	defer func() {
		for _, f := range files {
			f.close()
		}
	}()
	buf := make([]byte, 1<<20)
	loaded := 0
	err = ck.StreamF32(ctx, order, func(t hf.TensorInfo, r io.Reader) error {
		l, g := loadOf[t.Name], byTensor[t.Name]
		if err := g.write(l, r, tails[l.Param.Name], buf); err != nil {
			return err
		}
		if g.left > 0 {
			return nil
		}
		if err := g.close(); err != nil {
			return err
		}
		err := m.LoadSafetensors(g.path, g.group.Prefix, nil)
		os.Remove(g.path)
		if err != nil {
			return fmt.Errorf("loading %q (from %s): %w", g.group.Prefix, t.File, err)
		}
		loaded++
		return nil
	})
	if err != nil {
		return err
	}
	if loaded != len(groups) {
		return fmt.Errorf("init: %d of %d parameter groups loaded", loaded, len(groups))
	}
	return nil
}

// groupFile is one block's float32 safetensors file, written tensor by
// tensor at offsets fixed by its header.
type groupFile struct {
	group  hf.Group
	path   string
	f      *os.File
	offset map[string]int64 // parameter → absolute byte offset
	left   int              // tensors not yet written
}

// open creates the file and writes its header (parameters by name, float32,
// the model's shapes).
func (g *groupFile) open() error {
	ts := make([]Tensor, len(g.group.Loads))
	for i, l := range g.group.Loads {
		ts[i] = Tensor{Name: l.Param.Name, DType: "F32", Shape: l.Param.Shape}
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
	header := map[string]checkpoint.SafetensorsEntry{}
	var off int64
	for _, t := range ts {
		n := int64(4)
		for _, d := range t.Shape {
			n *= d
		}
		header[t.Name] = checkpoint.SafetensorsEntry{DType: "F32", Shape: t.Shape, DataOffsets: [2]int64{off, off + n}}
		off += n
	}
	h, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	g.offset = map[string]int64{}
	for name, e := range header {
		g.offset[name] = 8 + int64(len(h)) + e.DataOffsets[0]
	}
	if g.f, err = os.OpenFile(g.path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(h)))
	if _, err := g.f.Write(append(n[:], h...)); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	g.left = len(g.group.Loads)
	return nil
}

// write copies one tensor's float32 bytes (and the parameter's own tail
// rows after them) to its place in the file.
func (g *groupFile) write(l hf.Load, r io.Reader, tail, buf []byte) error {
	if g.f == nil {
		if err := g.open(); err != nil {
			return err
		}
	}
	w := io.NewOffsetWriter(g.f, g.offset[l.Param.Name])
	n, err := io.CopyBuffer(w, r, buf)
	if err != nil {
		return err
	}
	if want := l.Tensor.Numel() * 4; n != want {
		return fmt.Errorf("%s: tensor %q gave %d bytes, want %d", l.Tensor.File, l.Tensor.Name, n, want)
	}
	if _, err := w.Write(tail); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	g.left--
	return nil
}

// close closes the file (once).
func (g *groupFile) close() error {
	if g.f == nil {
		return nil
	}
	err := g.f.Close()
	g.f = nil
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	return nil
}

// f32Bytes packs vals as little-endian float32 bytes.
func f32Bytes(vals []float32) []byte {
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// hostValues copies a trainable parameter's values from element `from` on
// to the host (a bf16 model's values widened exactly). A device model's parameters go through
// its host staging buffer (the one a host collective uses; allocated on
// first use, the flat buffer's size).
func (m *Model) hostValues(name string, from int64) ([]float32, error) {
	var info *ParamInfo
	for i := range m.info.Params {
		if m.info.Params[i].Name == name {
			info = &m.info.Params[i]
		}
	}
	if info == nil {
		return nil, fmt.Errorf("parameter %q is not trainable, so its values are not readable", name)
	}
	words := m.Params()
	if words == nil || m.forceStaging {
		if err := m.Sync(); err != nil {
			return nil, err
		}
		buf, err := m.gradStaging()
		if err != nil {
			return nil, err
		}
		if err := m.stageParams(true); err != nil {
			return nil, err
		}
		words = buf[:m.info.ParamWords]
	}
	p := *info
	if from < 0 || from > p.Numel {
		return nil, fmt.Errorf("element %d of parameter %q (%d values)", from, name, p.Numel)
	}
	if m.info.Precision != PrecisionBF16 {
		return append([]float32(nil), words[p.Offset+from:p.Offset+p.Numel]...), nil
	}
	out := make([]float32, p.Numel-from)
	for i := range out {
		at := p.Offset + from + int64(i)
		w := math.Float32bits(words[at/2])
		if at%2 == 0 {
			out[i] = math.Float32frombits(w << 16)
		} else {
			out[i] = math.Float32frombits(w &^ 0xffff)
		}
	}
	return out, nil
}
