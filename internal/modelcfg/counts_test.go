package modelcfg

import (
	"path/filepath"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

func load(t *testing.T, name string) Config {
	t.Helper()
	c, err := LoadConfig(filepath.Join(testutil.RepoRoot(), "configs", "models", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCounts: the formulas give MODEL.md's numbers (the trainer's tests
// hold them to the shim itself).
func TestCounts(t *testing.T) {
	tests := []struct {
		model          string
		trainable      int64 // exact, or 0 to check only the range
		lo, hi, frozen int64
	}{
		{model: "tiny-stage1", trainable: 297_122},
		{model: "tiny-stage2", trainable: 139_542},
		{model: "stage2-llama2-7b", lo: 6_800_000_000, hi: 7_000_000_000},
		{model: "stage1-lavit", lo: 700_000_000, hi: 900_000_000, frozen: 1},
	}
	for _, tt := range tests {
		c := load(t, tt.model).Counts()
		switch {
		case tt.trainable != 0 && c.Trainable != tt.trainable:
			t.Errorf("%s: %d trainable parameters, MODEL.md says %d", tt.model, c.Trainable, tt.trainable)
		case tt.trainable == 0 && (c.Trainable < tt.lo || c.Trainable > tt.hi):
			t.Errorf("%s: %d trainable parameters, want %d..%d", tt.model, c.Trainable, tt.lo, tt.hi)
		}
		if tt.frozen != 0 && (c.Frozen < 1_000_000_000 || c.Frozen > 1_020_000_000) {
			t.Errorf("%s: frozen encoder of %d parameters; EVA-CLIP-g's visual tower has about 1.01 B", tt.model, c.Frozen)
		}
		if tt.frozen == 0 && c.Frozen != 0 {
			t.Errorf("%s: %d frozen parameters, want none", tt.model, c.Frozen)
		}
		t.Logf("%s: %d trainable, %d frozen, %d buffer floats", tt.model, c.Trainable, c.Frozen, c.Buffers)
	}
}

// TestDefaults: an absent section and an explicit tiny one count the same.
func TestDefaults(t *testing.T) {
	for _, stage := range []int{1, 2} {
		bare := Config{Stage: stage}.Counts()
		var tiny Counts
		if stage == 1 {
			tiny = load(t, "tiny-stage1").Counts()
		} else {
			tiny = load(t, "tiny-stage2").Counts()
		}
		if bare != tiny {
			t.Errorf("stage %d: defaults count %+v, the tiny config %+v", stage, bare, tiny)
		}
	}
}
