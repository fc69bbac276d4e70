package trainer

/*
#include <stdlib.h>
#include "shim_loader.h"
*/
import "C"

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"unsafe"
)

// Safetensors (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length, a JSON header mapping names to dtype, shape
// and [begin, end) byte offsets into the data that follows. lavit writes it
// for `ckpt export` and reads user-supplied pretrained weights with it.

// Tensor is one named tensor for a safetensors file.
type Tensor struct {
	Name  string
	DType string // F32, F16 or BF16
	Shape []int64
	Data  []byte // little-endian values
}

// F32Tensor packs float32 values.
func F32Tensor(name string, shape []int64, vals []float32) Tensor {
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return Tensor{Name: name, DType: "F32", Shape: shape, Data: b}
}

type stEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// WriteSafetensors writes tensors (sorted by name) to w.
func WriteSafetensors(w io.Writer, tensors []Tensor, metadata map[string]string) error {
	sorted := append([]Tensor(nil), tensors...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	header := map[string]any{}
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var off int64
	for _, t := range sorted {
		if _, dup := header[t.Name]; dup {
			return fmt.Errorf("safetensors: tensor %q appears twice", t.Name)
		}
		header[t.Name] = stEntry{DType: t.DType, Shape: t.Shape, DataOffsets: [2]int64{off, off + int64(len(t.Data))}}
		off += int64(len(t.Data))
	}
	h, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(h)%8 != 0 { // align the data to 8 bytes, as the format recommends
		h = append(h, ' ')
	}
	bw := bufio.NewWriter(w)
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(h)))
	bw.Write(n[:])
	bw.Write(h)
	for _, t := range sorted {
		if _, err := bw.Write(t.Data); err != nil {
			return err
		}
	}
	return bw.Flush()
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
// frozen ViT) from a file that names them without the prefix, as a
// pretrained checkpoint of that module alone would.
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
// the model defines, as a float32 safetensors file.
func (m *Model) ExportSafetensors(path string) error {
	params := m.Params()
	if params == nil {
		return errors.New("export: parameters are not in host memory")
	}
	var ts []Tensor
	for _, p := range m.info.Params {
		ts = append(ts, F32Tensor(p.Name, p.Shape, params[p.Offset:p.Offset+p.Numel]))
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := WriteSafetensors(f, ts, map[string]string{"format": "pt", "producer": "lavit"}); err != nil {
		f.Close()
		return fmt.Errorf("export %s: %w", path, err)
	}
	return f.Close()
}
