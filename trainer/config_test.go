package trainer

import (
	"path/filepath"
	"reflect"
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

// TestShimConfigDropsGoOnlySections: the Go-only sections (text, eval)
// never reach the shim, which refuses keys it does not know.
func TestShimConfigDropsGoOnlySections(t *testing.T) {
	c := TinyStage2()
	if c.Text == nil || c.Eval == "" {
		t.Fatal("the tiny stage-2 config should name its text tokenizer and evaluation")
	}
	s := shimConfig(c)
	if s.Text != nil || s.Eval != "" || s.LM == nil || s.Optim == nil || s.Stage != 2 {
		t.Fatalf("shim config %+v: want the model without text and eval", s)
	}
	if c.Text == nil || c.Eval == "" {
		t.Fatal("shimConfig changed its receiver")
	}
}
