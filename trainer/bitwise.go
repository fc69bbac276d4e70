package trainer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/lavit-org/lavit/collective/fixedpoint"
)

// Bitwise-reproducible steps (run spec `determinism: bitwise`): a step
// trains the same bits at any world size. Two things make a float step
// depend on the world size, and this mode removes both:
//
//   - Which samples share a forward/backward: a rank's batch depends on W.
//     Here the global batch is cut into fixed groups of samples
//     (SetBitwise), each group its own micro-batch; ranks take whole groups
//     (the worker's data feed deals them), so every group's gradients,
//     statistics and loss are the same bits whichever rank computes them.
//   - The order of the sums across groups and ranks. Here every
//     cross-group sum (the pre statistics, the gradients, the post
//     statistics, the loss) is a fixed-point sum (collective/fixedpoint):
//     a scale from an all-reduced maximum (Reduce.Max), each group's
//     values rounded once to integers, summed exactly in any order
//     (Reduce.Words), converted back once. Gradients get one scale per
//     parameter tensor; the statistics and the loss one per value.
//
// What stays: the optimizer step runs on the same reduced gradients on
// every rank (at ZeRO-2 each rank sums only its shard: the words are
// reduce-scattered), so it gives the same bits; the gradient norm for
// clipping is a fixed-point sum of squares too (the shim sums it by world
// blocks); randomness is keyed by global sample position already. Runs must match in libtorch build and thread
// count, as any bitwise promise of libtorch's kernels needs.
//
// The cost: every group is a forward/backward of its own; each rank keeps
// its groups' gradients until the step's maximum is known; the gradients
// travel as two words per value plus one maximum per tensor.

// SetBitwise turns bitwise-reproducible steps on, with groups of group
// samples (0 turns them off), and libtorch's deterministic algorithms for
// the process. The model's gradients must be summed in float32 (precision fp32, or bf16 with
// reduce_dtype fp32: each group's bf16 gradients land exactly in the
// float32 buffer), without gradient buckets; the local batch of every
// step must be whole groups.
func (m *Model) SetBitwise(group int) error {
	switch {
	case group < 0:
		return fmt.Errorf("bitwise: group of %d samples", group)
	case group == 0:
		m.bitwiseGroup = 0
		return nil
	case m.GradsBF16():
		return errors.New("bitwise: collective.reduce_dtype bf16: not yet (the fixed-point sums start from float32 gradients: reduce_dtype fp32)")
	case len(m.info.Buckets) > 0:
		return errors.New("bitwise: gradient buckets (collective.bucket_mb) do not apply: the gradients are summed in fixed point after the step's groups")
	}
	// On a GPU some kernels add in an order that changes from run to run
	// unless libtorch is told to use deterministic ones (on the CPU
	// this changes nothing lavit uses).
	if err := m.lib.SetDeterministic(true); err != nil {
		return fmt.Errorf("bitwise: %w", err)
	}
	m.bitwiseGroup = group
	return nil
}

// maxMagnitude is the largest |v| in vals, +Inf for a NaN: NCCL's max
// (fmaxf) drops NaNs, an infinity survives every backend, and ScaleFor
// refuses it on every rank alike.
//
//go:norace
func maxMagnitude(vals []float32) float32 {
	var m float32
	for _, v := range vals {
		if v != v {
			return float32(math.Inf(1))
		}
		m = max(m, float32(math.Abs(float64(v))))
	}
	return m
}

// squares is Σ round(v²·mul) over vals (v² is exact in float64).
//
//go:norace
func squares(vals []float32, mul float64) int64 {
	var acc int64
	for _, v := range vals {
		acc += int64(math.RoundToEven(float64(v) * float64(v) * mul))
	}
	return acc
}

// segment is a run of values that share one fixed-point scale.
type segment struct{ off, n int }

// eachValue is one segment per value of a buffer of n values.
func eachValue(n int) []segment {
	segs := make([]segment, n)
	for i := range segs {
		segs[i] = segment{i, 1}
	}
	return segs
}

// tensorSegments cuts the gradient buffer into the parameters' tensors
// (and the padding after them, which stays zero).
func (m *Model) tensorSegments() []segment {
	var segs []segment
	end := 0
	for _, p := range m.info.Params {
		segs = append(segs, segment{int(p.Offset), int(p.Numel)})
		end = max(end, int(p.Offset+p.Numel))
	}
	if rest := int(m.info.GradWords) - end; rest > 0 {
		segs = append(segs, segment{end, rest})
	}
	return segs
}

// bitwiseScratch holds a bitwise step's buffers from step to step (the
// step loop is the hot path): each group's gradients, and the fixed-point
// sums and their words.
type bitwiseScratch struct {
	grads [][]float32
	acc   []int64
	words []float32
}

// groupGrads returns n buffers of size values each, reused.
func (s *bitwiseScratch) groupGrads(n, size int) [][]float32 {
	for len(s.grads) < n {
		s.grads = append(s.grads, nil)
	}
	for i := range n {
		s.grads[i] = resize(s.grads[i], size)
	}
	return s.grads[:n]
}

