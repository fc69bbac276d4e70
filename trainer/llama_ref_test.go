package trainer

import (
	"context"
	"math"
	"strconv"
	"testing"
)

// llamaRef is an independent Llama-2 forward (as Hugging Face's
// LlamaForCausalLM computes it: RMSNorm with a weight, rotary embeddings
// on halves with inverse frequencies θ^(-i/half), causal softmax
// attention scaled by 1/√dh, a SwiGLU MLP, no biases, a separate output
// head), in float64 over the model's parameters read by name.
type llamaRef struct {
	vocab, d, heads, layers, mlp int
	theta, eps                   float64
	p                            map[string][]float64
}

func newLlamaRef(t *testing.T, m *Model) *llamaRef {
	t.Helper()
	lm := m.Config().LM
	r := &llamaRef{vocab: int(lm.Vocab), d: int(lm.DModel), heads: int(lm.Heads), layers: int(lm.Layers), mlp: int(lm.MLP),
		theta: lm.RopeTheta, eps: lm.NormEps, p: map[string][]float64{}}
	flat := m.Params()
	for _, pi := range m.Info().Params {
		v := make([]float64, pi.Numel)
		for i := range v {
			v[i] = float64(flat[pi.Offset+int64(i)])
		}
		r.p[pi.Name] = v
	}
	return r
}

func (r *llamaRef) param(t *testing.T, name string, numel int) []float64 {
	t.Helper()
	v, ok := r.p[name]
	if !ok {
		t.Fatalf("the model has no parameter %q", name)
	}
	if len(v) != numel {
		t.Fatalf("parameter %q has %d values, want %d", name, len(v), numel)
	}
	return v
}

// linear is y = W x for W [out, in] (torch's Linear layout).
func linear(w []float64, x []float64, out int) []float64 {
	in := len(x)
	y := make([]float64, out)
	for o := range y {
		var s float64
		for i, xi := range x {
			s += w[o*in+i] * xi
		}
		y[o] = s
	}
	return y
}

func (r *llamaRef) rms(x, w []float64) []float64 {
	var ms float64
	for _, v := range x {
		ms += v * v
	}
	scale := 1 / math.Sqrt(ms/float64(len(x))+r.eps)
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = v * scale * w[i]
	}
	return out
}

// rope rotates one head's vector at position pos.
func (r *llamaRef) rope(x []float64, pos int) {
	half := len(x) / 2
	for i := 0; i < half; i++ {
		ang := float64(pos) * math.Pow(r.theta, -float64(i)/float64(half))
		c, s := math.Cos(ang), math.Sin(ang)
		x1, x2 := x[i], x[i+half]
		x[i], x[i+half] = x1*c-x2*s, x1*s+x2*c
	}
}

