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
//	text only:  BOS caption EOS
//
// Inputs are the sequence without its last token, targets without its first;
// padding (PAD in, -1 out) carries no loss. Every other target is trained.
//
// A row that does not fit is cut, never refused: the caption keeps at most
// what leaves the image min(its ids, half the row) (captionRoom), and the
// visual ids that still do not fit are dropped from the end. Fit says what
// was left out.

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
	TextOnly // a sample without an image (stage 2 trains on its caption)
)

// Fit is what one row left out to fit its sequence.
type Fit struct {
	DroppedCodes int // visual ids (or continuous slots) dropped from the end
	CutCaption   int // caption ids cut from the end
}

// fixedTokens are BOS, [IMG], [/IMG] and EOS.
const fixedTokens = 4

// captionRoom is how many caption ids a row of seqLen keeps beside an
// image of visual ids: all the room but what the image needs, up to half
// of it (so a long caption never pushes a whole image out, nor a long
// image a whole caption).
func captionRoom(seqLen, visual int) int {
	room := seqLen + 1 - fixedTokens
	return room - min(visual, room/2)
}

// Sequence builds one training row of length seqLen (inputs and targets),
// cut to fit as the package comment says.
func (v Vocab) Sequence(dir Direction, caption []int, codes []int64, seqLen int) (tokens, targets []int64, fit Fit, err error) {
	if seqLen+1 < fixedTokens {
		return nil, nil, fit, fmt.Errorf("a sequence of %d has no room for BOS, [IMG], [/IMG] and EOS", seqLen)
	}
	text := make([]int64, len(caption))
	for i, id := range caption {
		if id < 0 || id >= v.TextVocab {
			return nil, nil, fit, fmt.Errorf("caption id %d out of range 0..%d", id, v.TextVocab-1)
		}
		text[i] = int64(id)
	}
	if dir == TextOnly {
		if keep := seqLen - 1; len(text) > keep { // BOS, caption, EOS
			fit.CutCaption, text = len(text)-keep, text[:keep]
		}
		seq := append(append([]int64{int64(v.BOSID)}, text...), int64(v.EOSID))
		tokens, targets = v.shift(seq, seqLen)
		return tokens, targets, fit, nil
	}
	if keep := captionRoom(seqLen, len(codes)); len(text) > keep {
		fit.CutCaption, text = len(text)-keep, text[:keep]
	}
	room := seqLen + 1 - fixedTokens - len(text)
	vis := make([]int64, 0, len(codes))
	for _, c := range codes {
		if c < 0 || int(c) >= v.Codes {
			return nil, nil, fit, fmt.Errorf("visual code %d out of range 0..%d", c, v.Codes-1)
		}
		vis = append(vis, v.Visual(c))
	}
	if len(vis) > room {
		fit.DroppedCodes = len(vis) - room
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
	tokens, targets = v.shift(seq, seqLen)
	return tokens, targets, fit, nil
}

// shift makes a row of seqLen from a whole sequence: inputs without its
// last token, targets without its first, padded (PAD in, -1 out).
func (v Vocab) shift(seq []int64, seqLen int) (tokens, targets []int64) {
	tokens, targets = make([]int64, seqLen), make([]int64, seqLen)
	for i := range tokens {
		tokens[i], targets[i] = int64(v.PadID), -1
	}
	copy(tokens, seq[:len(seq)-1])
	copy(targets, seq[1:])
	return tokens, targets
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
func (v Vocab) SequenceContinuous(caption []int, kept, seqLen int) (tokens, targets []int64, slots []bool, fit Fit, err error) {
	if seqLen+1 < fixedTokens {
		return nil, nil, nil, fit, fmt.Errorf("a sequence of %d has no room for BOS, [IMG], [/IMG] and EOS", seqLen)
	}
	for _, id := range caption {
		if id < 0 || id >= v.TextVocab {
			return nil, nil, nil, fit, fmt.Errorf("caption id %d out of range 0..%d", id, v.TextVocab-1)
		}
	}
	if keep := captionRoom(seqLen, kept); len(caption) > keep {
		fit.CutCaption, caption = len(caption)-keep, caption[:keep]
	}
	room := seqLen + 1 - fixedTokens - len(caption)
	if kept > room {
		fit.DroppedCodes, kept = kept-room, room
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
	return tokens, targets, slots, fit, nil
}
