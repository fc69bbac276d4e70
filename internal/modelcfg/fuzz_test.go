package modelcfg

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// FuzzParseConfig feeds ParseConfig arbitrary bytes. It must never panic;
// a config it accepts must validate, have counts within MaxCount, and come
// back the same through JSON.
func FuzzParseConfig(f *testing.F) {
	files, err := filepath.Glob(filepath.Join(testutil.RepoRoot(), "configs", "models", "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no model configs to seed with: %v", err)
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"stage":1}`, `{"stage":2}`, `{"stage":3}`, `{"stage":1} {}`, `{"stage":1,"extra":true}`, `[]`, ``,
		`{"stage":1,"tokenizer":{"width":65536,"merger_blocks":1024}}`,
		`{"stage":1,"tokenizer":{"image":8192,"patch":1}}`,
		`{"stage":2,"lm":{"arch":"llama","d_model":65536,"layers":1024,"mlp":65536}}`,
		`{"stage":2,"lm":{"heads":0,"d_model":7}}`,
		`{"stage":1,"tokenizer":{"rho":-0}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ParseConfig accepted a config that does not validate: %v", err)
		}
		n := c.Counts()
		for _, v := range []int64{n.Trainable, n.Frozen, n.Buffers} {
			if v < 0 || v > MaxCount {
				t.Fatalf("accepted config counts %+v, outside [0, %d]", n, int64(MaxCount))
			}
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("json.Marshal: %v", err)
		}
		again, err := ParseConfig(b)
		if err != nil {
			t.Fatalf("the config written as JSON does not parse: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(again, c) {
			t.Fatalf("JSON round trip:\n got %+v\nwant %+v", again, c)
		}
	})
}
