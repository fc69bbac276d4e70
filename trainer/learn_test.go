package trainer

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/shards/synth"
)

// loadLib loads the shim built by `make torch`; tests that need it fail
// (not skip) without it, since make test builds it first.
func loadLib(t testing.TB) *Lib {
	t.Helper()
	path := ""
	if os.Getenv("LAVIT_TORCH_LIB") == "" {
		path = filepath.Join(testutil.RepoRoot(), "bin", LibraryName)
	}
	lib, err := Load(path)
	if err != nil {
		t.Fatalf("%v (run `make torch`, or set LAVIT_TORCH_LIB)", err)
	}
	if err := lib.SetThreads(1); err != nil {
		t.Fatal(err)
	}
	return lib
}

// TestTinyLaVITLearns trains the tiny stage-1 and stage-2 schedules on the
// synthetic data and checks MODEL.md's "it learned" bars on the eval split.
func TestTinyLaVITLearns(t *testing.T) {
	report := learnTiny(t, PrecisionFP32)
	// make test prints this file after the run, so the table is in the log
	// of every run, passing or not.
	if dir := os.Getenv("LAVIT_REPORT_DIR"); dir != "" {
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "it-learned.txt"), []byte(report), 0o644)
	}
}

// TestTinyLaVITLearnsBF16 is the same schedules in bf16 (bf16 parameters
// and activations, float32 master weights and losses): the same bars.
func TestTinyLaVITLearnsBF16(t *testing.T) {
	report := learnTiny(t, PrecisionBF16)
	if dir := os.Getenv("LAVIT_REPORT_DIR"); dir != "" {
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "it-learned-bf16.txt"), []byte(report), 0o644)
	}
}

// learnTiny trains both tiny stages in precision, checks every bar (the
// test fails if one is missed, after logging the tables) and returns the
// tables.
func learnTiny(t *testing.T, precision string) string {
	lib := loadLib(t)
	ctx := context.Background()
	const seed, dataSeed = 1, 0
	newModel := func(cfg Config) *Model {
		t.Helper()
		m, err := lib.NewModel(cfg, "cpu", seed)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		if err := m.SetPrecision(precision, PrecisionFP32); err != nil {
			t.Fatal(err)
		}
		if in := m.Info(); in.Precision != precision || (precision == PrecisionBF16 && in.ParamBytes != 2*in.GradNumel) {
			t.Fatalf("the model is %s with %d bytes of parameters for %d values: not %s", in.Precision, in.ParamBytes, in.GradNumel, precision)
		}
		return m
	}
	tok := newModel(TinyStage1())
	start := time.Now()
	sched := TinyStage1Schedule()
	err := TrainStage1(ctx, tok, dataSeed, sched, func(step int, r StepResult) {
		if step%100 == 0 || step == sched.PhaseA+sched.PhaseB-1 {
			met, _ := tok.Metrics()
			t.Logf("stage 1 step %3d  loss %.4f  keep %.3f  vq %v", step, r.LossSum/float64(sched.Batch), met["keep_mean"], met["vq"])
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stage 1 (%s): %d steps in %s", precision, sched.PhaseA+sched.PhaseB, time.Since(start).Round(time.Millisecond))
	set := NewEvalSet(dataSeed, synth.EvalSize)
	r1, err := EvaluateStage1(tok, set, 4)
	if err != nil {
		t.Fatal(err)
	}
	title1 := "stage 1 (tokenizer) on 256 eval images"
	if precision != PrecisionFP32 {
		title1 = precision + ": " + title1
	}
	checks1 := r1.Checks()
	t.Log("\n" + FormatChecks(title1, checks1))

	lm := newModel(TinyStage2())
	start = time.Now()
	err = TrainStage2(ctx, lm, tok, dataSeed, TinyStage2Steps, TinyBatch, func(step int, r StepResult) {
		if step%200 == 0 || step == TinyStage2Steps-1 {
			t.Logf("stage 2 step %3d  loss %.4f", step, r.LossSum/TinyBatch)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stage 2 (%s): %d steps in %s", precision, TinyStage2Steps, time.Since(start).Round(time.Millisecond))
	r2, err := EvaluateStage2(lm, tok, set)
	if err != nil {
		t.Fatal(err)
	}
	checks2 := r2.Checks()
	title2 := "stage 2 (LM, discrete image input) on 256 eval images"
	t.Log("\n" + FormatChecks(title2, checks2))

	// The continuous switch: image→text through a trainable merger copy
	// (initialised from stage 1) and a projector.
	clm := newModel(TinyStage2Continuous())
	if err := InitVisionFrom(clm, tok, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := TrainStage2(ctx, clm, tok, dataSeed, TinyStage2Steps, TinyBatch, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("stage 2 continuous (%s): %d steps in %s", precision, TinyStage2Steps, time.Since(start).Round(time.Millisecond))
	r3, err := EvaluateStage2(clm, tok, set)
	if err != nil {
		t.Fatal(err)
	}
	checks3 := r3.Checks()
	title3 := "stage 2 (LM, continuous image→text input) on 256 eval images"
	t.Log("\n" + FormatChecks(title3, checks3))
	report := FormatChecks(title1, checks1) + FormatChecks(title2, checks2) + FormatChecks(title3, checks3)
	if !AllPass(checks1) || !AllPass(checks2) || !AllPass(checks3) {
		t.Errorf("the tiny model (%s) did not reach MODEL.md's bars (tables above)", precision)
	}
	return report
}
