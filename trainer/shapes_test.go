package trainer

import (
	"path/filepath"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// lmParams is the parameter-count formula of the LM architectures.
func lmParams(c LMConfig) int64 {
	V, d, L, f, T := c.Vocab, c.DModel, c.Layers, c.MLP, c.MaxLen
	if c.Arch == "llama" {
		// embedding + per layer (q,k,v,o + gate,up,down + 2 RMSNorm) + final norm + untied head
		return V*d + L*(4*d*d+3*d*f+2*d) + d + d*V
	}
	// embedding + positions + per layer (q,k,v,o with biases, 2 LN, MLP with biases) + final LN + head with bias
	return V*d + T*d + L*(4*d*d+4*d+4*d+d*f+f+f*d+d) + 2*d + d*V + V
}

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
	if got := lmParams(*full.LM); got < 6_800_000_000 || got > 7_000_000_000 {
		t.Fatalf("formula gives %d parameters for the full model; Llama-2-7B with a 48386 vocabulary is about 6.87 B", got)
	}
	reduced := full
	lm := *full.LM
	lm.Layers = 1 // full width, vocabulary and MLP; one block
	reduced.LM = &lm
	tiny := TinyStage2()
	tinyLlama := TinyStage2()
	tl := *tinyLlama.LM
	tl.Arch = "llama"
	tinyLlama.LM = &tl
	for name, cfg := range map[string]Config{"tiny gpt": tiny, "tiny llama": tinyLlama, "Llama-2-7B shapes, depth 1": reduced} {
		m, err := lib.NewModel(cfg, "cpu", 1)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, want := m.Info().ParamCount, lmParams(*cfg.LM)
		m.Close()
		if got != want {
			t.Errorf("%s: %d parameters, formula says %d", name, got, want)
		}
		t.Logf("%s: %d parameters", name, got)
	}
}

// vitParams is the EVA-CLIP ViT parameter formula: patch conv, CLS and
// positions, and per block two LayerNorms, qkv (no bias) with q and v
// biases, the output projection and the MLP.
func vitParams(t TokenizerConfig, blocks int64) int64 {
	D, H, P, N := t.Width, t.EncoderMLPHidden, t.Patch, (t.Image/t.Patch)*(t.Image/t.Patch)
	embed := t.Channels*P*P*D + D + D + (N+1)*D
	block := 4*D + 3*D*D + 2*D + D*D + D + D*H + H + H*D + D
	return embed + blocks*block
}

// TestStage1FullShapes builds LaVIT's stage-1 shapes (EVA-CLIP ViT-g/14
// encoder, width 1408) at depth 1 and checks the frozen encoder's parameter
// count; at the full 40 blocks the formula gives EVA-CLIP-g's ~1.0 B.
func TestStage1FullShapes(t *testing.T) {
	lib := loadLib(t)
	full, err := LoadConfig(filepath.Join(testutil.RepoRoot(), "configs", "models", "stage1-lavit.json"))
	if err != nil {
		t.Fatal(err)
	}
	if n := vitParams(*full.Tokenizer, full.Tokenizer.EncoderBlocks); n < 1_000_000_000 || n > 1_020_000_000 {
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
	if info.FrozenCount != vitParams(tc, 1) {
		t.Fatalf("frozen encoder has %d parameters, formula says %d", info.FrozenCount, vitParams(tc, 1))
	}
	if info.Patches != 256 || info.Width != 1408 || info.Codebook != 16384 || info.CodeDim != 32 {
		t.Fatalf("shapes: %d patches, width %d, codebook %d × %d", info.Patches, info.Width, info.Codebook, info.CodeDim)
	}
	t.Logf("stage 1 at full width, depth 1: %d trainable, %d frozen parameters", info.ParamCount, info.FrozenCount)
}
