package trainer

// The tiny CPU configuration of MODEL.md: what `make demo` and the tests
// train. Zero fields in TokenizerConfig and LMConfig take the shim's tiny
// defaults; they are spelled out here so the numbers are visible.

// Tiny stage-1 schedule (MODEL.md): phase A without VQ, then phase B with VQ
// on (k-means init from KMeansBatches batches) and the selector frozen.
const (
	TinyBatch         = 8
	TinyPhaseASteps   = 400
	TinyPhaseBSteps   = 200
	TinyKMeansBatches = 16
	TinyStage2Steps   = 800
)

// TinyStage1 is the tiny tokenizer config.
func TinyStage1() Config {
	return Config{
		Stage: 1,
		Tokenizer: &TokenizerConfig{
			Image: 32, Patch: 4, Channels: 3, Width: 64, Heads: 4, MLPRatio: 4,
			MergerBlocks: 2, DecoderBlocks: 2, CodeDim: 16, Codebook: 256,
			Rho: 1.0 / 3.0, RatioWeight: 2, CommitBeta: 1, EMADecay: 0.99, GumbelTau: 1,
			DecoderLocalityAlpha: 0.5, EncoderPosScale: 0.1, KMeansIters: 10,
		},
		Optim: &OptimConfig{LR: 1e-3, SelectorLR: 1e-2, MinLRRatio: 1, WeightDecay: 0.01,
			Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Clip: 1.0},
		Eval: EvalSynthetic,
	}
}

// TinyStage2 is the tiny LM config: 20 text ids (the synthetic data set's
// words) + [IMG] + [/IMG] + 256 codes.
func TinyStage2() Config {
	return Config{
		Stage: 2,
		LM:    &LMConfig{Vocab: 278, DModel: 64, Layers: 2, Heads: 4, MLP: 256, MaxLen: 56},
		Optim: &OptimConfig{LR: 1e-3, MinLRRatio: 1, WeightDecay: 0.01, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Clip: 1.0},
		Text:  &TextConfig{Tokenizer: TextWords},
		Eval:  EvalSynthetic,
	}
}

// TinyStage2Continuous is the tiny LM with LaVIT's continuous image→text
// path: a trainable copy of the tiny merger and a projector.
func TinyStage2Continuous() Config {
	c := TinyStage2()
	lm := *c.LM
	lm.ImageInput, lm.VisWidth, lm.VisHeads, lm.VisMLPHidden, lm.VisMergerBlocks, lm.VisPatches = "continuous", 64, 4, 256, 2, 64
	c.LM = &lm
	return c
}
