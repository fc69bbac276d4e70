package modelcfg

// Parameter counts as pure formulas of a config: the numbers the shim
// allocates (trainer/csrc/models.cpp builds the modules, shim.cpp's flatten
// puts every trainable parameter in one flat buffer and keeps the frozen
// ones outside it). The trainer's tests hold them to the shim's model info.

// Counts is how many float32 values a model holds, by kind.
type Counts struct {
	// Trainable is the flat parameter buffer (and the gradient buffer of
	// the same size): every parameter with requires_grad.
	Trainable int64
	// Frozen is the parameters outside the flat buffers: the pretrained
	// ViT encoder of stage 1 (encoder "vit").
	Frozen int64
	// Buffers is the registered buffers, never trained: stage 1's
	// stand-in encoder projection and positions, the VQ codebook (updated
	// by EMA, not by the optimizer), the precomputed masks and locality
	// kernel; stage 2's causal mask, RoPE tables and the vision copy's
	// masks.
	Buffers int64
}

// Counts gives the config's parameter and buffer counts, applying the
// shim's defaults to zero-valued fields (see WithDefaults).
func (c Config) Counts() Counts {
	if c.Stage == 2 {
		return lmCounts(c.LMOrDefault())
	}
	return tokenizerCounts(c.TokenizerOrDefault())
}

// TokenizerOrDefault is the stage-1 section with the shim's defaults
// applied (an absent section is all defaults).
func (c Config) TokenizerOrDefault() TokenizerConfig {
	if c.Tokenizer == nil {
		return TokenizerConfig{}.WithDefaults()
	}
	return c.Tokenizer.WithDefaults()
}

// LMOrDefault is the stage-2 section with the shim's defaults applied (an
// absent section is all defaults).
func (c Config) LMOrDefault() LMConfig {
	if c.LM == nil {
		return LMConfig{}.WithDefaults()
	}
	return c.LM.WithDefaults()
}

// WithDefaults fills the zero-valued fields with the shim's defaults
// (trainer/csrc/models.h: the tiny model, and the EVA-CLIP-g encoder
// shape). DecoderLocalityAlpha is always sent, so 0 stays 0.
func (t TokenizerConfig) WithDefaults() TokenizerConfig {
	def := func(v *int64, d int64) {
		if *v == 0 {
			*v = d
		}
	}
	deff := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&t.Image, 32)
	def(&t.Patch, 4)
	def(&t.Channels, 3)
	def(&t.Width, 64)
	def(&t.Heads, 4)
	def(&t.MLPRatio, 4)
	def(&t.MergerBlocks, 2)
	def(&t.DecoderBlocks, 2)
	def(&t.CodeDim, 16)
	def(&t.Codebook, 256)
	def(&t.KMeansIters, 10)
	def(&t.MLPHidden, t.Width*t.MLPRatio)
	def(&t.EncoderBlocks, 40)
	def(&t.EncoderHeads, 16)
	def(&t.EncoderMLPHidden, 6144)
	deff(&t.Rho, 1.0/3.0)
	deff(&t.RatioWeight, 2)
	deff(&t.CommitBeta, 1)
	deff(&t.EMADecay, 0.99)
	deff(&t.GumbelTau, 1)
	deff(&t.EncoderPosScale, 0.1)
	if t.Encoder == "" {
		t.Encoder = "standin"
	}
	return t
}

// Patches is the number of image patches, N.
func (t TokenizerConfig) Patches() int64 { return (t.Image / t.Patch) * (t.Image / t.Patch) }

// WithDefaults fills the zero-valued fields with the shim's defaults
// (trainer/csrc/models.h: the tiny GPT LM and its vision copy).
func (l LMConfig) WithDefaults() LMConfig {
	def := func(v *int64, d int64) {
		if *v == 0 {
			*v = d
		}
	}
	if l.Arch == "" {
		l.Arch = "gpt"
	}
	if l.ImageInput == "" {
		l.ImageInput = "discrete"
	}
	def(&l.Vocab, 278)
	def(&l.DModel, 64)
	def(&l.Layers, 2)
	def(&l.Heads, 4)
	def(&l.MLP, 256)
	def(&l.MaxLen, 56)
	def(&l.VisWidth, 64)
	def(&l.VisHeads, 4)
	def(&l.VisMLPHidden, 256)
	def(&l.VisMergerBlocks, 2)
	def(&l.VisPatches, 64)
	if l.RopeTheta == 0 {
		l.RopeTheta = 10000
	}
	if l.NormEps == 0 {
		l.NormEps = 1e-5
	}
	return l
}

