package trainer

/*
#include "shim_loader.h"
*/
import "C"

import (
	"context"
	"fmt"
	"sync"
)

// Overlapping the gradient reduction with backward (SetBuckets): the
// shim cuts the gradient buffer into buckets, the last parameters' first,
// and readies each as soon as backward has written all its gradients; a
// goroutine here reduces bucket after bucket (in the same order on every
// rank, so the collective's calls match) while the step's last backward is
// still running on the calling thread. The optimizer step then waits only
// for the last bucket. DESIGN.md, "Overlapped reduction".

// SetBuckets makes the model reduce its gradients in buckets of about
// bytes during the step's last backward (0: after backward, in one
// call; the spec's collective.bucket_mb). Call it on a fresh model, after
// SetPrecision and SetShard. Overlap applies to CPU models in a world of
// more than one (at ZeRO-2 when the reduction has ScatterPart); others
// reduce after backward as before.
func (m *Model) SetBuckets(bytes int64) error {
	if bytes < 0 {
		return fmt.Errorf("gradient buckets of %d bytes: want ≥ 0 (0 is off)", bytes)
	}
	err := withThread(func() error {
		if C.c_set_buckets(&m.lib.api, m.m, C.int64_t(bytes)) != 0 {
			return m.lib.lastError("set buckets")
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.refreshInfo()
}

// overlaps reports whether this step's gradients are reduced bucket by
// bucket during backward.
func (m *Model) overlaps(red Reduce) bool {
	return len(m.info.Buckets) > 0 && m.info.World > 1 && !m.onDevice() && !m.forceStaging && red.Host != nil &&
		(m.info.Zero < 2 || red.ScatterPart != nil)
}

// bucketReducer is what reduces one bucket, grads[off:off+len(buf)] of
// the whole gradient buffer: at ZeRO-2 a reduce-scatter of the part (rank
// r keeps the sums in its block), else an all-reduce, of the part when
// the collective can reduce parts with the bits of the whole.
func (m *Model) bucketReducer(red Reduce) (PartReducer, error) {
	switch {
	case m.info.Zero == 2:
		return red.ScatterPart, nil
	case red.GradsPart != nil:
		return red.GradsPart, nil
	}
	reduce, err := m.gradReducer(red)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, buf []float32, _, _ int) error { return reduce(ctx, buf) }, nil
}

// finishLast finishes the step's last micro-batch: with buckets, while
// its backward runs, a goroutine reduces each bucket as it becomes ready;
// without, it is StepFinish.
func (m *Model) finishLast(ctx context.Context, pre []float32, red Reduce) ([]float32, float64, error) {
	m.overlapped = false
	if !m.overlaps(red) {
		return m.StepFinish(pre)
	}
	reduce, err := m.bucketReducer(red)
	if err != nil {
		return nil, 0, err
	}
	err = withThread(func() error {
		if C.c_arm_buckets(&m.lib.api, m.m) != 0 {
			return m.lib.lastError("arm buckets")
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	grads := m.Grads()
	var wg sync.WaitGroup
	var reduceErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		reduceErr = m.reduceBuckets(ctx, grads, reduce)
	}()
	post, loss, err := m.StepFinish(pre)
	wg.Wait()
	if err != nil {
		return nil, 0, err
	}
	if reduceErr != nil {
		return nil, 0, fmt.Errorf("reduce gradients: %w", reduceErr)
	}
	m.overlapped = true
	return post, loss, nil
}

// reduceBuckets reduces every bucket of grads in order, each once the
// shim says its gradients are final. After a failure it stops; the
// backward on the other thread runs to its end and its step is not
// applied.
func (m *Model) reduceBuckets(ctx context.Context, grads []float32, reduce PartReducer) error {
	for k, b := range m.info.Buckets {
		err := withThread(func() error {
			if C.c_wait_bucket(&m.lib.api, m.m, C.int64_t(k)) != 0 {
				return m.lib.lastError("wait for a gradient bucket")
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := reduce(ctx, grads[b[0]:b[0]+b[1]], int(b[0]), len(grads)); err != nil {
			return fmt.Errorf("bucket %d of %d: %w", k, len(m.info.Buckets), err)
		}
	}
	return nil
}
