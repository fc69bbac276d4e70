package trainer

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// TestShippedConfigs checks that the model configs shipped in
// configs/models match the Go definitions.
func TestShippedConfigs(t *testing.T) {
	for name, want := range map[string]Config{"tiny-stage1": TinyStage1(), "tiny-stage2": TinyStage2(), "tiny-stage2-continuous": TinyStage2Continuous()} {
		got, err := LoadConfig(filepath.Join(testutil.RepoRoot(), "configs", "models", name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s.json differs from the Go definition", name)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct{ json, want string }{
		{`{"stage":3}`, "stage must be 1 or 2"},
		{`{"stage":1,"lm":{}}`, "not \"lm\""},
		{`{"stage":2,"tokenizer":{}}`, "not \"tokenizer\""},
		{`{"stage":1,"tokenizer":{"image":30,"patch":4}}`, "multiple of tokenizer.patch"},
		{`{"stage":1,"tokenizer":{"width":64,"heads":5}}`, "divisible"},
		{`{"stage":1,"tokenizer":{"rho":2}}`, "tokenizer.rho"},
		{`{"stage":1,"tokenizer":{"ema_decay":1}}`, "ema_decay"},
		{`{"stage":1,"tokenizer":{"width":-1}}`, "tokenizer.width"},
		{`{"stage":2,"lm":{"d_model":64,"heads":3}}`, "lm.d_model"},
		{`{"stage":1,"optim":{"lr":-1}}`, "optim.lr"},
		{`{"stage":1,"optim":{"beta2":1}}`, "beta"},
		{`{"stage":1,"optim":{"min_lr_ratio":2}}`, "min_lr_ratio"},
		{`{"stage":1,"tokenizer":{"width":"wide"}}`, "width"},
		{`{"stage":1} {}`, "trailing"},
		{`{"stage":1,"extra":true}`, "extra"},
		{`{"stage":1,"text":{"tokenizer":"words"}}`, "\"text\" is for stage 2"},
		{`{"stage":2,"text":{"tokenizer":"bpe"}}`, "text.tokenizer must be"},
		{`{"stage":2,"eval":"vibes"}`, "eval must be"},
		{`{"stage":2,"eval":"synthetic"}`, "needs text.tokenizer"},
	}
	for _, tc := range tests {
		_, err := ParseConfig([]byte(tc.json))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", tc.json, err, tc.want)
		}
	}
}

// TestShimConfigDropsGoOnlySections: the Go-only sections (text, eval)
// never reach the shim, which refuses keys it does not know.
func TestShimConfigDropsGoOnlySections(t *testing.T) {
	c := TinyStage2()
	if c.Text == nil || c.Eval == "" {
		t.Fatal("the tiny stage-2 config should name its text tokenizer and evaluation")
	}
	s := c.shimConfig()
	if s.Text != nil || s.Eval != "" || s.LM == nil || s.Optim == nil || s.Stage != 2 {
		t.Fatalf("shim config %+v: want the model without text and eval", s)
	}
	if c.Text == nil || c.Eval == "" {
		t.Fatal("shimConfig changed its receiver")
	}
}
