package trainer

import (
	"context"
	"math"
	"os"
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
