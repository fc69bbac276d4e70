// Package modelcfg owns the model config: the JSON of configs/models/*.json
// that says which stage, the architecture and the optimizer, plus what only
// Go reads (how captions become ids, which checks a run measures). It
// parses and validates it, and gives the parameter counts of a config as
// pure formulas (Counts), the same numbers the shim allocates. It is pure
// Go, so the cgo-free coordinator can plan memory with it; the trainer
// package re-exports the types as aliases.
//
// A config comes from outside, so Validate bounds every dimension
// (limits.go: MaxDim, MaxLayers, MaxVocab, …, far above Llama-2-7B and
// EVA-CLIP-g) and the counts themselves (MaxCount); with the field limits
// no count can overflow int64. FuzzParseConfig holds ParseConfig to that:
// no panics, counts in range, and a config it accepts round-trips through
// JSON.
package modelcfg

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Config is a model config: which stage, the architecture, the optimizer,
// and (read by the worker, never sent to the shim) how captions become
// token ids and how the trained model is evaluated. It is parsed strictly
// (unknown fields are errors) and validated in Go before it reaches the
// shim, which checks its part again.
type Config struct {
	Stage     int              `json:"stage"`
	Tokenizer *TokenizerConfig `json:"tokenizer,omitempty"`
	LM        *LMConfig        `json:"lm,omitempty"`
	Optim     *OptimConfig     `json:"optim,omitempty"`
	// Text says how stage 2 turns captions into token ids.
	Text *TextConfig `json:"text,omitempty"`
	// Eval names the checks measured on data.eval_url when a run
	// completes: EvalSynthetic for the "it learned" checks of MODEL.md on
	// the synthetic data set, EvalHeldOut for measurements on any data set
	// (reconstruction, keep ratio and code use for stage 1; loss and
	// perplexity for stage 2), EvalNone ("" too) for none.
	Eval string `json:"eval,omitempty"`
}

// Evaluations a model config can name.
const (
	EvalNone      = "none"
	EvalSynthetic = "synthetic"
	EvalHeldOut   = "heldout"
)

// TextConfig is how captions become token ids (stage 2).
type TextConfig struct {
	// Tokenizer names the caption tokenizer: TextWords is the synthetic
	// data set's word vocabulary (the tiny LM's 20 text ids).
	Tokenizer string `json:"tokenizer"`
}

// Caption tokenizers a model config can name.
const TextWords = "words"

// ShimConfig is the part of the config the shim builds the model from:
// the config without the sections only Go reads (text, eval), which the
// shim would refuse as unknown keys.
func (c Config) ShimConfig() Config {
	c.Text, c.Eval = nil, ""
	return c
}

// TokenizerConfig is stage 1 (MODEL.md's names; zero means the tiny default).
type TokenizerConfig struct {
	Image                int64   `json:"image,omitempty"`
	Patch                int64   `json:"patch,omitempty"`
	Channels             int64   `json:"channels,omitempty"`
	Width                int64   `json:"width,omitempty"`
	Heads                int64   `json:"heads,omitempty"`
	MLPRatio             int64   `json:"mlp_ratio,omitempty"`
	MergerBlocks         int64   `json:"merger_blocks,omitempty"`
	DecoderBlocks        int64   `json:"decoder_blocks,omitempty"`
	CodeDim              int64   `json:"code_dim,omitempty"`
	Codebook             int64   `json:"codebook,omitempty"`
	Rho                  float64 `json:"rho,omitempty"`
	RatioWeight          float64 `json:"ratio_weight,omitempty"`
	CommitBeta           float64 `json:"commit_beta,omitempty"`
	EMADecay             float64 `json:"ema_decay,omitempty"`
	GumbelTau            float64 `json:"gumbel_tau,omitempty"`
	DecoderLocalityAlpha float64 `json:"decoder_locality_alpha"`
	EncoderPosScale      float64 `json:"encoder_pos_scale,omitempty"`
	KMeansIters          int64   `json:"kmeans_iters,omitempty"`
	MLPHidden            int64   `json:"mlp_hidden,omitempty"`
	// Encoder is "standin" (default: the tiny fixed projection) or "vit"
	// (EVA-CLIP-style, weights loaded with LoadSafetensors).
	Encoder          string `json:"encoder,omitempty"`
	EncoderBlocks    int64  `json:"encoder_blocks,omitempty"`
	EncoderHeads     int64  `json:"encoder_heads,omitempty"`
	EncoderMLPHidden int64  `json:"encoder_mlp_hidden,omitempty"`
}

// LMConfig is stage 2. Arch "gpt" (default: learned positions, LayerNorm,
// GELU) is the tiny LM; "llama" (RoPE, RMSNorm, SwiGLU, no biases) gives
// Llama-2 shapes.
type LMConfig struct {
	Arch      string  `json:"arch,omitempty"`
	RopeTheta float64 `json:"rope_theta,omitempty"`
	NormEps   float64 `json:"norm_eps,omitempty"`
	// ImageInput "discrete" (default) or "continuous": image→text samples
	// then enter as a trainable merger copy's outputs through a projector
	// (full LaVIT's understanding path); Vis* give the merger's shape.
	ImageInput      string `json:"image_input,omitempty"`
	VisWidth        int64  `json:"vis_width,omitempty"`
	VisHeads        int64  `json:"vis_heads,omitempty"`
	VisMLPHidden    int64  `json:"vis_mlp_hidden,omitempty"`
	VisMergerBlocks int64  `json:"vis_merger_blocks,omitempty"`
	VisPatches      int64  `json:"vis_patches,omitempty"`
	Vocab           int64  `json:"vocab,omitempty"`
	DModel          int64  `json:"d_model,omitempty"`
	Layers          int64  `json:"layers,omitempty"`
	Heads           int64  `json:"heads,omitempty"`
	MLP             int64  `json:"mlp,omitempty"`
	MaxLen          int64  `json:"max_len,omitempty"`
}

