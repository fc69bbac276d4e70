// Package text turns captions into token ids: the tiny word vocabulary of
// the synthetic data set, a Hugging Face tokenizer.json of Llama-2's kind
// (HF, a pure-Go BPE encoder), or a SentencePiece model file (LLaMA-style
// BPE vocabularies) read with github.com/eliben/go-sentencepiece. Open
// picks one from a model config's text.tokenizer value.
package text

import (
	"bytes"
	"fmt"

	sentencepiece "github.com/eliben/go-sentencepiece"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/lavit-org/lavit/shards/synth"
)

// Tokenizer encodes captions.
type Tokenizer interface {
	// Encode returns the ids of a caption (no BOS/EOS).
	Encode(caption string) ([]int, error)
	// Decode turns ids back into text.
	Decode(ids []int) (string, error)
	// VocabSize is the number of text ids (0..VocabSize-1).
	VocabSize() int
	BOS() int
	EOS() int
	Pad() int
}

// TinyWords is the synthetic data set's 20-id word vocabulary.
func TinyWords() Tokenizer { return tinyWords{} }

type tinyWords struct{}

func (tinyWords) Encode(c string) ([]int, error)   { return synth.Encode(c) }
func (tinyWords) Decode(ids []int) (string, error) { return synth.Decode(ids) }
func (tinyWords) VocabSize() int                   { return synth.VocabSize }
func (tinyWords) BOS() int                         { return synth.BOSID }
func (tinyWords) EOS() int                         { return synth.EOSID }
func (tinyWords) Pad() int                         { return synth.PadID }

// MaxModelBytes bounds a SentencePiece model file.
const MaxModelBytes = 64 << 20

// SentencePiece is a BPE SentencePiece model (LLaMA's tokenizer.model).
type SentencePiece struct {
	proc               *sentencepiece.Processor
	info               sentencepiece.ModelInfo
	bos, eos, pad, unk int
}

// LoadSentencePiece reads a SentencePiece model file. Only BPE models
// without dummy-prefix or whitespace-collapsing normalisation are
// supported (what the library supports; LLaMA's model is one).
func LoadSentencePiece(path string) (*SentencePiece, error) {
	data, err := readBounded(path, MaxModelBytes, "sentencepiece model")
	if err != nil {
		return nil, err
	}
	tok, err := ParseSentencePiece(data)
	if err != nil {
		return nil, fmt.Errorf("sentencepiece model %s: %w", path, err)
	}
	return tok, nil
}

// ParseSentencePiece builds the tokenizer from a model file's bytes.
func ParseSentencePiece(data []byte) (tok *SentencePiece, err error) {
	if len(data) > MaxModelBytes {
		return nil, fmt.Errorf("%d bytes, over the %d-byte limit", len(data), MaxModelBytes)
	}
	// The library dereferences optional proto fields; a model without them
	// must be an error, not a crash.
	defer func() {
		if r := recover(); r != nil {
			tok, err = nil, fmt.Errorf("malformed or unsupported: %v", r)
		}
	}()
	proc, err := sentencepiece.NewProcessor(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	tok = &SentencePiece{proc: proc, info: *proc.ModelInfo()}
	// The special ids come from the trainer spec (LLaMA: <s> = 1, </s> = 2);
	// the library only knows Gemma's <bos>/<eos> names.
	tok.unk, tok.bos, tok.eos, tok.pad = specialIDs(data)
	return tok, nil
}

// specialIDs reads unk_id (40), bos_id (41), eos_id (42) and pad_id (43)
// from the model's trainer_spec (field 2), with SentencePiece's defaults
// 0, 1, 2, -1 when absent.
func specialIDs(model []byte) (unk, bos, eos, pad int) {
	unk, bos, eos, pad = 0, 1, 2, -1
	for len(model) > 0 {
		num, typ, n := protowire.ConsumeTag(model)
		if n < 0 {
			return
		}
		model = model[n:]
		if num == 2 && typ == protowire.BytesType {
			spec, m := protowire.ConsumeBytes(model)
			if m < 0 {
				return
			}
			for len(spec) > 0 {
				f, t, k := protowire.ConsumeTag(spec)
				if k < 0 {
					return
				}
				spec = spec[k:]
				if t != protowire.VarintType {
					k = protowire.ConsumeFieldValue(f, t, spec)
					if k < 0 {
						return
					}
					spec = spec[k:]
					continue
				}
				v, k := protowire.ConsumeVarint(spec)
				if k < 0 {
					return
				}
				spec = spec[k:]
				id := int(int32(v)) // int32 fields: -1 arrives as a 10-byte varint
				switch f {
				case 40:
					unk = id
				case 41:
					bos = id
				case 42:
					eos = id
				case 43:
					pad = id
				}
			}
			return
		}
		k := protowire.ConsumeFieldValue(num, typ, model)
		if k < 0 {
			return
		}
		model = model[k:]
	}
	return
}

// Encode returns the caption's ids. The library can panic on a merge longer
// than the model's longest piece (go-sentencepiece v0.6.0 sizes a buffer by
// it); that becomes an error for this caption (the sample is masked), never
// a crash.
func (s *SentencePiece) Encode(caption string) (ids []int, err error) {
	defer func() {
		if r := recover(); r != nil {
			ids, err = nil, fmt.Errorf("sentencepiece encode: %v", r)
		}
	}()
	toks := s.proc.Encode(caption)
	ids = make([]int, len(toks))
	for i, t := range toks {
		ids[i] = t.ID
	}
	return ids, nil
}

// Decode turns ids back into text.
func (s *SentencePiece) Decode(ids []int) (string, error) {
	for _, id := range ids {
		if id < 0 || id >= s.info.VocabularySize {
			return "", fmt.Errorf("id %d out of range 0..%d", id, s.info.VocabularySize-1)
		}
	}
	return s.proc.Decode(ids), nil
}

func (s *SentencePiece) VocabSize() int { return s.info.VocabularySize }
func (s *SentencePiece) BOS() int       { return s.bos }
func (s *SentencePiece) EOS() int       { return s.eos }

// Pad is the model's padding id, or <unk> when it has none (LLaMA's has
// none; see HF for why <unk>).
func (s *SentencePiece) Pad() int {
	if s.pad < 0 {
		return s.unk
	}
	return s.pad
}
