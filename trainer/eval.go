package trainer

import (
	"fmt"
	"math"
	"strings"

	"github.com/lavit-org/lavit/shards/synth"
)

// The "it learned" checks of MODEL.md, measured on the synthetic eval split.

// Stage1Report holds the stage-1 checks.
type Stage1Report struct {
	ObjectRecLoss      float64 // mean 1−cos on object patches
	BaselineRecLoss    float64 // same, predicting each position's mean feature
	KeepRatio          float64
	KeepProbObject     float64
	KeepProbBackground float64
	CodesUsed          int
	Codebook           int
	Perplexity         float64
}

// Rho is the target keep ratio the checks compare against.
const Rho = 1.0 / 3.0

// Checks lists each bar with its verdict.
func (r Stage1Report) Checks() []Check {
	return []Check{
		{"object-patch reconstruction loss ≤ 0.75 × mean-feature baseline",
			fmt.Sprintf("%.3f vs %.3f", r.ObjectRecLoss, r.BaselineRecLoss), r.ObjectRecLoss <= 0.75*r.BaselineRecLoss},
		{"keep ratio within ρ ± 0.1", fmt.Sprintf("%.3f (ρ = %.3f)", r.KeepRatio, Rho), math.Abs(r.KeepRatio-Rho) <= 0.1},
		{"mean keep probability, object vs background (reported)",
			fmt.Sprintf("%.3f vs %.3f", r.KeepProbObject, r.KeepProbBackground), true},
		{"codebook use ≥ 25 % of codes", fmt.Sprintf("%d of %d", r.CodesUsed, r.Codebook), float64(r.CodesUsed) >= 0.25*float64(r.Codebook)},
		{"code perplexity ≥ 16", fmt.Sprintf("%.1f", r.Perplexity), r.Perplexity >= 16},
	}
}

// Check is one bar.
type Check struct {
	Name  string
	Value string
	Pass  bool
}

// FormatChecks renders checks as a table.
func FormatChecks(title string, checks []Check) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", title)
	for _, c := range checks {
		verdict := "PASS"
		if !c.Pass {
			verdict = "FAIL"
		}
		fmt.Fprintf(&b, "  %-4s  %-62s  %s\n", verdict, c.Name, c.Value)
	}
	return b.String()
}

// AllPass reports whether every check passed.
func AllPass(checks []Check) bool {
	for _, c := range checks {
		if !c.Pass {
			return false
		}
	}
	return true
}

// EvalSet is the eval split as model inputs.
type EvalSet struct {
	Samples   []synth.Sample
	Images    []float32
	Positions []int64
}

// NewEvalSet generates n eval samples.
func NewEvalSet(seed uint64, n int) *EvalSet {
	e := &EvalSet{}
	for i := 0; i < n; i++ {
		s := synth.Generate(seed, synth.Eval, i)
		e.Samples = append(e.Samples, s)
		e.Images = append(e.Images, s.Float32CHW()...)
		e.Positions = append(e.Positions, int64(i))
	}
	return e
}

// EvaluateStage1 measures the stage-1 checks.
func EvaluateStage1(m *Model, set *EvalSet, patch int) (Stage1Report, error) {
	ev, err := m.EvalStage1(set.Images, set.Positions, 0, true)
	if err != nil {
		return Stage1Report{}, err
	}
	n, np, w := ev.N, ev.Patches, ev.Width
	// Per-position mean feature over the eval set: the baseline predictor.
	mean := make([]float64, np*w)
	for i := 0; i < n; i++ {
		for k := 0; k < np*w; k++ {
			mean[k] += float64(ev.Features[i*np*w+k])
		}
	}
	for k := range mean {
		mean[k] /= float64(n)
	}
	var r Stage1Report
	var objN, bgN, kept int
	var codeCount = map[int64]int{}
	for i := 0; i < n; i++ {
		mask := set.Samples[i].PatchMask(patch)
		for p := 0; p < np; p++ {
			idx := i*np + p
			if ev.Keep[idx] {
				kept++
				if ev.Codes[idx] >= 0 {
					codeCount[ev.Codes[idx]]++
				}
			}
			if !mask[p] {
				r.KeepProbBackground += float64(ev.KeepProb[idx])
				bgN++
				continue
			}
			objN++
			r.KeepProbObject += float64(ev.KeepProb[idx])
			r.ObjectRecLoss += float64(ev.CosLoss[idx])
			f := ev.Features[idx*w : (idx+1)*w]
			r.BaselineRecLoss += 1 - cosine(f, mean[p*w:(p+1)*w])
		}
	}
	r.ObjectRecLoss /= float64(max(objN, 1))
	r.BaselineRecLoss /= float64(max(objN, 1))
	r.KeepProbObject /= float64(max(objN, 1))
	r.KeepProbBackground /= float64(max(bgN, 1))
	r.KeepRatio = float64(kept) / float64(n*np)
	r.Codebook = int(m.Info().Codebook)
	r.CodesUsed = len(codeCount)
	total := 0
	for _, c := range codeCount {
		total += c
	}
	var entropy float64
	for _, c := range codeCount {
		p := float64(c) / float64(total)
		entropy -= p * math.Log(p)
	}
	r.Perplexity = math.Exp(entropy)
	return r, nil
}

func cosine(a []float32, b []float64) float64 {
	var dot, na, nb float64
	for i := range a {
		dot += float64(a[i]) * b[i]
		na += float64(a[i]) * float64(a[i])
		nb += b[i] * b[i]
	}
	return dot / (math.Sqrt(na)*math.Sqrt(nb) + 1e-12)
}