// OptimConfig is AdamW with linear warmup then cosine decay to
// lr·min_lr_ratio at total_steps, global-norm clipping, and the selector's
// own learning rate.
type OptimConfig struct {
	LR          float64 `json:"lr,omitempty"`
	SelectorLR  float64 `json:"selector_lr,omitempty"`
	MinLRRatio  float64 `json:"min_lr_ratio,omitempty"`
	WeightDecay float64 `json:"weight_decay,omitempty"`
	Beta1       float64 `json:"beta1,omitempty"`
	Beta2       float64 `json:"beta2,omitempty"`
	Eps         float64 `json:"eps,omitempty"`
	Clip        float64 `json:"clip,omitempty"`
	WarmupSteps int64   `json:"warmup_steps,omitempty"`
	TotalSteps  int64   `json:"total_steps,omitempty"`
}

// ParseConfig decodes a JSON model config strictly and validates it.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("model config: %w", err)
	}
	if dec.More() {
		return c, errors.New("model config: trailing data after the JSON object")
	}
	return c, c.Validate()
}

// LoadConfig reads a JSON model config file.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read model config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate checks ranges and names the offending field: every number is
// bounded (see MaxDim and the other limits; floats must be finite), and so
// are the parameter and buffer counts (MaxCount).
func (c Config) Validate() error {
	switch c.Stage {
	case 1:
		if c.LM != nil {
			return errors.New("model config: stage 1 takes \"tokenizer\", not \"lm\"")
		}
	case 2:
		if c.Tokenizer != nil {
			return errors.New("model config: stage 2 takes \"lm\", not \"tokenizer\"")
		}
	default:
		return fmt.Errorf("model config: stage must be 1 or 2, got %d", c.Stage)
	}
	if c.Text != nil {
		if c.Stage != 2 {
			return errors.New("model config: \"text\" is for stage 2 (how captions become token ids)")
		}
		if tk := c.Text.Tokenizer; tk != TextWords && tk != "tiny" && !strings.HasSuffix(tk, ".json") && !strings.HasSuffix(tk, ".model") {
			return fmt.Errorf("model config: text.tokenizer must be %q (the synthetic data set's words), a Hugging Face tokenizer.json or a SentencePiece .model (a path, file:// or s3:// URL), got %q", TextWords, tk)
		}
	}
	switch c.Eval {
	case "", EvalNone, EvalSynthetic, EvalHeldOut:
	default:
		return fmt.Errorf("model config: eval must be %q, %q or %q, got %q", EvalSynthetic, EvalHeldOut, EvalNone, c.Eval)
	}
	if c.Stage == 2 && c.Eval == EvalSynthetic && (c.Text == nil || c.Text.Tokenizer != TextWords) {
		return fmt.Errorf("model config: eval %q on stage 2 needs text.tokenizer %q (the checks read the synthetic captions' words)", EvalSynthetic, TextWords)
	}
	if t := c.Tokenizer; t != nil {
		if err := checkTokenizerLimits(t); err != nil {
			return err
		}
		if t.Image > 0 && t.Patch > 0 && t.Image%t.Patch != 0 {
			return fmt.Errorf("model config: tokenizer.image %d is not a multiple of tokenizer.patch %d", t.Image, t.Patch)
		}
		if t.Width > 0 && t.Heads > 0 && t.Width%t.Heads != 0 {
			return fmt.Errorf("model config: tokenizer.width %d is not divisible by tokenizer.heads %d", t.Width, t.Heads)
		}
		if t.Encoder != "" && t.Encoder != "standin" && t.Encoder != "vit" {
			return fmt.Errorf("model config: tokenizer.encoder must be standin or vit, got %q", t.Encoder)
		}
		if t.Rho > 1 {
			return fmt.Errorf("model config: tokenizer.rho must be in [0,1], got %v", t.Rho)
		}
		if t.EMADecay >= 1 {
			return fmt.Errorf("model config: tokenizer.ema_decay must be in [0,1), got %v", t.EMADecay)
		}
	}
	if l := c.LM; l != nil {
		if err := checkLMLimits(l); err != nil {
			return err
		}
		if l.ImageInput != "" && l.ImageInput != "discrete" && l.ImageInput != "continuous" {
			return fmt.Errorf("model config: lm.image_input must be discrete or continuous, got %q", l.ImageInput)
		}
		if l.Arch != "" && l.Arch != "gpt" && l.Arch != "llama" {
			return fmt.Errorf("model config: lm.arch must be gpt or llama, got %q", l.Arch)
		}
		if l.DModel > 0 && l.Heads > 0 && l.DModel%l.Heads != 0 {
			return fmt.Errorf("model config: lm.d_model %d is not divisible by lm.heads %d", l.DModel, l.Heads)
		}
	}
	if o := c.Optim; o != nil {
		if err := checkOptimLimits(o); err != nil {
			return err
		}
		if o.MinLRRatio > 1 {
			return fmt.Errorf("model config: optim.min_lr_ratio must be in [0,1], got %v", o.MinLRRatio)
		}
		if o.Beta1 >= 1 || o.Beta2 >= 1 {
			return errors.New("model config: optim.beta1 and optim.beta2 must be in [0,1)")
		}
	}
	return c.checkCounts()
}