// exactSum leaves in out the sum over every rank's groups of each value,
// in fixed point: one scale per segment from the all-reduced largest
// magnitude, for addends groups in all. The same bits on every rank and
// at any world size. With a block (ZeRO-2: rank r of w, len(out) a
// multiple of w) the words are reduce-scattered and only this rank's
// block of out is summed; the rest of out is left as it was.
func (s *bitwiseScratch) exactSum(ctx context.Context, red Reduce, groups [][]float32, segs []segment, addends int, out []float32, block *rankBlock) error {
	words := red.Words
	if block != nil {
		words = red.WordsScatter
	}
	if red.Max == nil || words == nil {
		return errors.New("bitwise: the collective has no exact reductions (Reduce.Max, Reduce.Words, at ZeRO-2 Reduce.WordsScatter)")
	}
	maxes := make([]float32, len(segs))
	for i, seg := range segs {
		for _, g := range groups {
			maxes[i] = max(maxes[i], maxMagnitude(g[seg.off:seg.off+seg.n]))
		}
	}
	if err := red.Max(ctx, maxes); err != nil {
		return fmt.Errorf("all-reduce the largest magnitudes: %w", err)
	}
	scales := make([]fixedpoint.Scale, len(segs))
	for i, mx := range maxes {
		sc, err := fixedpoint.ScaleFor(mx, addends)
		if err != nil {
			return fmt.Errorf("values %d..%d: %w (NaN or Inf in this step)", segs[i].off, segs[i].off+segs[i].n, err)
		}
		scales[i] = sc
	}
	if cap(s.acc) < len(out) {
		s.acc = make([]int64, len(out))
	}
	acc := s.acc[:len(out)]
	clear(acc)
	for i, seg := range segs {
		for _, g := range groups {
			scales[i].Accumulate(acc[seg.off:seg.off+seg.n], g[seg.off:seg.off+seg.n])
		}
	}
	buf := resize(s.words, 2*len(out))
	s.words = buf
	fixedpoint.Split(buf, acc)
	if err := words(ctx, buf); err != nil {
		return fmt.Errorf("all-reduce the fixed-point sums: %w", err)
	}
	lo, hi := 0, len(out)
	if block != nil {
		lo, hi = block.of(len(out))
	}
	fixedpoint.Join(acc[lo:hi], buf[2*lo:2*hi])
	for i, seg := range segs {
		a, b := max(seg.off, lo), min(seg.off+seg.n, hi)
		if a < b {
			scales[i].Values(out[a:b], acc[a:b])
		}
	}
	return nil
}

// rankBlock is rank r's block of w equal blocks (ZeRO-2's shard of the
// gradients).
type rankBlock struct{ rank, world int }

// of is the block's range in a buffer of n values (n a multiple of world).
func (b rankBlock) of(n int) (lo, hi int) { return b.rank * n / b.world, (b.rank + 1) * n / b.world }

// sumSquares is Σv² over vals on every rank (only this rank's block at
// ZeRO-2, where reduce sums the ranks' parts), in fixed point: the
// squares are exact in float64, rounded once at a scale from the largest
// magnitude (all-reduced when reduce) for addends values in all, summed
// as integers. The clipping norm, the same bits at any world size and
// ZeRO stage (the shim sums it by world blocks in float).
func (s *bitwiseScratch) sumSquares(ctx context.Context, red Reduce, vals []float32, addends int, reduce bool) (float64, error) {
	peak := []float32{maxMagnitude(vals)}
	if reduce {
		if err := red.Max(ctx, peak); err != nil {
			return 0, fmt.Errorf("all-reduce the largest gradient: %w", err)
		}
	}
	sc, err := fixedpoint.ScaleFor64(float64(peak[0])*float64(peak[0]), addends)
	if err != nil {
		return 0, fmt.Errorf("gradient norm: %w (NaN or Inf in the gradients)", err)
	}
	acc := squares(vals, math.Ldexp(1, sc.Exp))
	if reduce {
		w := []float32{0, 0}
		fixedpoint.Split(w, []int64{acc})
		if err := red.Words(ctx, w); err != nil {
			return 0, fmt.Errorf("all-reduce the gradient norm: %w", err)
		}
		t := []int64{0}
		fixedpoint.Join(t, w)
		acc = t[0]
	}
	return float64(acc) * math.Ldexp(1, -sc.Exp), nil
}

// gradIO is where a bitwise step sees the gradients on the host: the
// buffer itself on a CPU model, the staging buffer on a GPU model (or a
// CPU model with forceStaging, as tests run that path).
type gradIO struct {
	m      *Model
	host   []float32
	staged bool
	took   time.Duration // copying between the device and the host
}

func (m *Model) bitwiseGrads() (*gradIO, error) {
	io := &gradIO{m: m, staged: m.onDevice() || m.forceStaging}
	want := int(m.info.GradWords)
	if io.staged {
		buf, err := m.gradStaging()
		if err != nil {
			return nil, err
		}
		if len(buf) < want {
			return nil, fmt.Errorf("bitwise: the staging buffer holds %d words, the gradients %d", len(buf), want)
		}
		io.host = buf[:want]
	} else {
		io.host = m.Grads()
	}
	if len(io.host) != want {
		return nil, fmt.Errorf("bitwise: the gradient buffer holds %d floats, want %d", len(io.host), want)
	}
	return io, nil
}

