package synth

import (
	"fmt"
	"strings"
)

// The data set's word vocabulary: three special tokens followed by the 17
// words that captions use, in a fixed order. Token ids are positions in
// this list; changing it changes every tokenised caption.
var vocabWords = [VocabSize]string{
	"[PAD]", "[BOS]", "[EOS]",
	"small", "big",
	"red", "green", "blue", "yellow", "magenta", "cyan",
	"square", "circle", "triangle", "cross",
	"top", "bottom", "left", "right",
	"and",
}

// Vocabulary constants.
const (
	// VocabSize is the number of token ids, special tokens included.
	VocabSize = 20
	// PadID pads token sequences to a common length.
	PadID = 0
	// BOSID marks the beginning of a caption.
	BOSID = 1
	// EOSID marks the end of a caption.
	EOSID = 2
	// FirstWordID is the id of the first caption word ("small"); ids
	// FirstWordID..VocabSize-1 are caption words.
	FirstWordID = 3
)

// vocabIDs maps each token to its id. It is only ever looked up, never
// iterated, so map ordering cannot leak into results.
var vocabIDs = func() map[string]int {
	m := make(map[string]int, VocabSize)
	for id, w := range vocabWords {
		m[w] = id
	}
	return m
}()

// Words returns a copy of the vocabulary: element id is the token of id.
func Words() []string {
	out := make([]string, VocabSize)
	copy(out, vocabWords[:])
	return out
}

// TokenID returns the id of a caption word (or special token such as
// "[EOS]"), and false if it is not in the vocabulary. Evaluation code can
// use it to find e.g. the id of an object's colour word.
func TokenID(word string) (int, bool) {
	id, ok := vocabIDs[word]
	return id, ok
}

// Encode converts a caption to word ids, one per space-separated word. It
// adds no BOS/EOS and accepts only caption words: special tokens and
// unknown words are errors naming the word and its 0-based position. The
// empty caption encodes to an empty slice.
func Encode(caption string) ([]int, error) {
	words := strings.Fields(caption)
	ids := make([]int, len(words))
	for pos, w := range words {
		id, ok := vocabIDs[w]
		if !ok || id < FirstWordID {
			return nil, fmt.Errorf("synth: encode caption %q: unknown word %q at position %d", caption, w, pos)
		}
		ids[pos] = id
	}
	return ids, nil
}

// Decode converts caption word ids back to a caption, joining words with
// single spaces. Ids outside FirstWordID..VocabSize-1 (including PAD, BOS
// and EOS, which callers should strip first) are errors naming the id and
// its position. Decode(Encode(c)) == c for every generated caption.
func Decode(ids []int) (string, error) {
	words := make([]string, len(ids))
	for pos, id := range ids {
		if id < FirstWordID || id >= VocabSize {
			return "", fmt.Errorf("synth: decode: id %d at position %d is not a caption word id (want %d..%d)", id, pos, FirstWordID, VocabSize-1)
		}
		words[pos] = vocabWords[id]
	}
	return strings.Join(words, " "), nil
}
