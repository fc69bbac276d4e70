package trainer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/lavit-org/lavit/shards/synth"
)

// Local training on the synthetic stream, in one process (a world of one,
// or several model replicas in tests). The distributed worker drives the
// same Model calls with a real all-reduce.

// SyntheticBatch builds global batch `step` of the synthetic train stream:
// positions [step·B, (step+1)·B), sample p = synth.Generate(seed, Train, p).
// from/to select a rank's slice of it.
func SyntheticBatch(seed uint64, step int64, globalBatch, from, to int) ([]synth.Sample, *Batch) {
	b := &Batch{Step: step, GlobalBatch: int64(globalBatch)}
	var samples []synth.Sample
	for i := from; i < to; i++ {
		p := step*int64(globalBatch) + int64(i)
		s := synth.Generate(seed, synth.Train, int(p))
		samples = append(samples, s)
		b.Positions = append(b.Positions, p)
		b.Images = append(b.Images, s.Float32CHW()...)
	}
	return samples, b
}

// Stage1Schedule is the two-phase tokenizer schedule.
type Stage1Schedule struct {
	Batch, PhaseA, PhaseB, KMeansBatches int
}

// TinyStage1Schedule is MODEL.md's schedule.
func TinyStage1Schedule() Stage1Schedule {
	return Stage1Schedule{Batch: TinyBatch, PhaseA: TinyPhaseASteps, PhaseB: TinyPhaseBSteps, KMeansBatches: TinyKMeansBatches}
}

// EnableVQAt switches VQ on at the phase boundary, k-means-initialised from
// the KMeansBatches global batches that follow it.
func (s Stage1Schedule) EnableVQAt(m *Model, seed uint64) error {
	var images []float32
	var positions []int64
	for k := 0; k < s.KMeansBatches; k++ {
		_, b := SyntheticBatch(seed, int64(s.PhaseA+k), s.Batch, 0, s.Batch)
		images = append(images, b.Images...)
		positions = append(positions, b.Positions...)
	}
	return m.EnableVQ(images, positions, int64(s.PhaseA))
}

// TrainStage1 runs the schedule on one model from step 0.
func TrainStage1(ctx context.Context, m *Model, seed uint64, s Stage1Schedule, progress func(step int, r StepResult)) error {
	for step := 0; step < s.PhaseA+s.PhaseB; step++ {
		if step == s.PhaseA {
			if err := s.EnableVQAt(m, seed); err != nil {
				return fmt.Errorf("step %d: %w", step, err)
			}
		}
		_, b := SyntheticBatch(seed, int64(step), s.Batch, 0, s.Batch)
		r, err := m.Step(ctx, b, LocalReducer)
		if err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		if progress != nil {
			progress(step, r)
		}
	}
	return nil
}

// Stage2Batch builds a stage-2 batch: the frozen tokenizer turns the images
// into visual ids (Gumbel keyed by step and position), and each sample's
// direction is its position's coin. With continuous image input, image→text
// samples carry the tokenizer's features and keep decisions instead of ids.
func Stage2Batch(tok *Model, v Vocab, seqLen int, seed uint64, step int64, globalBatch, from, to int, continuous bool) (*Batch, error) {
	samples, ib := SyntheticBatch(seed, step, globalBatch, from, to)
	captions := make([]string, len(samples))
	for i, s := range samples {
		captions[i] = s.Caption
	}
	return Stage2BatchFrom(tok, v, seqLen, seed, step, int64(globalBatch), ib.Positions, ib.Images, captions, nil, continuous)
}

// Stage2BatchFrom builds a stage-2 batch from decoded samples: their
// global positions, images (n × 3 × image × image) and captions. valid
// (nil: all valid) masks bad samples: they keep their place with padding
// and no targets, so they add nothing to the loss.
func Stage2BatchFrom(tok *Model, v Vocab, seqLen int, seed uint64, step, globalBatch int64, positions []int64, images []float32, captions []string, valid []bool, continuous bool) (*Batch, error) {
	b := &Batch{Step: step, GlobalBatch: globalBatch, Positions: positions, SeqLen: seqLen, Valid: valid}
	codes, err := visualInputs(tok, images, positions, step, continuous, b)
	if err != nil {
		return nil, err
	}
	for i := range positions {
		if valid != nil && !valid[i] {
			toks, tgts := make([]int64, seqLen), make([]int64, seqLen)
			for k := range toks {
				toks[k], tgts[k] = int64(v.PadID), -1
			}
			b.Tokens, b.Targets = append(b.Tokens, toks...), append(b.Targets, tgts...)
			if continuous {
				b.ImageSlots = append(b.ImageSlots, make([]bool, seqLen)...)
			}
			continue
		}
		caption, err := synth.Encode(captions[i])
		if err != nil {
			return nil, fmt.Errorf("sample at position %d: %w", positions[i], err)
		}
		dir := DirectionFor(seed, positions[i])
		var toks, tgts []int64
		slots := make([]bool, seqLen)
		if continuous && dir == ImageToText {
			toks, tgts, slots, _, err = v.SequenceContinuous(caption, len(codes[i]), seqLen)
		} else {
			toks, tgts, _, err = v.Sequence(dir, caption, codes[i], seqLen)
		}
		if err != nil {
			return nil, err
		}
		b.Tokens, b.Targets = append(b.Tokens, toks...), append(b.Targets, tgts...)
		if continuous {
			b.ImageSlots = append(b.ImageSlots, slots...)
		}
	}
	return b, nil
}

// visualInputs runs the frozen tokenizer once over images: it returns the
// kept code ids and, for continuous image input, also fills b's features
// and keep decisions from the same pass.
func visualInputs(tok *Model, images []float32, positions []int64, step int64, continuous bool, b *Batch) ([][]int64, error) {
	if !continuous {
		return tok.Tokenize(images, positions, step)
	}
	ev, err := tok.Features(images, positions, step)
	if err != nil {
		return nil, err
	}
	b.ImageFeats, b.ImageKeep = ev.Features, ev.Keep
	return ev.KeptCodes()
}

// InitVisionFrom copies the stage-1 merger (memory_ln, merger blocks,
// merger_ln) into a continuous stage-2 model's trainable copy.
func InitVisionFrom(lm, tok *Model, dir string) error {
	if lm.Info().ImageInput != "continuous" {
		return errors.New("init vision: the LM does not take continuous image input")
	}
	path := filepath.Join(dir, "stage1-merger.safetensors")
	if err := tok.ExportSafetensors(path); err != nil {
		return err
	}
	defer os.Remove(path)
	return lm.LoadPretrained(path, "vis.")
}

// TrainStage2 trains the LM for steps on tokens made on the fly.
func TrainStage2(ctx context.Context, lm, tok *Model, seed uint64, steps, batch int, progress func(step int, r StepResult)) error {
	v := TinyVocab(int(tok.Info().Codebook))
	T := int(lm.Info().MaxLen) - 1
	continuous := lm.Info().ImageInput == "continuous"
	for step := 0; step < steps; step++ {
		b, err := Stage2Batch(tok, v, T, seed, int64(step), batch, 0, batch, continuous)
		if err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		r, err := lm.Step(ctx, b, LocalReducer)
		if err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		if progress != nil {
			progress(step, r)
		}
	}
	return nil
}