// clear zeroes the gradients before a group's backward.
func (io *gradIO) clear() error {
	clear(io.host)
	return io.stage(false)
}

// read makes the host buffer hold the gradients after a group's backward.
func (io *gradIO) read() error { return io.stage(true) }

// write puts the summed gradients where the optimizer reads them.
func (io *gradIO) write() error { return io.stage(false) }

func (io *gradIO) stage(toHost bool) error {
	if !io.staged {
		return nil
	}
	began := time.Now()
	err := io.m.stageGrads(toHost)
	io.took += time.Since(began)
	return err
}

// stepBitwise is Step in bitwise mode (see the top of this file).
func (m *Model) stepBitwise(ctx context.Context, b *Batch, red Reduce, ride []float32) (StepResult, error) {
	g := m.bitwiseGroup
	local := len(b.Positions)
	if local%g != 0 || b.GlobalBatch%int64(g) != 0 {
		return StepResult{}, fmt.Errorf("bitwise: a local batch of %d and a global batch of %d samples are not whole groups of %d", local, b.GlobalBatch, g)
	}
	if m.info.World > fixedpoint.MaxRanks {
		return StepResult{}, fmt.Errorf("bitwise: %d ranks, at most %d", m.info.World, fixedpoint.MaxRanks)
	}
	groups := int(b.GlobalBatch) / g
	micro, err := splitBatch(b, g)
	if err != nil {
		return StepResult{}, err
	}
	if m.info.Stage == 2 {
		for i, mb := range micro {
			micro[i] = trimPadding(mb) // per group: the same rows whatever the world
		}
	}
	// Begin every group; their pre statistics are summed exactly.
	pres := make([][]float32, len(micro))
	for i, mb := range micro {
		pre, err := m.StepBegin(mb)
		if err != nil {
			return StepResult{}, err
		}
		pres[i] = slices.Clone(pre)
	}
	globalPre := make([]float32, m.info.PreStats)
	if len(globalPre) > 0 {
		if err := m.bw.exactSum(ctx, red, pres, eachValue(len(globalPre)), groups, globalPre, nil); err != nil {
			return StepResult{}, fmt.Errorf("reduce batch statistics: %w", err)
		}
	}
	// Finish each group on zeroed gradients, keeping its gradients, post
	// statistics and loss. A GPU model's gradients go through the host
	// staging buffer: cleared and copied to the device before a group,
	// copied back after it, and the sums copied to the device at the end.
	io, err := m.bitwiseGrads()
	if err != nil {
		return StepResult{}, err
	}
	grads := io.host
	nPost := int(m.info.PostStats)
	groupGrads := m.bw.groupGrads(len(micro), len(grads))
	tails := make([][]float32, len(micro)) // [post statistics | loss]
	var loss float64
	for i := range micro {
		if err := io.clear(); err != nil {
			return StepResult{}, err
		}
		post, l, err := m.StepFinish(globalPre)
		if err != nil {
			return StepResult{}, err
		}
		if err := io.read(); err != nil {
			return StepResult{}, err
		}
		copy(groupGrads[i], grads)
		tails[i] = append(slices.Clone(post), float32(l))
		loss += l
	}
	zero2 := m.info.Zero == 2 && m.info.World > 1
	var block *rankBlock
	shard := grads
	if zero2 { // each rank sums only its block: the shard it updates
		block = &rankBlock{m.info.Rank, m.info.World}
		lo, hi := block.of(len(grads))
		shard = grads[lo:hi]
	}
	if err := m.bw.exactSum(ctx, red, groupGrads, m.tensorSegments(), groups, grads, block); err != nil {
		return StepResult{}, fmt.Errorf("reduce gradients: %w", err)
	}
	tail := make([]float32, nPost+1)
	if err := m.bw.exactSum(ctx, red, tails, eachValue(nPost+1), groups, tail, nil); err != nil {
		return StepResult{}, fmt.Errorf("reduce codebook statistics and loss: %w", err)
	}
	if len(ride) > 0 {
		if err := red.Host(ctx, ride); err != nil {
			return StepResult{}, fmt.Errorf("reduce step counters: %w", err)
		}
	}
	if err := io.write(); err != nil {
		return StepResult{}, err
	}
	gradSq, err := m.bw.sumSquares(ctx, red, shard, int(m.info.ParamCount), zero2)
	if err != nil {
		return StepResult{}, err
	}
	if err := m.applyGrads(b.GlobalBatch, tail[:nPost], gradSq); err != nil {
		return StepResult{}, err
	}
	staged := io.took
	if m.info.Zero >= 1 && m.info.World > 1 {
		copied, err := m.gatherParams(ctx, red)
		staged += copied
		if err != nil {
			return StepResult{}, fmt.Errorf("all-gather parameters: %w", err)
		}
	}
	return StepResult{LossSum: loss, GlobalLossSum: float64(tail[nPost]), StageTime: staged}, nil
}
