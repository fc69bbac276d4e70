package worker

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/shards"
	"github.com/lavit-org/lavit/shards/text"
	"github.com/lavit-org/lavit/trainer"
)

// stage is what differs between training LaVIT's two stages: how a rank's
// decoded samples become trainer input, whether the training changes phase
// part-way, and how the trained model is evaluated. Both take what they
// need from the model config (trainer.Config): the caption tokenizer
// (text) and the evaluation (eval); the synthetic data set's word
// vocabulary and checks are what the tiny configs name.
type stage interface {
	// imageSize is the side of the square images the stage feeds the
	// model (stage 2: its frozen tokenizer).
	imageSize() int
	// batch builds global step's trainer batch from this rank's decoded
	// samples (valid nil: all valid).
	batch(step, globalBatch int64, positions []int64, d shards.Decoded, valid []bool) (*trainer.Batch, error)
	// phaseSwitch says where the training changes phase: before step at,
	// from the samples of the next `batches` whole global batches (stage
	// 1: vector quantisation switches on, its codebook initialised by
	// k-means on them). at ≤ 0: never.
	phaseSwitch() (at int64, batches int)
	// switchPhase makes that change.
	switchPhase(step int64, in *phaseInput) error
	// evaluate measures the stage's checks on the synthetic eval set (the
	// model config's eval: synthetic).
	evaluate(set *trainer.EvalSet) ([]trainer.Check, error)
	close()
}

// stage1 trains the visual tokenizer.
type stage1 struct {
	model  *trainer.Model
	phaseA int64 // VQ switches on before this step
	kmeans int   // global batches its codebook is initialised from
}

func newStage1(model *trainer.Model, phaseA int64, kmeansBatches int) *stage1 {
	return &stage1{model: model, phaseA: phaseA, kmeans: kmeansBatches}
}

func (s *stage1) imageSize() int { return int(s.model.Info().Image) }

func (s *stage1) batch(step, globalBatch int64, positions []int64, d shards.Decoded, valid []bool) (*trainer.Batch, error) {
	return &trainer.Batch{Step: step, GlobalBatch: globalBatch, Positions: positions, Images: d.Images, Valid: valid}, nil
}

func (s *stage1) phaseSwitch() (int64, int) { return s.phaseA, s.kmeans }

func (s *stage1) switchPhase(step int64, in *phaseInput) error {
	if err := s.model.EnableVQ(in.images, in.positions, step); err != nil {
		return fmt.Errorf("step %d: switch VQ on: %w", step, err)
	}
	return nil
}

func (s *stage1) evaluate(set *trainer.EvalSet) ([]trainer.Check, error) {
	patch := 4
	if t := s.model.Config().Tokenizer; t != nil && t.Patch > 0 {
		patch = int(t.Patch)
	}
	rep, err := trainer.EvaluateStage1(s.model, set, patch)
	if err != nil {
		return nil, err
	}
	return rep.Checks(), nil
}

func (s *stage1) close() {}

// stage2 trains the unified LM on the visual ids of a frozen stage-1
// tokenizer and the captions' text ids.
type stage2 struct {
	lm      *trainer.Model
	tok     *trainer.Model // the frozen stage-1 model; stage2 owns it
	words   text.Tokenizer // captions → text ids
	builder trainer.Stage2Builder
}

// newStage2 builds the stage from the LM, its frozen visual tokenizer
// (which it takes over) and the LM's model config: the caption tokenizer
// named by text.tokenizer, whose vocabulary must fit the LM's.
func newStage2(lm, tok *trainer.Model, seed uint64) (*stage2, error) {
	words, err := captionTokenizer(lm.Config())
	if err != nil {
		return nil, err
	}
	ti, li := tok.Info(), lm.Info()
	v := trainer.Vocab{TextVocab: words.VocabSize(), PadID: words.Pad(), BOSID: words.BOS(), EOSID: words.EOS(), Codes: int(ti.Codebook)}
	if int(li.Vocab) != v.Size() {
		return nil, fmt.Errorf("model config: lm.vocab is %d, but the text tokenizer's %d ids + [IMG] + [/IMG] + the tokenizer's %d codes make %d", li.Vocab, v.TextVocab, v.Codes, v.Size())
	}
	st := &stage2{lm: lm, tok: tok, words: words, builder: trainer.Stage2Builder{
		Tokenizer: tok, Vocab: v, SeqLen: int(li.MaxLen) - 1, Seed: seed, Continuous: li.ImageInput == "continuous",
	}}
	if st.builder.Continuous {
		// The LM's trainable merger starts as a copy of the tokenizer's.
		dir, err := os.MkdirTemp("", "lavit-vision-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if err := trainer.InitVisionFrom(lm, tok, dir); err != nil {
			return nil, fmt.Errorf("copy the tokenizer's merger into the LM: %w", err)
		}
	}
	return st, nil
}

