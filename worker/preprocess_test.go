package worker

import (
	"testing"

	"github.com/lavit-org/lavit/internal/modelcfg"
	"github.com/lavit-org/lavit/shards/decode"
	"github.com/lavit-org/lavit/trainer"
)

// TestPreprocessFor: the EVA-CLIP encoder gets LaVIT's preprocessing, the
// stand-in the tiny configs'.
func TestPreprocessFor(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  trainer.Config
		want decode.Preprocess
	}{
		{"vit encoder", trainer.Config{Tokenizer: &modelcfg.TokenizerConfig{Encoder: "vit"}}, decode.Preprocess{Size: 224, Resize: decode.SquareBicubic, Normalize: true}},
		{"stand-in encoder", trainer.Config{Tokenizer: &modelcfg.TokenizerConfig{Encoder: "standin"}}, decode.Preprocess{Size: 224, Resize: decode.CropBilinear}},
		{"default encoder", trainer.Config{Tokenizer: &modelcfg.TokenizerConfig{}}, decode.Preprocess{Size: 224, Resize: decode.CropBilinear}},
		{"no tokenizer section", trainer.Config{}, decode.Preprocess{Size: 224, Resize: decode.CropBilinear}},
	} {
		if got := preprocessFor(tc.cfg, 224); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
