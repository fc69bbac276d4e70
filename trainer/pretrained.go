package trainer

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"

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
// then streamed in file order and moved into the model one block at a time
// (hf.Groups), each block through a float32 safetensors file in a
// temporary directory that the shim copies from (its only entry for
// weights); the host holds at most the blocks whose tensors have not all
// arrived yet, never the checkpoint. A tensor that fills only the first
// rows of a parameter (Llama's 32000-row embedding and head in lavit's
// enlarged vocabulary) keeps the parameter's other rows as the model
// initialised them (a device model's are read through its host staging
// buffer). An
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
	keep := map[string][]float32{}
	for _, l := range loads {
		if len(l.Param.Shape) > 0 && l.Rows < l.Param.Shape[0] {
			vals, err := m.hostValues(l.Param.Name)
			if err != nil {
				return fmt.Errorf("tensor %q fills %d of parameter %q's %d rows: %w", l.Tensor.Name, l.Rows, l.Param.Name, l.Param.Shape[0], err)
			}
			keep[l.Param.Name] = vals
		}
	}
	dir, err := os.MkdirTemp("", "lavit-init-")
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer os.RemoveAll(dir)

	type pending struct {
		group   hf.Group
		tensors []Tensor
	}
	byTensor := map[string]*pending{}
	loadOf := map[string]hf.Load{}
	var order []hf.TensorInfo
	for i := range groups {
		p := &pending{group: groups[i]}
		for _, l := range groups[i].Loads {
			byTensor[l.Tensor.Name] = p
			loadOf[l.Tensor.Name] = l
			order = append(order, l.Tensor)
		}
	}
	flushed := 0
	err = ck.Stream(ctx, order, func(t hf.TensorInfo, vals []float32) error {
		l, p := loadOf[t.Name], byTensor[t.Name]
		for i, v := range vals {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("%s: tensor %q holds %v at element %d", t.File, t.Name, v, i)
			}
		}
		if base, ok := keep[l.Param.Name]; ok {
			full := append([]float32(nil), base...)
			copy(full, vals)
			vals = full
			delete(keep, l.Param.Name)
		}
		p.tensors = append(p.tensors, f32Tensor(l.Param.Name, l.Param.Shape, vals))
		if len(p.tensors) < len(p.group.Loads) {
			return nil
		}
		path := filepath.Join(dir, fmt.Sprintf("group-%06d.safetensors", flushed))
		flushed++
		if err := writeGroup(path, p.tensors); err != nil {
			return err
		}
		p.tensors = nil
		err := m.LoadSafetensors(path, p.group.Prefix, nil)
		os.Remove(path)
		if err != nil {
			return fmt.Errorf("loading %q (from %s): %w", p.group.Prefix, t.File, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if flushed != len(groups) {
		return fmt.Errorf("init: %d of %d parameter groups loaded", flushed, len(groups))
	}
	return nil
}

// f32Tensor packs vals as a float32 safetensors tensor.
func f32Tensor(name string, shape []int64, vals []float32) Tensor {
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return Tensor{Name: name, DType: "F32", Shape: shape, Data: b}
}

// writeGroup writes one group's tensors as a safetensors file.
func writeGroup(path string, ts []Tensor) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := WriteSafetensors(f, ts, nil); err != nil {
		f.Close()
		return fmt.Errorf("init: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	return nil
}

// hostValues copies a trainable parameter's values to the host (a bf16
// model's values widened exactly). A device model's parameters go through
// its host staging buffer (the one a host collective uses; allocated on
// first use, the flat buffer's size).
func (m *Model) hostValues(name string) ([]float32, error) {
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
	if m.info.Precision != PrecisionBF16 {
		return append([]float32(nil), words[p.Offset:p.Offset+p.Numel]...), nil
	}
	out := make([]float32, p.Numel)
	for i := range out {
		at := p.Offset + int64(i)
		w := math.Float32bits(words[at/2])
		if at%2 == 0 {
			out[i] = math.Float32frombits(w << 16)
		} else {
			out[i] = math.Float32frombits(w &^ 0xffff)
		}
	}
	return out, nil
}
