package modelcfg

import (
	"math"
	"strings"
	"testing"
)

// atLimits is a config of the given stage with every number at its limit
// (scaled down by div), for the overflow checks.
func atLimits(stage int, div int64) Config {
	if stage == 1 {
		return Config{Stage: 1, Tokenizer: &TokenizerConfig{
			Image: MaxImage / div, Patch: MaxImage / div, Channels: MaxChannels / div, Width: MaxDim / div, Heads: MaxHeads / div,
			MLPRatio: MaxMLPRatio / div, MergerBlocks: MaxLayers / div, DecoderBlocks: MaxLayers / div, CodeDim: MaxDim / div,
			Codebook: MaxCodebook / div, KMeansIters: MaxKMeansIters / div, Encoder: "vit", EncoderBlocks: MaxLayers / div,
			EncoderHeads: MaxHeads / div, EncoderMLPHidden: MaxDim / div,
		}}
	}
	return Config{Stage: 2, LM: &LMConfig{
		Arch: "gpt", ImageInput: "continuous", VisWidth: MaxDim / div, VisHeads: MaxHeads / div, VisMLPHidden: MaxDim / div,
		VisMergerBlocks: MaxLayers / div, VisPatches: MaxPatches / div, Vocab: MaxVocab / div, DModel: MaxDim / div,
		Layers: MaxLayers / div, Heads: MaxHeads / div, MLP: MaxDim / div, MaxLen: MaxSeqLen / div,
	}}
}

// TestCountsAtLimits: with every field at its limit the counts have not
// wrapped (positive, below 2^53, and at least the counts at half the
// limits), and Validate refuses the model by its size, not by a field.
func TestCountsAtLimits(t *testing.T) {
	for _, arch := range []string{"gpt", "llama"} {
		for _, stage := range []int{1, 2} {
			full, half := atLimits(stage, 1), atLimits(stage, 2)
			if stage == 2 {
				full.LM.Arch, half.LM.Arch = arch, arch
			}
			c, h := full.Counts(), half.Counts()
			for _, v := range []struct {
				name      string
				full, hlf int64
			}{{"trainable", c.Trainable, h.Trainable}, {"frozen", c.Frozen, h.Frozen}, {"buffers", c.Buffers, h.Buffers}} {
				if v.full < 0 || v.full > 1<<53 || v.full < v.hlf {
					t.Errorf("stage %d %s: %s count %d at the limits (%d at half): wrapped?", stage, arch, v.name, v.full, v.hlf)
				}
			}
			err := full.Validate()
			if err == nil || !strings.Contains(err.Error(), "the model has") {
				t.Errorf("stage %d %s at the limits: Validate = %v, want the size refused", stage, arch, err)
			}
			t.Logf("stage %d %s at the limits: %+v", stage, arch, c)
		}
	}
}

// TestValidateNonFinite: NaN and infinities (which JSON cannot spell but
// a Config built in Go can hold) are refused by name.
func TestValidateNonFinite(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	tests := []struct {
		name string
		c    Config
		want string
	}{
		{"rho", Config{Stage: 1, Tokenizer: &TokenizerConfig{Rho: nan}}, "tokenizer.rho must be a finite number, got NaN"},
		{"ema_decay", Config{Stage: 1, Tokenizer: &TokenizerConfig{EMADecay: nan}}, "tokenizer.ema_decay"},
		{"alpha", Config{Stage: 1, Tokenizer: &TokenizerConfig{DecoderLocalityAlpha: inf}}, "tokenizer.decoder_locality_alpha must be a finite number, got +Inf"},
		{"pos scale", Config{Stage: 1, Tokenizer: &TokenizerConfig{EncoderPosScale: -inf}}, "tokenizer.encoder_pos_scale must be a finite number, got -Inf"},
		{"rope", Config{Stage: 2, LM: &LMConfig{RopeTheta: nan}}, "lm.rope_theta"},
		{"beta1", Config{Stage: 2, Optim: &OptimConfig{Beta1: nan}}, "optim.beta1 must be a finite number"},
		{"beta2", Config{Stage: 2, Optim: &OptimConfig{Beta2: nan}}, "optim.beta2 must be a finite number"},
		{"min_lr_ratio", Config{Stage: 2, Optim: &OptimConfig{MinLRRatio: nan}}, "optim.min_lr_ratio"},
		{"lr", Config{Stage: 1, Optim: &OptimConfig{LR: inf}}, "optim.lr must be a finite number, got +Inf"},
	}
	for _, tc := range tests {
		if err := tc.c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want an error mentioning %q", tc.name, err, tc.want)
		}
	}
}
