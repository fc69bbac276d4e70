// Package memplan says whether a run fits in its workers' device memory:
// the bytes one rank holds, part by part, as a pure function of the run
// spec, the model configs, the world size and the device's memory, and the
// settings that would make a run fit that does not. `lavit-coord run plan`
// prints it; `run submit` refuses a run whose plan cannot fit the smallest
// worker it could run on.
//
// The spec's precision sets the bytes. Per rank, with P the trainable
// parameters (the flat buffers), F the frozen ones (stage 1's pretrained
// encoder), B the registered buffers' elements (codebook, stand-in
// encoder, masks, RoPE tables), W the world size, Z = optim.zero and
// S = ceil(P/W), in fp32:
//
//	params       4·W·S (the flat buffer is W blocks of S at every Z: the tail is padding)
//	grads        the same as params, at every Z (see below)
//	optimizer    8·P at Z = 0 (two Adam moments); 12·S at Z ≥ 1 (fp32 master, two moments: one shard each);
//	             the update's temporaries are bounded (it runs in chunks of 4 M elements: < 100 MB)
//	frozen       4·F
//	buffers      4·B
//	tokenizer    stage 2: the frozen stage-1 model on the same device: its params, the
//	             gradient buffer the shim allocates even for inference, frozen and buffers
//	activations  one micro-batch's training activations (below)
//	tokenizer_activations
//	             stage 2: the tokenizer's inference over the rank's whole share of the
//	             next batch, which the data goroutine runs while the step trains
//	reserve      2 GiB on cuda (CUDA context ≈ 0.5 GiB, NCCL's channel buffers ≈ 0.5 GiB,
//	             cuBLAS workspaces and the caching allocator's fragmentation ≈ 1 GiB); 0 on cpu
//
// With precision bf16, S = ceil(P/W) rounded up to even (as the shim
// allocates its bf16 blocks), and:
//
//	params       2·W·S (bf16)
//	grads        2·W·S (the bf16 gradient buffer), plus 4·W·S when collective.reduce_dtype
//	             is fp32 (the fp32 buffer the gradients are reduced in)
//	optimizer    12·P at Z = 0 (fp32 master weights and two moments); 12·S at Z ≥ 1
//	frozen       2·F (the trained model's frozen parameters are bf16 too)
//	buffers      2·B
//	activations  2 bytes per element of the estimate below; stage 2 adds 12·b·T·V for the
//	             loss, which runs in fp32 (see Activations)
//
// The stage-2 tokenizer and its activations stay fp32 at either precision
// (the tokenizer runs in fp32).
//
// The gradient buffer stays full-size at every ZeRO stage in this version:
// autograd writes whole gradients into it, and ZeRO-2 reduce-scatters them
// in place, so its memory saving waits for a bucketed backward. Zero 2
// therefore plans the same bytes as zero 1.
//
// # Activations
//
// An estimate, in floats, of what autograd saves for backward, derived
// from trainer/csrc/models.cpp, for b samples (micro_batch, or the rank's
// share ceil(global_batch/W) when micro_batch is 0, whichever is smaller).
// Stage 2 rows have T = max_len − 1 tokens (the builder pads every row to
// that length, the worst case of any padding); d is the LM width, f its
// MLP, h its heads, V the vocabulary, L the layers:
//
//	llama block   10·T·d + 4·T·f + h·T²   (input, two RMSNorm products and outputs, v, the
//	                                       rotated q and k, attention output, residual; gate,
//	                                       its SiLU, up, their product; the softmax)
//	gpt block      8·T·d + 2·T·f + h·T²   (input, LN output, q, k, v, attention output,
//	                                       residual, LN output; the MLP's hidden and GELU)
//	tail          3·T·d + 4·T·V           (the final norm; logits, log-softmax and both of
//	                                       their gradients, alive together in backward)
//
// plus, once, the backward working set of one block (2·h·T² + 2·T·f per
// sample) and the largest parameter's gradient (autograd computes it as a
// fresh tensor before adding it into the flat buffer: V·d for the LM). The
// continuous LM adds its merger copy over the image patches.
//
// Stage 1 over N patches of width D (MLP H, h heads, C the code width, Lm
// merger and Ld decoder blocks; the frozen encoder runs without grad and
// keeps only its output):
//
//	merger block   14·N·D + 2·N·H + 6·h·N²   (LayerNorm inputs and outputs, q, k, v and
//	decoder block  14·N·D + 2·N·H + 4·h·N²    the attention output of both attentions; the
//	                                          policy attention's exp, renormalised weights
//	                                          and output per attention, a plain softmax in
//	                                          the decoder's self-attention)
//	rest           21.5·N·D + 6·N·C + N²·(1 + [α > 0])   (features, selector, memory,
//	                                          task layer, decoder input and output, the
//	                                          cosine; the self-attention policy and the
//	                                          locality-weighted cross policy)
//
// plus, once, the larger of one block's backward working set (3·h·N² +
// 2·N·H + 4·N·D per sample) and the frozen encoder's inference peak.
//
// In bf16 each element of the estimate takes 2 bytes, except that the
// loss runs in fp32: the tail's 4·T·V (logits, log-softmax and both of
// their gradients) becomes the bf16 logits and their bf16 gradient plus
// the logits cast to fp32, their log-softmax and both of those tensors'
// fp32 gradients: 2·2·T·V + 4·4·T·V = 20·T·V bytes per sample, which is
// the 2·4·T·V the element count gives plus 12·T·V.
//
// With activation_checkpointing every block keeps only its input (T·d per
// LM block, N·D per merger or decoder block) and one block's saved tensors
// exist at a time, while backward recomputes it.
//
// The estimate leaves out the optimizer step's temporaries (they come after
// the activations are freed) and small tensors (masks, statistics); it is
// to be checked against the peak memory measured on a GPU.
//
// # Overflow
//
// A spec within runspec's and modelcfg's bounds can still ask for more
// bytes than int64 holds (the activations grow with micro_batch·layers·
// heads·max_len²). The plan is computed in float64, whose integers are
// exact up to 2^53, so no product wraps around; a part or total over
// MaxPlanBytes (2^53 bytes, 8 PiB) is not counted exactly: the plan then
// does not fit, its bytes are clamped to MaxPlanBytes and Overflow says
// which part overflowed (TestPlanOverflow).
package memplan

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/lavit-org/lavit/configs"
	"github.com/lavit-org/lavit/internal/modelcfg"
	"github.com/lavit-org/lavit/internal/runspec"
)

