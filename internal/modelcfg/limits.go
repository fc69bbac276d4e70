package modelcfg

import (
	"fmt"
	"math"
)

// Upper bounds on a model config. A config comes from outside (a file, or
// the model_config a submitted run spec inlines), and its numbers size
// every allocation the shim makes and every product the memory plan
// computes, so each is bounded. The limits are far above the paper's
// full-size models (a Llama-2-7B LM: d_model 4096, 32 layers, mlp 11008,
// vocab 32000+16384, max_len 512; an EVA-CLIP ViT-g/14 tokenizer: width
// 1408, 40 encoder blocks, 224-pixel images, 256 patches, codebook 16384)
// and far below anything that could overflow int64: with every field at
// its limit no term of Counts exceeds about 2^50, and Validate then
// refuses any count over MaxCount.
const (
	// MaxDim bounds every width: tokenizer.width, code_dim, mlp_hidden,
	// encoder_mlp_hidden; lm.d_model, mlp, vis_width, vis_mlp_hidden.
	MaxDim = 1 << 16
	// MaxHeads bounds every head count (tokenizer.heads, encoder_heads;
	// lm.heads, vis_heads).
	MaxHeads = 1 << 10
	// MaxLayers bounds every stack depth (tokenizer.merger_blocks,
	// decoder_blocks, encoder_blocks; lm.layers, vis_merger_blocks).
	MaxLayers = 1 << 10
	// MaxMLPRatio bounds tokenizer.mlp_ratio.
	MaxMLPRatio = 64
	// MaxVocab bounds lm.vocab (Llama-3's is 128256).
	MaxVocab = 1 << 22
	// MaxCodebook bounds tokenizer.codebook.
	MaxCodebook = 1 << 20
	// MaxImage bounds tokenizer.image and tokenizer.patch, in pixels.
	MaxImage = 1 << 13
	// MaxChannels bounds tokenizer.channels.
	MaxChannels = 64
	// MaxPatches bounds the tokenizer's patch count (image/patch)² and
	// lm.vis_patches: attention and the locality kernel are patches².
	MaxPatches = 1 << 16
	// MaxSeqLen bounds lm.max_len: the causal mask is max_len².
	MaxSeqLen = 1 << 16
	// MaxKMeansIters bounds tokenizer.kmeans_iters.
	MaxKMeansIters = 1 << 16
	// MaxSteps bounds optim.warmup_steps and optim.total_steps (and a run
	// spec's step counts): steps × a global batch of up to 2^20 samples
	// still fits int64.
	MaxSteps = 1 << 40
	// MaxCount bounds each of Counts' Trainable, Frozen and Buffers: about
	// 1.1 trillion values (4.4 TB in fp32), a hundred times a 7B model's
	// parameters, small enough that the memory plan's byte counts of them
	// fit int64.
	MaxCount = 1 << 40
)

// bound is one integer field and its limit.
type bound struct {
	name string
	v    int64
	max  int64
}

// checkBounds refuses the first field below 0 or above its limit.
func checkBounds(fields []bound) error {
	for _, f := range fields {
		switch {
		case f.v < 0:
			return fmt.Errorf("model config: %s must not be negative (got %d)", f.name, f.v)
		case f.v > f.max:
			return fmt.Errorf("model config: %s is %d; the limit is %d", f.name, f.v, f.max)
		}
	}
	return nil
}

// finite is a float field that must be a finite number (≥ 0 when nonNeg).
type finite struct {
	name   string
	v      float64
	nonNeg bool
}

// checkFinite refuses the first NaN, infinite or (where it must not be)
// negative float field. JSON cannot spell NaN or Inf, but a Config built
// in Go can hold them.
func checkFinite(fields []finite) error {
	for _, f := range fields {
		switch {
		case math.IsNaN(f.v) || math.IsInf(f.v, 0):
			return fmt.Errorf("model config: %s must be a finite number, got %v", f.name, f.v)
		case f.nonNeg && f.v < 0:
			return fmt.Errorf("model config: %s must not be negative (got %v)", f.name, f.v)
		}
	}
	return nil
}

