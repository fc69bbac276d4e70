package trainer

import "github.com/lavit-org/lavit/internal/modelcfg"

// The model config lives in internal/modelcfg (pure Go, so the cgo-free
// coordinator can read it and plan memory); these aliases keep it
// trainer.Config for the trainer's callers.

// Config is a model config (modelcfg.Config).
type Config = modelcfg.Config

// TokenizerConfig is stage 1 (modelcfg.TokenizerConfig).
type TokenizerConfig = modelcfg.TokenizerConfig

// LMConfig is stage 2 (modelcfg.LMConfig).
type LMConfig = modelcfg.LMConfig

// OptimConfig is the optimizer (modelcfg.OptimConfig).
type OptimConfig = modelcfg.OptimConfig

// TextConfig is how captions become token ids (modelcfg.TextConfig).
type TextConfig = modelcfg.TextConfig

// Evaluations a model config can name.
const (
	EvalNone      = modelcfg.EvalNone
	EvalSynthetic = modelcfg.EvalSynthetic
	EvalHeldOut   = modelcfg.EvalHeldOut
)

// TextWords names the synthetic data set's word vocabulary as a caption
// tokenizer.
const TextWords = modelcfg.TextWords

// ParseConfig decodes a JSON model config strictly and validates it.
func ParseConfig(data []byte) (Config, error) { return modelcfg.ParseConfig(data) }

// LoadConfig reads a JSON model config file.
func LoadConfig(path string) (Config, error) { return modelcfg.LoadConfig(path) }

// shimConfig is the part of the config the shim builds the model from.
func shimConfig(c Config) Config { return c.ShimConfig() }