// The parts of a plan, in the order they are printed.
const (
	PartParams               = "params"
	PartGrads                = "grads"
	PartOptimizer            = "optimizer"
	PartFrozen               = "frozen"
	PartBuffers              = "buffers"
	PartTokenizer            = "tokenizer"
	PartActivations          = "activations"
	PartTokenizerActivations = "tokenizer_activations"
	PartReserve              = "reserve"
)

// PartNames lists the parts in print order.
var PartNames = []string{PartParams, PartGrads, PartOptimizer, PartFrozen, PartBuffers, PartTokenizer,
	PartActivations, PartTokenizerActivations, PartReserve}

// CUDAReserve is the fixed allowance on a GPU for the CUDA context, NCCL's
// buffers and the caching allocator's slack.
const CUDAReserve = 2 << 30

// MaxPlanBytes is the most bytes a plan counts: 2^53 (8 PiB), up to which
// float64, the plan's arithmetic, holds every integer exactly; far beyond
// any device. A part or a total above it is an overflow (Result.Overflow).
const MaxPlanBytes = 1 << 53

// Device kinds a plan is made for (the reserve differs).
const (
	KindCUDA = "cuda"
	KindCPU  = "cpu"
)

// Input is what a plan is computed from.
type Input struct {
	// Spec is the resolved run spec (its model config inlined).
	Spec *runspec.Spec
	// Tokenizer is, for stage 2, the frozen stage-1 model config; nil
	// takes DefaultTokenizer's choice.
	Tokenizer *modelcfg.Config
	// Workers is the world size to plan for (≥ 1); sharding makes the
	// smallest world, min_workers, the worst case.
	Workers int
	// DeviceBytes is the memory of one device (> 0).
	DeviceBytes int64
	// Kind is KindCUDA or KindCPU; "" means cpu for a spec with device cpu,
	// else cuda.
	Kind string
}

