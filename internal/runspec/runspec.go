package runspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/lavit-org/lavit/configs"
	"github.com/lavit-org/lavit/internal/modelcfg"
)

// MaxSpecBytes bounds a run spec file.
const MaxSpecBytes = 64 << 10

// MaxModelConfigBytes bounds the model config a spec inlines, so that the
// spec still fits one control message.
const MaxModelConfigBytes = 32 << 10

// MaxNameLen bounds Spec.Name.
const MaxNameLen = 128

// MaxPathLen bounds model and every URL or path a spec names (data.url,
// data.manifest, data.eval_url, checkpoint.url, tokenizer.from,
// init_from.encoder, init_from.lm).
const MaxPathLen = 4096

// Upper bounds on a spec's numbers. A spec comes from outside (a file, a
// --set, a submit request), and its numbers size allocations, loops and
// products (steps × global_batch samples, epochs × batches per epoch), so
// each is bounded: far above real use (global batches in the thousands,
// pretraining runs of many epochs, fleets of hundreds of workers), far
// below anything that could overflow int64 or time.Duration. Validate
// names the field and the limit.
const (
	// MaxSteps bounds steps, stage1.phase_a_steps, optim.warmup_steps,
	// checkpoint.every_steps and metrics.every_steps: with
	// MaxGlobalBatch, steps × global_batch stays below 2^60.
	MaxSteps = modelcfg.MaxSteps
	// MaxEpochs bounds epochs: with a manifest of at most 2^40 samples
	// (shards.MaxSamples), epochs × samples stays below 2^60.
	MaxEpochs = 1 << 20
	// MaxGlobalBatch bounds global_batch (and so micro_batch).
	MaxGlobalBatch = 1 << 20
	// MaxWorkers bounds min_workers and max_workers.
	MaxWorkers = 1 << 16
	// MaxBlockShards bounds data.block_shards.
	MaxBlockShards = 1 << 16
	// MaxKMeansBatches bounds stage1.kmeans_batches.
	MaxKMeansBatches = 1 << 16
	// MaxLR bounds optim.lr and optim.selector_lr (AdamW's are around
	// 1e-4; anything above 1 diverges).
	MaxLR = 10
	// MaxWeightDecay bounds optim.weight_decay.
	MaxWeightDecay = 10
	// MaxClip bounds optim.clip, the gradient norm clipped to.
	MaxClip = 1e9
	// MaxTimeout bounds collective.timeout, the per-step deadline.
	MaxTimeout = 24 * time.Hour
	// MaxBucketMB bounds collective.bucket_mb (64 GiB): its bytes fit int64.
	MaxBucketMB = 1 << 16
	// MaxEveryMinutes bounds checkpoint.every_minutes (a year): as a
	// time.Duration it cannot overflow.
	MaxEveryMinutes = 365 * 24 * 60
	// MaxKeep bounds checkpoint.keep.
	MaxKeep = 1 << 16
)

// Defaults for keys a spec leaves out.
const (
	DefaultDevice        = "auto"
	DefaultBackend       = "ring"
	DefaultTimeout       = "120s"
	DefaultBlockShards   = 4
	DefaultKMeansBatches = 16
	DefaultKeep          = 3
	DefaultMetricsEvery  = 10
	DefaultPrecision     = PrecisionFP32
	DefaultReduceDtype   = PrecisionFP32
)

// The values of determinism.
const (
	// DeterminismFast sums in float: the fastest, and its last bits
	// depend on the world size (and so on every elastic event).
	DeterminismFast = "fast"
	// DeterminismBitwise trains the same bits at any world size, across
	// failures and resumes: fixed groups of samples and fixed-point sums
	// (trainer/bitwise.go).
	DeterminismBitwise = "bitwise"
	// MaxBitwiseWorkers bounds max_workers under bitwise: the fixed-point
	// sums are exact for at most this many ranks (fixedpoint.MaxRanks).
	MaxBitwiseWorkers = 255
)

// The values of precision and collective.reduce_dtype.
const (
	PrecisionFP32 = "fp32"
	PrecisionBF16 = "bf16"
)

// Spec is one training run. It is read from YAML by Parse, made
// self-contained by Resolve, and stored by the coordinator as JSON; both
// encodings use the same snake_case keys.
type Spec struct {
	// Name is an optional display name.
	Name string `yaml:"name" json:"name,omitempty"`
	// Stage is 1 (the visual tokenizer) or 2 (the language model).
	Stage int `yaml:"stage" json:"stage"`
	// Model is a built-in model name (configs.ModelNames) or a path to a
	// JSON model config file.
	Model string `yaml:"model" json:"model"`
	// ModelConfig is the model config JSON itself, filled by Resolve.
	ModelConfig json.RawMessage `yaml:"-" json:"model_config,omitempty"`
	// Seed seeds the model's initialization and the sample order.
	Seed uint64 `yaml:"seed" json:"seed"`
	// Steps is the total number of optimizer steps; exactly one of Steps
	// and Epochs is set.
	Steps       int64 `yaml:"steps" json:"steps,omitempty"`
	Epochs      int   `yaml:"epochs" json:"epochs,omitempty"`
	GlobalBatch int   `yaml:"global_batch" json:"global_batch"`
	// MicroBatch is the samples a rank runs in one forward/backward; a
	// rank's share of the global batch runs as that many micro-batches,
	// their gradients and batch statistics accumulated into one step.
	// 0 means the whole share at once (no accumulation).
	MicroBatch int `yaml:"micro_batch" json:"micro_batch,omitempty"`
	// ActivationCheckpointing keeps only each transformer block's inputs
	// in a training step's forward pass and recomputes the block in
	// backward: the same gradients for less memory and about one more
	// forward pass of compute.
	ActivationCheckpointing bool `yaml:"activation_checkpointing" json:"activation_checkpointing,omitempty"`
	// Precision is what the trained model computes in: PrecisionFP32, or
	// PrecisionBF16 (bf16 parameters, gradients and activations, with
	// fp32 master weights and Adam moments). Empty, in a spec stored
	// before the key existed, means fp32 (see PrecisionOrDefault).
	Precision string `yaml:"precision" json:"precision,omitempty"`
	// Determinism is DeterminismFast (empty: a spec stored before the key
	// existed) or DeterminismBitwise.
	Determinism string `yaml:"determinism" json:"determinism,omitempty"`
	// DeterminismGroup is the samples per group under bitwise: the global
	// batch is cut into groups of this many, each its own forward/backward,
	// and ranks take whole groups. Default: global_batch / max_workers
	// (rounded down to a divisor of global_batch).
	DeterminismGroup int        `yaml:"determinism_group" json:"determinism_group,omitempty"`
	MinWorkers       int        `yaml:"min_workers" json:"min_workers"`
	MaxWorkers       int        `yaml:"max_workers" json:"max_workers"`
	Device           string     `yaml:"device" json:"device"` // cpu, cuda or auto
	Data             Data       `yaml:"data" json:"data"`
	Optim            Optim      `yaml:"optim" json:"optim,omitzero"`
	Stage1           Stage1     `yaml:"stage1" json:"stage1,omitzero"`
	Collective       Collective `yaml:"collective" json:"collective"`
	Checkpoint       Checkpoint `yaml:"checkpoint" json:"checkpoint"`
	Tokenizer        Tokenizer  `yaml:"tokenizer" json:"tokenizer,omitzero"`
	Metrics          Metrics    `yaml:"metrics" json:"metrics"`
	InitFrom         InitFrom   `yaml:"init_from" json:"init_from,omitzero"`

	// origin maps a dotted key to where its value came from ("f.yaml:7"
	// or "f.yaml: --set steps=9"); file is the spec's file name. Both are
	// set by Parse so that Validate and Resolve can say where a problem is.
	origin map[string]string
	file   string
}

