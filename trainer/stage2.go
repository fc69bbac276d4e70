package trainer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Stage-2 input: the batch builder the worker trains with, on any data
// set. Captions arrive as token ids (the caller's text tokenizer made
// them); the frozen stage-1 model turns the images into visual ids, or,
// for continuous image input, into merged features.

// Stage2Builder turns decoded samples into stage-2 batches.
type Stage2Builder struct {
	Tokenizer  *Model // the frozen stage-1 model
	Vocab      Vocab  // the LM's vocabulary layout
	SeqLen     int    // tokens per row (the LM's max_len − 1)
	Seed       uint64 // the run's seed: keys each sample's direction
	Continuous bool   // image→text samples take the merger's features (lm.image_input continuous)
}

// Batch builds global step's batch from one rank's samples: their global
// positions, images (n × 3 × image × image) and encoded captions. valid
// (nil: all valid) masks bad samples: they keep their place with padding
// and no targets, so they add nothing to the loss; their captions may be
// nil. textOnly (nil: none) marks samples without an image: their rows
// are BOS caption EOS (their images, zeros, are tokenized with the rest
// and unused).
func (s Stage2Builder) Batch(step, globalBatch int64, positions []int64, images []float32, captions [][]int, valid, textOnly []bool) (*Batch, error) {
	if textOnly != nil && len(textOnly) != len(positions) {
		return nil, fmt.Errorf("batch: %d text-only flags for %d samples", len(textOnly), len(positions))
	}
	v, seqLen := s.Vocab, s.SeqLen
	b := &Batch{Step: step, GlobalBatch: globalBatch, Positions: positions, SeqLen: seqLen, Valid: valid}
	codes, err := visualInputs(s.Tokenizer, images, positions, step, s.Continuous, b)
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
			if s.Continuous {
				b.ImageSlots = append(b.ImageSlots, make([]bool, seqLen)...)
			}
			continue
		}
		dir := DirectionFor(s.Seed, positions[i])
		if textOnly != nil && textOnly[i] {
			dir = TextOnly
		}
		var toks, tgts []int64
		var fit Fit
		slots := make([]bool, seqLen)
		if s.Continuous && dir == ImageToText {
			toks, tgts, slots, fit, err = v.SequenceContinuous(captions[i], len(codes[i]), seqLen)
		} else {
			toks, tgts, fit, err = v.Sequence(dir, captions[i], codes[i], seqLen)
		}
		if err != nil {
			return nil, fmt.Errorf("sample at position %d: %w", positions[i], err)
		}
		if fit.CutCaption > 0 {
			b.CutCaptions++
		}
		b.Tokens, b.Targets = append(b.Tokens, toks...), append(b.Targets, tgts...)
		if s.Continuous {
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
// merger_ln) into a continuous stage-2 model's trainable copy, through a
// safetensors file in dir.
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

// trimPadding returns b with its rows cut to the longest row's last target
// (at least one position): the LM is causal, so the padding after every
// row's last target changes no loss and no gradient, and a batch of short
// captions need not pay for max_len. b itself is returned when nothing can
// be cut; otherwise the rows are copied (b is not changed).
func trimPadding(b *Batch) *Batch {
	n, T := len(b.Positions), b.SeqLen
	if len(b.Targets) != n*T || T <= 1 {
		return b
	}
	used := 1
	for i := range n {
		row := b.Targets[i*T : (i+1)*T]
		for k := T - 1; k >= used; k-- {
			if row[k] >= 0 {
				used = k + 1
				break
			}
		}
	}
	if used == T {
		return b
	}
	cut := *b
	cut.SeqLen = used
	cut.Tokens, cut.Targets = make([]int64, 0, n*used), make([]int64, 0, n*used)
	if b.ImageSlots != nil {
		cut.ImageSlots = make([]bool, 0, n*used)
	}
	for i := range n {
		cut.Tokens = append(cut.Tokens, b.Tokens[i*T:i*T+used]...)
		cut.Targets = append(cut.Targets, b.Targets[i*T:i*T+used]...)
		if b.ImageSlots != nil {
			cut.ImageSlots = append(cut.ImageSlots, b.ImageSlots[i*T:i*T+used]...)
		}
	}
	return &cut
}
