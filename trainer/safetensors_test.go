package trainer

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// f16 converts a float32 to IEEE half (round toward zero; test values are exact).
func f16(v float32) uint16 {
	b := math.Float32bits(v)
	sign := uint16(b>>16) & 0x8000
	exp := int((b>>23)&0xff) - 127 + 15
	if v == 0 {
		return sign
	}
	return sign | uint16(exp)<<10 | uint16((b>>13)&0x3ff)
}

func TestSafetensorsRoundTrip(t *testing.T) {
	lib := loadLib(t)
	dir := t.TempDir()
	src := newModel(t, lib, TinyStage2(), 1)
	path := filepath.Join(dir, "lm.safetensors")
	if err := src.ExportSafetensors(path); err != nil {
		t.Fatal(err)
	}
	dst := newModel(t, lib, TinyStage2(), 2)
	if bitsEqual(src.Params(), dst.Params()) {
		t.Fatal("two seeds gave the same parameters; the test would prove nothing")
	}
	if err := dst.LoadSafetensors(path, "", nil); err != nil {
		t.Fatal(err)
	}
	if !bitsEqual(src.Params(), dst.Params()) {
		t.Fatal("loaded parameters differ from the exported ones")
	}

	// A file written by another tool: renamed tensors, half precision.
	info := src.Info()
	var ts []Tensor
	mapping := map[string]string{}
	params := src.Params()
	for _, p := range info.Params {
		vals := params[p.Offset : p.Offset+p.Numel]
		name := "model." + p.Name
		mapping[p.Name] = name
		if p.Name == "head.weight" {
			b := make([]byte, 2*len(vals))
			for i := range vals {
				binary.LittleEndian.PutUint16(b[2*i:], f16(0.5))
			}
			ts = append(ts, Tensor{Name: name, DType: "F16", Shape: p.Shape, Data: b})
			continue
		}
		ts = append(ts, F32Tensor(name, p.Shape, vals))
	}
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, ts, nil); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "renamed.safetensors")
	os.WriteFile(other, buf.Bytes(), 0o644)
	fresh := newModel(t, lib, TinyStage2(), 3)
	if err := fresh.LoadSafetensors(other, "", mapping); err != nil {
		t.Fatal(err)
	}
	for _, p := range fresh.Info().Params {
		if p.Name == "head.weight" && fresh.Params()[p.Offset] != 0.5 {
			t.Fatalf("F16 value loaded as %v, want 0.5", fresh.Params()[p.Offset])
		}
	}
}

func TestSafetensorsErrors(t *testing.T) {
	lib := loadLib(t)
	dir := t.TempDir()
	src := newModel(t, lib, TinyStage2(), 1)
	info, params := src.Info(), src.Params()
	write := func(name string, mutate func(p ParamInfo, tensor Tensor) (Tensor, bool)) string {
		var ts []Tensor
		for _, p := range info.Params {
			tn, keep := mutate(p, F32Tensor(p.Name, p.Shape, params[p.Offset:p.Offset+p.Numel]))
			if keep {
				ts = append(ts, tn)
			}
		}
		var buf bytes.Buffer
		WriteSafetensors(&buf, ts, nil)
		path := filepath.Join(dir, name)
		os.WriteFile(path, buf.Bytes(), 0o644)
		return path
	}
	missing := write("missing.safetensors", func(p ParamInfo, tn Tensor) (Tensor, bool) { return tn, p.Name != "ln.weight" })
	misshaped := write("shape.safetensors", func(p ParamInfo, tn Tensor) (Tensor, bool) {
		if p.Name == "tok.weight" {
			tn.Shape = []int64{p.Shape[1], p.Shape[0]}
		}
		return tn, true
	})
	garbage := filepath.Join(dir, "garbage.safetensors")
	os.WriteFile(garbage, []byte("not a safetensors file at all"), 0o644)

	dst := newModel(t, lib, TinyStage2(), 2)
	before := append([]float32(nil), dst.Params()...)
	for _, tc := range []struct{ name, path, want string }{
		{"missing tensor", missing, `missing tensor "ln.weight"`},
		{"mis-shaped tensor", misshaped, `"tok.weight" has shape [64,278]`},
		{"garbage file", garbage, "safetensors"},
		{"no file", filepath.Join(dir, "nope.safetensors"), "No such file"},
	} {
		err := dst.LoadSafetensors(tc.path, "", nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", tc.name, err, tc.want)
		}
	}
	if !bitsEqual(before, dst.Params()) {
		t.Fatal("a refused file changed the parameters")
	}
}

// TestLoadPretrainedViT: a tiny EVA-style ViT encoder takes its frozen
// weights from a file named like a standalone ViT checkpoint; the features
// change to what those weights give, the same in any model that loads them.
func TestLoadPretrainedViT(t *testing.T) {
	lib := loadLib(t)
	cfg := TinyStage1()
	tc := *cfg.Tokenizer
	tc.Encoder, tc.EncoderBlocks, tc.EncoderHeads, tc.EncoderMLPHidden = "vit", 1, 4, 128
	cfg.Tokenizer = &tc
	a, b := newModel(t, lib, cfg, 1), newModel(t, lib, cfg, 2)
	if len(a.Info().Frozen) == 0 {
		t.Fatal("the ViT encoder has no frozen parameters")
	}
	set := NewEvalSet(0, 4)
	feats := func(m *Model) []float32 {
		e, err := m.EvalStage1(set.Images, set.Positions, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		return e.Features
	}
	before := feats(a)

	// A "pretrained ViT" file: names without the "encoder." prefix.
	var ts []Tensor
	for i, p := range a.Info().Frozen {
		vals := make([]float32, p.Numel)
		for k := range vals {
			vals[k] = float32(math.Sin(float64(i*7919+k))) * 0.05
		}
		ts = append(ts, F32Tensor(strings.TrimPrefix(p.Name, "encoder."), p.Shape, vals))
	}
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, ts, nil); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "vit.safetensors")
	os.WriteFile(path, buf.Bytes(), 0o644)

	for _, m := range []*Model{a, b} {
		if err := m.LoadPretrained(path, "encoder."); err != nil {
			t.Fatal(err)
		}
	}
	fa, fb := feats(a), feats(b)
	if bitsEqual(before, fa) {
		t.Fatal("loading encoder weights did not change the features")
	}
	if !bitsEqual(fa, fb) {
		t.Fatal("two models with the same encoder weights give different features")
	}

	// Without one tensor: refused, naming it.
	var buf2 bytes.Buffer
	WriteSafetensors(&buf2, ts[1:], nil)
	short := filepath.Join(t.TempDir(), "short.safetensors")
	os.WriteFile(short, buf2.Bytes(), 0o644)
	if err := b.LoadPretrained(short, "encoder."); err == nil || !strings.Contains(err.Error(), ts[0].Name) {
		t.Fatalf("got %v, want an error naming %s", err, ts[0].Name)
	}
}
