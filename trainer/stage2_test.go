package trainer

import (
	"context"
	"math"
	"testing"
)

// TestTrimmedRowsTrainTheSame: a stage-2 step pays only for its longest
// row (Step cuts the padding after every row's last target), and trains
// like the step over the rows padded to max_len.
func TestTrimmedRowsTrainTheSame(t *testing.T) {
	lib := loadLib(t)
	tok := newModel(t, lib, TinyStage1(), 11)
	runStage1(t, tok, 0, shortSchedule.PhaseA+1)
	for _, cfg := range []struct {
		name       string
		config     Config
		continuous bool
	}{{"discrete", TinyStage2(), false}, {"continuous", TinyStage2Continuous(), true}} {
		t.Run(cfg.name, func(t *testing.T) {
			padded, trimmed := newModel(t, lib, cfg.config, 5), newModel(t, lib, cfg.config, 5)
			if cfg.continuous {
				for _, m := range []*Model{padded, trimmed} {
					if err := InitVisionFrom(m, tok, t.TempDir()); err != nil {
						t.Fatal(err)
					}
				}
			}
			for step := int64(0); step < 3; step++ {
				b, err := Stage2Batch(tok, TinyVocab(256), 55, 0, step, 8, 0, 8, cfg.continuous)
				if err != nil {
					t.Fatal(err)
				}
				if cut := trimPadding(b); cut.SeqLen >= b.SeqLen {
					t.Fatalf("step %d: rows of %d positions not cut (longest row needs %d)", step, b.SeqLen, cut.SeqLen)
				} else if step == 0 {
					t.Logf("rows cut from %d to %d positions", b.SeqLen, cut.SeqLen)
				}
				// The padded step, by hand (Step would cut the rows).
				pre, err := padded.StepBegin(b)
				if err != nil {
					t.Fatal(err)
				}
				post, wantLoss, err := padded.StepFinish(pre)
				if err != nil {
					t.Fatal(err)
				}
				if err := padded.ApplyGrads(b.GlobalBatch, post); err != nil {
					t.Fatal(err)
				}
				res, err := trimmed.Step(context.Background(), b, Local, nil)
				if err != nil {
					t.Fatal(err)
				}
				if d := math.Abs(res.LossSum-wantLoss) / wantLoss; d > 1e-6 {
					t.Errorf("step %d: loss %v trimmed, %v padded (%.3g relative)", step, res.LossSum, wantLoss, d)
				}
			}
			if d := relDiff(trimmed.Params(), padded.Params()); d > 1e-6 {
				t.Errorf("parameters differ by %.3g relative after 3 steps", d)
			}
		})
	}
}
