package trainer

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
)

// shortSchedule crosses the VQ switch quickly.
var shortSchedule = Stage1Schedule{Batch: 8, PhaseA: 6, PhaseB: 6, KMeansBatches: 2}

func newModel(t *testing.T, lib *Lib, cfg Config, seed uint64) *Model {
	t.Helper()
	m, err := lib.NewModel(cfg, "cpu", seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// runStage1 runs steps [from, to) of the short schedule.
func runStage1(t *testing.T, m *Model, from, to int) []float64 {
	t.Helper()
	var losses []float64
	for step := from; step < to; step++ {
		if step == shortSchedule.PhaseA {
			if err := shortSchedule.EnableVQAt(m, 0); err != nil {
				t.Fatal(err)
			}
		}
		_, b := SyntheticBatch(0, int64(step), shortSchedule.Batch, 0, shortSchedule.Batch)
		r, err := m.Step(context.Background(), b, Local, nil)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		losses = append(losses, r.LossSum)
	}
	return losses
}

func stage2Batch(t *testing.T, tok *Model, step int64, from, to int) *Batch {
	t.Helper()
	b, err := Stage2Batch(tok, TinyVocab(int(tok.Info().Codebook)), 55, 0, step, 8, from, to, false)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func bitsEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

func relDiff(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num) / (math.Sqrt(den) + 1e-30)
}

// TestFlatGradients: after backward, every parameter's own .grad equals its
// slice of the flat buffer (it is a view, not a copy autograd replaced),
// and the buffer is not trivially zero.
func TestFlatGradients(t *testing.T) {
	lib := loadLib(t)
	llama := TinyStage2()
	arch := *llama.LM
	arch.Arch = "llama"
	llama.LM = &arch
	for _, cfg := range []Config{TinyStage1(), TinyStage2(), llama} {
		m := newModel(t, lib, cfg, 3)
		var b *Batch
		if cfg.Stage == 1 {
			_, b = SyntheticBatch(0, 0, 8, 0, 8)
		} else {
			tok := newModel(t, lib, TinyStage1(), 3)
			runStage1(t, tok, 0, shortSchedule.PhaseA+1)
			b = stage2Batch(t, tok, 0, 0, 8)
		}
		pre, err := m.StepBegin(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := m.StepFinish(pre); err != nil {
			t.Fatal(err)
		}
		flat := m.Grads()
		if int64(len(flat)) != m.Info().ParamCount {
			t.Fatalf("stage %d: flat buffer has %d values, params %d", cfg.Stage, len(flat), m.Info().ParamCount)
		}
		nonzero := 0
		for i, p := range m.Info().Params {
			g, err := m.ParamGrad(i)
			if err != nil {
				t.Fatal(err)
			}
			if !bitsEqual(g, flat[p.Offset:p.Offset+p.Numel]) {
				t.Fatalf("stage %d: %s.grad differs from its slice of the flat buffer", cfg.Stage, p.Name)
			}
			for _, v := range g {
				if v != 0 {
					nonzero++
					break
				}
			}
		}
		if nonzero < len(m.Info().Params)*3/4 {
			t.Fatalf("stage %d: only %d of %d parameters got a gradient", cfg.Stage, nonzero, len(m.Info().Params))
		}
	}
}

// TestSameSeedSameCurve: the same seed gives bitwise the same losses and
// parameters.
func TestSameSeedSameCurve(t *testing.T) {
	lib := loadLib(t)
	a, b := newModel(t, lib, TinyStage1(), 7), newModel(t, lib, TinyStage1(), 7)
	end := shortSchedule.PhaseA + shortSchedule.PhaseB
	la, lb := runStage1(t, a, 0, end), runStage1(t, b, 0, end)
	for i := range la {
		if math.Float64bits(la[i]) != math.Float64bits(lb[i]) {
			t.Fatalf("step %d: loss %v vs %v", i, la[i], lb[i])
		}
	}
	if !bitsEqual(a.Params(), b.Params()) {
		t.Fatal("parameters differ after the same run")
	}
	c := newModel(t, lib, TinyStage1(), 8)
	if bitsEqual(a.Params()[:100], c.Params()[:100]) {
		t.Fatal("another seed gave the same parameters")
	}
}

// TestSaveLoadContinue: stopping, saving, loading into a fresh model and
// continuing gives bitwise the parameters of never stopping (across the VQ
// switch, so the codebook and phase flags are part of the state).
func TestSaveLoadContinue(t *testing.T) {
	lib := loadLib(t)
	end, cut := shortSchedule.PhaseA+shortSchedule.PhaseB, shortSchedule.PhaseA+2
	straight := newModel(t, lib, TinyStage1(), 5)
	runStage1(t, straight, 0, end)

	first := newModel(t, lib, TinyStage1(), 5)
	runStage1(t, first, 0, cut)
	state, err := first.State()
	if err != nil {
		t.Fatal(err)
	}
	resumed := newModel(t, lib, TinyStage1(), 99) // another seed: everything must come from the state
	if err := resumed.Load(state); err != nil {
		t.Fatal(err)
	}
	if !resumed.Info().VQOn || !resumed.Info().SelectorFrozen {
		t.Fatal("phase flags not restored")
	}
	// The model seed keys the Gumbel noise, so a resumed run keeps its seed.
	resumed2 := newModel(t, lib, TinyStage1(), 5)
	if err := resumed2.Load(state); err != nil {
		t.Fatal(err)
	}
	runStage1(t, resumed2, cut, end)
	if !bitsEqual(straight.Params(), resumed2.Params()) {
		t.Fatalf("resumed parameters differ (rel %.3g)", relDiff(resumed2.Params(), straight.Params()))
	}
	s1, _ := straight.State()
	s2, _ := resumed2.State()
	if string(s1) != string(s2) {
		t.Fatal("resumed state (moments, codebook, counters) differs from the uninterrupted one")
	}
}

// stepSplit runs one step with the batch split over replicas, reducing by
// sum like the collective would.
func stepSplit(t *testing.T, replicas []*Model, batches []*Batch) {
	t.Helper()
	var pres, posts [][]float32
	for i, m := range replicas {
		pre, err := m.StepBegin(batches[i])
		if err != nil {
			t.Fatal(err)
		}
		pres = append(pres, pre)
	}
	gpre := sumAll(pres)
	for _, m := range replicas {
		post, _, err := m.StepFinish(append([]float32(nil), gpre...))
		if err != nil {
			t.Fatal(err)
		}
		posts = append(posts, post)
	}
	var grads [][]float32
	for _, m := range replicas {
		grads = append(grads, append([]float32(nil), m.Grads()...))
	}
	gsum, gpost := sumAll(grads), sumAll(posts)
	for i, m := range replicas {
		copy(m.Grads(), gsum)
		if err := m.ApplyGrads(batches[i].GlobalBatch, append([]float32(nil), gpost...)); err != nil {
			t.Fatal(err)
		}
	}
}

func sumAll(parts [][]float32) []float32 {
	out := make([]float32, len(parts[0]))
	for _, p := range parts {
		for i, v := range p {
			out[i] += v
		}
	}
	return out
}

// TestHalfBatchesEqualWholeBatch: two replicas with half a batch each
// (gradients summed, batch statistics reduced, divided by the whole batch)
// end a step with the parameters, codebook and optimizer state of one model
// given the whole batch: the property data parallelism rests on.
func TestHalfBatchesEqualWholeBatch(t *testing.T) {
	lib := loadLib(t)
	check := func(t *testing.T, name string, whole *Model, halves []*Model) {
		sw, err := whole.State()
		if err != nil {
			t.Fatal(err)
		}
		pw, _ := ParseState(sw)
		for i, h := range halves {
			sh, _ := h.State()
			ph, err := ParseState(sh)
			if err != nil {
				t.Fatal(err)
			}
			for _, tensor := range pw.Tensors {
				if d := relDiff(ph.Values[tensor], pw.Values[tensor]); d > 1e-6 {
					t.Errorf("%s: replica %d %s differs from the whole-batch model by %.3g relative", name, i, tensor, d)
				}
			}
		}
	}

	for _, phase := range []struct {
		name string
		warm int
		vq   bool
	}{
		// Phase A: the keep-ratio penalty trains the selector, so the keep
		// mean must be the global one.
		{"stage 1 phase A (keep-ratio statistics)", shortSchedule.PhaseA - 3, false},
		// Phase B: the codebook's EMA needs global per-code sums and counts.
		{"stage 1 phase B (VQ statistics)", shortSchedule.PhaseA + 2, true},
	} {
		t.Run(phase.name, func(t *testing.T) {
			warm := newModel(t, lib, TinyStage1(), 11)
			runStage1(t, warm, 0, phase.warm)
			state, _ := warm.State()
			var models []*Model
			for i := 0; i < 3; i++ {
				m := newModel(t, lib, TinyStage1(), 11)
				if err := m.Load(state); err != nil {
					t.Fatal(err)
				}
				models = append(models, m)
			}
			whole, halves := models[0], models[1:]
			step := int64(phase.warm)
			_, b := SyntheticBatch(0, step, 8, 0, 8)
			stepSplit(t, []*Model{whole}, []*Batch{b})
			_, b1 := SyntheticBatch(0, step, 8, 0, 4)
			_, b2 := SyntheticBatch(0, step, 8, 4, 8)
			stepSplit(t, halves, []*Batch{b1, b2})
			if met, _ := whole.Metrics(); (met["vq"] == 1) != phase.vq {
				t.Fatalf("VQ state in this step: %v, want %v", met["vq"], phase.vq)
			}
			check(t, phase.name, whole, halves)
		})
	}

	for _, cfg := range []struct {
		name       string
		config     Config
		continuous bool
	}{{"stage 2", TinyStage2(), false}, {"stage 2 continuous", TinyStage2Continuous(), true}} {
		t.Run(cfg.name, func(t *testing.T) {
			tok := newModel(t, lib, TinyStage1(), 11)
			runStage1(t, tok, 0, shortSchedule.PhaseA+1)
			batch := func(step int64, from, to int) *Batch {
				b, err := Stage2Batch(tok, TinyVocab(256), 55, 0, step, 8, from, to, cfg.continuous)
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			warm := newModel(t, lib, cfg.config, 12)
			if cfg.continuous {
				if err := InitVisionFrom(warm, tok, t.TempDir()); err != nil {
					t.Fatal(err)
				}
			}
			for s := int64(0); s < 3; s++ {
				if _, err := warm.Step(context.Background(), batch(s, 0, 8), Local, nil); err != nil {
					t.Fatal(err)
				}
			}
			state, _ := warm.State()
			var models []*Model
			for i := 0; i < 3; i++ {
				m := newModel(t, lib, cfg.config, 12)
				if err := m.Load(state); err != nil {
					t.Fatal(err)
				}
				models = append(models, m)
			}
			stepSplit(t, models[:1], []*Batch{batch(3, 0, 8)})
			stepSplit(t, models[1:], []*Batch{batch(3, 0, 4), batch(3, 4, 8)})
			check(t, cfg.name, models[0], models[1:])
		})
	}
}

// TestBadInput: each bad input is a clear Go error; no crash, nothing applied.
func TestBadInput(t *testing.T) {
	lib := loadLib(t)
	m := newModel(t, lib, TinyStage1(), 1)
	before := append([]float32(nil), m.Params()...)
	_, good := SyntheticBatch(0, 0, 8, 0, 8)

	nan := *good
	nan.Images = append([]float32(nil), good.Images...)
	nan.Images[17] = float32(math.NaN())
	short := *good
	short.Images = good.Images[:100]
	small := *good
	small.GlobalBatch = 2
	tests := []struct {
		name string
		run  func() error
		want string
	}{
		{"NaN in images", func() error { _, err := m.StepBegin(&nan); return err }, "NaN"},
		{"wrong image shape", func() error { _, err := m.StepBegin(&short); return err }, "image floats"},
		{"global batch smaller than local", func() error { _, err := m.StepBegin(&small); return err }, "global batch"},
		{"finish without begin", func() error { _, _, err := m.StepFinish(make([]float32, 2)); return err }, "no step in flight"},
		{"apply without finish", func() error { return m.ApplyGrads(8, nil) }, "post-stats"},
		{"wrong pre-stats", func() error { _, _, err := m.StepFinish(nil); return err }, "pre-stats"},
		{"truncated state", func() error { s, _ := m.State(); return m.Load(s[:len(s)-9]) }, "checksum"},
		{"garbage state", func() error { return m.Load([]byte("definitely not a state")) }, "not a lavit state"},
		{"empty state", func() error { return m.Load(nil) }, "empty"},
		{"state of the other stage", func() error {
			lm := newModel(t, lib, TinyStage2(), 1)
			s, _ := lm.State()
			return m.Load(s)
		}, "another stage"},
		{"tokenize before VQ", func() error { _, err := m.Tokenize(good.Images, good.Positions, 0); return err }, "VQ"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
	if !bitsEqual(before, m.Params()) {
		t.Fatal("a refused input changed the parameters")
	}
	// The model still trains after all of that.
	if _, err := m.Step(context.Background(), good, Local, nil); err != nil {
		t.Fatalf("step after bad input: %v", err)
	}

	t.Run("stage 2 token out of range", func(t *testing.T) {
		lm := newModel(t, lib, TinyStage2(), 1)
		b := &Batch{GlobalBatch: 1, Positions: []int64{0}, SeqLen: 3, Tokens: []int64{1, 999, 2}, Targets: []int64{999, 2, -1}}
		if _, err := lm.StepBegin(b); err == nil || !strings.Contains(err.Error(), "out of range") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("config with an unknown field", func(t *testing.T) {
		_, err := ParseConfig([]byte(`{"stage":1,"tokenizer":{"width":64,"widht":32}}`))
		if err == nil || !strings.Contains(err.Error(), "widht") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("config the shim refuses", func(t *testing.T) {
		cfg := TinyStage1()
		cfg.Tokenizer.Heads = 5 // 64 not divisible by 5
		if _, err := lib.NewModel(cfg, "cpu", 1); err == nil {
			t.Fatal("width not divisible by heads accepted")
		}
	})
	t.Run("cuda without cuda", func(t *testing.T) {
		bi, _ := lib.BuildInfo()
		if bi.CUDA {
			t.Skip("this libtorch has CUDA")
		}
		if _, err := lib.NewModel(TinyStage1(), "cuda:0", 1); err == nil || !strings.Contains(err.Error(), "CUDA") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("missing library", func(t *testing.T) {
		_, err := Load("/nonexistent/liblavit_torch.so")
		if !errors.Is(err, ErrNotAvailable) {
			t.Fatalf("got %v, want ErrNotAvailable", err)
		}
	})
	t.Run("not a shim", func(t *testing.T) {
		_, err := Load("/lib/x86_64-linux-gnu/libc.so.6")
		if !errors.Is(err, ErrNotAvailable) || !strings.Contains(err.Error(), "lacks symbol") {
			t.Fatalf("got %v", err)
		}
	})
}
