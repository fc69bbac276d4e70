package memplan

import (
	"fmt"
	"sort"
	"strings"

	"github.com/lavit-org/lavit/internal/runspec"
)

// Fix is a change of settings that makes a run fit, as `--set key=value`
// strings, with the plan's per-rank bytes after it.
type Fix struct {
	Sets         []string `json:"sets"`
	PerRankBytes int64    `json:"per_rank_bytes"`
}

// String is "optim.zero=1 and micro_batch=2 (57.2 GiB per rank)".
func (f Fix) String() string {
	return fmt.Sprintf("%s (%s GiB per rank)", strings.Join(f.Sets, " and "), GiB(f.PerRankBytes))
}

// Fixes lists settings that would make in fit, each enough on its own,
// in this order: a higher optim.zero alone (the lowest that fits);
// activation_checkpointing=true; a smaller micro_batch (the largest that
// fits); more workers (the fewest, up to max_workers, as min_workers);
// precision=bf16 (its gradients reduced in fp32; last, as the only one
// that changes the arithmetic).
// When no optim.zero fits alone, the others are tried with the optim.zero
// of least memory too. None when in fits already, or when nothing fits.
func Fixes(in Input) ([]Fix, error) {
	base, err := Plan(in)
	if err != nil || base.Fits {
		return nil, err
	}
	if in.Spec.Stage == 2 && in.Tokenizer == nil {
		// Resolve the default once, not for every try.
		model, err := specModel(in.Spec)
		if err != nil {
			return nil, err
		}
		_, tok, err := tokenizerOf(in, model)
		if err != nil {
			return nil, err
		}
		in.Tokenizer = tok
	}
	spec := *in.Spec
	try := func(zero, micro, workers int, ckpt bool, prec string) Result {
		s := spec
		s.Optim.Zero, s.MicroBatch, s.ActivationCheckpointing, s.Precision = zero, micro, ckpt, prec
		t := in
		t.Spec, t.Workers = &s, workers
		r, err := Plan(t)
		if err != nil {
			return Result{} // not reached: the same input planned above
		}
		return r
	}
	zero, micro, W, ckpt, prec := spec.Optim.Zero, spec.MicroBatch, in.Workers, spec.ActivationCheckpointing, base.Precision
	var fixes []Fix

	// The zero stage with the least memory (the lowest at a tie).
	best, bestBytes := zero, base.PerRankBytes
	zeroFound := false
	for z := zero + 1; z <= 2; z++ {
		r := try(z, micro, W, ckpt, prec)
		if r.PerRankBytes < bestBytes {
			best, bestBytes = z, r.PerRankBytes
		}
		if r.Fits && !zeroFound {
			fixes = append(fixes, Fix{Sets: []string{fmt.Sprintf("optim.zero=%d", z)}, PerRankBytes: r.PerRankBytes})
			zeroFound = true
		}
	}
	// The other fixes raise the zero stage only when that alone is not
	// enough.
	zeros := uniq(zero, best)
	if zeroFound {
		zeros = []int{zero}
	}
	with := func(z int, sets ...string) []string {
		if z != zero {
			sets = append([]string{fmt.Sprintf("optim.zero=%d", z)}, sets...)
		}
		return sets
	}

	// Activation checkpointing.
	if !ckpt {
		for _, z := range zeros {
			if r := try(z, micro, W, true, prec); r.Fits {
				fixes = append(fixes, Fix{Sets: with(z, "activation_checkpointing=true"), PerRankBytes: r.PerRankBytes})
				break
			}
		}
	}

	// A smaller micro-batch: the largest that fits. The plan grows with
	// the micro-batch (only the activations depend on it), so a binary
	// search finds it: a few dozen plans even at a global_batch of 2^20.
	for _, z := range zeros {
		// The first of 1..MicroBatch-1 that does not fit; the one before
		// it fits (none does when it is 1).
		m := sort.Search(base.MicroBatch-1, func(i int) bool { return !try(z, i+1, W, ckpt, prec).Fits })
		if m >= 1 {
			r := try(z, m, W, ckpt, prec)
			fixes = append(fixes, Fix{Sets: with(z, fmt.Sprintf("micro_batch=%d", m)), PerRankBytes: r.PerRankBytes})
			break
		}
	}

	// More workers.
	for w := W + 1; w <= spec.MaxWorkers; w++ {
		found := false
		for _, z := range zeros {
			if r := try(z, micro, w, ckpt, prec); r.Fits {
				fixes = append(fixes, Fix{Sets: with(z, fmt.Sprintf("min_workers=%d", w)), PerRankBytes: r.PerRankBytes})
				found = true
				break
			}
		}
		if found {
			break
		}
	}

	// bf16, the gradients reduced in fp32 (an fp32 spec's reduce_dtype).
	if prec != runspec.PrecisionBF16 {
		for _, z := range zeros {
			if r := try(z, micro, W, ckpt, runspec.PrecisionBF16); r.Fits {
				fixes = append(fixes, Fix{Sets: with(z, "precision=bf16"), PerRankBytes: r.PerRankBytes})
				break
			}
		}
	}
	return fixes, nil
}

// uniq is a and b, or a alone when they are equal.
func uniq(a, b int) []int {
	if a == b {
		return []int{a}
	}
	return []int{a, b}
}

// NotFitMessage says why r does not fit and what would: "110.4 GiB per
// rank at 16 workers (params 27.5, …) > 80.0 GiB on the smallest worker;
// set optim.zero=1 (57.2 GiB per rank), or …". where names the device
// ("on the smallest worker"); maxWorkers is the spec's, for the message
// when nothing fits (which adds "nor precision=bf16" for an fp32 run).
func NotFitMessage(r Result, fixes []Fix, where string, maxWorkers int) string {
	msg := fmt.Sprintf("%s > %s GiB %s", r.Summary(), GiB(r.DeviceBytes), where)
	if len(fixes) == 0 {
		msg += fmt.Sprintf("; no setting of optim.zero, activation_checkpointing, micro_batch or min_workers (up to max_workers %d) makes it fit", maxWorkers)
		if r.Precision != runspec.PrecisionBF16 {
			msg += ", nor precision=bf16"
		}
		return msg
	}
	alts := make([]string, len(fixes))
	for i, f := range fixes {
		alts[i] = f.String()
	}
	return msg + "; set " + strings.Join(alts, ", or ")
}
