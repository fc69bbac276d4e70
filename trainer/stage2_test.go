package trainer

import (
	"context"
	"math"
	"slices"
	"testing"

	"github.com/lavit-org/lavit/shards/synth"
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

// TestTextOnlyRowsTrain: samples without an image (textOnly) become
// BOS caption EOS rows beside the image rows of the same batch, and the
// LM trains on them: over repeated steps on one batch the loss falls.
func TestTextOnlyRowsTrain(t *testing.T) {
	lib := loadLib(t)
	tok := newModel(t, lib, TinyStage1(), 11)
	runStage1(t, tok, 0, shortSchedule.PhaseA+1)
	for _, cfg := range []struct {
		name       string
		config     Config
		continuous bool
	}{{"discrete", TinyStage2(), false}, {"continuous", TinyStage2Continuous(), true}} {
		t.Run(cfg.name, func(t *testing.T) {
			lm := newModel(t, lib, cfg.config, 5)
			if cfg.continuous {
				if err := InitVisionFrom(lm, tok, t.TempDir()); err != nil {
					t.Fatal(err)
				}
			}
			samples, ib := SyntheticBatch(0, 0, 8, 0, 8)
			captions := make([][]int, len(samples))
			textOnly := make([]bool, len(samples))
			for i, s := range samples {
				ids, err := synth.Encode(s.Caption)
				if err != nil {
					t.Fatal(err)
				}
				captions[i], textOnly[i] = ids, i%2 == 1
			}
			v := TinyVocab(256)
			builder := Stage2Builder{Tokenizer: tok, Vocab: v, SeqLen: 55, Continuous: cfg.continuous}
			b, err := builder.Batch(0, 8, ib.Positions, ib.Images, captions, nil, textOnly)
			if err != nil {
				t.Fatal(err)
			}
			for i := range samples {
				row := b.Tokens[i*b.SeqLen : (i+1)*b.SeqLen]
				hasImage := slices.Contains(row, v.IMG())
				if hasImage == textOnly[i] {
					t.Fatalf("row %d (text only %v) has [IMG]: %v", i, textOnly[i], hasImage)
				}
				if textOnly[i] && !slices.Equal(row[:1+len(captions[i])], append([]int64{int64(v.BOSID)}, toInt64(captions[i])...)) {
					t.Fatalf("text-only row %d is %v, want BOS then caption %v", i, row[:1+len(captions[i])], captions[i])
				}
			}
			var first, last float64
			for step := 0; step < 8; step++ {
				b.Step = int64(step)
				res, err := lm.Step(context.Background(), b, Local, nil)
				if err != nil {
					t.Fatal(err)
				}
				if step == 0 {
					first = res.LossSum
				}
				last = res.LossSum
			}
			if !(last < 0.8*first) {
				t.Fatalf("loss %v after 8 steps on one batch, %v at first: not training", last, first)
			}
		})
	}
}

func toInt64(ids []int) []int64 {
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}