// checkTokenizerLimits bounds the stage-1 section's numbers.
func checkTokenizerLimits(t *TokenizerConfig) error {
	if err := checkBounds([]bound{
		{"tokenizer.image", t.Image, MaxImage}, {"tokenizer.patch", t.Patch, MaxImage},
		{"tokenizer.channels", t.Channels, MaxChannels}, {"tokenizer.width", t.Width, MaxDim},
		{"tokenizer.heads", t.Heads, MaxHeads}, {"tokenizer.mlp_ratio", t.MLPRatio, MaxMLPRatio},
		{"tokenizer.merger_blocks", t.MergerBlocks, MaxLayers}, {"tokenizer.decoder_blocks", t.DecoderBlocks, MaxLayers},
		{"tokenizer.code_dim", t.CodeDim, MaxDim}, {"tokenizer.codebook", t.Codebook, MaxCodebook},
		{"tokenizer.kmeans_iters", t.KMeansIters, MaxKMeansIters}, {"tokenizer.mlp_hidden", t.MLPHidden, MaxDim},
		{"tokenizer.encoder_blocks", t.EncoderBlocks, MaxLayers}, {"tokenizer.encoder_heads", t.EncoderHeads, MaxHeads},
		{"tokenizer.encoder_mlp_hidden", t.EncoderMLPHidden, MaxDim},
	}); err != nil {
		return err
	}
	if err := checkFinite([]finite{
		{"tokenizer.rho", t.Rho, true}, {"tokenizer.ratio_weight", t.RatioWeight, true},
		{"tokenizer.commit_beta", t.CommitBeta, true}, {"tokenizer.ema_decay", t.EMADecay, true},
		{"tokenizer.gumbel_tau", t.GumbelTau, true}, {"tokenizer.decoder_locality_alpha", t.DecoderLocalityAlpha, true},
		{"tokenizer.encoder_pos_scale", t.EncoderPosScale, false},
	}); err != nil {
		return err
	}
	d := t.WithDefaults()
	if d.Patch > d.Image {
		return fmt.Errorf("model config: tokenizer.patch %d is larger than tokenizer.image %d", d.Patch, d.Image)
	}
	if n := d.Patches(); n > MaxPatches {
		return fmt.Errorf("model config: tokenizer.image %d in patches of %d is %d patches; the limit is %d", d.Image, d.Patch, n, MaxPatches)
	}
	return nil
}

// checkLMLimits bounds the stage-2 section's numbers.
func checkLMLimits(l *LMConfig) error {
	if err := checkBounds([]bound{
		{"lm.vocab", l.Vocab, MaxVocab}, {"lm.d_model", l.DModel, MaxDim}, {"lm.layers", l.Layers, MaxLayers},
		{"lm.heads", l.Heads, MaxHeads}, {"lm.mlp", l.MLP, MaxDim}, {"lm.max_len", l.MaxLen, MaxSeqLen},
		{"lm.vis_width", l.VisWidth, MaxDim}, {"lm.vis_heads", l.VisHeads, MaxHeads},
		{"lm.vis_mlp_hidden", l.VisMLPHidden, MaxDim}, {"lm.vis_merger_blocks", l.VisMergerBlocks, MaxLayers},
		{"lm.vis_patches", l.VisPatches, MaxPatches},
	}); err != nil {
		return err
	}
	return checkFinite([]finite{{"lm.rope_theta", l.RopeTheta, true}, {"lm.norm_eps", l.NormEps, true}})
}

// checkOptimLimits bounds the optimizer section's numbers.
func checkOptimLimits(o *OptimConfig) error {
	if err := checkBounds([]bound{
		{"optim.warmup_steps", o.WarmupSteps, MaxSteps}, {"optim.total_steps", o.TotalSteps, MaxSteps},
	}); err != nil {
		return err
	}
	return checkFinite([]finite{
		{"optim.lr", o.LR, true}, {"optim.selector_lr", o.SelectorLR, true}, {"optim.min_lr_ratio", o.MinLRRatio, true},
		{"optim.weight_decay", o.WeightDecay, true}, {"optim.beta1", o.Beta1, true}, {"optim.beta2", o.Beta2, true},
		{"optim.eps", o.Eps, true}, {"optim.clip", o.Clip, true},
	})
}

// checkCounts refuses a model whose parameter or buffer count is over
// MaxCount. The field limits keep every term of the formulas far from
// int64's range, so the counts themselves cannot have wrapped.
func (c Config) checkCounts() error {
	n := c.Counts()
	for _, k := range []struct {
		name string
		v    int64
	}{{"trainable parameters", n.Trainable}, {"frozen parameters", n.Frozen}, {"buffer values", n.Buffers}} {
		if k.v < 0 || k.v > MaxCount {
			return fmt.Errorf("model config: the model has %d %s; the limit is %d", k.v, k.name, int64(MaxCount))
		}
	}
	return nil
}