// Stage2Report holds the stage-2 checks.
type Stage2Report struct {
	ColourAcc        float64 // image→text, teacher forced, argmax among colour words
	ColourAccControl float64 // same captions, image tokens of another eval image
	NLLTrue          float64 // text→image: mean NLL of visual ids, true caption
	NLLMismatched    float64 // same images, another image's caption
}

// Checks lists the stage-2 bars.
func (r Stage2Report) Checks() []Check {
	return []Check{
		{"image→text colour accuracy ≥ image-swapped control + 0.25",
			fmt.Sprintf("%.3f vs %.3f", r.ColourAcc, r.ColourAccControl), r.ColourAcc >= r.ColourAccControl+0.25},
		{"text→image image-token NLL gap, mismatched − true ≥ 0.1 nats",
			fmt.Sprintf("%.3f vs %.3f (gap %.3f)", r.NLLTrue, r.NLLMismatched, r.NLLMismatched-r.NLLTrue), r.NLLMismatched-r.NLLTrue >= 0.1},
	}
}

// TinyVocab is the stage-2 vocabulary of the tiny configuration.
func TinyVocab(codes int) Vocab {
	return Vocab{TextVocab: synth.VocabSize, PadID: synth.PadID, BOSID: synth.BOSID, EOSID: synth.EOSID, Codes: codes}
}

// EvaluateStage2 measures the stage-2 checks: visual ids (and, for a
// continuous LM, features and keep decisions) come from the frozen
// tokenizer, deterministic at step 0.
func EvaluateStage2(lm *Model, tok *Model, set *EvalSet) (Stage2Report, error) {
	continuous := lm.Info().ImageInput == "continuous"
	images := &Batch{} // the eval set's features and keep decisions (continuous input)
	codes, err := visualInputs(tok, set.Images, set.Positions, 0, continuous, images)
	if err != nil {
		return Stage2Report{}, err
	}
	v := TinyVocab(int(tok.Info().Codebook))
	T := int(lm.Info().MaxLen) - 1
	n := len(set.Samples)
	captions := make([][]int, n)
	for i, s := range set.Samples {
		if captions[i], err = synth.Encode(s.Caption); err != nil {
			return Stage2Report{}, err
		}
	}
	colourIDs := map[int64]bool{}
	for _, c := range synth.Colours {
		id, _ := synth.TokenID(c)
		colourIDs[int64(id)] = true
	}
	other := func(i int) int { return (i + n/2 + 1) % n }
	self := func(i int) int { return i }
	V := int(lm.Info().Vocab)
	np, w := int(tok.Info().Patches), int(tok.Info().Width)

	// batch builds n rows; imageOf and captionOf pick which eval sample
	// supplies each part.
	batch := func(dir Direction, imageOf, captionOf func(int) int) (*Batch, []int64, error) {
		b := &Batch{GlobalBatch: int64(n), SeqLen: T}
		var targets []int64
		for i := 0; i < n; i++ {
			img := imageOf(i)
			b.Positions = append(b.Positions, int64(i))
			var toks, tgts []int64
			slots := make([]bool, T)
			var err error
			if continuous && dir == ImageToText {
				toks, tgts, slots, _, err = v.SequenceContinuous(captions[captionOf(i)], len(codes[img]), T)
			} else {
				toks, tgts, _, err = v.Sequence(dir, captions[captionOf(i)], codes[img], T)
			}
			if err != nil {
				return nil, nil, err
			}
			b.Tokens, targets = append(b.Tokens, toks...), append(targets, tgts...)
			if continuous {
				b.ImageSlots = append(b.ImageSlots, slots...)
				b.ImageFeats = append(b.ImageFeats, images.ImageFeats[img*np*w:(img+1)*np*w]...)
				b.ImageKeep = append(b.ImageKeep, images.ImageKeep[img*np:(img+1)*np]...)
			}
		}
		return b, targets, nil
	}

	colourAcc := func(imageOf func(int) int) (float64, error) {
		b, tgts, err := batch(ImageToText, imageOf, self)
		if err != nil {
			return 0, err
		}
		lp, err := lm.LMLogProbs(b)
		if err != nil {
			return 0, err
		}
		var right, total int
		for k, tgt := range tgts {
			if !colourIDs[tgt] {
				continue
			}
			best, bestLP := int64(-1), float32(math.Inf(-1))
			for id := range colourIDs {
				if l := lp[k*V+int(id)]; l > bestLP {
					best, bestLP = id, l
				}
			}
			total++
			if best == tgt {
				right++
			}
		}
		return float64(right) / float64(max(total, 1)), nil
	}
	imageNLL := func(captionOf func(int) int) (float64, error) {
		b, tgts, err := batch(TextToImage, self, captionOf)
		if err != nil {
			return 0, err
		}
		lp, err := lm.LMLogProbs(b)
		if err != nil {
			return 0, err
		}
		var sum float64
		var count int
		for k, tgt := range tgts {
			if tgt >= v.Visual(0) {
				sum -= float64(lp[k*V+int(tgt)])
				count++
			}
		}
		return sum / float64(max(count, 1)), nil
	}
	var r Stage2Report
	if r.ColourAcc, err = colourAcc(self); err != nil {
		return r, err
	}
	if r.ColourAccControl, err = colourAcc(other); err != nil {
		return r, err
	}
	if r.NLLTrue, err = imageNLL(self); err != nil {
		return r, err
	}
	if r.NLLMismatched, err = imageNLL(other); err != nil {
		return r, err
	}
	return r, nil
}
