package trainer

/*
#include "shim_loader.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/lavit-org/lavit/checkpoint"
)

// Sharding (ZeRO) and gradient accumulation: how one step runs when the
// optimizer state is split over the ranks or the local batch is split into
// micro-batches. The math is the plain data-parallel step's (DESIGN.md,
// "Sharded optimizer and accumulation").

// SetShard makes the model rank `rank` of `world` at ZeRO stage zero (0:
// the whole optimizer state on every rank; 1: the fp32 master weights and
// Adam moments of one shard per rank, the parameters all-gathered after
// each step; 2: also the gradients reduce-scattered instead of
// all-reduced). Call it on a fresh model, before its first step or before
// Load: states are the same bytes at every world size and stage.
func (m *Model) SetShard(rank, world, zero int) error {
	err := withThread(func() error {
		if C.c_set_shard(&m.lib.api, m.m, C.int64_t(rank), C.int64_t(world), C.int(zero)) != 0 {
			return m.lib.lastError("set shard")
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.refreshInfo()
}

// SetMicroBatch sets how many of the local batch's samples one
// forward/backward pass takes (0: all of them). A step then accumulates
// the gradients, batch statistics and losses of its micro-batches before
// reducing them, so it equals one pass over the whole batch.
func (m *Model) SetMicroBatch(n int) error {
	if n < 0 {
		return fmt.Errorf("micro-batch %d: want ≥ 0 (0 is the whole local batch)", n)
	}
	m.microBatch = n
	return nil
}

// forwardBackward runs the local batch's forward and backward passes, one
// micro-batch at a time, reducing the batch statistics in between (stage
// 1's keep ratio needs the global sums before any micro-batch can
// finish, so every micro-batch begins first: only its selection graph is
// held). It returns this rank's summed post statistics and loss sum.
func (m *Model) forwardBackward(ctx context.Context, b *Batch, red Reduce) ([]float32, float64, error) {
	micro, err := splitBatch(b, m.microBatch)
	if err != nil {
		return nil, 0, err
	}
	if m.info.Stage == 2 {
		// Each pass pays only for its longest row, not for max_len.
		for i, mb := range micro {
			micro[i] = trimPadding(mb)
		}
	}
	if len(micro) == 1 {
		pre, err := m.StepBegin(micro[0])
		if err != nil {
			return nil, 0, err
		}
		// Nothing to reduce without pre statistics (stage 2): a rank with
		// several micro-batches makes no call either, so neither may this
		// one (ranks' micro-batch counts differ when W does not divide
		// the batch).
		if len(pre) > 0 {
			if err := red.Host(ctx, pre); err != nil {
				return nil, 0, fmt.Errorf("reduce batch statistics: %w", err)
			}
		}
		return m.finishLast(ctx, pre, red)
	}
	m.accPre = resize(m.accPre, int(m.info.PreStats))
	m.accPost = resize(m.accPost, int(m.info.PostStats))
	var loss float64
	finished := 0
	finish := func(pre []float32) error {
		finished++
		var post []float32
		var l float64
		var err error
		if finished == len(micro) {
			post, l, err = m.finishLast(ctx, pre, red)
		} else {
			post, l, err = m.StepFinish(pre)
		}
		if err != nil {
			return err
		}
		addTo(m.accPost, post)
		loss += l
		return nil
	}
	if m.info.PreStats == 0 {
		// Nothing to reduce between begin and finish: one graph at a time.
		for _, mb := range micro {
			if _, err := m.StepBegin(mb); err != nil {
				return nil, 0, err
			}
			if err := finish(nil); err != nil {
				return nil, 0, err
			}
		}
		return m.accPost, loss, nil
	}
	for _, mb := range micro {
		pre, err := m.StepBegin(mb)
		if err != nil {
			return nil, 0, err
		}
		addTo(m.accPre, pre)
	}
	if err := red.Host(ctx, m.accPre); err != nil {
		return nil, 0, fmt.Errorf("reduce batch statistics: %w", err)
	}
	for range micro {
		if err := finish(m.accPre); err != nil {
			return nil, 0, err
		}
	}
	return m.accPost, loss, nil
}

// splitBatch cuts b into micro-batches of at most n samples (n ≤ 0 or
// n ≥ the batch: b itself), sharing b's memory.
func splitBatch(b *Batch, n int) ([]*Batch, error) {
	total := len(b.Positions)
	if n <= 0 || n >= total {
		return []*Batch{b}, nil
	}
	// perSample is how many values of a per-sample array belong to one
	// sample (0 for an absent array).
	perSample := func(name string, n int) (int, error) {
		if n%total != 0 {
			return 0, fmt.Errorf("batch: %d %s do not split into %d samples", n, name, total)
		}
		return n / total, nil
	}
	imgPer, err := perSample("image floats", len(b.Images))
	if err != nil {
		return nil, err
	}
	featPer, err := perSample("image feature floats", len(b.ImageFeats))
	if err != nil {
		return nil, err
	}
	keepPer, err := perSample("image keep flags", len(b.ImageKeep))
	if err != nil {
		return nil, err
	}
	var out []*Batch
	for from := 0; from < total; from += n {
		to := min(from+n, total)
		mb := &Batch{Step: b.Step, GlobalBatch: b.GlobalBatch, Positions: b.Positions[from:to], SeqLen: b.SeqLen}
		if b.Valid != nil {
			mb.Valid = b.Valid[from:to]
		}
		if imgPer > 0 {
			mb.Images = b.Images[from*imgPer : to*imgPer]
		}
		if len(b.Tokens) > 0 {
			mb.Tokens = b.Tokens[from*b.SeqLen : to*b.SeqLen]
		}
		if len(b.Targets) > 0 {
			mb.Targets = b.Targets[from*b.SeqLen : to*b.SeqLen]
		}
		if featPer > 0 {
			mb.ImageFeats = b.ImageFeats[from*featPer : to*featPer]
			mb.ImageKeep = b.ImageKeep[from*keepPer : to*keepPer]
			mb.ImageSlots = b.ImageSlots[from*b.SeqLen : to*b.SeqLen]
		}
		out = append(out, mb)
	}
	return out, nil
}

func resize(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n)
	}
	s = s[:n]
	clear(s)
	return s
}

func addTo(dst, src []float32) {
	for i, v := range src {
		dst[i] += v
	}
}

// scatterGrads reduce-scatters the flat gradient buffer (ZeRO-2): rank r
// ends with the summed gradients of its shard, in place; like
// reduceGrads, on the device when the collective can, else through the
// host (a GPU model's staging buffer).
func (m *Model) scatterGrads(ctx context.Context, red Reduce) (time.Duration, error) {
	want := int(m.info.GradWords)
	if !m.onDevice() && !m.forceStaging {
		return 0, scatterWhole(ctx, red.Scatter, m.Grads(), want, "reduce-scatter")
	}
	if err := m.Sync(); err != nil {
		return 0, err
	}
	if red.DeviceScatter != nil && !m.forceStaging {
		return 0, red.DeviceScatter(ctx, m.GradsDevicePtr(), want)
	}
	return m.viaStaging(m.stageGrads, want, func(buf []float32) error {
		return scatterWhole(ctx, red.Scatter, buf, want, "reduce-scatter")
	})
}

// gatherParams all-gathers the flat parameter buffer after each rank
// updated its shard (ZeRO-1 and 2).
func (m *Model) gatherParams(ctx context.Context, red Reduce) (time.Duration, error) {
	want := int(m.info.ParamWords)
	if !m.onDevice() && !m.forceStaging {
		return 0, scatterWhole(ctx, red.Gather, m.Params(), want, "all-gather")
	}
	if err := m.Sync(); err != nil {
		return 0, err
	}
	if red.DeviceGather != nil && !m.forceStaging {
		return 0, red.DeviceGather(ctx, uintptr(C.c_param_data(&m.lib.api, m.m)), want)
	}
	return m.viaStaging(m.stageParams, want, func(buf []float32) error {
		return scatterWhole(ctx, red.Gather, buf, want, "all-gather")
	})
}

// viaStaging copies a flat buffer of `words` float32 words to the model's
// host staging buffer, runs op on it and copies it back, returning what
// the copies cost.
func (m *Model) viaStaging(stage func(toHost bool) error, words int, op func([]float32) error) (time.Duration, error) {
	buf, err := m.gradStaging()
	if err != nil {
		return 0, err
	}
	if len(buf) < words {
		return 0, fmt.Errorf("the staging buffer holds %d words, the flat buffer %d", len(buf), words)
	}
	buf = buf[:words]
	began := time.Now()
	if err := stage(true); err != nil {
		return 0, err
	}
	copied := time.Since(began)
	if err := op(buf); err != nil {
		return copied, err
	}
	began = time.Now()
	err = stage(false)
	return copied + time.Since(began), err
}

// scatterWhole hands the whole flat buffer to a reduce-scatter or
// all-gather: a missing collective or a partial buffer is an error, never
// a silent no-op.
func scatterWhole(ctx context.Context, op Reducer, buf []float32, want int, name string) error {
	if op == nil {
		return fmt.Errorf("the model is sharded (ZeRO) but the collective has no %s", name)
	}
	if len(buf) != want {
		return fmt.Errorf("the buffer handed to the %s holds %d floats, the model's flat buffer %d: refusing to use part of it", name, len(buf), want)
	}
	return op(ctx, buf)
}

// stageParams copies the parameters to the staging buffer (toHost) or back.
func (m *Model) stageParams(toHost bool) error {
	return withThread(func() error {
		if C.c_params_stage(&m.lib.api, m.m, cFlag(toHost)) != 0 {
			return m.lib.lastError("stage parameters")
		}
		return nil
	})
}

// shardGradSq is the sum of squares of this rank's block of the summed
// gradients (frozen groups left out), as the float pair hi + lo.
func (m *Model) shardGradSq() (hi, lo float32, err error) {
	var h, l C.float
	err = withThread(func() error {
		if C.c_grad_sq(&m.lib.api, m.m, &h, &l) != 0 {
			return m.lib.lastError("gradient norm")
		}
		return nil
	})
	return float32(h), float32(l), err
}

// allocOptimizer allocates the optimizer's state now (as the first step
// would), with a host buffer for gathering it, and refreshes Info: tests
// read what a rank holds without training.
func (m *Model) allocOptimizer() error {
	err := withThread(func() error {
		if C.c_optim_gather(&m.lib.api, m.m) == nil {
			return m.lib.lastError("allocate the optimizer state")
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.refreshInfo()
}

// Sharded reports whether each rank holds only a shard of the optimizer
// state (ZeRO ≥ 1 in a world of more than one): State then needs
// GatherState first.
func (m *Model) Sharded() bool { return m.info.Zero >= 1 && m.info.World > 1 }

// GatherState collects the sharded optimizer state on this rank for the
// next State call (a checkpoint): every rank calls it at the same step
// with the collective's all-gather. The whole moments (and in bf16 the
// master weights) are held on the host until State (Info.GatherParts
// times the flat buffer's length); a no-op when the model is not sharded.
func (m *Model) GatherState(ctx context.Context, gather Reducer) error {
	if !m.Sharded() {
		return nil
	}
	if gather == nil {
		return errors.New("gather the optimizer state: the collective has no all-gather")
	}
	var p *C.float
	err := withThread(func() error {
		if p = C.c_optim_gather(&m.lib.api, m.m); p == nil {
			return m.lib.lastError("gather the optimizer state")
		}
		return nil
	})
	if err != nil {
		return err
	}
	n, k := int(m.info.GradNumel), m.info.GatherParts
	all := unsafe.Slice((*float32)(unsafe.Pointer(p)), k*n)
	for i := range k {
		if err := gather(ctx, all[i*n:(i+1)*n]); err != nil {
			return fmt.Errorf("gather the optimizer state: %w", err)
		}
	}
	return nil
}

// Precisions a model trains in (SetPrecision).
const (
	PrecisionFP32 = "fp32"
	PrecisionBF16 = "bf16"
)

// SetPrecision makes the model train in precision (PrecisionFP32, the
// default, or PrecisionBF16: bf16 parameters and activations, float32
// losses, master weights and Adam moments), with the gradients summed in
// reduceDtype (PrecisionFP32, or PrecisionBF16 to reduce them as bf16,
// half the bytes: the collective must then sum them with a bf16 sum, see
// GradsBF16). Call it on a fresh model, like SetShard.
func (m *Model) SetPrecision(precision, reduceDtype string) error {
	bf16, err := precisionFlag("precision", precision)
	if err != nil {
		return err
	}
	reduce, err := precisionFlag("reduce dtype", reduceDtype)
	if err != nil {
		return err
	}
	err = withThread(func() error {
		if C.c_set_precision(&m.lib.api, m.m, cFlag(bf16), cFlag(reduce)) != 0 {
			return m.lib.lastError("set precision")
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.refreshInfo()
}

// precisionFlag reads a precision name ("" is fp32) as "is it bf16".
func precisionFlag(what, v string) (bool, error) {
	switch v {
	case "", PrecisionFP32:
		return false, nil
	case PrecisionBF16:
		return true, nil
	}
	return false, fmt.Errorf("%s %q: want %s or %s", what, v, PrecisionFP32, PrecisionBF16)
}

// SetActivationCheckpointing makes training steps keep only each
// transformer block's inputs and recompute the block in backward (the
// spec's activation_checkpointing): the same gradients for less memory
// and about one more forward pass of compute.
func (m *Model) SetActivationCheckpointing(on bool) error {
	return withThread(func() error {
		if C.c_set_checkpointing(&m.lib.api, m.m, cFlag(on)) != 0 {
			return m.lib.lastError("activation checkpointing")
		}
		return nil
	})
}

// cFlag is b as the C ABI's 0/1 int.
func cFlag(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// BlockedLayout is the size in bytes of each rank's part of a blocked
// state (StatePart) of this model at its world size: what a checkpoint's
// parts hold, rank 0's first.
func (m *Model) BlockedLayout() []int64 {
	in := m.info
	return checkpoint.BlockedLayout(in.ParamCount, in.GradNumel/int64(in.World), in.World, in.Codebook*in.CodeDim)
}