// captionTokenizer is the text tokenizer a stage-2 model config names:
// "words" (the synthetic data set's), or a Llama-2 tokenizer.json or
// SentencePiece .model file as a path, file:// or s3:// URL (text.Open).
// The LM's vocabulary check in newStage2 then counts its ids (32000 for
// Llama-2) before [IMG], [/IMG] and the visual codes.
func captionTokenizer(cfg trainer.Config) (text.Tokenizer, error) {
	if cfg.Text == nil {
		return nil, errors.New("model config: stage 2 needs \"text\": {\"tokenizer\": …} to turn captions into token ids")
	}
	tok, err := text.Open(context.Background(), cfg.Text.Tokenizer)
	if err != nil {
		return nil, fmt.Errorf("model config: text.tokenizer %q is not a caption tokenizer this worker can load: %w", cfg.Text.Tokenizer, err)
	}
	return tok, nil
}

func (s *stage2) imageSize() int { return int(s.tok.Info().Image) }

func (s *stage2) batch(step, globalBatch int64, positions []int64, d shards.Decoded, valid []bool) (*trainer.Batch, error) {
	captions := make([][]int, len(positions))
	for i := range positions {
		if valid != nil && !valid[i] {
			continue
		}
		ids, err := s.words.Encode(d.Captions[i])
		if err != nil {
			return nil, fmt.Errorf("sample at position %d: caption: %w", positions[i], err)
		}
		captions[i] = ids
	}
	return s.builder.Batch(step, globalBatch, positions, d.Images, captions, valid, d.TextOnly)
}

func (s *stage2) phaseSwitch() (int64, int) { return 0, 0 }

func (s *stage2) switchPhase(int64, *phaseInput) error {
	return errors.New("stage 2 has no phase switch")
}

func (s *stage2) evaluate(set *trainer.EvalSet) ([]trainer.Check, error) {
	rep, err := trainer.EvaluateStage2(s.lm, s.tok, set)
	if err != nil {
		return nil, err
	}
	return rep.Checks(), nil
}

func (s *stage2) close() { s.tok.Close() }

// loadTokenizer builds the frozen stage-1 model a stage-2 run uses, from a
// final model state (config.json and state.lvst under loc). committed,
// when the tokenizer is a run's, is what raft recorded of that state: the
// bytes read must be those.
func (t *Trainer) loadTokenizer(ctx context.Context, loc string, committed *wire.Artifact, device string, seed uint64) (*trainer.Model, error) {
	cfgBytes, state, err := readFinalState(ctx, loc)
	if err != nil {
		return nil, err
	}
	if err := checkFinalState(state, committed); err != nil {
		return nil, err
	}
	cfg, err := trainer.ParseConfig(cfgBytes)
	if err != nil {
		return nil, err
	}
	if cfg.Stage != 1 {
		return nil, fmt.Errorf("a stage-%d model, not a stage-1 tokenizer", cfg.Stage)
	}
	tok, err := t.Lib.NewModel(cfg, device, seed)
	if err != nil {
		return nil, err
	}
	if err := tok.Load(state); err != nil {
		tok.Close()
		return nil, err
	}
	return tok, nil
}

// checkFinalState compares a final model state read from the store with
// what raft committed of it (nil: nothing to compare, a state URL given
// directly): a state replaced after its run finished is refused.
func checkFinalState(state []byte, committed *wire.Artifact) error {
	if committed == nil || committed.SHA256 == "" {
		return nil
	}
	if got := checkpoint.SHA256(state); int64(len(state)) != committed.Bytes || got != committed.SHA256 {
		return fmt.Errorf("%w: the final state at %s is %d bytes with sha256 %s; the run committed %d bytes with sha256 %s (replaced after the run finished?)",
			checkpoint.ErrNotCommitted, committed.URL, len(state), got, committed.Bytes, committed.SHA256)
	}
	return nil
}
