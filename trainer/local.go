package trainer

import (
	"context"
	"fmt"

	"github.com/lavit-org/lavit/shards/synth"
)

// Local training on the synthetic stream, in one process (a world of one,
// or several model replicas in tests and benchmarks). The distributed
// worker drives the same Model calls and the same batch builders
// (stage2.go) with a real all-reduce, on any data set.

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
		r, err := m.Step(ctx, b, Local, nil)
		if err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		if progress != nil {
			progress(step, r)
		}
	}
	return nil
}

// Stage2Batch builds a stage-2 batch of the synthetic train stream: the
// frozen tokenizer turns the images into visual ids (Gumbel keyed by step
// and position), the captions are encoded with the synthetic word
// vocabulary, and each sample's direction is its position's coin.
func Stage2Batch(tok *Model, v Vocab, seqLen int, seed uint64, step int64, globalBatch, from, to int, continuous bool) (*Batch, error) {
	samples, ib := SyntheticBatch(seed, step, globalBatch, from, to)
	captions := make([][]int, len(samples))
	for i, s := range samples {
		ids, err := synth.Encode(s.Caption)
		if err != nil {
			return nil, fmt.Errorf("sample at position %d: %w", ib.Positions[i], err)
		}
		captions[i] = ids
	}
	b := Stage2Builder{Tokenizer: tok, Vocab: v, SeqLen: seqLen, Seed: seed, Continuous: continuous}
	return b.Batch(step, int64(globalBatch), ib.Positions, ib.Images, captions, nil, nil)
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
		r, err := lm.Step(ctx, b, Local, nil)
		if err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		if progress != nil {
			progress(step, r)
		}
	}
	return nil
}