// Result is a plan: the bytes one rank holds, by part, and whether they
// fit the device.
type Result struct {
	PerRankBytes int64            `json:"per_rank_bytes"`
	DeviceBytes  int64            `json:"device_bytes"`
	Fits         bool             `json:"fits"`
	Parts        map[string]int64 `json:"parts"`
	// Workers is the world size planned for; Zero the optim.zero stage;
	// MicroBatch the samples one forward/backward runs (the activations').
	Workers    int `json:"workers"`
	Zero       int `json:"zero"`
	MicroBatch int `json:"micro_batch"`
	// Kind is the device kind planned for; Tokenizer names the stage-1
	// model a stage-2 plan assumed ("" for stage 1).
	Kind      string `json:"kind"`
	Tokenizer string `json:"tokenizer,omitempty"`
	// Precision is the spec's precision and ReduceDtype its
	// collective.reduce_dtype (runspec.PrecisionFP32 or PrecisionBF16;
	// an empty one in the spec is fp32).
	Precision   string `json:"precision"`
	ReduceDtype string `json:"reduce_dtype"`
	// Overflow, when set, says which byte count went past MaxPlanBytes:
	// the plan does not fit, and its counts are clamped to MaxPlanBytes.
	Overflow string `json:"overflow,omitempty"`
}

// Plan computes the plan of in. It fails on bad input (no model config,
// a world size below 1, a device size not above 0, a precision or
// reduce_dtype other than fp32 and bf16, a tokenizer that is not a stage-1
// model) with an error naming it.
func Plan(in Input) (Result, error) {
	if in.Spec == nil {
		return Result{}, errors.New("memory plan: no run spec")
	}
	if in.Workers < 1 {
		return Result{}, fmt.Errorf("memory plan: workers must be at least 1, got %d", in.Workers)
	}
	if in.DeviceBytes <= 0 {
		return Result{}, fmt.Errorf("memory plan: device memory must be positive, got %d bytes", in.DeviceBytes)
	}
	prec, reduce := in.Spec.PrecisionOrDefault(), in.Spec.Collective.ReduceDtypeOrDefault()
	if prec != runspec.PrecisionFP32 && prec != runspec.PrecisionBF16 {
		return Result{}, fmt.Errorf("memory plan: precision must be %s or %s, got %q", runspec.PrecisionFP32, runspec.PrecisionBF16, prec)
	}
	if reduce != runspec.PrecisionFP32 && reduce != runspec.PrecisionBF16 {
		return Result{}, fmt.Errorf("memory plan: collective.reduce_dtype must be %s or %s, got %q", runspec.PrecisionFP32, runspec.PrecisionBF16, reduce)
	}
	model, err := specModel(in.Spec)
	if err != nil {
		return Result{}, err
	}
	kind := in.Kind
	switch kind {
	case "":
		kind = KindCUDA
		if in.Spec.Device == KindCPU {
			kind = KindCPU
		}
	case KindCUDA, KindCPU:
	default:
		return Result{}, fmt.Errorf("memory plan: device kind must be %s or %s, got %q", KindCUDA, KindCPU, kind)
	}
	r := Result{DeviceBytes: in.DeviceBytes, Workers: in.Workers, Zero: in.Spec.Optim.Zero, Kind: kind,
		Precision: prec, ReduceDtype: reduce, Parts: map[string]int64{}}
	share := ceilDiv(int64(in.Spec.GlobalBatch), int64(in.Workers))
	micro := share
	if mb := int64(in.Spec.MicroBatch); mb > 0 {
		micro = min(mb, share)
	}
	r.MicroBatch = int(micro)

	counts := model.Counts()
	S := ceilDiv(counts.Trainable, int64(in.Workers))
	bf16 := prec == runspec.PrecisionBF16
	if bf16 {
		S += S % 2 // the shim rounds a bf16 block up to even
	}
	// The byte counts in float64 (see Overflow in the package doc).
	P, W, Sf, b := float64(counts.Trainable), float64(in.Workers), float64(S), float64(micro)
	elem := 4.0 // bytes per element of the trained model's tensors
	if bf16 {
		elem = 2
	}
	parts := map[string]float64{}
	parts[PartParams] = elem * W * Sf
	parts[PartGrads] = elem * W * Sf
	if bf16 && reduce == runspec.PrecisionFP32 {
		parts[PartGrads] += 4 * W * Sf
	}
	switch {
	case r.Zero >= 1:
		parts[PartOptimizer] = 12 * Sf
	case bf16:
		parts[PartOptimizer] = 12 * P
	default:
		parts[PartOptimizer] = 8 * P
	}
	parts[PartFrozen] = elem * float64(counts.Frozen)
	parts[PartBuffers] = elem * float64(counts.Buffers)
	if kind == KindCUDA {
		parts[PartReserve] = CUDAReserve
	}
	if model.Stage == 1 {
		parts[PartActivations] = elem * stage1Activations(model.TokenizerOrDefault(), b, in.Spec.ActivationCheckpointing)
	} else {
		name, tok, err := tokenizerOf(in, model)
		if err != nil {
			return Result{}, err
		}
		r.Tokenizer = name
		tc := tok.Counts()
		// The tokenizer runs in fp32 at either precision.
		parts[PartTokenizer] = 4 * (2*float64(tc.Trainable) + float64(tc.Frozen) + float64(tc.Buffers))
		lm := model.LMOrDefault()
		parts[PartActivations] = elem * lmActivations(lm, b, in.Spec.ActivationCheckpointing)
		if bf16 {
			parts[PartActivations] += b * bf16LossExtra(lm)
		}
		parts[PartTokenizerActivations] = 4 * float64(share) * tokenizerInference(tok.TokenizerOrDefault())
	}
	r.count(parts)
	r.Fits = r.Overflow == "" && r.PerRankBytes <= r.DeviceBytes
	return r, nil
}

