package text

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// Piece types of sentencepiece_model.proto.
const (
	normal  = 1
	unknown = 2
	control = 3
)

type piece struct {
	text  string
	score float32
	kind  int
}

// bpeModel encodes a SentencePiece ModelProto by hand (field numbers from
// sentencepiece_model.proto): pieces (1), trainer_spec (2) with model_type
// BPE (3 = 2) and unk/bos/eos/pad ids (40-43), normalizer_spec (3) with
// add_dummy_prefix (3), remove_extra_whitespaces (4) off and
// escape_whitespaces (5) on.
func bpeModel(pieces []piece, modelType int) []byte {
	var b []byte
	for _, p := range pieces {
		var m []byte
		m = protowire.AppendTag(m, 1, protowire.BytesType)
		m = protowire.AppendString(m, p.text)
		m = protowire.AppendTag(m, 2, protowire.Fixed32Type)
		m = protowire.AppendFixed32(m, math.Float32bits(p.score))
		m = protowire.AppendTag(m, 3, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(p.kind))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	var ts []byte
	for _, f := range [][2]uint64{{3, uint64(modelType)}, {40, 0}, {41, 1}, {42, 2}, {43, math.MaxUint64}} {
		ts = protowire.AppendTag(ts, protowire.Number(f[0]), protowire.VarintType)
		ts = protowire.AppendVarint(ts, f[1])
	}
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)
	var ns []byte
	for _, f := range [][2]uint64{{3, 0}, {4, 0}, {5, 1}} {
		ns = protowire.AppendTag(ns, protowire.Number(f[0]), protowire.VarintType)
		ns = protowire.AppendVarint(ns, f[1])
	}
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, ns)
	return b
}

var testPieces = []piece{
	{"<unk>", 0, unknown}, {"<s>", 0, control}, {"</s>", 0, control},
	{"▁", -1, normal}, {"r", -2, normal}, {"e", -3, normal}, {"d", -4, normal},
	{"re", -5, normal}, {"red", -6, normal}, {"▁red", -7, normal},
	// A long piece, as real vocabularies have, so merges stay within the
	// library's buffer (see Encode).
	{"▁longlonglonglonglong", -8, normal},
}

func writeModel(t *testing.T, b []byte) string {
	p := filepath.Join(t.TempDir(), "tokenizer.model")
	os.WriteFile(p, b, 0o644)
	return p
}

func TestSentencePieceRoundTrip(t *testing.T) {
	tok, err := LoadSentencePiece(writeModel(t, bpeModel(testPieces, 2)))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := tok.Encode("red red")
	if err != nil {
		t.Fatal(err)
	}
	// "red▁red": BPE merges to "red" then "▁red".
	if len(ids) != 2 || ids[0] != 8 || ids[1] != 9 {
		t.Fatalf("ids %v, want [8 9]", ids)
	}
	text, err := tok.Decode(ids)
	if err != nil || text != "red red" {
		t.Fatalf("decode: %q, %v", text, err)
	}
	if tok.VocabSize() != len(testPieces) || tok.BOS() != 1 || tok.EOS() != 2 || tok.Pad() != 0 {
		t.Fatalf("vocab %d, bos %d, eos %d, pad %d", tok.VocabSize(), tok.BOS(), tok.EOS(), tok.Pad())
	}
	if _, err := tok.Decode([]int{99}); err == nil {
		t.Fatal("out-of-range id decoded")
	}
}

func TestSentencePieceErrors(t *testing.T) {
	for name, data := range map[string][]byte{
		"garbage":       []byte("this is not a protobuf \xff\xff\xff"),
		"unigram":       bpeModel(testPieces, 1),
		"empty":         {},
		"no normaliser": protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 2)),
	} {
		if _, err := LoadSentencePiece(writeModel(t, data)); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
	if _, err := LoadSentencePiece(filepath.Join(t.TempDir(), "missing.model")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestTinyWords(t *testing.T) {
	tok := TinyWords()
	ids, err := tok.Encode("big red circle top left")
	if err != nil {
		t.Fatal(err)
	}
	back, _ := tok.Decode(ids)
	if back != "big red circle top left" || tok.VocabSize() != 20 {
		t.Fatalf("round trip %q, vocab %d", back, tok.VocabSize())
	}
	if _, err := tok.Encode("purple"); err == nil {
		t.Fatal("unknown word encoded")
	}
}