// Data names the data sets.
type Data struct {
	// URL is the training data set: the folder or prefix holding the
	// shards and manifest.json.
	URL string `yaml:"url" json:"url"`
	// Manifest overrides the manifest's location; empty means
	// URL/manifest.json (see ManifestURL).
	Manifest string `yaml:"manifest" json:"manifest,omitempty"`
	// EvalURL is an optional held-out data set for the checks.
	EvalURL string `yaml:"eval_url" json:"eval_url,omitempty"`
	// BlockShards is the number of shards in one shuffle block.
	BlockShards int `yaml:"block_shards" json:"block_shards"`
}

// Optim overrides the model config's optim section. A nil field keeps the
// model config's value.
type Optim struct {
	LR          *float64 `yaml:"lr" json:"lr,omitempty"`
	SelectorLR  *float64 `yaml:"selector_lr" json:"selector_lr,omitempty"`
	MinLRRatio  *float64 `yaml:"min_lr_ratio" json:"min_lr_ratio,omitempty"`
	WeightDecay *float64 `yaml:"weight_decay" json:"weight_decay,omitempty"`
	Clip        *float64 `yaml:"clip" json:"clip,omitempty"`
	WarmupSteps *int64   `yaml:"warmup_steps" json:"warmup_steps,omitempty"`
	// Zero is the ZeRO stage: 0 keeps the whole optimizer state on every
	// rank; 1 shards the fp32 master weights and Adam moments over the
	// ranks (each updates its shard, then the parameters are all-gathered);
	// 2 also reduce-scatters the gradients instead of all-reducing them.
	Zero int `yaml:"zero" json:"zero,omitempty"`
}

// Stage1 is the tokenizer's schedule (stage 1 only).
type Stage1 struct {
	// PhaseASteps is the number of steps before vector quantization
	// switches on. Zero means 2/3 of the total steps (Parse fills it in
	// when steps is given; see PhaseASteps).
	PhaseASteps int64 `yaml:"phase_a_steps" json:"phase_a_steps,omitempty"`
	// KMeansBatches is how many global batches initialize the codebook.
	KMeansBatches int `yaml:"kmeans_batches" json:"kmeans_batches,omitempty"`
}

// Collective picks the all-reduce backend and how gradients are reduced.
type Collective struct {
	Backend string `yaml:"backend" json:"backend"` // ring or nccl
	// Timeout is the per-step collective deadline, a Go duration ("60s").
	Timeout string `yaml:"timeout" json:"timeout"`
	// ReduceDtype is what the gradients are summed in across the ranks:
	// PrecisionFP32 (with precision bf16, into an fp32 buffer), or
	// PrecisionBF16 (precision bf16 only: the bf16 gradients themselves).
	// Empty, in a spec stored before the key existed, means fp32 (see
	// ReduceDtypeOrDefault).
	ReduceDtype string `yaml:"reduce_dtype" json:"reduce_dtype,omitempty"`
	// BucketMB, when positive, reduces the gradients in buckets of about
	// that many MiB while backward runs (the last parameters' first),
	// instead of in one call after it; 0 (the default) is one call.
	BucketMB float64 `yaml:"bucket_mb" json:"bucket_mb,omitempty"`
}

// BucketBytes is collective.bucket_mb in bytes (0: no buckets).
func (c Collective) BucketBytes() int64 { return int64(c.BucketMB * (1 << 20)) }

// Checkpoint says where and how often to checkpoint.
type Checkpoint struct {
	// URL is where checkpoints go; empty means no checkpoints.
	URL string `yaml:"url" json:"url,omitempty"`
	// EverySteps checkpoints every N steps; 0 means only the final one.
	EverySteps int64 `yaml:"every_steps" json:"every_steps"`
	// EveryMinutes also checkpoints every N minutes; 0 is off.
	EveryMinutes float64 `yaml:"every_minutes" json:"every_minutes,omitempty"`
	// Keep is how many committed checkpoints retention keeps.
	Keep int `yaml:"keep" json:"keep"`
}

// Tokenizer is where stage 2 gets its visual tokenizer.
type Tokenizer struct {
	// From is a stage-1 run id ("r-0001") or a model state URL
	// (file:///… or s3://…). A local path is turned into a file:// URL
	// by Resolve.
	From string `yaml:"from" json:"from,omitempty"`
}

// InitFrom names released pretrained weights a run's model starts from,
// per module: a Hugging Face–style safetensors checkpoint (a directory or
// prefix holding model.safetensors.index.json and its shards, or
// model.safetensors; or one such file), file:///… or s3://…, read with
// the name mappings of checkpoint/hf. It is a section of its own because
// model is the config's name.
type InitFrom struct {
	// Encoder is an EVA-CLIP ViT checkpoint for the frozen visual encoder
	// (stage 1; the model's tokenizer.encoder must be "vit").
	Encoder string `yaml:"encoder" json:"encoder,omitempty"`
	// LM is a Llama-2 checkpoint in Hugging Face's format for the language
	// model (stage 2; lm.arch llama). Its 32000 text rows fill the first
	// rows of the enlarged vocabulary; the others keep their initialisation.
	LM string `yaml:"lm" json:"lm,omitempty"`
}