// count sets r's parts and total from the float64 byte counts, clamping
// any over MaxPlanBytes and saying so in r.Overflow.
func (r *Result) count(parts map[string]float64) {
	var total float64
	for _, name := range PartNames {
		v, ok := parts[name]
		if !ok {
			continue
		}
		total += v
		if v > MaxPlanBytes && r.Overflow == "" {
			r.Overflow = fmt.Sprintf("the %s part needs %.3g bytes, more than a plan counts (%d bytes, 8 PiB)", name, v, int64(MaxPlanBytes))
		}
		r.Parts[name] = int64(min(v, MaxPlanBytes))
	}
	if total > MaxPlanBytes && r.Overflow == "" {
		r.Overflow = fmt.Sprintf("the parts add up to %.3g bytes, more than a plan counts (%d bytes, 8 PiB)", total, int64(MaxPlanBytes))
	}
	r.PerRankBytes = int64(min(total, MaxPlanBytes))
}

// tokenizerOf is the stage-1 model a stage-2 plan assumes: in.Tokenizer,
// or DefaultTokenizer's choice (then named).
func tokenizerOf(in Input, lm modelcfg.Config) (string, *modelcfg.Config, error) {
	if in.Tokenizer == nil {
		name, c, err := DefaultTokenizer(lm)
		return name, &c, err
	}
	if in.Tokenizer.Stage != 1 {
		return "", nil, fmt.Errorf("memory plan: the tokenizer must be a stage-1 model config, got stage %d", in.Tokenizer.Stage)
	}
	return "", in.Tokenizer, nil
}

// specModel parses the spec's inlined model config.
func specModel(s *runspec.Spec) (modelcfg.Config, error) {
	if len(s.ModelConfig) == 0 {
		return modelcfg.Config{}, fmt.Errorf("memory plan: the spec has no model config (resolve it first: model %q)", s.Model)
	}
	c, err := modelcfg.ParseConfig(s.ModelConfig)
	if err != nil {
		return c, fmt.Errorf("memory plan: model %s: %w", s.Model, err)
	}
	if c.Stage != s.Stage {
		return c, fmt.Errorf("memory plan: model %s is a stage-%d model, the spec's stage is %d", s.Model, c.Stage, s.Stage)
	}
	return c, nil
}