// logProbs returns log-softmax(logits) [T, vocab] for one row of tokens.
func (r *llamaRef) logProbs(t *testing.T, tokens []int64) [][]float64 {
	d, T, dh := r.d, len(tokens), r.d/r.heads
	emb := r.param(t, "tok.weight", r.vocab*d)
	x := make([][]float64, T)
	for i, tok := range tokens {
		x[i] = append([]float64(nil), emb[int(tok)*d:(int(tok)+1)*d]...)
	}
	for l := 0; l < r.layers; l++ {
		pre := func(n string) string { return "blocks." + strconv.Itoa(l) + "." + n }
		wq, wk, wv, wo := r.param(t, pre("q.weight"), d*d), r.param(t, pre("k.weight"), d*d), r.param(t, pre("v.weight"), d*d), r.param(t, pre("o.weight"), d*d)
		n1, n2 := r.param(t, pre("norm1.weight"), d), r.param(t, pre("norm2.weight"), d)
		wg, wu, wd := r.param(t, pre("gate.weight"), r.mlp*d), r.param(t, pre("up.weight"), r.mlp*d), r.param(t, pre("down.weight"), d*r.mlp)
		q, k, v := make([][]float64, T), make([][]float64, T), make([][]float64, T)
		for i := range x {
			h := r.rms(x[i], n1)
			q[i], k[i], v[i] = linear(wq, h, d), linear(wk, h, d), linear(wv, h, d)
			for hd := 0; hd < r.heads; hd++ {
				r.rope(q[i][hd*dh:(hd+1)*dh], i)
				r.rope(k[i][hd*dh:(hd+1)*dh], i)
			}
		}
		for i := range x {
			att := make([]float64, d)
			for hd := 0; hd < r.heads; hd++ {
				qs := q[i][hd*dh : (hd+1)*dh]
				scores := make([]float64, i+1)
				top := math.Inf(-1)
				for j := 0; j <= i; j++ {
					var s float64
					for c, qc := range qs {
						s += qc * k[j][hd*dh+c]
					}
					scores[j] = s / math.Sqrt(float64(dh))
					top = math.Max(top, scores[j])
				}
				var z float64
				for j := range scores {
					scores[j] = math.Exp(scores[j] - top)
					z += scores[j]
				}
				for j, p := range scores {
					for c := 0; c < dh; c++ {
						att[hd*dh+c] += p / z * v[j][hd*dh+c]
					}
				}
			}
			out := linear(wo, att, d)
			for c := range x[i] {
				x[i][c] += out[c]
			}
			m := r.rms(x[i], n2)
			g, u := linear(wg, m, r.mlp), linear(wu, m, r.mlp)
			for c := range g {
				g[c] = g[c] / (1 + math.Exp(-g[c])) * u[c] // silu(gate) · up
			}
			down := linear(wd, g, d)
			for c := range x[i] {
				x[i][c] += down[c]
			}
		}
	}
	norm, head := r.param(t, "norm.weight", d), r.param(t, "head.weight", r.vocab*d)
	out := make([][]float64, T)
	for i := range x {
		logits := linear(head, r.rms(x[i], norm), r.vocab)
		top := math.Inf(-1)
		for _, l := range logits {
			top = math.Max(top, l)
		}
		var z float64
		for _, l := range logits {
			z += math.Exp(l - top)
		}
		for c := range logits {
			logits[c] -= top + math.Log(z)
		}
		out[i] = logits
	}
	return out
}

// TestLlamaMatchesReference: a tiny Llama-shaped LM's log-probabilities
// (its logits, log-softmaxed) for fixed inputs equal an independent
// forward written here to 1e-5, after a few training steps have moved
// every parameter (the norms' weights included) away from its init.
func TestLlamaMatchesReference(t *testing.T) {
	lib := loadLib(t)
	cfg := Config{
		Stage: 2,
		LM:    &LMConfig{Arch: "llama", Vocab: 61, DModel: 32, Layers: 2, Heads: 4, MLP: 48, MaxLen: 16, RopeTheta: 10000, NormEps: 1e-5},
		Optim: &OptimConfig{LR: 1e-2, MinLRRatio: 1, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Clip: 1.0},
	}
	m := newModel(t, lib, cfg, 7)
	const n, T = 2, 15
	b := &Batch{GlobalBatch: n, Positions: []int64{0, 1}, SeqLen: T}
	for i := 0; i < n*T; i++ {
		b.Tokens = append(b.Tokens, int64((i*37+11)%61))
	}
	for i := 0; i < n*T; i++ {
		if (i+1)%T == 0 {
			b.Targets = append(b.Targets, -1)
		} else {
			b.Targets = append(b.Targets, b.Tokens[i+1])
		}
	}
	for step := int64(0); step < 3; step++ {
		b.Step = step
		if _, err := m.Step(context.Background(), b, Local, nil); err != nil {
			t.Fatal(err)
		}
	}
	ref := newLlamaRef(t, m)
	if w := ref.param(t, "blocks.0.norm1.weight", 32); w[0] == 1 {
		t.Fatal("the norm weights did not move in training: the test would not see them")
	}
	lp, err := m.LMLogProbs(b)
	if err != nil {
		t.Fatal(err)
	}
	worst := 0.0
	for row := 0; row < n; row++ {
		want := ref.logProbs(t, b.Tokens[row*T:(row+1)*T])
		for pos := 0; pos < T; pos++ {
			for c := 0; c < 61; c++ {
				got := float64(lp[(row*T+pos)*61+c])
				worst = math.Max(worst, math.Abs(got-want[pos][c]))
			}
		}
	}
	t.Logf("largest log-probability difference from the reference: %.2g", worst)
	if worst > 1e-5 {
		t.Fatalf("log-probabilities differ from the reference Llama forward by up to %.3g (> 1e-5)", worst)
	}
}
