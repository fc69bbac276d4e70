package trainer

import (
	"encoding/json"
	"math"
	"path/filepath"
	"testing"

	"github.com/lavit-org/lavit/internal/memplan"
	"github.com/lavit-org/lavit/internal/modelcfg"
	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/internal/testutil"
)

// TestLMParameterCounts builds the LMs (tiny GPT, tiny Llama, the
// continuous tiny LM, Llama-2-7B shapes at depth 1) and holds the
// parameter formula and the memory plan to what the shim allocates.
func TestLMParameterCounts(t *testing.T) {
	lib := loadLib(t)
	full, err := LoadConfig(filepath.Join(testutil.RepoRoot(), "configs", "models", "stage2-llama2-7b.json"))
	if err != nil {
		t.Fatal(err)
	}
	// Llama-2-7B with LaVIT's vocabulary: 32000 text + [IMG] + [/IMG] + 16384 codes.
	if full.LM.Vocab != 32000+2+16384 {
		t.Fatalf("vocab %d, want 48386", full.LM.Vocab)
	}
	if got := modelcfg.LMParams(*full.LM); got < 6_800_000_000 || got > 7_000_000_000 {
		t.Fatalf("formula gives %d parameters for the full model; Llama-2-7B with a 48386 vocabulary is about 6.87 B", got)
	}
	reduced := full
	lm := *full.LM
	lm.Layers = 1 // full width, vocabulary and MLP; one block
	reduced.LM = &lm
	tinyLlama := TinyStage2()
	tl := *tinyLlama.LM
	tl.Arch = "llama"
	tinyLlama.LM = &tl

	tok, err := lib.NewModel(TinyStage1(), "cpu", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	tinyTok := TinyStage1()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"tiny gpt", TinyStage2()},
		{"tiny llama", tinyLlama},
		{"tiny continuous", TinyStage2Continuous()},
		{"Llama-2-7B shapes, depth 1", reduced},
	} {
		m, err := lib.NewModel(tc.cfg, "cpu", 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, want := m.Info().ParamCount, modelcfg.LMParams(*tc.cfg.LM)
		if got != want {
			t.Errorf("%s: %d parameters, formula says %d", tc.name, got, want)
		}
		checkPlan(t, tc.name, m, &tinyTok, tok)
		m.Close()
		t.Logf("%s: %d parameters", tc.name, got)
	}
}

// TestStage1FullShapes builds LaVIT's stage-1 shapes (EVA-CLIP ViT-g/14
// encoder, width 1408) at depth 1 and checks the frozen encoder's parameter
// count; at the full 40 blocks the formula gives EVA-CLIP-g's ~1.0 B. The
// tiny tokenizer and the full-width one are held to the memory plan.
func TestStage1FullShapes(t *testing.T) {
	lib := loadLib(t)
	full, err := LoadConfig(filepath.Join(testutil.RepoRoot(), "configs", "models", "stage1-lavit.json"))
	if err != nil {
		t.Fatal(err)
	}
	if n := modelcfg.ViTParams(*full.Tokenizer); n < 1_000_000_000 || n > 1_020_000_000 {
		t.Fatalf("ViT-g/14 formula gives %d parameters; EVA-CLIP-g's visual tower has about 1.01 B", n)
	}
	cfg := full
	tc := *full.Tokenizer
	tc.EncoderBlocks, tc.MergerBlocks, tc.DecoderBlocks = 1, 1, 1
	cfg.Tokenizer = &tc
	m, err := lib.NewModel(cfg, "cpu", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info := m.Info()
	if info.FrozenCount != modelcfg.ViTParams(tc) {
		t.Fatalf("frozen encoder has %d parameters, formula says %d", info.FrozenCount, modelcfg.ViTParams(tc))
	}
	if info.Patches != 256 || info.Width != 1408 || info.Codebook != 16384 || info.CodeDim != 32 {
		t.Fatalf("shapes: %d patches, width %d, codebook %d × %d", info.Patches, info.Width, info.Codebook, info.CodeDim)
	}
	checkPlan(t, "stage 1 at full width, depth 1", m, nil, nil)
	tiny, err := lib.NewModel(TinyStage1(), "cpu", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer tiny.Close()
	checkPlan(t, "tiny stage 1", tiny, nil, nil)
	t.Logf("stage 1 at full width, depth 1: %d trainable, %d frozen parameters", info.ParamCount, info.FrozenCount)
}

// checkPlan holds the memory plan of m's config (and, for stage 2, its
// tokenizer's) to what the shim allocated: the flat parameter and
// gradient buffers, the frozen parameters, and the Adam moments the first
// step allocates (two buffers the size of the parameters) at optim.zero
// 0; at zero 1 the padded shards stay within 5 % of the unsharded buffers.
func checkPlan(t *testing.T, name string, m *Model, tokCfg *Config, tok *Model) {
	t.Helper()
	info := m.Info()
	raw, err := json.Marshal(m.Config())
	if err != nil {
		t.Fatal(err)
	}
	P, G, F := 4*info.ParamCount, 4*info.GradNumel, 4*info.FrozenCount
	for _, world := range []int{1, 3} {
		for _, zero := range []int{0, 1} {
			spec := &runspec.Spec{Stage: info.Stage, Model: name, ModelConfig: raw, GlobalBatch: 8, MinWorkers: 1, MaxWorkers: 4, Device: "cpu"}
			spec.Optim.Zero = zero
			r, err := memplan.Plan(memplan.Input{Spec: spec, Tokenizer: tokCfg, Workers: world, DeviceBytes: 1 << 40})
			if err != nil {
				t.Fatalf("%s: plan: %v", name, err)
			}
			p := r.Parts
			if p[memplan.PartFrozen] != F {
				t.Errorf("%s: plan's frozen %d bytes, the shim's %d", name, p[memplan.PartFrozen], F)
			}
			if zero == 0 {
				if p[memplan.PartParams] != P || p[memplan.PartGrads] != G || p[memplan.PartOptimizer] != 2*P {
					t.Errorf("%s, world %d: plan's params %d, grads %d, optimizer %d bytes; the shim's %d, %d, %d",
						name, world, p[memplan.PartParams], p[memplan.PartGrads], p[memplan.PartOptimizer], P, G, 2*P)
				}
			} else {
				for part, want := range map[string]int64{memplan.PartParams: P, memplan.PartGrads: G, memplan.PartOptimizer: 3 * P / int64(world)} {
					if d := math.Abs(float64(p[part]-want)) / float64(want); d > 0.05 {
						t.Errorf("%s, world %d, zero 1: plan's %s %d bytes, %.1f %% from %d", name, world, part, p[part], 100*d, want)
					}
				}
			}
			if tok != nil {
				ti := tok.Info()
				tc := tokCfg.Counts()
				if got, want := p[memplan.PartTokenizer]-4*tc.Buffers, 4*(ti.ParamCount+ti.GradNumel+ti.FrozenCount); got != want {
					t.Errorf("%s: plan's tokenizer state %d bytes, the shim's %d", name, got, want)
				}
			}
		}
	}
}