// DefaultTokenizer picks the stage-1 model a stage-2 plan assumes when the
// spec cannot say (tokenizer.from is a state URL): the largest built-in
// stage-1 model whose codebook fits in the LM's vocabulary (codebook + 2 <
// vocab) and, for continuous input, whose width and patches are the LM's
// vis_width and vis_patches. The largest is the worst case.
func DefaultTokenizer(lm modelcfg.Config) (string, modelcfg.Config, error) {
	l := lm.LMOrDefault()
	best, bestSize := "", int64(-1)
	var bestCfg modelcfg.Config
	for _, name := range configs.ModelNames() {
		b, err := configs.Model(name)
		if err != nil {
			return "", modelcfg.Config{}, err
		}
		c, err := modelcfg.ParseConfig(b)
		if err != nil {
			return "", modelcfg.Config{}, fmt.Errorf("built-in model %s: %w", name, err)
		}
		if c.Stage != 1 {
			continue
		}
		t := c.TokenizerOrDefault()
		if t.Codebook+2 >= l.Vocab {
			continue
		}
		if l.ImageInput == "continuous" && (t.Width != l.VisWidth || t.Patches() != l.VisPatches) {
			continue
		}
		n := c.Counts()
		if size := n.Trainable + n.Frozen; size > bestSize {
			best, bestSize, bestCfg = name, size, c
		}
	}
	if best == "" {
		return "", modelcfg.Config{}, fmt.Errorf("memory plan: no built-in stage-1 model fits lm.vocab %d; name the tokenizer's model config", l.Vocab)
	}
	return best, bestCfg, nil
}

// LoadModel reads a model config by built-in name (configs.ModelNames) or
// as a JSON file path (anything with a slash or a .json suffix).
func LoadModel(name string, readFile func(string) ([]byte, error)) (modelcfg.Config, error) {
	var b []byte
	var err error
	switch {
	case slices.Contains(configs.ModelNames(), name):
		b, err = configs.Model(name)
	case strings.ContainsRune(name, '/') || strings.HasSuffix(name, ".json"):
		b, err = readFile(name)
	default:
		return modelcfg.Config{}, fmt.Errorf("model %q is not a built-in model (known: %s) and not a path to a .json file", name, strings.Join(configs.ModelNames(), ", "))
	}
	if err != nil {
		return modelcfg.Config{}, fmt.Errorf("model %s: %w", name, err)
	}
	c, err := modelcfg.ParseConfig(b)
	if err != nil {
		return c, fmt.Errorf("model %s: %w", name, err)
	}
	return c, nil
}

// lmActivations is the stage-2 estimate in floats for b samples (the
// package doc has the formula), computed in float64.
func lmActivations(l modelcfg.LMConfig, b float64, ckpt bool) float64 {
	T, d, f, h, V, L := float64(l.MaxLen-1), float64(l.DModel), float64(l.MLP), float64(l.Heads), float64(l.Vocab), float64(l.Layers)
	block := 8*T*d + 2*T*f + h*T*T
	if l.Arch == "llama" {
		block = 10*T*d + 4*T*f + h*T*T
	}
	blocks := L * block
	if ckpt {
		blocks = L*T*d + block
	}
	perSample := blocks + 3*T*d + 4*T*V + 2*h*T*T + 2*T*f
	if l.ImageInput == "continuous" {
		N := float64(l.VisPatches)
		perSample += mergerActivations(N, float64(l.VisWidth), float64(l.VisMLPHidden), float64(l.VisHeads), float64(l.VisMergerBlocks), ckpt) + N*d + T*d
	}
	return b*perSample + V*d
}

