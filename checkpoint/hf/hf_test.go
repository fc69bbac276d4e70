package hf

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/testutil"
)

// rawFile builds a safetensors file from a raw JSON header and n data bytes.
func rawFile(header string, n int) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(header)))
	b.WriteString(header)
	b.Write(make([]byte, n))
	return b.Bytes()
}

func TestParseHeader(t *testing.T) {
	for _, tc := range []struct {
		name, header string
		data         int
		want         string // "" = valid
	}{
		{"valid", `{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"format":"pt"}}`, 24, ""},
		{"scalar and empty", `{"s":{"dtype":"BF16","shape":[],"data_offsets":[0,2]},"e":{"dtype":"F16","shape":[0,4],"data_offsets":[2,2]}}`, 2, ""},
		{"wrong size", `{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}`, 24, `tensor "w": data_offsets [0 20] hold 20 bytes`},
		{"past the end", `{"p":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}`, 24, `tensor "p": data_offsets [0 32] outside`},
		{"negative offset", `{"n":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}`, 24, `tensor "n": data_offsets`},
		{"overflow", `{"o":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`, 0, `tensor "o": shape`},
		{"negative dim", `{"d":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}`, 0, `tensor "d" has negative dimension`},
		{"unknown dtype", `{"u":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}`, 1, `tensor "u" has unknown dtype "Q4"`},
		{"overlap", `{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, 12, `tensors "x" and "y" overlap`},
		{"duplicate", `{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 2, `tensor "x" appears twice`},
		{"missing field", `{"m":{"dtype":"F32","shape":[1]}}`, 4, `tensor "m" lacks`},
		{"not an object", `[1,2]`, 0, "not a JSON object"},
		{"trailing data", `{} {}`, 0, "data after"},
		{"bad json", `{"a":`, 0, `tensor "a"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := rawFile(tc.header, tc.data)
			ts, err := ParseHeader("f.safetensors", []byte(tc.header), int64(len(b)))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				for _, x := range ts {
					if x.Begin < 8+int64(len(tc.header)) || x.End > int64(len(b)) {
						t.Fatalf("tensor %q at [%d,%d) outside the data", x.Name, x.Begin, x.End)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "f.safetensors") {
				t.Fatalf("got %v, want an error naming the file and containing %q", err, tc.want)
			}
		})
	}
}

func TestHalfToFloat32(t *testing.T) {
	for _, tc := range []struct {
		h    uint16
		want float32
	}{
		{0x0000, 0}, {0x3c00, 1}, {0xc000, -2}, {0x3555, 0.333251953125}, {0x7bff, 65504},
		{0x0001, float32(math.Ldexp(1, -24))}, {0x03ff, float32(math.Ldexp(1023, -24))}, {0x0400, float32(math.Ldexp(1, -14))},
		{0x7c00, float32(math.Inf(1))}, {0xfc00, float32(math.Inf(-1))},
	} {
		if got := HalfToFloat32(tc.h); got != tc.want {
			t.Errorf("HalfToFloat32(%#04x) = %v, want %v", tc.h, got, tc.want)
		}
	}
	if got := HalfToFloat32(0x8000); math.Float32bits(got) != 0x80000000 {
		t.Errorf("negative zero widened to %#x", math.Float32bits(got))
	}
	if got := HalfToFloat32(0x7e00); !math.IsNaN(float64(got)) {
		t.Errorf("NaN widened to %v", got)
	}
	// Every finite half round-trips through float64 arithmetic.
	for h := 0; h < 1<<16; h++ {
		exp, mant := (h>>10)&0x1f, h&0x3ff
		if exp == 31 {
			continue
		}
		want := math.Ldexp(float64(mant), -24)
		if exp > 0 {
			want = math.Ldexp(float64(mant|0x400), exp-25)
		}
		if h&0x8000 != 0 {
			want = -want
		}
		if got := HalfToFloat32(uint16(h)); float64(got) != want {
			t.Fatalf("HalfToFloat32(%#04x) = %v, want %v", h, got, want)
		}
	}
}

// writeFile writes tensors as a safetensors file in dir.
func writeFile(t testing.TB, dir, name string, ts []checkpoint.Tensor) {
	t.Helper()
	var b bytes.Buffer
	if err := checkpoint.WriteSafetensors(&b, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeIndex writes model.safetensors.index.json.
func writeIndex(t testing.TB, dir string, weightMap map[string]string) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": weightMap})
	if err := os.WriteFile(filepath.Join(dir, IndexFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func halfTensor(name, dtype string, shape []int64, bits []uint16) checkpoint.Tensor {
	b := make([]byte, 2*len(bits))
	for i, v := range bits {
		binary.LittleEndian.PutUint16(b[2*i:], v)
	}
	return checkpoint.Tensor{Name: name, DType: dtype, Shape: shape, Data: b}
}

func TestOpenAndStream(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := checkpoint.F32Tensor("a", []int64{2, 2}, []float32{1, -2, 3.5, 1e-30})
	b := halfTensor("b", "BF16", []int64{3}, []uint16{0x3f80, 0xc000, 0x0001})
	c := halfTensor("c", "F16", []int64{2}, []uint16{0x3c00, 0x0001})
	i8 := checkpoint.Tensor{Name: "i", DType: "I8", Shape: []int64{1}, Data: []byte{1}}
	writeFile(t, dir, "model-00001-of-00002.safetensors", []checkpoint.Tensor{a, b})
	writeFile(t, dir, "model-00002-of-00002.safetensors", []checkpoint.Tensor{c, i8})
	writeIndex(t, dir, map[string]string{"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
		"c": "model-00002-of-00002.safetensors", "i": "model-00002-of-00002.safetensors"})

	ck, err := Open(ctx, "file://"+dir+"/")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]float32{
		"a": {1, -2, 3.5, 1e-30},
		"b": {1, -2, math.Float32frombits(0x00010000)},
		"c": {1, float32(math.Ldexp(1, -24))},
	}
	var ts []TensorInfo
	for _, x := range ck.Tensors() {
		if x.Name != "i" {
			ts = append(ts, x)
		}
	}
	got := map[string][]float32{}
	if err := ck.Stream(ctx, ts, func(x TensorInfo, vals []float32) error { got[x.Name] = vals; return nil }); err != nil {
		t.Fatal(err)
	}
	for name, w := range want {
		g := got[name]
		if len(g) != len(w) {
			t.Fatalf("%s: %d values, want %d", name, len(g), len(w))
		}
		for i := range w {
			if math.Float32bits(g[i]) != math.Float32bits(w[i]) {
				t.Errorf("%s[%d] = %v, want %v", name, i, g[i], w[i])
			}
		}
	}
	// StreamF32 gives the same values as float32 bytes, read in small pieces.
	err = ck.StreamF32(ctx, ts, func(x TensorInfo, r io.Reader) error {
		var out []byte
		buf := make([]byte, 4)
		for {
			n, err := r.Read(buf)
			out = append(out, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		for i, w := range want[x.Name] {
			if got := binary.LittleEndian.Uint32(out[4*i:]); got != math.Float32bits(w) {
				t.Errorf("StreamF32 %s[%d] = %#x, want %#x", x.Name, i, got, math.Float32bits(w))
			}
		}
		if len(out) != 4*len(want[x.Name]) {
			t.Errorf("StreamF32 %s: %d bytes", x.Name, len(out))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = ck.Stream(ctx, ck.Tensors(), func(TensorInfo, []float32) error { return nil })
	if err == nil || !strings.Contains(err.Error(), `tensor "i" has dtype I8`) {
		t.Fatalf("got %v, want a refusal naming the I8 tensor", err)
	}

	// A single file, named by its directory or directly.
	single := t.TempDir()
	writeFile(t, single, SingleFile, []checkpoint.Tensor{a})
	for _, u := range []string{"file://" + single, "file://" + single + "/" + SingleFile} {
		ck, err := Open(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(ck.Tensors()); n != 1 {
			t.Fatalf("%s: %d tensors, want 1", u, n)
		}
	}
}

func TestStreamF32RefusesNaN(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeFile(t, dir, SingleFile, []checkpoint.Tensor{
		checkpoint.F32Tensor("ok", []int64{2}, []float32{1, 2}),
		halfTensor("inf", "F16", []int64{3}, []uint16{0x3c00, 0x3c00, 0x7c00}),
	})
	ck, err := Open(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	err = ck.StreamF32(ctx, ck.Tensors(), func(x TensorInfo, r io.Reader) error {
		_, err := io.Copy(io.Discard, r)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), `tensor "inf" holds +Inf at element 2`) {
		t.Fatalf("got %v, want a refusal naming the tensor and element", err)
	}
}

func TestOpenRefuses(t *testing.T) {
	ctx := context.Background()
	a := checkpoint.F32Tensor("a", []int64{4}, []float32{1, 2, 3, 4})
	b := checkpoint.F32Tensor("b", []int64{2}, []float32{5, 6})
	for _, tc := range []struct {
		name  string
		setup func(dir string)
		want  string
	}{
		{"truncated shard", func(dir string) {
			writeFile(t, dir, "s1.safetensors", []checkpoint.Tensor{a, b})
			p := filepath.Join(dir, "s1.safetensors")
			raw, _ := os.ReadFile(p)
			os.WriteFile(p, raw[:len(raw)-4], 0o644)
			writeIndex(t, dir, map[string]string{"a": "s1.safetensors", "b": "s1.safetensors"})
		}, `s1.safetensors: tensor "b": data_offsets`},
		{"index names a missing tensor", func(dir string) {
			writeFile(t, dir, "s1.safetensors", []checkpoint.Tensor{a})
			writeIndex(t, dir, map[string]string{"a": "s1.safetensors", "b": "s1.safetensors"})
		}, `places tensor "b" in this shard, which lacks it`},
		{"shard has an unlisted tensor", func(dir string) {
			writeFile(t, dir, "s1.safetensors", []checkpoint.Tensor{a, b})
			writeIndex(t, dir, map[string]string{"a": "s1.safetensors"})
		}, `shard has tensor "b"`},
		{"index escapes", func(dir string) {
			writeIndex(t, dir, map[string]string{"a": "../x.safetensors"})
		}, `tensor "a" is placed in shard "../x.safetensors"`},
		{"bad index", func(dir string) {
			os.WriteFile(filepath.Join(dir, IndexFile), []byte(`{"weight_map": [1]}`), 0o644)
		}, "not a safetensors index"},
		{"missing shard", func(dir string) {
			writeIndex(t, dir, map[string]string{"a": "gone.safetensors"})
		}, "gone.safetensors"},
		{"nothing there", func(string) {}, SingleFile},
		{"huge header length", func(dir string) {
			raw := rawFile("{}", 0)
			binary.LittleEndian.PutUint64(raw, 1<<40)
			os.WriteFile(filepath.Join(dir, SingleFile), raw, 0o644)
		}, "header length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(dir)
			_, err := Open(ctx, "file://"+dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// FuzzParseHeader: no header crashes the parser, and what it accepts lies
// inside the file, exactly sized, without overlaps. `go test -fuzz
// FuzzParseHeader ./checkpoint/hf` searches further.
func FuzzParseHeader(f *testing.F) {
	for _, s := range []string{
		`{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"format":"pt"}}`,
		`{"s":{"dtype":"BF16","shape":[],"data_offsets":[0,2]}}`,
		`{"o":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`,
		`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`,
		`{"x":1}`, `[]`, ``, `{"a":`,
	} {
		f.Add([]byte(s), int64(64))
	}
	f.Fuzz(func(t *testing.T, header []byte, data int64) {
		if data < 0 || data > 1<<40 {
			return
		}
		size := 8 + int64(len(header)) + data
		ts, err := ParseHeader("f", header, size)
		if err != nil {
			return
		}
		var last int64
		for _, x := range ts {
			if x.Begin < 8+int64(len(header)) || x.End > size || x.Begin < last {
				t.Fatalf("accepted tensor %q at [%d,%d) in a %d-byte file", x.Name, x.Begin, x.End, size)
			}
			if x.End-x.Begin != x.Numel()*dtypeSizes[x.DType] {
				t.Fatalf("accepted tensor %q with %d bytes for shape %v %s", x.Name, x.End-x.Begin, x.Shape, x.DType)
			}
			last = x.End
		}
	})
}

// TestOpenS3: a sharded checkpoint on the real S3 test server reads the
// same values as from the directory it was uploaded from.
func TestOpenS3(t *testing.T) {
	ctx := context.Background()
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "weights")
	for _, kv := range [][2]string{{"AWS_ENDPOINT_URL", srv.Endpoint}, {"AWS_ACCESS_KEY_ID", srv.AccessKey}, {"AWS_SECRET_ACCESS_KEY", srv.SecretKey}, {"AWS_REGION", srv.Region}} {
		t.Setenv(kv[0], kv[1])
	}
	dir := t.TempDir()
	a := checkpoint.F32Tensor("a", []int64{3}, []float32{1, 2, 3})
	b := halfTensor("b", "BF16", []int64{2}, []uint16{0x3f80, 0x4000})
	c := checkpoint.F32Tensor("c", []int64{1}, []float32{-7})
	bigVals := make([]float32, 100_000)
	for i := range bigVals {
		bigVals[i] = float32(i) * 0.5
	}
	big := checkpoint.F32Tensor("big", []int64{100, 1000}, bigVals)
	writeFile(t, dir, "s1.safetensors", []checkpoint.Tensor{a, b, big})
	writeFile(t, dir, "s2.safetensors", []checkpoint.Tensor{c})
	writeIndex(t, dir, map[string]string{"a": "s1.safetensors", "b": "s1.safetensors", "big": "s1.safetensors", "c": "s2.safetensors"})
	dst, err := objstore.OpenForWrite(ctx, "s3://weights/llama")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{IndexFile, "s1.safetensors", "s2.safetensors"} {
		raw, _ := os.ReadFile(filepath.Join(dir, name))
		if err := dst.Put(ctx, name, bytes.NewReader(raw), int64(len(raw))); err != nil {
			t.Fatal(err)
		}
	}
	read := func(url string) map[string][]float32 {
		ck, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string][]float32{}
		if err := ck.Stream(ctx, ck.Tensors(), func(x TensorInfo, v []float32) error { got[x.Name] = v; return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	fromS3, fromFile := read("s3://weights/llama/"), read("file://"+dir)
	if len(fromS3) != 4 || !reflect.DeepEqual(fromS3, fromFile) {
		t.Fatalf("S3 read %v, the directory %v", fromS3, fromFile)
	}

	// Through a proxy that cuts every connection after 64 KiB: the source
	// resumes where it was, and the values are the same.
	proxy := testutil.StartProxy(t, srv.Addr)
	t.Setenv("AWS_ENDPOINT_URL", proxy.Endpoint)
	proxy.CutAfter(64 << 10)
	if got := read("s3://weights/llama"); !reflect.DeepEqual(got, fromFile) {
		t.Fatal("a resumed S3 read gave other values")
	}
	if proxy.Cuts() == 0 {
		t.Fatal("the proxy cut no connection; the test did not exercise resuming")
	}

	// The server going away mid-shard is an error naming the object.
	ck, err := Open(ctx, "s3://weights/llama")
	if err != nil {
		t.Fatal(err)
	}
	first := true
	err = ck.Stream(ctx, ck.Tensors(), func(TensorInfo, []float32) error {
		if first {
			proxy.SetDown(true)
			first = false
		}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "s1.safetensors") {
		t.Fatalf("got %v, want an error naming the shard", err)
	}
}