// Metrics says how often workers report.
type Metrics struct {
	EverySteps int64 `yaml:"every_steps" json:"every_steps"`
}

// FieldError is a problem with one key of a spec.
type FieldError struct {
	// Field is the dotted key, e.g. "checkpoint.keep".
	Field string
	// Where is "file.yaml:7", "file.yaml: --set steps=abc", "file.yaml",
	// or empty for a spec that did not come from a file.
	Where string
	// Msg describes the problem and names the field.
	Msg string
}

func (e *FieldError) Error() string {
	if e.Where == "" {
		return e.Msg
	}
	return e.Where + ": " + e.Msg
}

var runIDRe = regexp.MustCompile(`^r-[0-9]+$`)

// IsRunID reports whether s is a run id ("r-0001"). In tokenizer.from a
// run id wins over a local path of the same name: write ./r-0001 for the
// directory.
func IsRunID(s string) bool { return runIDRe.MatchString(s) }

// Parse reads a run spec from YAML, applies each --set key=value override
// (dotted keys; the value is a YAML scalar), decodes strictly, fills in
// defaults and validates. Plain local paths are accepted where URLs go;
// Resolve turns them into file:// URLs. name is the file's name, used in
// errors.
func Parse(name string, data []byte, sets []string) (*Spec, error) {
	if len(data) > MaxSpecBytes {
		return nil, fmt.Errorf("%s: run spec is %d bytes; the limit is %d", name, len(data), MaxSpecBytes)
	}
	p := &parser{file: name, origin: map[string]string{}, present: map[string]bool{}}
	root, err := p.document(data)
	if err != nil {
		return nil, err
	}
	if err := p.check(root, ""); err != nil {
		return nil, err
	}
	for _, set := range sets {
		if err := p.set(root, set); err != nil {
			return nil, err
		}
	}
	s, err := p.decode(root)
	if err != nil {
		return nil, err
	}
	s.setDefaults(p.present)
	if err := s.validate(false); err != nil {
		return nil, err
	}
	return s, nil
}

// parser carries one Parse call's state.
type parser struct {
	file    string
	origin  map[string]string // dotted key → "file:line" or "file: --set k=v"
	present map[string]bool   // keys with a non-null value
}

// document decodes the YAML into its root mapping node.
func (p *parser) document(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty run spec (want a mapping of keys like stage: 1)", p.file)
		}
		return nil, p.yamlError(data, err)
	}
	for {
		// Empty documents after the first (a trailing "---") are harmless.
		var next yaml.Node
		err := dec.Decode(&next)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, p.yamlError(data, err)
		}
		if len(next.Content) > 0 && !isNull(next.Content[0]) {
			return nil, fmt.Errorf("%s:%d: a second YAML document; a run spec is one document", p.file, next.Line)
		}
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return nil, fmt.Errorf("%s: empty run spec (want a mapping of keys like stage: 1)", p.file)
	}
	root := deref(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: a run spec is a mapping of keys (like stage: 1), got %s", p.file, root.Line, describe(root))
	}
	return root, nil
}

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlError rewrites a YAML syntax error as file:line: message.
func (p *parser) yamlError(data []byte, err error) error {
	m := yamlLineRe.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Errorf("%s: invalid YAML: %s", p.file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	msg := m[2]
	var n int
	fmt.Sscan(m[1], &n)
	if lines := strings.Split(string(data), "\n"); n >= 1 && n <= len(lines) && strings.Contains(lines[n-1], "\t") && !strings.Contains(msg, "tab") {
		msg += " (tabs are not allowed for indentation; use spaces)"
	}
	return fmt.Errorf("%s:%s: invalid YAML: %s", p.file, m[1], msg)
}

// check walks a mapping of the file against the schema: unknown keys,
// duplicates and value types, and records each key's line.
func (p *parser) check(m *yaml.Node, prefix string) error {
	seen := map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], deref(m.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return fmt.Errorf("%s:%d: keys must be plain names, got %s", p.file, k.Line, describe(k))
		}
		key := join(prefix, k.Value)
		f, ok := schema[key]
		if !ok {
			return fmt.Errorf("%s:%d: unknown field %q; valid keys here: %s", p.file, k.Line, key, strings.Join(schema[prefix].children, ", "))
		}
		if first, dup := seen[k.Value]; dup {
			return fmt.Errorf("%s:%d: %s is set twice (first at line %d)", p.file, k.Line, key, first)
		}
		seen[k.Value] = k.Line
		where := fmt.Sprintf("%s:%d", p.file, k.Line)
		p.origin[key] = where
		if isNull(v) {
			continue
		}
		if f.typ == nil {
			if v.Kind != yaml.MappingNode {
				return fmt.Errorf("%s: %s: want a mapping of keys (%s), got %s", where, key, strings.Join(f.children, ", "), describe(v))
			}
			if err := p.check(v, key); err != nil {
				return err
			}
			continue
		}
		if err := checkLeaf(key, f.typ, v); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		p.present[key] = true
	}
	return nil
}

// set applies one --set key=value to the tree.
func (p *parser) set(root *yaml.Node, kv string) error {
	key, value, ok := strings.Cut(kv, "=")
	key = strings.TrimSpace(key)
	if !ok || key == "" {
		return fmt.Errorf("%s: --set %s: want key=value, e.g. --set steps=100", p.file, kv)
	}
	where := fmt.Sprintf("%s: --set %s", p.file, kv)
	parts := strings.Split(key, ".")
	m := root
	for i := range parts {
		path := strings.Join(parts[:i+1], ".")
		parent := strings.Join(parts[:i], ".")
		f, ok := schema[path]
		if !ok {
			return fmt.Errorf("%s: unknown key %q; valid keys here: %s", where, path, strings.Join(schema[parent].children, ", "))
		}
		last := i == len(parts)-1
		switch {
		case f.typ == nil && last:
			return fmt.Errorf("%s: %s is a section; set one of its keys: %s", where, path, strings.Join(f.children, ", "))
		case f.typ != nil && !last:
			return fmt.Errorf("%s: %s is a value, not a section", where, path)
		}
		slot := lookup(m, parts[i])
		if f.typ == nil {
			if slot == nil || isNull(*slot) {
				sub := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
				if slot == nil {
					m.Content = append(m.Content, scalar(parts[i]), sub)
				} else {
					*slot = sub
				}
				p.origin[path] = where
				m = sub
			} else {
				m = deref(*slot)
			}
			continue
		}
		v, err := setValue(value)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := checkLeaf(path, f.typ, v); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if slot == nil {
			m.Content = append(m.Content, scalar(parts[i]), v)
		} else {
			*slot = v
		}
		p.origin[path] = where
		p.present[path] = !isNull(v)
	}
	return nil
}

