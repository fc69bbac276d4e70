package text

import (
	"bytes"
	"container/heap"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxTokenizerJSONBytes bounds a Hugging Face tokenizer.json file (Llama-2's
// is 1.8 MB).
const MaxTokenizerJSONBytes = 64 << 20

// HF is a Hugging Face tokenizer.json of Llama-2's kind: a BPE model ranked
// by its merges, with byte fallback (<0xNN> pieces for bytes no piece
// covers), the normalizer Prepend("▁") + Replace(" " → "▁"), no
// pre-tokenizer, and added tokens (<unk>, <s>, </s>) matched in the text
// before normalisation, as the Hugging Face libraries do.
//
// Llama-2 has no padding token: Pad is <unk>. Padded positions carry no
// loss, and byte fallback means an encoded caption never contains <unk>, so
// the pad cannot be mistaken for text (EOS as pad could: it is trained).
type HF struct {
	pieces  []string         // id → piece
	vocab   map[string]int   // piece → id
	merges  map[[2]int]merge // (left, right) → rank and merged id
	bytes   [256]int         // byte → <0xNN> id
	added   []addedToken     // matched in the raw text, longest first
	prepend string           // normalizer: prepended to every text segment
	replace []replacement    // normalizer: applied in order
	unk     int              // <unk>, also the pad
	bos     int              // <s>
	eos     int              // </s>
}

type merge struct{ rank, id int }

type addedToken struct {
	content string
	id      int
}

type replacement struct{ from, to string }

// hfFile is the part of tokenizer.json the loader reads.
type hfFile struct {
	AddedTokens []struct {
		ID         *int   `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
	} `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Model        *struct {
		Type                    string            `json:"type"`
		Vocab                   map[string]int    `json:"vocab"`
		Merges                  []json.RawMessage `json:"merges"`
		UnkToken                *string           `json:"unk_token"`
		ByteFallback            bool              `json:"byte_fallback"`
		Dropout                 *float64          `json:"dropout"`
		ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
		IgnoreMerges            bool              `json:"ignore_merges"`
	} `json:"model"`
}

type hfNormalizer struct {
	Type        string         `json:"type"`
	Normalizers []hfNormalizer `json:"normalizers"`
	Prepend     string         `json:"prepend"`
	Pattern     struct {
		String *string `json:"String"`
		Regex  *string `json:"Regex"`
	} `json:"pattern"`
	Content string `json:"content"`
}

// LoadHF reads a Hugging Face tokenizer.json file (at most
// MaxTokenizerJSONBytes).
func LoadHF(path string) (*HF, error) {
	data, err := readBounded(path, MaxTokenizerJSONBytes, "tokenizer.json")
	if err != nil {
		return nil, err
	}
	tok, err := ParseHF(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.json %s: %w", path, err)
	}
	return tok, nil
}

// readBounded reads a local file of at most limit bytes.
func readBounded(path string, limit int64, what string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("%s %s: is a directory", what, path)
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%s %s: %d bytes, over the %d-byte limit", what, path, st.Size(), limit)
	}
	data := make([]byte, st.Size())
	if _, err := f.ReadAt(data, 0); err != nil && st.Size() > 0 {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return data, nil
}

// ParseHF builds the tokenizer from tokenizer.json's bytes. Anything the
// encoder would not reproduce exactly (another model type, a
// pre-tokenizer, dropout, a regex normalizer, …) is an error naming it.
func ParseHF(data []byte) (*HF, error) {
	if len(data) > MaxTokenizerJSONBytes {
		return nil, fmt.Errorf("%d bytes, over the %d-byte limit", len(data), MaxTokenizerJSONBytes)
	}
	var f hfFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	m := f.Model
	switch {
	case m == nil:
		return nil, errors.New(`no "model" section`)
	case m.Type != "BPE":
		return nil, fmt.Errorf("model type %q is not supported (want \"BPE\", Llama-2's)", m.Type)
	case len(m.Vocab) == 0:
		return nil, errors.New("the BPE model has no vocab")
	case m.Merges == nil:
		return nil, errors.New(`the BPE model has no "merges"`)
	case !m.ByteFallback:
		return nil, errors.New("the BPE model has byte_fallback off (Llama-2's is on)")
	case m.Dropout != nil && *m.Dropout != 0:
		return nil, fmt.Errorf("BPE dropout %g is not supported", *m.Dropout)
	case m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "":
		return nil, fmt.Errorf("continuing_subword_prefix %q is not supported", *m.ContinuingSubwordPrefix)
	case m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "":
		return nil, fmt.Errorf("end_of_word_suffix %q is not supported", *m.EndOfWordSuffix)
	case m.IgnoreMerges:
		return nil, errors.New("ignore_merges is not supported")
	}
	if p := bytes.TrimSpace(f.PreTokenizer); len(p) > 0 && string(p) != "null" {
		return nil, fmt.Errorf("pre_tokenizer %s is not supported (Llama-2's is null)", abbreviate(p))
	}

	t := &HF{vocab: make(map[string]int, len(m.Vocab)), merges: make(map[[2]int]merge, len(m.Merges))}
	n := len(m.Vocab)
	t.pieces = make([]string, n)
	for piece, id := range m.Vocab {
		if id < 0 || id >= n {
			return nil, fmt.Errorf("vocab: piece %q has id %d, outside 0..%d (ids must be dense)", piece, id, n-1)
		}
		if piece == "" {
			return nil, fmt.Errorf("vocab: empty piece (id %d)", id)
		}
		if t.pieces[id] != "" {
			return nil, fmt.Errorf("vocab: id %d is used by both %q and %q", id, t.pieces[id], piece)
		}
		t.pieces[id], t.vocab[piece] = piece, id
	}
	for _, a := range f.AddedTokens {
		if a.ID == nil || a.Content == "" {
			return nil, fmt.Errorf("added token %q: missing id or content", a.Content)
		}
		if id, ok := t.vocab[a.Content]; !ok || id != *a.ID {
			return nil, fmt.Errorf("added token %q (id %d) is not that piece of the vocab", a.Content, *a.ID)
		}
		if a.SingleWord || a.LStrip || a.RStrip || a.Normalized {
			return nil, fmt.Errorf("added token %q: single_word, lstrip, rstrip and normalized are not supported", a.Content)
		}
		t.added = append(t.added, addedToken{a.Content, *a.ID})
	}
	// Longest first, so a token that is a prefix of another never wins.
	for i := 1; i < len(t.added); i++ {
		for j := i; j > 0 && len(t.added[j].content) > len(t.added[j-1].content); j-- {
			t.added[j], t.added[j-1] = t.added[j-1], t.added[j]
		}
	}
	for rank, raw := range m.Merges {
		left, right, err := parseMerge(raw)
		if err != nil {
			return nil, fmt.Errorf("merge %d: %w", rank, err)
		}
		l, okL := t.vocab[left]
		r, okR := t.vocab[right]
		id, okM := t.vocab[left+right]
		if !okL || !okR || !okM {
			return nil, fmt.Errorf("merge %d (%q %q): a piece is not in the vocab", rank, left, right)
		}
		if _, dup := t.merges[[2]int{l, r}]; !dup {
			t.merges[[2]int{l, r}] = merge{rank, id}
		}
	}
	for b := 0; b < 256; b++ {
		piece := fmt.Sprintf("<0x%02X>", b)
		id, ok := t.vocab[piece]
		if !ok {
			return nil, fmt.Errorf("byte fallback: the vocab has no %s piece", piece)
		}
		t.bytes[b] = id
	}
	if m.UnkToken == nil {
		return nil, errors.New("the BPE model has no unk_token")
	}
	var ok bool
	if t.unk, ok = t.vocab[*m.UnkToken]; !ok {
		return nil, fmt.Errorf("unk_token %q is not in the vocab", *m.UnkToken)
	}
	if t.bos, ok = t.vocab["<s>"]; !ok {
		return nil, errors.New("the vocab has no <s> (BOS) piece")
	}
	if t.eos, ok = t.vocab["</s>"]; !ok {
		return nil, errors.New("the vocab has no </s> (EOS) piece")
	}
	if err := t.setNormalizer(f.Normalizer); err != nil {
		return nil, err
	}
	return t, nil
}

// parseMerge reads one merge: "left right" (older files) or
// ["left", "right"] (newer ones).
func parseMerge(raw json.RawMessage) (left, right string, err error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		l, r, ok := strings.Cut(s, " ")
		if !ok || l == "" || r == "" || strings.Contains(r, " ") {
			return "", "", fmt.Errorf("%q is not two pieces separated by one space", s)
		}
		return l, r, nil
	}
	var pair []string
	if json.Unmarshal(raw, &pair) == nil && len(pair) == 2 && pair[0] != "" && pair[1] != "" {
		return pair[0], pair[1], nil
	}
	return "", "", fmt.Errorf("%s is neither \"left right\" nor [\"left\", \"right\"]", abbreviate(raw))
}

// setNormalizer accepts null, Prepend, Replace with a literal pattern, or a
// Sequence of those, with Prepend first (Llama-2's: Prepend("▁"),
// Replace(" " → "▁")).
func (t *HF) setNormalizer(raw json.RawMessage) error {
	if r := bytes.TrimSpace(raw); len(r) == 0 || string(r) == "null" {
		return nil
	}
	var n hfNormalizer
	if err := json.Unmarshal(raw, &n); err != nil {
		return fmt.Errorf("normalizer: %w", err)
	}
	steps := []hfNormalizer{n}
	if n.Type == "Sequence" {
		steps = n.Normalizers
	}
	for i, s := range steps {
		switch s.Type {
		case "Prepend":
			if i != 0 || s.Prepend == "" {
				return errors.New("normalizer: only one Prepend, first in the sequence, is supported")
			}
			t.prepend = s.Prepend
		case "Replace":
			if s.Pattern.String == nil || *s.Pattern.String == "" {
				return errors.New("normalizer: Replace with a regex pattern is not supported (only a literal String)")
			}
			t.replace = append(t.replace, replacement{*s.Pattern.String, s.Content})
		default:
			return fmt.Errorf("normalizer %q is not supported (Llama-2's are Prepend and Replace)", s.Type)
		}
	}
	return nil
}

func abbreviate(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "…"
	}
	return string(b)
}

// Encode returns the caption's ids without BOS or EOS. Added tokens
// (<unk>, <s>, </s>) written in the caption become their ids, as in the
// Hugging Face libraries; the rest is normalised per segment and merged by
// rank. A caption that is not valid UTF-8 is an error.
func (t *HF) Encode(caption string) ([]int, error) {
	if !utf8.ValidString(caption) {
		return nil, errors.New("caption is not valid UTF-8")
	}
	var ids []int
	for len(caption) > 0 {
		// The next added token, and the plain text before it.
		at, tok := len(caption), -1
		for i := 0; i < len(caption) && tok < 0; i++ {
			for k, a := range t.added {
				if strings.HasPrefix(caption[i:], a.content) {
					at, tok = i, k
					break
				}
			}
		}
		ids = t.encodeSegment(ids, caption[:at])
		if tok < 0 {
			break
		}
		ids = append(ids, t.added[tok].id)
		caption = caption[at+len(t.added[tok].content):]
	}
	return ids, nil
}

// encodeSegment normalises a segment and appends its BPE ids.
func (t *HF) encodeSegment(ids []int, s string) []int {
	if s == "" {
		return ids
	}
	s = t.prepend + s
	for _, r := range t.replace {
		s = strings.ReplaceAll(s, r.from, r.to)
	}
	return t.bpe(ids, s)
}

// symbol is one piece of a word being merged: a linked list over a slice.
type symbol struct {
	id         int
	prev, next int  // neighbours' indexes, -1 at the ends
	dead       bool // merged into its left neighbour
}

// candidate is a possible merge of the symbol at pos with its right
// neighbour; ids record the pair so a stale entry is recognised.
type candidate struct {
	rank, pos, left, right, merged int
}

type candidates []candidate

func (c candidates) Len() int { return len(c) }
func (c candidates) Less(i, j int) bool {
	if c[i].rank != c[j].rank {
		return c[i].rank < c[j].rank
	}
	return c[i].pos < c[j].pos
}
func (c candidates) Swap(i, j int) { c[i], c[j] = c[j], c[i] }
func (c *candidates) Push(x any)   { *c = append(*c, x.(candidate)) }
func (c *candidates) Pop() any {
	old := *c
	x := old[len(old)-1]
	*c = old[:len(old)-1]
	return x
}

// bpe splits s into characters (a character with no piece becomes its
// UTF-8 bytes' <0xNN> pieces, which never merge) and applies the merges
// lowest rank first, leftmost first among equal ranks: O(n log n).
func (t *HF) bpe(ids []int, s string) []int {
	syms := make([]symbol, 0, len(s))
	for i, r := range s {
		piece := s[i : i+utf8.RuneLen(r)]
		if id, ok := t.vocab[piece]; ok {
			syms = append(syms, symbol{id: id})
			continue
		}
		for j := 0; j < len(piece); j++ {
			syms = append(syms, symbol{id: t.bytes[piece[j]]})
		}
	}
	for i := range syms {
		syms[i].prev, syms[i].next = i-1, i+1
	}
	syms[len(syms)-1].next = -1
	var queue candidates
	push := func(pos int) {
		if pos < 0 || syms[pos].next < 0 {
			return
		}
		l, r := syms[pos].id, syms[syms[pos].next].id
		if m, ok := t.merges[[2]int{l, r}]; ok {
			heap.Push(&queue, candidate{m.rank, pos, l, r, m.id})
		}
	}
	for i := range syms {
		push(i)
	}
	for queue.Len() > 0 {
		c := heap.Pop(&queue).(candidate)
		s := &syms[c.pos]
		if s.dead || s.id != c.left || s.next < 0 || syms[s.next].id != c.right {
			continue // stale: a neighbour merged since
		}
		right := &syms[s.next]
		right.dead = true
		s.id, s.next = c.merged, right.next
		if s.next >= 0 {
			syms[s.next].prev = c.pos
		}
		push(s.prev)
		push(c.pos)
	}
	for i := 0; i >= 0; i = syms[i].next {
		ids = append(ids, syms[i].id)
	}
	return ids
}

// Decode turns ids back into text as Llama-2's decoder does (Replace "▁" →
// " ", ByteFallback, Fuse, Strip one leading space): "▁" in a piece becomes
// a space, <0xNN> pieces become their bytes (invalid UTF-8 becomes U+FFFD),
// and the normaliser's leading space is dropped. <unk>, <s> and </s> decode
// to nothing.
func (t *HF) Decode(ids []int) (string, error) {
	var b strings.Builder
	for _, id := range ids {
		if id < 0 || id >= len(t.pieces) {
			return "", fmt.Errorf("id %d out of range 0..%d", id, len(t.pieces)-1)
		}
		if id == t.bos || id == t.eos || id == t.unk {
			continue
		}
		p := t.pieces[id]
		if len(p) == 6 && strings.HasPrefix(p, "<0x") && p[5] == '>' {
			if v, err := strconv.ParseUint(p[3:5], 16, 8); err == nil {
				b.WriteByte(byte(v))
				continue
			}
		}
		b.WriteString(strings.ReplaceAll(p, "▁", " "))
	}
	s := strings.TrimPrefix(b.String(), " ")
	return strings.ToValidUTF8(s, "\uFFFD"), nil
}

// VocabSize is the number of text ids (32000 for Llama-2).
func (t *HF) VocabSize() int { return len(t.pieces) }
func (t *HF) BOS() int       { return t.bos }
func (t *HF) EOS() int       { return t.eos }

// Pad is <unk>: Llama-2 has no padding token (see HF).
func (t *HF) Pad() int { return t.unk }
