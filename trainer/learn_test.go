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
	lib := loadLib(t)
	ctx := context.Background()
	const seed, dataSeed = 1, 0
	tok, err := lib.NewModel(TinyStage1(), "cpu", seed)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	start := time.Now()
	sched := TinyStage1Schedule()
	err = TrainStage1(ctx, tok, dataSeed, sched, func(step int, r StepResult) {
		if step%100 == 0 || step == sched.PhaseA+sched.PhaseB-1 {
			met, _ := tok.Metrics()
			t.Logf("stage 1 step %3d  loss %.4f  keep %.3f  vq %v", step, r.LossSum/float64(sched.Batch), met["keep_mean"], met["vq"])
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stage 1: %d steps in %s", sched.PhaseA+sched.PhaseB, time.Since(start).Round(time.Millisecond))
	set := NewEvalSet(dataSeed, synth.EvalSize)
	r1, err := EvaluateStage1(tok, set, 4)
	if err != nil {
		t.Fatal(err)
	}
	checks1 := r1.Checks()
	t.Log("\n" + FormatChecks("stage 1 (tokenizer) on 256 eval images", checks1))

	lm, err := lib.NewModel(TinyStage2(), "cpu", seed)
	if err != nil {
		t.Fatal(err)
	}
	defer lm.Close()
	start = time.Now()
	err = TrainStage2(ctx, lm, tok, dataSeed, TinyStage2Steps, TinyBatch, func(step int, r StepResult) {
		if step%200 == 0 || step == TinyStage2Steps-1 {
			t.Logf("stage 2 step %3d  loss %.4f", step, r.LossSum/TinyBatch)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stage 2: %d steps in %s", TinyStage2Steps, time.Since(start).Round(time.Millisecond))
	r2, err := EvaluateStage2(lm, tok, set)
	if err != nil {
		t.Fatal(err)
	}
	checks2 := r2.Checks()
	t.Log("\n" + FormatChecks("stage 2 (LM, discrete image input) on 256 eval images", checks2))

	// The continuous switch: image→text through a trainable merger copy
	// (initialised from stage 1) and a projector.
	clm, err := lib.NewModel(TinyStage2Continuous(), "cpu", seed)
	if err != nil {
		t.Fatal(err)
	}
	defer clm.Close()
	if err := InitVisionFrom(clm, tok, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := TrainStage2(ctx, clm, tok, dataSeed, TinyStage2Steps, TinyBatch, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("stage 2 continuous: %d steps in %s", TinyStage2Steps, time.Since(start).Round(time.Millisecond))
	r3, err := EvaluateStage2(clm, tok, set)
	if err != nil {
		t.Fatal(err)
	}
	checks3 := r3.Checks()
	t.Log("\n" + FormatChecks("stage 2 (LM, continuous image→text input) on 256 eval images", checks3))
	report := FormatChecks("stage 1 (tokenizer) on 256 eval images", checks1) +
		FormatChecks("stage 2 (LM, discrete image input) on 256 eval images", checks2) +
		FormatChecks("stage 2 (LM, continuous image→text input) on 256 eval images", checks3)
	// make test prints this file after the run, so the table is in the log
	// of every run, passing or not.
	if dir := os.Getenv("LAVIT_REPORT_DIR"); dir != "" {
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "it-learned.txt"), []byte(report), 0o644)
	}
	if !AllPass(checks1) || !AllPass(checks2) || !AllPass(checks3) {
		t.Fatal("the tiny model did not reach MODEL.md's bars (tables above)")
	}
}
