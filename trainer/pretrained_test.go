package trainer

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/checkpoint/hf"
	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/testutil"
)

// The acceptance tests of issue 18's pretrained weights: tiny random
// checkpoints written under the released EVA-CLIP and Llama-2 tensor names,
// in two shards and an index, in F32, BF16 and F16, load bitwise; a wrong
// shape, a missing, an extra or an unknown tensor, a truncated shard and a
// bad index are refused naming what is wrong, leaving the model as it was.

// llamaName is the Hugging Face Llama-2 name of a lavit LM parameter (the
// inverse of hf.Llama2, written out independently).
func llamaName(p string) string {
	switch p {
	case "tok.weight":
		return "model.embed_tokens.weight"
	case "head.weight":
		return "lm_head.weight"
	case "norm.weight":
		return "model.norm.weight"
	}
	m := regexp.MustCompile(`^blocks\.(\d+)\.(\w+)\.weight$`).FindStringSubmatch(p)
	if m == nil {
		return "?" + p
	}
	hfName := map[string]string{
		"norm1": "input_layernorm", "norm2": "post_attention_layernorm",
		"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
		"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
	}[m[2]]
	return "model.layers." + m[1] + "." + hfName + ".weight"
}

// evaName is the EVA-CLIP (LAVIS eva_vit_g) name of a lavit encoder
// parameter (the inverse of hf.EVACLIP, written out independently).
func evaName(p string) string {
	p = strings.TrimPrefix(p, "encoder.")
	m := regexp.MustCompile(`^(blocks\.\d+\.)(qkv\.weight|q_bias|v_bias|proj\.weight|proj\.bias)$`).FindStringSubmatch(p)
	if m != nil {
		return m[1] + "attn." + m[2]
	}
	return p
}

// tinyLlama is a tiny Llama-shaped LM whose vocabulary (61) is larger than
// the checkpoint's (textRows), as lavit's is larger than Llama's 32000.
func tinyLlama() Config {
	return Config{
		Stage: 2,
		LM:    &LMConfig{Arch: "llama", Vocab: 61, DModel: 32, Layers: 2, Heads: 4, MLP: 48, MaxLen: 16, RopeTheta: 10000, NormEps: 1e-5},
		Optim: &OptimConfig{LR: 1e-3, MinLRRatio: 1, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Clip: 1.0},
	}
}

const textRows = 40

// tinyEVA is the tiny tokenizer with a two-block EVA-style ViT encoder.
func tinyEVA() Config {
	cfg := TinyStage1()
	tc := *cfg.Tokenizer
	tc.Encoder, tc.EncoderBlocks, tc.EncoderHeads, tc.EncoderMLPHidden = "vit", 2, 4, 128
	cfg.Tokenizer = &tc
	return cfg
}

// randomTensor makes n random values stored as dtype and the float32
// values they are exactly.
func randomTensor(r *rand.Rand, name, dtype string, shape []int64) (Tensor, []float32) {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	vals := make([]float32, n)
	switch dtype {
	case "F32":
		b := make([]byte, 4*n)
		for i := range vals {
			vals[i] = float32(r.NormFloat64() * 0.05)
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(vals[i]))
		}
		return Tensor{Name: name, DType: dtype, Shape: shape, Data: b}, vals
	case "BF16", "F16":
		b := make([]byte, 2*n)
		for i := range vals {
			var h uint16
			if dtype == "BF16" {
				h = uint16(math.Float32bits(float32(r.NormFloat64()*0.05)) >> 16)
			} else {
				h = uint16(r.IntN(1<<16)) &^ 0x4000 // exponent below 16: finite, |x| < 2
			}
			binary.LittleEndian.PutUint16(b[2*i:], h)
			if dtype == "BF16" {
				vals[i] = math.Float32frombits(uint32(h) << 16)
			} else {
				vals[i] = hf.HalfToFloat32(h)
			}
		}
		return Tensor{Name: name, DType: dtype, Shape: shape, Data: b}, vals
	}
	panic(dtype)
}

