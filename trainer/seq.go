package trainer

import (
	"fmt"

	"github.com/lavit-org/lavit/internal/splitmix"
)

// Stage-2 sequences (MODEL.md): the LM vocabulary is the text words
// (0..TextVocab-1, PAD 0, BOS 1, EOS 2), then [IMG], [/IMG], then one id per
// visual code.
//
//	text→image: BOS caption [IMG] v… [/IMG] EOS
//	image→text: BOS [IMG] v… [/IMG] caption EOS
//
// Inputs are the sequence without its last token, targets without its first;
// padding (PAD in, -1 out) carries no loss. Every other target is trained.

// Vocab lays out the stage-2 vocabulary.
type Vocab struct {
	TextVocab int // text ids 0..TextVocab-1
	PadID     int
	BOSID     int
	EOSID     int
	Codes     int // visual codes
}

// IMG is the [IMG] id.
func (v Vocab) IMG() int64 { return int64(v.TextVocab) }

// EndIMG is the [/IMG] id.
func (v Vocab) EndIMG() int64 { return int64(v.TextVocab + 1) }

// Visual is the id of visual code c.
func (v Vocab) Visual(c int64) int64 { return int64(v.TextVocab+2) + c }

// Size is the whole vocabulary.
func (v Vocab) Size() int { return v.TextVocab + 2 + v.Codes }

// Direction says which modality comes first.
type Direction int

const (
	TextToImage Direction = iota
	ImageToText
)

// Sequence builds one training row of length seqLen (inputs and targets).
// Visual ids that do not fit are dropped from the end; it reports how many.
func (v Vocab) Sequence(dir Direction, caption []int, codes []int64, seqLen int) (tokens, targets []int64, dropped int, err error) {
	text := make([]int64, len(caption))
	for i, id := range caption {
		if id < 0 || id >= v.TextVocab {
			return nil, nil, 0, fmt.Errorf("caption id %d out of range 0..%d", id, v.TextVocab-1)
		}
		text[i] = int64(id)
	}
	// Fixed tokens: BOS, [IMG], [/IMG], EOS, plus the caption.
	room := seqLen + 1 - 4 - len(text)
	if room < 0 {
		return nil, nil, 0, fmt.Errorf("caption of %d words does not fit a sequence of %d", len(text), seqLen)
	}
	vis := make([]int64, 0, len(codes))
	for _, c := range codes {
		if c < 0 || int(c) >= v.Codes {
			return nil, nil, 0, fmt.Errorf("visual code %d out of range 0..%d", c, v.Codes-1)
		}
		vis = append(vis, v.Visual(c))
	}
	if len(vis) > room {
		dropped = len(vis) - room
		vis = vis[:room]
	}
	seq := []int64{int64(v.BOSID)}
	image := append(append([]int64{v.IMG()}, vis...), v.EndIMG())
	if dir == TextToImage {
		seq = append(append(seq, text...), image...)
	} else {
		seq = append(append(seq, image...), text...)
	}
	seq = append(seq, int64(v.EOSID))
	tokens, targets = make([]int64, seqLen), make([]int64, seqLen)
	for i := range tokens {
		tokens[i], targets[i] = int64(v.PadID), -1
	}
	copy(tokens, seq[:len(seq)-1])
	copy(targets, seq[1:])
	return tokens, targets, dropped, nil
}

// DirectionFor is the per-sample coin for the direction, keyed by the
// sample's global position so it does not depend on which worker holds it.
func DirectionFor(seed uint64, position int64) Direction {
	if splitmix.Mix(splitmix.Mix(seed^0xD1CE)^uint64(position))&1 == 0 {
		return TextToImage
	}
	return ImageToText
}

// SequenceContinuous builds an image→text row for continuous image input:
//
//	BOS [IMG] slot × kept [/IMG] caption EOS
//
// Slots hold PAD as a placeholder (the model replaces their embeddings with
// merged image features); slots marks them. The image part has no targets:
// only the caption and EOS are trained, as in LaVIT's understanding path.
func (v Vocab) SequenceContinuous(caption []int, kept, seqLen int) (tokens, targets []int64, slots []bool, dropped int, err error) {
	for _, id := range caption {
		if id < 0 || id >= v.TextVocab {
			return nil, nil, nil, 0, fmt.Errorf("caption id %d out of range 0..%d", id, v.TextVocab-1)
		}
	}
	room := seqLen + 1 - 4 - len(caption)
	if room < 0 {
		return nil, nil, nil, 0, fmt.Errorf("caption of %d words does not fit a sequence of %d", len(caption), seqLen)
	}
	if kept > room {
		dropped, kept = kept-room, room
	}
	seq := []int64{int64(v.BOSID), v.IMG()}
	isSlot := []bool{false, false}
	for i := 0; i < kept; i++ {
		seq, isSlot = append(seq, int64(v.PadID)), append(isSlot, true)
	}
	seq, isSlot = append(seq, v.EndIMG()), append(isSlot, false)
	imageEnd := len(seq) // positions before this are the image part
	for _, id := range caption {
		seq, isSlot = append(seq, int64(id)), append(isSlot, false)
	}
	seq, isSlot = append(seq, int64(v.EOSID)), append(isSlot, false)
	tokens, targets, slots = make([]int64, seqLen), make([]int64, seqLen), make([]bool, seqLen)
	for i := range tokens {
		tokens[i], targets[i] = int64(v.PadID), -1
	}
	for i := 0; i < len(seq)-1; i++ {
		tokens[i], slots[i] = seq[i], isSlot[i]
		if i+1 >= imageEnd {
			targets[i] = seq[i+1]
		}
	}
	return tokens, targets, slots, dropped, nil
}
