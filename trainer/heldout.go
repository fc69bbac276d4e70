package trainer

import (
	"fmt"
	"math"
)

// Held-out evaluation on any data set (data.eval_url with eval "heldout"):
// measurements, not bars, so each check passes and says "(reported)".

// heldOutChunk bounds the images or rows one evaluation call takes (the
// LM's log-probs are rows × SeqLen × vocab floats).
const heldOutChunk = 32

// HeldOut1 is a stage-1 model measured on held-out images.
type HeldOut1 struct {
	Images         int
	RecLoss        float64 // mean 1 − cos(reconstruction, frozen feature) over every patch
	KeepRatio      float64 // kept patches / patches
	CodesUsed      int     // distinct codes of the kept patches
	Codebook       int
	CodePerplexity float64 // exp(entropy) of the kept patches' codes
}

// HeldOutStage1 measures m on images (n × channels × image × image, at
// step 0: deterministic keep decisions) in chunks.
func HeldOutStage1(m *Model, images []float32, positions []int64) (HeldOut1, error) {
	n := len(positions)
	if n == 0 {
		return HeldOut1{}, fmt.Errorf("held-out evaluation: no valid images")
	}
	per := len(images) / n
	var r HeldOut1
	var lossSum float64
	var patches, kept int
	codes := map[int64]int{}
	for from := 0; from < n; from += heldOutChunk {
		to := min(from+heldOutChunk, n)
		ev, err := m.EvalStage1(images[from*per:to*per], positions[from:to], 0, false)
		if err != nil {
			return HeldOut1{}, fmt.Errorf("held-out evaluation, images %d..%d: %w", from, to-1, err)
		}
		for i, l := range ev.CosLoss {
			lossSum += float64(l)
			patches++
			if ev.Keep[i] {
				kept++
				if c := ev.Codes[i]; c >= 0 {
					codes[c]++
				}
			}
		}
	}
	r.Images, r.Codebook, r.CodesUsed = n, int(m.Info().Codebook), len(codes)
	r.RecLoss = lossSum / float64(patches)
	r.KeepRatio = float64(kept) / float64(patches)
	r.CodePerplexity = codePerplexity(codes)
	return r, nil
}

// codePerplexity is exp(entropy) of a code histogram (0 when empty).
func codePerplexity(counts map[int64]int) float64 {
	total := 0
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	var entropy float64
	for _, c := range counts {
		p := float64(c) / float64(total)
		entropy -= p * math.Log(p)
	}
	return math.Exp(entropy)
}

// Checks reports the measurements.
func (r HeldOut1) Checks() []Check {
	return []Check{
		{"held-out images (reported)", fmt.Sprintf("%d", r.Images), true},
		{"held-out reconstruction loss, 1 − cos (reported)", fmt.Sprintf("%.4f", r.RecLoss), true},
		{"held-out keep ratio (reported)", fmt.Sprintf("%.3f", r.KeepRatio), true},
		{"held-out codebook use (reported)", fmt.Sprintf("%d of %d", r.CodesUsed, r.Codebook), true},
		{"held-out code perplexity (reported)", fmt.Sprintf("%.1f", r.CodePerplexity), true},
	}
}

// HeldOut2 is a stage-2 LM measured on held-out rows.
type HeldOut2 struct {
	Rows       int
	Tokens     int64   // targets scored
	Loss       float64 // mean negative log-likelihood per target, nats
	Perplexity float64 // exp(Loss)
}

// HeldOutStage2 scores every target of the batches (each at most
// HeldOutRows rows) with lm.
func HeldOutStage2(lm *Model, batches []*Batch) (HeldOut2, error) {
	var r HeldOut2
	var nll float64
	V := int(lm.Info().Vocab)
	for bi, b := range batches {
		lp, err := lm.LMLogProbs(b)
		if err != nil {
			return HeldOut2{}, fmt.Errorf("held-out evaluation, batch %d: %w", bi, err)
		}
		for k, tgt := range b.Targets {
			if tgt < 0 {
				continue
			}
			if tgt >= int64(V) {
				return HeldOut2{}, fmt.Errorf("held-out evaluation, batch %d: target %d outside the vocabulary of %d", bi, tgt, V)
			}
			nll -= float64(lp[k*V+int(tgt)])
			r.Tokens++
		}
		r.Rows += len(b.Positions)
	}
	if r.Tokens == 0 {
		return HeldOut2{}, fmt.Errorf("held-out evaluation: no targets to score")
	}
	r.Loss = nll / float64(r.Tokens)
	r.Perplexity = math.Exp(r.Loss)
	return r, nil
}

// heldOutLogProbBytes bounds the log-probs one HeldOutStage2 batch makes.
const heldOutLogProbBytes = 256 << 20

// HeldOutRows is how many rows one HeldOutStage2 batch of lm may hold:
// at most heldOutChunk, and few enough that their log-probs (rows ×
// SeqLen × vocab floats) stay within 256 MiB (at least one row).
func HeldOutRows(lm *Model) int {
	info := lm.Info()
	perRow := 4 * max(info.MaxLen-1, 1) * max(info.Vocab, 1)
	return int(max(1, min(heldOutChunk, heldOutLogProbBytes/perRow)))
}

// Checks reports the measurements.
func (r HeldOut2) Checks() []Check {
	return []Check{
		{"held-out rows and scored tokens (reported)", fmt.Sprintf("%d rows, %d tokens", r.Rows, r.Tokens), true},
		{"held-out loss, nats per token (reported)", fmt.Sprintf("%.4f", r.Loss), true},
		{"held-out perplexity (reported)", fmt.Sprintf("%.2f", r.Perplexity), true},
	}
}
