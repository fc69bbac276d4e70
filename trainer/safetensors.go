package trainer

/*
#include <stdlib.h>
#include "shim_loader.h"
*/
import "C"

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"unsafe"

	"github.com/lavit-org/lavit/checkpoint"
)

// The safetensors format itself lives in the checkpoint package (pure Go,
// so lavit-coord can export too); these names keep the trainer's API.

// Tensor is one named tensor for a safetensors file.
type Tensor = checkpoint.Tensor

// F32Tensor packs float32 values.
func F32Tensor(name string, shape []int64, vals []float32) Tensor {
	return checkpoint.F32Tensor(name, shape, vals)
}

// WriteSafetensors writes tensors (sorted by name) to w.
func WriteSafetensors(w io.Writer, tensors []Tensor, metadata map[string]string) error {
	return checkpoint.WriteSafetensors(w, tensors, metadata)
}

// LoadSafetensors loads the parameters whose names start with prefix ("" =
// all) from a safetensors file (F32, F16 or BF16), renamed by mapping (model
// name → file name; nil = same names). A missing or mis-shaped tensor is an
// error naming it, and then nothing is loaded.
func (m *Model) LoadSafetensors(path, prefix string, mapping map[string]string) error {
	var mj []byte
	if len(mapping) > 0 {
		var err error
		if mj, err = json.Marshal(mapping); err != nil {
			return err
		}
	}
	cpath, cprefix, cmap := C.CString(path), C.CString(prefix), C.CString(string(mj))
	defer C.free(unsafe.Pointer(cpath))
	defer C.free(unsafe.Pointer(cprefix))
	defer C.free(unsafe.Pointer(cmap))
	return withThread(func() error {
		if C.c_load_safetensors(&m.lib.api, m.m, cpath, cprefix, cmap) != 0 {
			return m.lib.lastError("load weights")
		}
		return nil
	})
}

// LoadPretrained loads the parameters under prefix (e.g. "encoder." for the
// frozen ViT) from a local file that names them without the prefix, as a
// pretrained checkpoint of that module alone would. Released checkpoints
// under their own names (EVA-CLIP, Llama-2), sharded, on S3 or in half
// precision, load through InitFrom (pretrained.go).
func (m *Model) LoadPretrained(path, prefix string) error {
	mapping := map[string]string{}
	for _, p := range append(append([]ParamInfo(nil), m.info.Params...), m.info.Frozen...) {
		if strings.HasPrefix(p.Name, prefix) {
			mapping[p.Name] = strings.TrimPrefix(p.Name, prefix)
		}
	}
	return m.LoadSafetensors(path, prefix, mapping)
}

// ExportSafetensors writes the model's parameters, by the names and shapes
// the model defines, as a float32 safetensors file (a bf16 model's
// parameters as the float32 values they are exactly; its float32 master
// weights are in its state).
func (m *Model) ExportSafetensors(path string) error {
	params := m.Params()
	if params == nil {
		return errors.New("export: parameters are not in host memory")
	}
	if m.info.Precision == PrecisionBF16 {
		params = unpackBF16(params)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := checkpoint.WriteParams(f, params, CheckpointParams(m.info.Params)); err != nil {
		f.Close()
		return fmt.Errorf("export %s: %w", path, err)
	}
	return f.Close()
}

// CheckpointParams is a parameter table as checkpoint manifests record it
// (without the optimizer groups).
func CheckpointParams(params []ParamInfo) []checkpoint.ParamInfo {
	var out []checkpoint.ParamInfo
	for _, p := range params {
		out = append(out, checkpoint.ParamInfo{Name: p.Name, Shape: p.Shape, Offset: p.Offset, Numel: p.Numel})
	}
	return out
}

// unpackBF16 widens packed bf16 values (two per float32 word, the first in
// the low half) to float32, exactly: a bf16 is a float32's high 16 bits.
func unpackBF16(words []float32) []float32 {
	out := make([]float32, 2*len(words))
	for i, w := range words {
		bits := math.Float32bits(w)
		out[2*i] = math.Float32frombits(bits << 16)
		out[2*i+1] = math.Float32frombits(bits &^ 0xffff)
	}
	return out
}