// bf16LossExtra is, per sample, the bytes a bf16 LM's fp32 loss adds to
// its activation elements counted at 2 bytes. lmActivations counts 4·T·V
// elements for the loss (logits, log-softmax and both gradients, alive
// together in backward), 8·T·V bytes in bf16. The loss casts the bf16
// logits to fp32: alive are the bf16 logits and their gradient (2·2·T·V)
// and the fp32 logits, their log-softmax and both their gradients
// (4·4·T·V), 20·T·V bytes: 12·T·V more. (The 8·T·V of the fp32 logits
// and log-softmax alone would count their gradients at 2 bytes.)
func bf16LossExtra(l modelcfg.LMConfig) float64 {
	return 12 * float64(l.MaxLen-1) * float64(l.Vocab)
}

// mergerActivations is a trainable merger stack's saved tensors per sample:
// its blocks, the memory LayerNorm, the final LayerNorm, the policy.
func mergerActivations(N, D, H, heads, blocks float64, ckpt bool) float64 {
	block := 14*N*D + 2*N*H + 6*heads*N*N
	if ckpt {
		return blocks*N*D + block + 3*N*D + N*N
	}
	return blocks*block + 3*N*D + N*N
}

// stage1Activations is the stage-1 estimate in floats for b samples,
// computed in float64.
func stage1Activations(t modelcfg.TokenizerConfig, b float64, ckpt bool) float64 {
	N, D, H, h, C := float64(t.Patches()), float64(t.Width), float64(t.MLPHidden), float64(t.Heads), float64(t.CodeDim)
	mb, db := float64(t.MergerBlocks), float64(t.DecoderBlocks)
	merger, decoder := 14*N*D+2*N*H+6*h*N*N, 14*N*D+2*N*H+4*h*N*N
	blocks := mb*merger + db*decoder
	if ckpt {
		blocks = (mb+db)*N*D + max(merger, decoder)
	}
	saved := blocks + math.Floor(N*D*43/2) + 6*N*C + N*N
	if t.DecoderLocalityAlpha > 0 {
		saved += N * N
	}
	working := max(3*h*N*N+2*N*H+4*N*D, encoderInference(t))
	return b * (saved + working)
}

// encoderInference is the frozen encoder's peak per sample, without grad:
// one ViT block's attention (scores and softmax, qkv and copies) or MLP,
// whichever is larger; the stand-in is a projection.
func encoderInference(t modelcfg.TokenizerConfig) float64 {
	N, D := float64(t.Patches()), float64(t.Width)
	if t.Encoder != "vit" {
		return 3 * N * D
	}
	T, H, h := N+1, float64(t.EncoderMLPHidden), float64(t.EncoderHeads)
	return max(2*h*T*T+7*T*D, 2*T*H+3*T*D)
}

// tokenizerInference is the frozen tokenizer's inference peak per sample
// (Tokenize, or the continuous path's features): the features and merger
// memory, plus the largest of the encoder's peak, a merger block's policy
// attention, and the nearest-code scores against the whole codebook.
func tokenizerInference(t modelcfg.TokenizerConfig) float64 {
	N, D, H, h := float64(t.Patches()), float64(t.Width), float64(t.MLPHidden), float64(t.Heads)
	merger := 4*h*N*N + 6*N*D + 2*N*H
	return 2*N*D + max(encoderInference(t), merger, N*float64(t.Codebook)+N*float64(t.CodeDim))
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// GiB formats bytes in GiB with one decimal.
func GiB(n int64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<30)) }

// Summary is one line: "110.4 GiB per rank at 16 workers (params 27.5,
// grads 27.5, …)", the parts in GiB, those that are zero left out.
func (r Result) Summary() string {
	var parts []string
	for _, name := range PartNames {
		if v := r.Parts[name]; v > 0 {
			parts = append(parts, name+" "+GiB(v))
		}
	}
	if r.Overflow != "" {
		return fmt.Sprintf("more than %s GiB per rank at %d workers (%s): %s", GiB(r.PerRankBytes), r.Workers, strings.Join(parts, ", "), r.Overflow)
	}
	return fmt.Sprintf("%s GiB per rank at %d workers (%s)", GiB(r.PerRankBytes), r.Workers, strings.Join(parts, ", "))
}