// setValue parses a --set value as one YAML scalar ("" is null).
func setValue(s string) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		return nil, fmt.Errorf("value %q is not valid YAML: %s", s, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) == 0 {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null"}, nil
	}
	v := doc.Content[0]
	if v.Kind != yaml.ScalarNode {
		return nil, fmt.Errorf("value %q is %s, not a single value (quote it)", s, describe(v))
	}
	return v, nil
}

// decode turns the checked tree into a Spec, strictly.
func (p *parser) decode(root *yaml.Node) (*Spec, error) {
	// Re-encode and decode with KnownFields: check has already reported
	// anything this could find with a line, so this is a backstop.
	b, err := yaml.Marshal(root)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.file, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	s := &Spec{}
	if err := dec.Decode(s); err != nil {
		return nil, fmt.Errorf("%s: %s", p.file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	s.origin, s.file = p.origin, p.file
	return s, nil
}

// setDefaults fills in keys the spec left out.
func (s *Spec) setDefaults(present map[string]bool) {
	if !present["min_workers"] {
		s.MinWorkers = 1
	}
	if !present["max_workers"] {
		s.MaxWorkers = s.MinWorkers
	}
	if s.Device == "" {
		s.Device = DefaultDevice
	}
	if s.Precision == "" {
		s.Precision = DefaultPrecision
	}
	if s.Determinism == "" {
		s.Determinism = DeterminismFast
	}
	if s.Determinism == DeterminismBitwise && !present["determinism_group"] && s.MaxWorkers > 0 {
		s.DeterminismGroup = DefaultGroup(s.GlobalBatch, s.MaxWorkers)
	}
	if !present["data.block_shards"] {
		s.Data.BlockShards = DefaultBlockShards
	}
	if s.Stage == 1 {
		if !present["stage1.phase_a_steps"] && s.Steps > 0 {
			s.Stage1.PhaseASteps = s.Steps * 2 / 3
		}
		if !present["stage1.kmeans_batches"] {
			s.Stage1.KMeansBatches = DefaultKMeansBatches
		}
	}
	if s.Collective.Backend == "" {
		s.Collective.Backend = DefaultBackend
	}
	if s.Collective.Timeout == "" {
		s.Collective.Timeout = DefaultTimeout
	}
	if s.Collective.ReduceDtype == "" {
		s.Collective.ReduceDtype = DefaultReduceDtype
	}
	if !present["checkpoint.keep"] {
		s.Checkpoint.Keep = DefaultKeep
	}
	if !present["metrics.every_steps"] {
		s.Metrics.EverySteps = DefaultMetricsEvery
	}
}

// Validate checks a spec ready to run: every rule of Parse, and every URL
// field a URL (file:///abs/path or s3://bucket[/prefix]), not a local path.
// It is what the coordinator runs on the JSON it stores. The error is the
// first problem found, a *FieldError naming the field (and the file and
// line when the spec came from Parse).
func (s *Spec) Validate() error { return s.validate(true) }

// validate checks the spec; with strictURLs false, plain local paths are
// accepted where URLs go (Resolve has not run yet).
func (s *Spec) validate(strictURLs bool) error {
	if n := len(s.Name); n > MaxNameLen {
		return s.errorf("name", "name is %d bytes long; the limit is %d", n, MaxNameLen)
	}
	if strings.ContainsFunc(s.Name, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return s.errorf("name", "name %q has control characters", s.Name)
	}
	if s.Stage != 1 && s.Stage != 2 {
		return s.errorf("stage", "stage must be 1 (tokenizer) or 2 (language model), got %d", s.Stage)
	}
	if s.Model == "" {
		return s.errorf("model", "model is required: a built-in model (%s) or a path to a JSON model config", strings.Join(configs.ModelNames(), ", "))
	}
	if err := s.checkPath("model", s.Model); err != nil {
		return err
	}
	if len(s.ModelConfig) > 0 {
		if err := s.checkModelConfig(s.ModelConfig); err != nil {
			return err
		}
	}
	switch {
	case s.Steps < 0:
		return s.errorf("steps", "steps must be positive, got %d", s.Steps)
	case s.Steps > MaxSteps:
		return s.errorf("steps", "steps is %d; the limit is %d", s.Steps, int64(MaxSteps))
	case s.Epochs < 0:
		return s.errorf("epochs", "epochs must be positive, got %d", s.Epochs)
	case s.Epochs > MaxEpochs:
		return s.errorf("epochs", "epochs is %d; the limit is %d", s.Epochs, MaxEpochs)
	case s.Steps > 0 && s.Epochs > 0:
		return s.errorf("epochs", "steps (%d) and epochs (%d) are both set; set exactly one", s.Steps, s.Epochs)
	case s.Steps == 0 && s.Epochs == 0:
		return s.errorf("steps", "steps or epochs is required (set exactly one)")
	}
	if s.GlobalBatch < 1 {
		return s.errorf("global_batch", "global_batch must be at least 1, got %d", s.GlobalBatch)
	}
	if s.GlobalBatch > MaxGlobalBatch {
		return s.errorf("global_batch", "global_batch is %d; the limit is %d", s.GlobalBatch, MaxGlobalBatch)
	}
	if s.MinWorkers < 1 {
		return s.errorf("min_workers", "min_workers must be at least 1, got %d", s.MinWorkers)
	}
	if s.MinWorkers > MaxWorkers {
		return s.errorf("min_workers", "min_workers is %d; the limit is %d", s.MinWorkers, MaxWorkers)
	}
	if s.MaxWorkers < s.MinWorkers {
		return s.errorf("max_workers", "max_workers %d is less than min_workers %d", s.MaxWorkers, s.MinWorkers)
	}
	if s.MaxWorkers > MaxWorkers {
		return s.errorf("max_workers", "max_workers is %d; the limit is %d", s.MaxWorkers, MaxWorkers)
	}
	if s.GlobalBatch < s.MaxWorkers {
		return s.errorf("global_batch", "global_batch %d cannot be split over max_workers %d: every rank needs at least one sample", s.GlobalBatch, s.MaxWorkers)
	}
	if s.MicroBatch < 0 {
		return s.errorf("micro_batch", "micro_batch must not be negative (0 runs a rank's whole share at once), got %d", s.MicroBatch)
	}
	if s.MicroBatch > s.GlobalBatch {
		return s.errorf("micro_batch", "micro_batch %d is larger than global_batch %d", s.MicroBatch, s.GlobalBatch)
	}
	if !slices.Contains([]string{"cpu", "cuda", "auto"}, s.Device) {
		return s.errorf("device", "device must be cpu, cuda or auto, got %q", s.Device)
	}
	// An empty precision or reduce_dtype is a spec stored before the keys
	// existed: fp32 (Parse fills them in).
	if p := s.Precision; p != "" && p != PrecisionFP32 && p != PrecisionBF16 {
		return s.errorf("precision", "precision must be %s or %s, got %q", PrecisionFP32, PrecisionBF16, p)
	}

	if s.Data.URL == "" {
		return s.errorf("data.url", "data.url is required: the training data set (file:///abs/dir or s3://bucket/prefix)")
	}
	for _, u := range []struct{ key, url string }{
		{"data.url", s.Data.URL}, {"data.manifest", s.Data.Manifest}, {"data.eval_url", s.Data.EvalURL},
	} {
		if err := s.checkURL(u.key, u.url, strictURLs); err != nil {
			return err
		}
	}
	if s.Data.BlockShards < 1 {
		return s.errorf("data.block_shards", "data.block_shards must be at least 1, got %d", s.Data.BlockShards)
	}
	if s.Data.BlockShards > MaxBlockShards {
		return s.errorf("data.block_shards", "data.block_shards is %d; the limit is %d", s.Data.BlockShards, MaxBlockShards)
	}

	for _, o := range []struct {
		key string
		v   *float64
		max float64
	}{
		{"optim.lr", s.Optim.LR, MaxLR}, {"optim.selector_lr", s.Optim.SelectorLR, MaxLR}, {"optim.min_lr_ratio", s.Optim.MinLRRatio, math.MaxFloat64},
		{"optim.weight_decay", s.Optim.WeightDecay, MaxWeightDecay}, {"optim.clip", s.Optim.Clip, MaxClip},
	} {
		if o.v == nil {
			continue
		}
		if !(*o.v >= 0) || math.IsInf(*o.v, 0) {
			return s.errorf(o.key, "%s must be a finite number ≥ 0, got %v", o.key, *o.v)
		}
		if *o.v > o.max {
			return s.errorf(o.key, "%s is %v; the limit is %v", o.key, *o.v, o.max)
		}
	}
	if r := s.Optim.MinLRRatio; r != nil && *r > 1 {
		return s.errorf("optim.min_lr_ratio", "optim.min_lr_ratio must be in [0,1], got %v", *r)
	}
	if w := s.Optim.WarmupSteps; w != nil && *w < 0 {
		return s.errorf("optim.warmup_steps", "optim.warmup_steps must not be negative, got %d", *w)
	}
	if w := s.Optim.WarmupSteps; w != nil && *w > MaxSteps {
		return s.errorf("optim.warmup_steps", "optim.warmup_steps is %d; the limit is %d", *w, int64(MaxSteps))
	}
	if z := s.Optim.Zero; z < 0 || z > 2 {
		return s.errorf("optim.zero", "optim.zero must be 0 (no sharding), 1 (sharded optimizer state) or 2 (also sharded gradients), got %d", z)
	}

	if s.Stage == 2 {
		if s.Stage1.PhaseASteps != 0 {
			return s.errorf("stage1.phase_a_steps", "stage1.phase_a_steps is for stage-1 runs only (this is stage 2)")
		}
		if s.Stage1.KMeansBatches != 0 {
			return s.errorf("stage1.kmeans_batches", "stage1.kmeans_batches is for stage-1 runs only (this is stage 2)")
		}
	} else {
		if a := s.Stage1.PhaseASteps; a < 0 {
			return s.errorf("stage1.phase_a_steps", "stage1.phase_a_steps must not be negative, got %d", a)
		}
		if a := s.Stage1.PhaseASteps; a > MaxSteps {
			return s.errorf("stage1.phase_a_steps", "stage1.phase_a_steps is %d; the limit is %d", a, int64(MaxSteps))
		}
		if a := s.Stage1.PhaseASteps; s.Steps > 0 && a >= s.Steps {
			return s.errorf("stage1.phase_a_steps", "stage1.phase_a_steps %d must be less than steps %d: quantization has to switch on before the end", a, s.Steps)
		}
		if k := s.Stage1.KMeansBatches; k < 1 {
			return s.errorf("stage1.kmeans_batches", "stage1.kmeans_batches must be at least 1, got %d", k)
		}
		if k := s.Stage1.KMeansBatches; k > MaxKMeansBatches {
			return s.errorf("stage1.kmeans_batches", "stage1.kmeans_batches is %d; the limit is %d", k, MaxKMeansBatches)
		}
	}

	switch s.Collective.Backend {
	case "ring":
	case "nccl":
		if s.Device == "cpu" {
			return s.errorf("collective.backend", "collective.backend nccl needs GPUs; device is cpu (use backend ring, or device cuda)")
		}
	default:
		return s.errorf("collective.backend", "collective.backend must be ring or nccl, got %q", s.Collective.Backend)
	}
	if n := len(s.Collective.Timeout); n > 64 {
		return s.errorf("collective.timeout", "collective.timeout is %d bytes long; want a duration like 60s or 2m", n)
	} else if d, err := time.ParseDuration(s.Collective.Timeout); err != nil {
		return s.errorf("collective.timeout", "collective.timeout: want a duration like 60s or 2m, got %q", s.Collective.Timeout)
	} else if d <= 0 {
		return s.errorf("collective.timeout", "collective.timeout must be positive, got %s", s.Collective.Timeout)
	} else if d > MaxTimeout {
		return s.errorf("collective.timeout", "collective.timeout is %s; the limit is %s", s.Collective.Timeout, MaxTimeout)
	}
	switch r := s.Collective.ReduceDtype; r {
	case "", PrecisionFP32:
	case PrecisionBF16:
		if s.PrecisionOrDefault() != PrecisionBF16 {
			return s.errorf("collective.reduce_dtype", "collective.reduce_dtype %s needs precision %s (precision is %s: the gradients are fp32)", PrecisionBF16, PrecisionBF16, s.PrecisionOrDefault())
		}
	default:
		return s.errorf("collective.reduce_dtype", "collective.reduce_dtype must be %s or %s, got %q", PrecisionFP32, PrecisionBF16, r)
	}
	if b := s.Collective.BucketMB; b < 0 || math.IsNaN(b) || math.IsInf(b, 0) {
		return s.errorf("collective.bucket_mb", "collective.bucket_mb must be a size in MiB ≥ 0 (0: reduce after backward in one call), got %v", b)
	} else if b > MaxBucketMB {
		return s.errorf("collective.bucket_mb", "collective.bucket_mb is %v; the limit is %d", b, MaxBucketMB)
	}
	if err := s.validateDeterminism(); err != nil {
		return err
	}

	c := s.Checkpoint
	if err := s.checkURL("checkpoint.url", c.URL, strictURLs); err != nil {
		return err
	}
	if c.EverySteps < 0 {
		return s.errorf("checkpoint.every_steps", "checkpoint.every_steps must not be negative (0 means only the final checkpoint), got %d", c.EverySteps)
	}
	if c.EverySteps > MaxSteps {
		return s.errorf("checkpoint.every_steps", "checkpoint.every_steps is %d; the limit is %d", c.EverySteps, int64(MaxSteps))
	}
	if !(c.EveryMinutes >= 0) || math.IsInf(c.EveryMinutes, 0) {
		return s.errorf("checkpoint.every_minutes", "checkpoint.every_minutes must be a finite number ≥ 0 (0 is off), got %v", c.EveryMinutes)
	}
	if c.EveryMinutes > MaxEveryMinutes {
		return s.errorf("checkpoint.every_minutes", "checkpoint.every_minutes is %v; the limit is %d (a year)", c.EveryMinutes, MaxEveryMinutes)
	}
	if c.URL == "" && (c.EverySteps > 0 || c.EveryMinutes > 0) {
		return s.errorf("checkpoint.url", "checkpoint.url is required when checkpoint.every_steps or checkpoint.every_minutes is set")
	}
	if c.Keep < 1 {
		return s.errorf("checkpoint.keep", "checkpoint.keep must be at least 1, got %d", c.Keep)
	}
	if c.Keep > MaxKeep {
		return s.errorf("checkpoint.keep", "checkpoint.keep is %d; the limit is %d", c.Keep, MaxKeep)
	}

	from := s.Tokenizer.From
	switch {
	case s.Stage == 2 && from == "":
		return s.errorf("tokenizer.from", "tokenizer.from is required for stage 2: a stage-1 run id (e.g. r-0001) or a model state URL")
	case s.Stage == 1 && from != "":
		return s.errorf("tokenizer.from", "tokenizer.from is for stage-2 runs only (this is stage 1)")
	case from != "" && !IsRunID(from):
		if err := s.checkURL("tokenizer.from", from, strictURLs); err != nil {
			return err
		}
	}

	if err := s.validateInitFrom(strictURLs); err != nil {
		return err
	}

	if s.Metrics.EverySteps < 1 {
		return s.errorf("metrics.every_steps", "metrics.every_steps must be at least 1, got %d", s.Metrics.EverySteps)
	}
	if s.Metrics.EverySteps > MaxSteps {
		return s.errorf("metrics.every_steps", "metrics.every_steps is %d; the limit is %d", s.Metrics.EverySteps, int64(MaxSteps))
	}
	return nil
}

// validateInitFrom checks init_from's locations like the other URLs, and
// that each module belongs to the spec's stage.
func (s *Spec) validateInitFrom(strictURLs bool) error {
	for _, u := range []struct {
		key, url string
		stage    int
	}{{"init_from.encoder", s.InitFrom.Encoder, 1}, {"init_from.lm", s.InitFrom.LM, 2}} {
		if u.url == "" {
			continue
		}
		if s.Stage != u.stage {
			return s.errorf(u.key, "%s is for stage-%d runs only (this is stage %d)", u.key, u.stage, s.Stage)
		}
		if err := s.checkURL(u.key, u.url, strictURLs); err != nil {
			return err
		}
	}
	return nil
}

// checkURL accepts "", file:///abs/path and s3://bucket[/prefix]; and a
// plain local path (no "://") unless strict.
func (s *Spec) checkURL(key, u string, strict bool) error {
	if u == "" {
		return nil
	}
	if err := s.checkPath(key, u); err != nil {
		return err
	}
	want := "want file:///absolute/path or s3://bucket[/prefix]"
	if strings.ContainsAny(u, "{}") {
		return s.errorf(key, "%s %q: brace patterns are not supported; give the folder or prefix that holds the data set and its manifest.json", key, u)
	}
	scheme, rest, ok := strings.Cut(u, "://")
	switch {
	case !ok && strict:
		return s.errorf(key, "%s: %s, got the local path %q (Resolve turns paths into file:// URLs)", key, want, u)
	case !ok:
		return nil
	case scheme == "file":
		if !strings.HasPrefix(rest, "/") {
			return s.errorf(key, "%s: %s, got %q (a file URL needs an absolute path: three slashes)", key, want, u)
		}
	case scheme == "s3":
		bucket, _, _ := strings.Cut(rest, "/")
		if !bucketRe.MatchString(bucket) {
			return s.errorf(key, "%s: %s, got %q (bad bucket name %q)", key, want, u, bucket)
		}
	default:
		return s.errorf(key, "%s: %s, got %q", key, want, u)
	}
	return nil
}

// checkPath bounds a path or URL's length and refuses control characters
// (a newline in a URL would forge lines in logs and listings).
func (s *Spec) checkPath(key, p string) error {
	if n := len(p); n > MaxPathLen {
		return s.errorf(key, "%s is %d bytes long; the limit is %d", key, n, MaxPathLen)
	}
	if strings.ContainsFunc(p, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return s.errorf(key, "%s %q has control characters", key, p)
	}
	return nil
}

// bucketRe is lenient (S3-compatible stores differ): lower case, digits,
// dots, dashes and underscores.
var bucketRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// checkModelConfig checks that a model config is a JSON object whose
// "stage" is the spec's, and a valid model config (modelcfg.ParseConfig:
// known keys, sane values, bounded dimensions).
func (s *Spec) checkModelConfig(b []byte) error {
	if len(b) > MaxModelConfigBytes {
		return s.errorf("model", "model %s: the config is %d bytes; the limit is %d", s.Model, len(b), MaxModelConfigBytes)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		return s.errorf("model", "model %s: want a JSON object: %v", s.Model, err)
	}
	raw, ok := obj["stage"]
	if !ok {
		return s.errorf("model", "model %s: the config has no \"stage\"", s.Model)
	}
	var stage int
	if err := json.Unmarshal(raw, &stage); err != nil {
		return s.errorf("model", "model %s: \"stage\": want an integer, got %s", s.Model, raw)
	}
	if stage != s.Stage {
		return s.errorf("model", "model %s is a stage-%d model, but the spec's stage is %d", s.Model, stage, s.Stage)
	}
	// The whole config, strictly and with its limits: a config the
	// workers would refuse is refused at submit.
	if _, err := modelcfg.ParseConfig(b); err != nil {
		return s.errorf("model", "model %s: %v", s.Model, err)
	}
	return nil
}

// errorf builds a *FieldError for key, placed at the key's line, else at
// its nearest section's line, else at the file.
func (s *Spec) errorf(key, format string, args ...any) error {
	e := &FieldError{Field: key, Where: s.file, Msg: fmt.Sprintf(format, args...)}
	for k := key; k != ""; {
		if w, ok := s.origin[k]; ok {
			e.Where = w
			break
		}
		i := strings.LastIndexByte(k, '.')
		k = k[:max(i, 0)]
	}
	return e
}

// Resolve makes the spec self-contained: plain local paths in data.url,
// data.manifest, data.eval_url, checkpoint.url, init_from.encoder,
// init_from.lm and tokenizer.from (when it is not a run id, see IsRunID)
// become file:// URLs against cwd, and the
// model is read into ModelConfig (a built-in name through configs.Model,
// anything else as a file path against cwd). Then it runs Validate.
func (s *Spec) Resolve(cwd string, readFile func(string) ([]byte, error)) error {
	if !filepath.IsAbs(cwd) {
		return fmt.Errorf("resolve run spec: cwd %q is not absolute", cwd)
	}
	abs := func(p string) string {
		if !filepath.IsAbs(p) {
			p = filepath.Join(cwd, p)
		}
		return filepath.Clean(p)
	}
	for _, u := range []*string{&s.Data.URL, &s.Data.Manifest, &s.Data.EvalURL, &s.Checkpoint.URL, &s.InitFrom.Encoder, &s.InitFrom.LM} {
		if *u != "" && !strings.Contains(*u, "://") {
			*u = "file://" + filepath.ToSlash(abs(*u))
		}
	}
	if f := s.Tokenizer.From; f != "" && !IsRunID(f) && !strings.Contains(f, "://") {
		s.Tokenizer.From = "file://" + filepath.ToSlash(abs(f))
	}

	if s.Model == "" {
		return s.Validate() // names the missing model
	}
	var b []byte
	var err error
	switch {
	case slices.Contains(configs.ModelNames(), s.Model):
		b, err = configs.Model(s.Model)
	case strings.ContainsRune(s.Model, '/') || strings.ContainsRune(s.Model, filepath.Separator) || strings.HasSuffix(s.Model, ".json"):
		b, err = readFile(abs(s.Model))
	default:
		return s.errorf("model", "model %q is not a built-in model (known: %s) and not a path to a .json file", s.Model, strings.Join(configs.ModelNames(), ", "))
	}
	if err != nil {
		return s.errorf("model", "model %s: %v", s.Model, err)
	}
	if err := s.checkModelConfig(b); err != nil {
		return err
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return s.errorf("model", "model %s: %v", s.Model, err)
	}
	s.ModelConfig = compact.Bytes()
	return s.Validate()
}

// TotalSteps is the run's length in optimizer steps: steps, or
// epochs × ceil(samplesPerEpoch / global_batch).
func (s *Spec) TotalSteps(samplesPerEpoch int64) int64 {
	if s.Steps > 0 {
		return s.Steps
	}
	if samplesPerEpoch <= 0 || s.GlobalBatch <= 0 {
		return 0
	}
	b := int64(s.GlobalBatch)
	return int64(s.Epochs) * ((samplesPerEpoch + b - 1) / b)
}

// PhaseASteps is the stage-1 step at which quantization switches on:
// stage1.phase_a_steps, or 2/3 of totalSteps when it is 0.
func (s *Spec) PhaseASteps(totalSteps int64) int64 {
	if s.Stage1.PhaseASteps > 0 {
		return s.Stage1.PhaseASteps
	}
	return totalSteps * 2 / 3
}

// CollectiveTimeout is collective.timeout parsed (DefaultTimeout if empty
// or invalid; Validate reports an invalid one).
func (s *Spec) CollectiveTimeout() time.Duration {
	if d, err := time.ParseDuration(s.Collective.Timeout); err == nil && d > 0 {
		return d
	}
	d, _ := time.ParseDuration(DefaultTimeout)
	return d
}

// PrecisionOrDefault is precision, DefaultPrecision when it is empty (a
// spec stored before the key existed).
func (s *Spec) PrecisionOrDefault() string {
	if s.Precision == "" {
		return DefaultPrecision
	}
	return s.Precision
}

// ReduceDtypeOrDefault is collective.reduce_dtype, DefaultReduceDtype when
// it is empty (a spec stored before the key existed).
func (c Collective) ReduceDtypeOrDefault() string {
	if c.ReduceDtype == "" {
		return DefaultReduceDtype
	}
	return c.ReduceDtype
}

// ManifestURL is the training data set's manifest: data.manifest, or
// manifest.json under data.url.
func (d Data) ManifestURL() string {
	if d.Manifest != "" {
		return d.Manifest
	}
	return strings.TrimSuffix(d.URL, "/") + "/manifest.json"
}

// Keys lists every settable dotted key, sorted.
func Keys() []string {
	var keys []string
	for k, f := range schema {
		if f.typ != nil {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// field is one key of the schema: a value (typ set) or a section.
type field struct {
	typ      reflect.Type // nil for a section
	children []string     // a section's keys, dotted, sorted
}

// schema maps each dotted key ("" is the top) to its field, from the yaml
// tags of Spec.
var schema = func() map[string]*field {
	m := map[string]*field{}
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		sec := &field{}
		m[prefix] = sec
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			tag, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
			if !sf.IsExported() || tag == "" || tag == "-" {
				continue
			}
			key := join(prefix, tag)
			sec.children = append(sec.children, key)
			if sf.Type.Kind() == reflect.Struct {
				walk(sf.Type, key)
			} else {
				m[key] = &field{typ: sf.Type}
			}
		}
		sort.Strings(sec.children)
	}
	walk(reflect.TypeFor[Spec](), "")
	return m
}()

// checkLeaf checks a value node against a key's Go type.
func checkLeaf(key string, t reflect.Type, v *yaml.Node) error {
	if isNull(v) {
		return nil
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var want string
	ok := v.Kind == yaml.ScalarNode
	switch t.Kind() {
	case reflect.String:
		want = "a string"
	case reflect.Int, reflect.Int64:
		want = "an integer"
		ok = ok && v.ShortTag() == "!!int"
	case reflect.Uint64:
		want = "a non-negative integer"
		ok = ok && v.ShortTag() == "!!int"
	case reflect.Float64:
		want = "a number"
		ok = ok && (v.ShortTag() == "!!int" || v.ShortTag() == "!!float")
	case reflect.Bool:
		want = "true or false"
		ok = ok && v.ShortTag() == "!!bool"
	default:
		panic("runspec: no check for " + t.String())
	}
	if ok {
		ok = v.Decode(reflect.New(t).Interface()) == nil // range, sign
	}
	if !ok {
		return fmt.Errorf("%s: want %s, got %s", key, want, describe(v))
	}
	return nil
}

// lookup finds key in mapping m and returns its value's slot.
func lookup(m *yaml.Node, key string) **yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return &m.Content[i+1]
		}
	}
	return nil
}

func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func describe(n *yaml.Node) string {
	n = deref(n)
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

func scalar(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// Location is one place a spec names on a file system or object store.
type Location struct {
	Key string // the spec key, e.g. "data.url"
	URL string
}

// Locations are every data, checkpoint, tokenizer and init_from location the spec
// names (those set), in a fixed order: what an operator's allowed roots
// are checked against.
func (s *Spec) Locations() []Location {
	var out []Location
	for _, l := range []Location{
		{"data.url", s.Data.URL}, {"data.manifest", s.Data.Manifest}, {"data.eval_url", s.Data.EvalURL},
		{"checkpoint.url", s.Checkpoint.URL}, {"tokenizer.from", s.Tokenizer.From},
		{"init_from.encoder", s.InitFrom.Encoder}, {"init_from.lm", s.InitFrom.LM},
	} {
		if l.URL != "" && (l.Key != "tokenizer.from" || !IsRunID(l.URL)) {
			out = append(out, l)
		}
	}
	return out
}

// DefaultGroup is determinism_group's default: global_batch / max_workers,
// rounded down to a divisor of global_batch (so every group is whole).
func DefaultGroup(globalBatch, maxWorkers int) int {
	g := max(globalBatch/max(maxWorkers, 1), 1)
	for globalBatch%g != 0 {
		g--
	}
	return g
}

// validateDeterminism checks determinism and determinism_group, and what
// bitwise mode does not cover yet.
func (s *Spec) validateDeterminism() error {
	switch s.Determinism {
	case "", DeterminismFast:
		if s.DeterminismGroup != 0 {
			return s.errorf("determinism_group", "determinism_group is for determinism: %s only (determinism is %s)", DeterminismBitwise, s.DeterminismOrDefault())
		}
		return nil
	case DeterminismBitwise:
	default:
		return s.errorf("determinism", "determinism must be %s or %s, got %q", DeterminismFast, DeterminismBitwise, s.Determinism)
	}
	g := s.DeterminismGroup
	switch {
	case g < 1:
		return s.errorf("determinism_group", "determinism_group must be at least 1 sample, got %d", g)
	case s.GlobalBatch%g != 0:
		return s.errorf("determinism_group", "determinism_group %d does not divide global_batch %d into whole groups", g, s.GlobalBatch)
	case s.GlobalBatch/g < s.MaxWorkers:
		return s.errorf("determinism_group", "determinism_group %d makes %d groups, fewer than max_workers %d: every rank needs a whole group", g, s.GlobalBatch/g, s.MaxWorkers)
	case s.MicroBatch != 0 && s.MicroBatch != g:
		return s.errorf("micro_batch", "under determinism: %s each group is one micro-batch: leave micro_batch out or set it to determinism_group (%d), got %d", DeterminismBitwise, g, s.MicroBatch)
	case s.MaxWorkers > MaxBitwiseWorkers:
		return s.errorf("max_workers", "determinism: %s sums exactly over at most %d ranks, max_workers is %d", DeterminismBitwise, MaxBitwiseWorkers, s.MaxWorkers)
	case s.Collective.ReduceDtypeOrDefault() != PrecisionFP32:
		return s.errorf("collective.reduce_dtype", "determinism: %s sums the gradients in fixed point from float32: collective.reduce_dtype must be %s, got %s", DeterminismBitwise, PrecisionFP32, s.Collective.ReduceDtypeOrDefault())
	case s.Collective.BucketMB > 0:
		return s.errorf("collective.bucket_mb", "determinism: %s sums the gradients after the step's groups: leave collective.bucket_mb out", DeterminismBitwise)
	}
	return nil
}

// DeterminismOrDefault is determinism, DeterminismFast when empty (a spec
// stored before the key existed).
func (s *Spec) DeterminismOrDefault() string {
	if s.Determinism == "" {
		return DeterminismFast
	}
	return s.Determinism
}

// Bitwise reports whether the run trains bitwise-reproducibly, and its
// group size.
func (s *Spec) Bitwise() (group int, ok bool) {
	return s.DeterminismGroup, s.Determinism == DeterminismBitwise
}
