package trainer

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCUDAMatchesCPU runs the tiny stage-1 and stage-2 steps on a GPU and on
// the CPU from the same seed and state, compares the losses, and times the
// GPU step. It needs a CUDA shim and LAVIT_TEST_DEVICE=cuda:N; the GPU check
// script (deploy/gpu/gpu-check.sh) sets both.
func TestCUDAMatchesCPU(t *testing.T) {
	dev := os.Getenv("LAVIT_TEST_DEVICE")
	if dev == "" {
		t.Skip("set LAVIT_TEST_DEVICE=cuda:0 (deploy/gpu/gpu-check.sh) to run on a GPU")
	}
	lib := loadLib(t)
	bi, err := lib.BuildInfo()
	if err != nil || !bi.CUDA {
		t.Fatalf("LAVIT_TEST_DEVICE=%s but the shim has no CUDA (%+v, %v)", dev, bi, err)
	}
	ctx := context.Background()
	run := func(device string, cfg Config, batches []*Batch) ([]float64, *Model) {
		m, err := lib.NewModel(cfg, device, 1)
		if err != nil {
			t.Fatal(err)
		}
		var losses []float64
		for _, b := range batches {
			r, err := m.Step(ctx, b, Local, nil)
			if err != nil {
				t.Fatalf("%s: %v", device, err)
			}
			losses = append(losses, r.LossSum)
		}
		return losses, m
	}
	var b1 []*Batch
	for s := int64(0); s < 5; s++ {
		_, b := SyntheticBatch(0, s, 8, 0, 8)
		b1 = append(b1, b)
	}
	cpu, mc := run("cpu", TinyStage1(), b1)
	gpu, mg := run(dev, TinyStage1(), b1)
	for i := range cpu {
		if d := math.Abs(cpu[i]-gpu[i]) / math.Abs(cpu[i]); d > 1e-3 {
			t.Errorf("stage 1 step %d: loss %v on CPU, %v on %s", i, cpu[i], gpu[i], dev)
		}
	}
	timeIt := func(m *Model, b *Batch) float64 {
		ms, err := m.BenchSteps(b, 50)
		if err != nil {
			t.Fatal(err)
		}
		return ms
	}
	start := time.Now()
	t.Logf("stage 1: %.2f ms/step on %s (C++ loop), %.2f on CPU; losses %v vs %v (%s)", timeIt(mg, b1[0]), dev, timeIt(mc, b1[0]), gpu, cpu, time.Since(start).Round(time.Millisecond))
	mg.Close()
	mc.Close()

	tok, err := lib.NewModel(TinyStage1(), "cpu", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	sched := Stage1Schedule{Batch: 8, PhaseA: 2, PhaseB: 0, KMeansBatches: 2}
	if err := TrainStage1(ctx, tok, 0, sched, nil); err != nil {
		t.Fatal(err)
	}
	if err := sched.EnableVQAt(tok, 0); err != nil {
		t.Fatal(err)
	}
	var b2 []*Batch
	for s := int64(0); s < 5; s++ {
		b, err := Stage2Batch(tok, TinyVocab(256), 55, 0, s, 8, 0, 8, false)
		if err != nil {
			t.Fatal(err)
		}
		b2 = append(b2, b)
	}
	cpu2, mc2 := run("cpu", TinyStage2(), b2)
	gpu2, mg2 := run(dev, TinyStage2(), b2)
	defer mc2.Close()
	defer mg2.Close()
	for i := range cpu2 {
		if d := math.Abs(cpu2[i]-gpu2[i]) / math.Abs(cpu2[i]); d > 1e-3 {
			t.Errorf("stage 2 step %d: loss %v on CPU, %v on %s", i, cpu2[i], gpu2[i], dev)
		}
	}
	t.Logf("stage 2: %.2f ms/step on %s, %.2f on CPU", timeIt(mg2, b2[0]), dev, timeIt(mc2, b2[0]))
}

// mediumLM is the GPU check's medium stage-2 model: Llama-shaped (RoPE,
// RMSNorm, SwiGLU), d 1024, 12 layers, 16 heads, MLP 2816, LaVIT's
// vocabulary (32000 text + [IMG] + [/IMG] + 16384 codes): about 254 M
// parameters. deploy/gpu/reference_step.py builds the same model in
// PyTorch eager for the side-by-side step time.
func mediumLM() Config {
	c := TinyStage2()
	c.Text, c.Eval = nil, ""
	c.LM = &LMConfig{Arch: "llama", Vocab: 48386, DModel: 1024, Layers: 12, Heads: 16, MLP: 2816, MaxLen: 512, RopeTheta: 10000, NormEps: 1e-5}
	return c
}

// TestGPUStepTimes prints the GPU check's table: ms per training step (the
// shim's own loop, forward + backward + optimizer, world of one) for the
// tiny stage 1, the tiny stage 2 and the medium LM, on the CPU and on
// LAVIT_TEST_DEVICE; also written to $LAVIT_REPORT_DIR/gpu-steps.md.
func TestGPUStepTimes(t *testing.T) {
	dev := os.Getenv("LAVIT_TEST_DEVICE")
	if dev == "" {
		t.Skip("set LAVIT_TEST_DEVICE=cuda:0 (deploy/gpu/gpu-check.sh) to run on a GPU")
	}
	lib := loadLib(t)
	ctx := context.Background()
	time1 := func(device string, cfg Config, b *Batch, steps int) (float64, int64) {
		m, err := lib.NewModel(cfg, device, 1)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if _, err := m.Step(ctx, b, Local, nil); err != nil { // warm up: allocator, kernels
			t.Fatal(err)
		}
		ms, err := m.BenchSteps(b, steps)
		if err != nil {
			t.Fatal(err)
		}
		return ms, m.Info().ParamCount
	}
	_, s1 := SyntheticBatch(0, 0, 8, 0, 8)
	tok, err := lib.NewModel(TinyStage1(), "cpu", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	sched := Stage1Schedule{Batch: 8, PhaseA: 1, KMeansBatches: 2}
	if err := sched.EnableVQAt(tok, 0); err != nil {
		t.Fatal(err)
	}
	s2, err := Stage2Batch(tok, TinyVocab(256), 55, 0, 0, 8, 0, 8, false)
	if err != nil {
		t.Fatal(err)
	}
	// The medium LM: 8 rows of 511 random tokens, every target trained.
	med := lmRows([]int64{0, 1, 2, 3, 4, 5, 6, 7}, 511, func(i, k int) int64 { return int64((i*7919 + k*104729) % 48386) })
	var out strings.Builder
	fmt.Fprintf(&out, "| model | parameters | batch | CPU ms/step | %s ms/step |\n| --- | --- | --- | --- | --- |\n", dev)
	for _, row := range []struct {
		name  string
		cfg   Config
		b     *Batch
		batch string
		cpu   bool
	}{
		{"tiny stage 1", TinyStage1(), s1, "8 images 32×32", true},
		{"tiny stage 2", TinyStage2(), s2, "8 × 55 tokens", true},
		{"medium LM (Llama-shaped)", mediumLM(), med, "8 × 511 tokens", false},
	} {
		gpu, params := time1(dev, row.cfg, row.b, 20)
		cpu := "–"
		if row.cpu {
			ms, _ := time1("cpu", row.cfg, row.b, 20)
			cpu = fmt.Sprintf("%.2f", ms)
		}
		fmt.Fprintf(&out, "| %s | %.1f M | %s | %s | %.2f |\n", row.name, float64(params)/1e6, row.batch, cpu, gpu)
	}
	t.Logf("step times (the shim's loop, fp32):\n%s", out.String())
	if dir := os.Getenv("LAVIT_REPORT_DIR"); dir != "" {
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "gpu-steps.md"), []byte(out.String()), 0o644)
	}
}

// TestMediumLMConfig: the GPU check's medium model is a valid config of
// the size it claims (its parameters counted as TestLMParameterCounts
// does, without building it: 4 GB of weights and Adam state).
func TestMediumLMConfig(t *testing.T) {
	c := mediumLM()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	l := c.LM
	params := 2*l.Vocab*l.DModel + l.Layers*(4*l.DModel*l.DModel+3*l.DModel*l.MLP+2*l.DModel) + l.DModel
	if params < 100e6 || params > 300e6 {
		t.Fatalf("%d parameters: the check wants a 100–300 M model", params)
	}
}