// writeSharded writes tensors as two shards (the first half by name, the
// rest) and model.safetensors.index.json in dir.
func writeSharded(t *testing.T, dir string, ts []Tensor) {
	t.Helper()
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
	half := len(ts) / 2
	weightMap := map[string]string{}
	for k, part := range [][]Tensor{ts[:half], ts[half:]} {
		name := []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}[k]
		var buf bytes.Buffer
		if err := WriteSafetensors(&buf, part, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, x := range part {
			weightMap[x.Name] = name
		}
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": weightMap})
	if err := os.WriteFile(filepath.Join(dir, hf.IndexFile), idx, 0o644); err != nil {
		t.Fatal(err)
	}
}

// llamaCheckpoint writes a random Llama-2 checkpoint for m's LM in dir and
// returns the values every parameter must have after loading it (the rows
// past textRows of the embedding and head are m's own).
func llamaCheckpoint(t *testing.T, m *Model, dir, dtype string, seed uint64) map[string][]float32 {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	want := map[string][]float32{}
	var ts []Tensor
	params := values(m)
	for _, p := range m.Info().Params {
		shape := p.Shape
		if p.Name == "tok.weight" || p.Name == "head.weight" {
			shape = []int64{textRows, p.Shape[1]}
		}
		tn, vals := randomTensor(r, llamaName(p.Name), dtype, shape)
		ts = append(ts, tn)
		full := append([]float32(nil), params[p.Offset:p.Offset+p.Numel]...)
		copy(full, vals)
		want[p.Name] = full
	}
	// Older conversions saved the rotary frequencies: ignored.
	inv, _ := randomTensor(r, "model.layers.0.self_attn.rotary_emb.inv_freq", "F32", []int64{4})
	writeSharded(t, dir, append(ts, inv))
	return want
}

// values are m's parameter values (a bf16 model's widened).
func values(m *Model) []float32 {
	if m.Info().Precision == PrecisionBF16 {
		return unpackBF16(m.Params())
	}
	return append([]float32(nil), m.Params()...)
}

// checkParams compares every trainable parameter with want, bitwise.
func checkParams(t *testing.T, m *Model, want map[string][]float32) {
	t.Helper()
	params := values(m)
	if len(want) != len(m.Info().Params) {
		t.Fatalf("%d expected tensors for %d parameters", len(want), len(m.Info().Params))
	}
	for _, p := range m.Info().Params {
		got := params[p.Offset : p.Offset+p.Numel]
		if !bitsEqual(got, want[p.Name]) {
			t.Errorf("parameter %q differs from the checkpoint's values", p.Name)
		}
	}
}

func TestInitFromLlama2(t *testing.T) {
	lib := loadLib(t)
	ctx := context.Background()
	for i, dtype := range []string{"F32", "BF16", "F16"} {
		t.Run(dtype, func(t *testing.T) {
			m := newModel(t, lib, tinyLlama(), uint64(10+i))
			dir := t.TempDir()
			want := llamaCheckpoint(t, m, dir, dtype, uint64(i))
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			if err := m.InitFromURL(ctx, "lm", "file://"+dir); err != nil {
				t.Fatal(err)
			}
			checkParams(t, m, want)
			if left, _ := os.ReadDir(tmp); len(left) != 0 {
				t.Fatalf("the load left %d temporary files", len(left))
			}
		})
	}

	// A bf16 model whose fresh vocabulary rows are read through the host
	// staging buffer, as on a GPU.
	t.Run("bf16 staged", func(t *testing.T) {
		m := newModel(t, lib, tinyLlama(), 15)
		if err := m.SetPrecision(PrecisionBF16, PrecisionFP32); err != nil {
			t.Fatal(err)
		}
		m.forceStaging = true
		dir := t.TempDir()
		want := llamaCheckpoint(t, m, dir, "BF16", 7)
		if err := m.InitFromURL(ctx, "lm", "file://"+dir); err != nil {
			t.Fatal(err)
		}
		checkParams(t, m, want)
	})

	t.Run("S3", func(t *testing.T) {
		srv := testutil.StartS3(t)
		srv.MakeBucket(t, "weights")
		for _, kv := range [][2]string{{"AWS_ENDPOINT_URL", srv.Endpoint}, {"AWS_ACCESS_KEY_ID", srv.AccessKey}, {"AWS_SECRET_ACCESS_KEY", srv.SecretKey}, {"AWS_REGION", srv.Region}} {
			t.Setenv(kv[0], kv[1])
		}
		m := newModel(t, lib, tinyLlama(), 20)
		dir := t.TempDir()
		want := llamaCheckpoint(t, m, dir, "BF16", 5)
		dst, err := objstore.OpenForWrite(ctx, "s3://weights/llama-2-tiny")
		if err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			raw, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			if err := dst.Put(ctx, e.Name(), bytes.NewReader(raw), int64(len(raw))); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.InitFromURL(ctx, "lm", "s3://weights/llama-2-tiny/"); err != nil {
			t.Fatal(err)
		}
		checkParams(t, m, want)
	})
}

// TestInitFromEVACLIP: the frozen encoder takes a sharded EVA-CLIP
// checkpoint (BF16 and F32 tensors mixed, the final norm and head
// ignored). Frozen parameters are not readable through the shim, so the
// encoder is compared by what it computes: its features equal, bitwise,
// those of a model given the same values through the lavit-named loader,
// and differ from the fresh encoder's.
func TestInitFromEVACLIP(t *testing.T) {
	lib := loadLib(t)
	ctx := context.Background()
	a, ref := newModel(t, lib, tinyEVA(), 1), newModel(t, lib, tinyEVA(), 2)
	set := NewEvalSet(0, 4)
	feats := func(m *Model) []float32 {
		e, err := m.EvalStage1(set.Images, set.Positions, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		return e.Features
	}
	before := feats(a)
	r := rand.New(rand.NewPCG(3, 4))
	var eva, lavit []Tensor
	for i, p := range a.Info().Frozen {
		dtype := []string{"BF16", "F32"}[i%2]
		tn, vals := randomTensor(r, evaName(p.Name), dtype, p.Shape)
		if got := hf.EVACLIP().Map(tn.Name); got.Param != p.Name {
			t.Fatalf("EVA-CLIP name %q maps to %q, want %q", tn.Name, got.Param, p.Name)
		}
		eva = append(eva, tn)
		lavit = append(lavit, F32Tensor(strings.TrimPrefix(p.Name, "encoder."), p.Shape, vals))
	}
	if len(eva) < 2*12 {
		t.Fatalf("only %d frozen encoder tensors", len(eva))
	}
	for _, ignored := range []string{"norm.weight", "norm.bias", "head.weight", "head.bias"} {
		tn, _ := randomTensor(r, ignored, "F32", []int64{8})
		eva = append(eva, tn)
	}
	dir := t.TempDir()
	writeSharded(t, dir, eva)
	if err := a.InitFromURL(ctx, "encoder", "file://"+dir); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, lavit, nil); err != nil {
		t.Fatal(err)
	}
	refPath := filepath.Join(t.TempDir(), "ref.safetensors")
	os.WriteFile(refPath, buf.Bytes(), 0o644)
	if err := ref.LoadPretrained(refPath, "encoder."); err != nil {
		t.Fatal(err)
	}
	fa, fr := feats(a), feats(ref)
	if bitsEqual(before, fa) {
		t.Fatal("loading the EVA-CLIP checkpoint did not change the features")
	}
	if !bitsEqual(fa, fr) {
		t.Fatal("the EVA-CLIP checkpoint gives other features than the same values loaded by lavit's names")
	}
}

func TestInitFromRefuses(t *testing.T) {
	lib := loadLib(t)
	ctx := context.Background()
	m := newModel(t, lib, tinyLlama(), 30)
	before := append([]float32(nil), m.Params()...)
	good := t.TempDir()
	llamaCheckpoint(t, m, good, "F32", 9)
	index, _ := os.ReadFile(filepath.Join(good, hf.IndexFile))
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	json.Unmarshal(index, &idx)

	// rewrite copies the good checkpoint with its tensors changed by edit.
	rewrite := func(t *testing.T, edit func([]Tensor) []Tensor) string {
		dir := t.TempDir()
		ck, err := hf.Open(ctx, "file://"+good)
		if err != nil {
			t.Fatal(err)
		}
		var ts []Tensor
		ck.Stream(ctx, ck.Tensors(), func(x hf.TensorInfo, v []float32) error {
			ts = append(ts, F32Tensor(x.Name, x.Shape, v))
			return nil
		})
		writeSharded(t, dir, edit(ts))
		return "file://" + dir
	}
	drop := func(name string) func([]Tensor) []Tensor {
		return func(ts []Tensor) []Tensor {
			var out []Tensor
			for _, x := range ts {
				if x.Name != name {
					out = append(out, x)
				}
			}
			return out
		}
	}
	for _, tc := range []struct {
		name string
		url  func(t *testing.T) string
		want string
	}{
		{"wrong shape", func(t *testing.T) string {
			return rewrite(t, func(ts []Tensor) []Tensor {
				for i, x := range ts {
					if x.Name == "model.layers.1.self_attn.k_proj.weight" {
						ts[i] = F32Tensor(x.Name, []int64{16, 32}, make([]float32, 16*32))
					}
				}
				return ts
			})
		}, `tensor "model.layers.1.self_attn.k_proj.weight" has shape [16,32], parameter "blocks.1.k.weight" needs [32,32]`},
		{"missing tensor", func(t *testing.T) string { return rewrite(t, drop("model.layers.0.mlp.down_proj.weight")) },
			`missing tensor for parameter "blocks.0.down.weight"`},
		{"extra tensor", func(t *testing.T) string {
			return rewrite(t, func(ts []Tensor) []Tensor {
				return append(ts, F32Tensor("model.layers.2.mlp.up_proj.weight", []int64{48, 32}, make([]float32, 48*32)))
			})
		}, `unexpected tensor "model.layers.2.mlp.up_proj.weight"`},
		{"unknown tensor", func(t *testing.T) string {
			return rewrite(t, func(ts []Tensor) []Tensor {
				return append(ts, F32Tensor("model.layers.0.self_attn.q_proj.bias", []int64{32}, make([]float32, 32)))
			})
		}, `unexpected tensor "model.layers.0.self_attn.q_proj.bias"`},
		{"more vocabulary rows than the model", func(t *testing.T) string {
			return rewrite(t, func(ts []Tensor) []Tensor {
				for i, x := range ts {
					if x.Name == "model.embed_tokens.weight" {
						ts[i] = F32Tensor(x.Name, []int64{62, 32}, make([]float32, 62*32))
					}
				}
				return ts
			})
		}, `tensor "model.embed_tokens.weight" has shape [62,32], parameter "tok.weight" needs [61,32]`},
		{"truncated shard", func(t *testing.T) string {
			dir := t.TempDir()
			entries, _ := os.ReadDir(good)
			for _, e := range entries {
				raw, _ := os.ReadFile(filepath.Join(good, e.Name()))
				if e.Name() == "model-00002-of-00002.safetensors" {
					raw = raw[:len(raw)-100]
				}
				os.WriteFile(filepath.Join(dir, e.Name()), raw, 0o644)
			}
			return "file://" + dir
		}, `model-00002-of-00002.safetensors: tensor`},
		{"bad index", func(t *testing.T) string {
			dir := t.TempDir()
			entries, _ := os.ReadDir(good)
			for _, e := range entries {
				raw, _ := os.ReadFile(filepath.Join(good, e.Name()))
				if e.Name() == hf.IndexFile {
					raw = []byte(`{"weight_map": {"model.norm.weight": "model-00003-of-00002.safetensors"}}`)
				}
				os.WriteFile(filepath.Join(dir, e.Name()), raw, 0o644)
			}
			return "file://" + dir
		}, `model-00003-of-00002.safetensors`},
		{"NaN", func(t *testing.T) string {
			return rewrite(t, func(ts []Tensor) []Tensor {
				for i, x := range ts {
					if x.Name == "model.norm.weight" {
						v := make([]float32, 32)
						v[3] = float32(math.NaN())
						ts[i] = F32Tensor(x.Name, x.Shape, v)
					}
				}
				return ts
			})
		}, `tensor "model.norm.weight" holds NaN at element 3`}, // last: it may have loaded earlier blocks
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url(t)
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			err := m.InitFromURL(ctx, "lm", url)
			if left, _ := os.ReadDir(tmp); len(left) != 0 {
				t.Errorf("the refused load left %d temporary files", len(left))
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if tc.name != "NaN" && !bitsEqual(before, m.Params()) {
				t.Fatal("a refused checkpoint changed the parameters")
			}
		})
	}
}