// linear is a Linear(in, out) with bias.
func linear(in, out int64) int64 { return in*out + out }

// layerNorm is a LayerNorm's weight and bias.
func layerNorm(d int64) int64 { return 2 * d }

// crossBlock is one merger or decoder block: three LayerNorms,
// self- and cross-attention (q, k, v, o with biases each), the GELU MLP.
func crossBlock(d, hidden int64) int64 {
	return 3*layerNorm(d) + 2*4*linear(d, d) + linear(d, hidden) + linear(hidden, d)
}

// mergerCopy is the merger stack with its memory and output LayerNorms
// (the tokenizer's, and stage 2's trainable copy).
func mergerCopy(d, hidden, blocks int64) int64 {
	return layerNorm(d) + blocks*crossBlock(d, hidden) + layerNorm(d)
}

// ViTParams is the frozen EVA-CLIP ViT's parameter count: the patch
// convolution (with bias), CLS and positions, and per block two
// LayerNorms, qkv without bias plus q and v biases, the output projection
// and the MLP. With EncoderBlocks 40 it is EVA-CLIP-g's ≈ 1.01 B.
func ViTParams(t TokenizerConfig) int64 {
	t = t.WithDefaults()
	D, H, P, N := t.Width, t.EncoderMLPHidden, t.Patch, t.Patches()
	embed := t.Channels*P*P*D + D + D + (N+1)*D
	block := 2*layerNorm(D) + 3*D*D + 2*D + linear(D, D) + linear(D, H) + linear(H, D)
	return embed + t.EncoderBlocks*block
}

// tokenizerCounts is stage 1: selector, merger, task layer, decoder
// trainable; the ViT frozen; the rest buffers.
func tokenizerCounts(t TokenizerConfig) Counts {
	D, H, C, K, N := t.Width, t.MLPHidden, t.CodeDim, t.Codebook, t.Patches()
	selector := layerNorm(D) + linear(D, D) + linear(D, D/2) + linear(D/2, D/4) + linear(D/4, 2)
	task := linear(D, D) + linear(D, C)
	decoder := linear(C, D) + 2*N*D + t.DecoderBlocks*crossBlock(D, H) + layerNorm(D) + 2*linear(D, D)
	c := Counts{
		Trainable: selector + mergerCopy(D, H, t.MergerBlocks) + task + decoder,
		// enc_proj, enc_pos, codebook, locality, causal_strict, eye
		Buffers: t.Channels*t.Patch*t.Patch*D + N*D + K*C + 3*N*N,
	}
	if t.Encoder == "vit" {
		c.Frozen = ViTParams(t)
		c.Buffers += 6 // CLIP's mean and std
	}
	return c
}

// LMParams is the LM's trainable parameter count. Llama: embedding, per
// layer q, k, v, o, gate, up, down (no biases) and two RMSNorms, the final
// norm and the untied head. GPT: embedding and learned positions, per
// layer q, k, v, o with biases, two LayerNorms and the MLP with biases, the
// final LayerNorm and the head with bias. Continuous input adds the
// vision merger copy and its projector.
func LMParams(l LMConfig) int64 {
	l = l.WithDefaults()
	V, d, L, f, T := l.Vocab, l.DModel, l.Layers, l.MLP, l.MaxLen
	var n int64
	if l.Arch == "llama" {
		n = V*d + L*(4*d*d+3*d*f+2*d) + d + d*V
	} else {
		n = V*d + T*d + L*(4*linear(d, d)+2*layerNorm(d)+linear(d, f)+linear(f, d)) + layerNorm(d) + linear(d, V)
	}
	if l.ImageInput == "continuous" {
		n += mergerCopy(l.VisWidth, l.VisMLPHidden, l.VisMergerBlocks) + linear(l.VisWidth, d)
	}
	return n
}

// lmCounts is stage 2: everything trainable; the causal mask, the RoPE
// tables and the vision copy's masks are buffers.
func lmCounts(l LMConfig) Counts {
	c := Counts{Trainable: LMParams(l), Buffers: l.MaxLen * l.MaxLen}
	if l.Arch == "llama" {
		c.Buffers += 2 * l.MaxLen * (l.DModel / l.Heads / 2)
	}
	if l.ImageInput == "continuous" {
		c.Buffers += 2 * l.VisPatches * l.VisPatches
	}
	return c
}
