package memplan

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/configs"
	"github.com/lavit-org/lavit/internal/modelcfg"
	"github.com/lavit-org/lavit/internal/runspec"
)

const gib = int64(1) << 30

// shipped parses and resolves a shipped run spec as `run submit` does.
func shipped(t *testing.T, name string, sets ...string) *runspec.Spec {
	t.Helper()
	b, err := configs.Example(name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := runspec.Parse(name+".yaml", b, sets)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Resolve("/", os.ReadFile); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestShippedSpecsFit: the full-size specs fit 80 GiB GPUs at their min
// and max workers; zero 0 does not fit the 7B LM, and the first fix named
// is optim.zero=1.
func TestShippedSpecsFit(t *testing.T) {
	tests := []struct {
		spec     string
		sets     []string
		workers  int
		fits     bool
		firstFix string // the first fix's sets, when it does not fit
	}{
		{spec: "stage2-llama2-7b", workers: 64, fits: true},
		{spec: "stage2-llama2-7b", workers: 16, fits: true},
		{spec: "stage2-llama2-7b", sets: []string{"optim.zero=0"}, workers: 64, firstFix: "optim.zero=1"},
		{spec: "stage2-llama2-7b", sets: []string{"optim.zero=0"}, workers: 16, firstFix: "optim.zero=1"},
		{spec: "stage2-llama2-7b", sets: []string{"micro_batch=0", "activation_checkpointing=false"}, workers: 64, firstFix: "micro_batch=2"},
		{spec: "stage2-llama2-7b", sets: []string{"micro_batch=0"}, workers: 64, firstFix: "micro_batch=15"},
		{spec: "stage1-lavit", workers: 64, fits: true},
		{spec: "stage1-lavit", workers: 16, fits: true},
		{spec: "stage1-lavit", sets: []string{"micro_batch=0"}, workers: 16, firstFix: "activation_checkpointing=true"},
		{spec: "stage1-lavit", sets: []string{"micro_batch=0", "activation_checkpointing=false"}, workers: 16, firstFix: "activation_checkpointing=true"},
		{spec: "tiny-stage1", workers: 1, fits: true},
		{spec: "tiny-stage2", workers: 2, fits: true},
	}
	for _, tt := range tests {
		name := tt.spec + " " + strings.Join(tt.sets, " ")
		in := Input{Spec: shipped(t, tt.spec, tt.sets...), Workers: tt.workers, DeviceBytes: 80 * gib}
		r, err := Plan(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s at %d workers: %s", name, tt.workers, r.Summary())
		if r.Fits != tt.fits {
			t.Errorf("%s at %d workers: fits %v, want %v", name, tt.workers, r.Fits, tt.fits)
		}
		fixes, err := Fixes(in)
		if err != nil {
			t.Fatalf("%s: fixes: %v", name, err)
		}
		switch {
		case tt.fits && len(fixes) > 0:
			t.Errorf("%s: fits, yet fixes %v", name, fixes)
		case !tt.fits && (len(fixes) == 0 || !strings.HasPrefix(strings.Join(fixes[0].Sets, " "), tt.firstFix)):
			t.Errorf("%s: fixes %v, want the first to be %s", name, fixes, tt.firstFix)
		}
		for _, f := range fixes {
			if f.PerRankBytes > in.DeviceBytes {
				t.Errorf("%s: fix %s does not fit", name, f)
			}
		}
	}
}

// TestParts: the parts follow the formulas of the package doc.
func TestParts(t *testing.T) {
	P := int64(297_122) // tiny stage 1, trainable
	tests := []struct {
		name                    string
		sets                    []string
		workers                 int
		params, grads, optim    int64
		micro                   int
		reserve, tokenizerBytes bool
	}{
		// S = ceil(297122/3) = 99041: the flat buffer is padded to 3·S at
		// every stage (the optimizer's moments at zero 0 are not).
		{name: "zero 0", sets: []string{"optim.zero=0"}, workers: 3, params: 4 * 3 * 99041, grads: 4 * 3 * 99041, optim: 8 * P, micro: 3},
		{name: "zero 1", sets: []string{"optim.zero=1"}, workers: 3, params: 4 * 3 * 99041, grads: 4 * 3 * 99041, optim: 12 * 99041, micro: 3},
		{name: "zero 2 plans as zero 1", sets: []string{"optim.zero=2"}, workers: 3, params: 4 * 3 * 99041, grads: 4 * 3 * 99041, optim: 12 * 99041, micro: 3},
		{name: "micro_batch", sets: []string{"micro_batch=2", "max_workers=3"}, workers: 2, params: 4 * P, grads: 4 * P, optim: 8 * P, micro: 2},
		{name: "micro_batch over the share", sets: []string{"micro_batch=8", "max_workers=3"}, workers: 3, params: 4 * 3 * 99041, grads: 4 * 3 * 99041, optim: 8 * P, micro: 3},
		{name: "cuda reserve", sets: []string{"device=cuda"}, workers: 1, params: 4 * P, grads: 4 * P, optim: 8 * P, micro: 8, reserve: true},
	}
	for _, tt := range tests {
		sets := append([]string{"max_workers=3"}, tt.sets...)
		r, err := Plan(Input{Spec: shipped(t, "tiny-stage1", sets...), Workers: tt.workers, DeviceBytes: gib})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		p := r.Parts
		if p[PartParams] != tt.params || p[PartGrads] != tt.grads || p[PartOptimizer] != tt.optim || r.MicroBatch != tt.micro {
			t.Errorf("%s: params %d, grads %d, optimizer %d, micro-batch %d; want %d, %d, %d, %d", tt.name,
				p[PartParams], p[PartGrads], p[PartOptimizer], r.MicroBatch, tt.params, tt.grads, tt.optim, tt.micro)
		}
		if (p[PartReserve] == CUDAReserve) != tt.reserve {
			t.Errorf("%s: reserve %d", tt.name, p[PartReserve])
		}
		var sum int64
		for _, v := range p {
			sum += v
		}
		if sum != r.PerRankBytes || p[PartActivations] <= 0 || p[PartBuffers] <= 0 || p[PartFrozen] != 0 || p[PartTokenizer] != 0 {
			t.Errorf("%s: parts %v, total %d", tt.name, p, r.PerRankBytes)
		}
	}

	// Stage 2: the tokenizer's parts; more samples, more activations.
	s := shipped(t, "tiny-stage2")
	one, err := Plan(Input{Spec: s, Workers: 2, DeviceBytes: gib})
	if err != nil {
		t.Fatal(err)
	}
	tok := mustModel(t, "tiny-stage1").Counts()
	if want := 4 * (2*tok.Trainable + tok.Buffers); one.Parts[PartTokenizer] != want || one.Tokenizer != "tiny-stage1" {
		t.Errorf("tiny stage 2: tokenizer %s of %d bytes, want tiny-stage1 of %d", one.Tokenizer, one.Parts[PartTokenizer], want)
	}
	two, err := Plan(Input{Spec: s, Workers: 1, DeviceBytes: gib})
	if err != nil {
		t.Fatal(err)
	}
	if two.Parts[PartActivations] <= one.Parts[PartActivations] || two.Parts[PartTokenizerActivations] <= one.Parts[PartTokenizerActivations] {
		t.Errorf("8 samples per rank plan %v, 4 plan %v: want more activations", two.Parts, one.Parts)
	}
}

func mustModel(t *testing.T, name string) modelcfg.Config {
	t.Helper()
	c, err := LoadModel(name, os.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDefaultTokenizer: the largest built-in stage-1 model whose codebook
// fits the LM's vocabulary.
func TestDefaultTokenizer(t *testing.T) {
	for lm, want := range map[string]string{"stage2-llama2-7b": "stage1-lavit", "tiny-stage2": "tiny-stage1", "tiny-stage2-continuous": "tiny-stage1"} {
		got, _, err := DefaultTokenizer(mustModel(t, lm))
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %s", lm, got, err, want)
		}
	}
}

// TestBadInput: bad inputs are errors naming the problem.
func TestBadInput(t *testing.T) {
	good := func() Input { return Input{Spec: shipped(t, "tiny-stage2"), Workers: 1, DeviceBytes: gib} }
	noModel := good()
	spec := *noModel.Spec
	spec.ModelConfig = nil
	noModel.Spec = &spec
	stage2 := mustModel(t, "tiny-stage2")
	tests := []struct {
		name string
		in   func() Input
		want string
	}{
		{"no spec", func() Input { return Input{Workers: 1, DeviceBytes: 1} }, "no run spec"},
		{"zero workers", func() Input { in := good(); in.Workers = 0; return in }, "workers must be at least 1, got 0"},
		{"negative memory", func() Input { in := good(); in.DeviceBytes = -1; return in }, "device memory must be positive, got -1"},
		{"unknown kind", func() Input { in := good(); in.Kind = "tpu"; return in }, `device kind must be cuda or cpu, got "tpu"`},
		{"no model config", func() Input { return noModel }, "no model config"},
		{"unknown precision", func() Input {
			in := good()
			s := *in.Spec
			s.Precision = "fp16"
			in.Spec = &s
			return in
		}, `precision must be fp32 or bf16, got "fp16"`},
		{"unknown reduce dtype", func() Input {
			in := good()
			s := *in.Spec
			s.Collective.ReduceDtype = "fp8"
			in.Spec = &s
			return in
		}, `collective.reduce_dtype must be fp32 or bf16, got "fp8"`},
		{"tokenizer of stage 2", func() Input { in := good(); in.Tokenizer = &stage2; return in }, "must be a stage-1 model config, got stage 2"},
		{"vocabulary too small", func() Input {
			in := good()
			s := *in.Spec
			s.ModelConfig = []byte(`{"stage":2,"lm":{"vocab":100}}`)
			in.Spec = &s
			return in
		}, "no built-in stage-1 model fits lm.vocab 100"},
	}
	for _, tt := range tests {
		_, err := Plan(tt.in())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error mentioning %q", tt.name, err, tt.want)
		}
		if _, ferr := Fixes(tt.in()); ferr == nil {
			t.Errorf("%s: Fixes accepted it", tt.name)
		}
	}
	if _, err := LoadModel("nope", os.ReadFile); err == nil || !strings.Contains(err.Error(), `"nope" is not a built-in model (known: stage1-lavit`) {
		t.Errorf("unknown model: %v", err)
	}
	missing := func(string) ([]byte, error) { return nil, errors.New("no such file") }
	if _, err := LoadModel("./none.json", missing); err == nil || !strings.Contains(err.Error(), "./none.json: no such file") {
		t.Errorf("missing file: %v", err)
	}
}

// TestNotFitMessage names the size, the parts, the device and the fixes.
func TestNotFitMessage(t *testing.T) {
	in := Input{Spec: shipped(t, "stage2-llama2-7b", "optim.zero=0"), Workers: 16, DeviceBytes: 80 * gib}
	r, err := Plan(in)
	if err != nil {
		t.Fatal(err)
	}
	fixes, err := Fixes(in)
	if err != nil {
		t.Fatal(err)
	}
	msg := NotFitMessage(r, fixes, "on the smallest worker", 64)
	for _, want := range []string{" GiB per rank at 16 workers (params 25.6, grads 25.6, optimizer 51.2, ", "> 80.0 GiB on the smallest worker; set optim.zero=1 ("} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	t.Log(msg)
	if msg := NotFitMessage(r, nil, "on this device", 64); !strings.Contains(msg, "no setting of optim.zero, activation_checkpointing, micro_batch or min_workers (up to max_workers 64) makes it fit") {
		t.Errorf("without fixes: %q", msg)
	}
}

// TestActivationCheckpointingPlansLess: with activation_checkpointing each
// block keeps only its input, so the activation part shrinks (by more
// than half for the full-size LM, whose blocks dominate) and nothing else
// changes.
func TestActivationCheckpointingPlansLess(t *testing.T) {
	for _, name := range []string{"stage2-llama2-7b", "stage1-lavit", "tiny-stage1", "tiny-stage2"} {
		plan := func(ckpt string) Result {
			r, err := Plan(Input{Spec: shipped(t, name, "activation_checkpointing="+ckpt), Workers: 1, DeviceBytes: 80 * gib})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return r
		}
		off, on := plan("false"), plan("true")
		a, b := off.Parts[PartActivations], on.Parts[PartActivations]
		t.Logf("%s: activations %s GiB without, %s GiB with checkpointing", name, GiB(a), GiB(b))
		if b >= a {
			t.Errorf("%s: activations %d bytes with checkpointing, %d without", name, b, a)
		}
		if name == "stage2-llama2-7b" && b > a/2 {
			t.Errorf("%s: checkpointing saves only %d of %d bytes", name, a-b, a)
		}
		for part, v := range off.Parts {
			if part != PartActivations && on.Parts[part] != v {
				t.Errorf("%s: %s changed with checkpointing: %d → %d", name, part, v, on.Parts[part])
			}
		}
	}
}

// TestBF16Parts: with precision bf16 the parts follow the package doc's
// bf16 formulas at worlds 1 and 3, every ZeRO stage and both reduce
// dtypes, against the same spec's fp32 plan where a part is a multiple of
// it (frozen, buffers, activations) or the same (the tokenizer's parts).
func TestBF16Parts(t *testing.T) {
	models := []struct {
		spec    string
		workers int
		P, S    int64 // S: ceil(P/W) rounded up to even
		T, V    int64 // stage 2: the row length and the vocabulary
	}{
		{spec: "tiny-stage1", workers: 1, P: 297_122, S: 297_122},
		{spec: "tiny-stage1", workers: 3, P: 297_122, S: 99_042}, // ceil(P/3) = 99041 is odd
		{spec: "tiny-stage2", workers: 1, P: 139_542, S: 139_542, T: 55, V: 278},
		{spec: "tiny-stage2", workers: 3, P: 139_542, S: 46_514, T: 55, V: 278},
		{spec: "stage2-llama2-7b", workers: 1, P: 6_872_649_728, S: 6_872_649_728, T: 511, V: 48386},
		{spec: "stage2-llama2-7b", workers: 3, P: 6_872_649_728, S: 2_290_883_244, T: 511, V: 48386}, // ceil(P/3) = 2290883243
	}
	for _, m := range models {
		for zero := 0; zero <= 2; zero++ {
			for _, reduce := range []string{runspec.PrecisionFP32, runspec.PrecisionBF16} {
				name := fmt.Sprintf("%s at %d workers, zero %d, reduce %s", m.spec, m.workers, zero, reduce)
				plan := func(sets ...string) Result {
					sets = append([]string{fmt.Sprintf("optim.zero=%d", zero)}, sets...)
					r, err := Plan(Input{Spec: shipped(t, m.spec, sets...), Workers: m.workers, DeviceBytes: 80 * gib})
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					return r
				}
				fp32, bf16 := plan(), plan("precision=bf16", "collective.reduce_dtype="+reduce)
				W := int64(m.workers)
				want := map[string]int64{
					PartParams:    2 * W * m.S,
					PartGrads:     2 * W * m.S,
					PartOptimizer: 12 * m.S,
					PartFrozen:    fp32.Parts[PartFrozen] / 2,
					PartBuffers:   fp32.Parts[PartBuffers] / 2,
					PartReserve:   fp32.Parts[PartReserve],
				}
				if reduce == runspec.PrecisionFP32 {
					want[PartGrads] += 4 * W * m.S
				}
				if zero == 0 {
					want[PartOptimizer] = 12 * m.P
				}
				if m.V == 0 {
					want[PartActivations] = fp32.Parts[PartActivations] / 2
				} else {
					want[PartActivations] = fp32.Parts[PartActivations]/2 + 12*int64(bf16.MicroBatch)*m.T*m.V
					want[PartTokenizer] = fp32.Parts[PartTokenizer]
					want[PartTokenizerActivations] = fp32.Parts[PartTokenizerActivations]
				}
				for _, part := range PartNames {
					if got, ok := bf16.Parts[part]; got != want[part] || ok != (want[part] != 0 || part == PartFrozen) {
						t.Errorf("%s: %s %d bytes (set %v), want %d", name, part, got, ok, want[part])
					}
				}
				var sum int64
				for _, v := range bf16.Parts {
					sum += v
				}
				if sum != bf16.PerRankBytes || bf16.Precision != "bf16" || bf16.ReduceDtype != reduce || fp32.Precision != "fp32" || fp32.ReduceDtype != "fp32" {
					t.Errorf("%s: total %d of parts %d; precision %s/%s, fp32 plan's %s/%s", name, bf16.PerRankBytes, sum,
						bf16.Precision, bf16.ReduceDtype, fp32.Precision, fp32.ReduceDtype)
				}
			}
		}
	}

	// The trained model's frozen parameters are bf16 (stage 1's encoder).
	F := mustModel(t, "stage1-lavit").Counts().Frozen
	r, err := Plan(Input{Spec: shipped(t, "stage1-lavit", "precision=bf16"), Workers: 16, DeviceBytes: 80 * gib})
	if err != nil {
		t.Fatal(err)
	}
	if F == 0 || r.Parts[PartFrozen] != 2*F {
		t.Errorf("stage1-lavit in bf16: frozen %d bytes, want 2·%d", r.Parts[PartFrozen], F)
	}
}

// TestPrecisionUnset: a spec without precision or reduce_dtype (stored
// before the keys existed, or built in Go) plans as fp32.
func TestPrecisionUnset(t *testing.T) {
	set := shipped(t, "tiny-stage2")
	unset := *set
	unset.Precision, unset.Collective.ReduceDtype = "", ""
	a, err := Plan(Input{Spec: set, Workers: 2, DeviceBytes: gib})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Plan(Input{Spec: &unset, Workers: 2, DeviceBytes: gib})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) || b.Precision != "fp32" || b.ReduceDtype != "fp32" {
		t.Errorf("unset precision plans %+v, fp32 %+v", b, a)
	}
}

// TestBF16Fix: a run that does not fit in fp32 but fits in bf16 names
// precision=bf16 among its fixes, last; a bf16 run does not; when nothing
// fits the message says bf16 does not either.
func TestBF16Fix(t *testing.T) {
	tests := []struct {
		name  string
		sets  []string
		fixes []string // every fix's sets, in order
	}{
		// 80.4 GiB per rank in fp32 at 16 workers, 78.1 in bf16.
		{"7B micro_batch 10", []string{"micro_batch=10"}, []string{"micro_batch=9", "min_workers=17", "precision=bf16"}},
		{"7B micro_batch 16 in bf16 already", []string{"micro_batch=16", "precision=bf16"}, []string{"micro_batch=12", "min_workers=25"}},
	}
	for _, tt := range tests {
		in := Input{Spec: shipped(t, "stage2-llama2-7b", tt.sets...), Workers: 16, DeviceBytes: 80 * gib}
		fixes, err := Fixes(in)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var got []string
		for _, f := range fixes {
			got = append(got, strings.Join(f.Sets, " and "))
		}
		if !slices.Equal(got, tt.fixes) {
			t.Errorf("%s: fixes %v, want %v", tt.name, got, tt.fixes)
		}
		for _, f := range fixes {
			if !slices.Equal(f.Sets, []string{"precision=bf16"}) {
				continue
			}
			r, err := Plan(Input{Spec: shipped(t, "stage2-llama2-7b", append(tt.sets, "precision=bf16")...), Workers: 16, DeviceBytes: 80 * gib})
			if err != nil || !r.Fits || r.PerRankBytes != f.PerRankBytes {
				t.Errorf("%s: fix %s, but the bf16 plan is %+v, %v", tt.name, f, r, err)
			}
		}
	}

	for _, tt := range []struct {
		precision string
		want      string
	}{
		{"fp32", "(up to max_workers 64) makes it fit, nor precision=bf16"},
		{"bf16", "(up to max_workers 64) makes it fit"},
	} {
		r, err := Plan(Input{Spec: shipped(t, "stage2-llama2-7b", "precision="+tt.precision), Workers: 16, DeviceBytes: 8 * gib})
		if err != nil {
			t.Fatal(err)
		}
		msg := NotFitMessage(r, nil, "on this device", 64)
		if !strings.HasSuffix(msg, tt.want) {
			t.Errorf("%s, nothing fits: %q, want it to end %q", tt.precision, msg, tt.want)
		}
	}
}

// TestPlanOverflow: a spec within the bounds whose byte counts overflow
// int64 (the activations grow with micro_batch·layers·heads·max_len²) does
// not fit, its counts clamped to MaxPlanBytes, and says which part
// overflowed; one just below the limit is counted exactly. (Computed in
// int64, the first case planned -7.6e18 bytes per rank and fit.)
func TestPlanOverflow(t *testing.T) {
	huge := `{"stage":2,"lm":{"d_model":1024,"heads":1024,"layers":1024,"max_len":65536}}`
	tests := []struct {
		name     string
		model    string // model_config JSON; "" keeps the spec's
		sets     []string
		overflow string // what Overflow says; "" for none
	}{
		{"the issue's LM, global_batch 999999", huge, []string{"global_batch=999999", "micro_batch=0"}, "the activations part needs"},
		{"the same at micro_batch 1", huge, []string{"global_batch=999999", "micro_batch=1"}, "the activations part needs"},
		{"bf16", huge, []string{"global_batch=999999", "micro_batch=0", "precision=bf16"}, "the activations part needs"},
		{"a stage-1 model of 65536 patches", `{"stage":1,"tokenizer":{"image":4096,"patch":16,"heads":1024,"merger_blocks":1024}}`, []string{"global_batch=999999", "micro_batch=0"}, "the activations part needs"},
		{"tiny stage 2 at global_batch 999999: large, exact", "", []string{"global_batch=999999", "micro_batch=0"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			example := "tiny-stage2"
			if strings.Contains(tt.model, `"stage":1`) {
				example = "tiny-stage1"
			}
			s := shipped(t, example, append([]string{"device=cuda"}, tt.sets...)...)
			if tt.model != "" {
				s.ModelConfig = []byte(tt.model)
			}
			in := Input{Spec: s, Workers: 1, DeviceBytes: 80 * gib}
			r, err := Plan(in)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s", r.Summary())
			if r.Fits || r.PerRankBytes <= 0 || r.PerRankBytes > MaxPlanBytes {
				t.Errorf("fits %v with %d bytes per rank; want it not to fit, 0 < bytes <= %d", r.Fits, r.PerRankBytes, int64(MaxPlanBytes))
			}
			var sum int64
			for name, v := range r.Parts {
				if v < 0 || v > MaxPlanBytes {
					t.Errorf("part %s: %d bytes", name, v)
				}
				sum += v
			}
			if tt.overflow == "" {
				if r.Overflow != "" || sum != r.PerRankBytes {
					t.Errorf("overflow %q, parts add up to %d of %d; want an exact plan", r.Overflow, sum, r.PerRankBytes)
				}
				return
			}
			if !strings.Contains(r.Overflow, tt.overflow) || !strings.Contains(r.Overflow, "more than a plan counts") || r.PerRankBytes != MaxPlanBytes {
				t.Errorf("overflow %q, %d bytes per rank; want it to say %q, and %d bytes", r.Overflow, r.PerRankBytes, tt.overflow, int64(MaxPlanBytes))
			}
			fixes, err := Fixes(in)
			if err != nil {
				t.Fatal(err)
			}
			msg := NotFitMessage(r, fixes, "on the smallest worker", s.MaxWorkers)
			if !strings.Contains(msg, "more than a plan counts") {
				t.Errorf("the message does not say it overflowed: %s", msg)
			}
		})
	}
}
