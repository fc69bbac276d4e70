package checkpoint

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
)

// Safetensors (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length, a JSON header mapping names to dtype, shape
// and [begin, end) byte offsets into the data that follows. lavit writes it
// for `ckpt export`; user-supplied pretrained weights are read by the
// libtorch shim (trainer.Model.LoadSafetensors), not here.

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

// SafetensorsEntry is one tensor in a safetensors header.
type SafetensorsEntry struct {
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
		header[t.Name] = SafetensorsEntry{DType: t.DType, Shape: t.Shape, DataOffsets: [2]int64{off, off + int64(len(t.Data))}}
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
