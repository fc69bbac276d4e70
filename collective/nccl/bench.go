package nccl

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/lavit-org/lavit/collective"
)

// BackendName is the backend in benchmark rows.
const BackendName = "nccl"

// Bench times an all-reduce (sum, float32) over world ranks in this
// process, one per device 0…world−1, nccl-tests style: warmup untimed
// iterations, then iters timed ones.
func Bench(ctx context.Context, lib *Lib, world int, sizeBytes int64, warmup, iters int) (collective.BenchRow, error) {
	if sizeBytes < 4 || iters < 1 || world < 1 {
		return collective.BenchRow{}, fmt.Errorf("nccl bench: size %d, iters %d, world %d", sizeBytes, iters, world)
	}
	if n, err := lib.DeviceCount(); err != nil {
		return collective.BenchRow{}, err
	} else if n < world {
		return collective.BenchRow{}, fmt.Errorf("nccl bench: world %d needs %d GPUs, %d visible", world, world, n)
	}
	id, err := lib.UniqueID()
	if err != nil {
		return collective.BenchRow{}, err
	}
	comms := make([]*Comm, world)
	bufs := make([]uintptr, world)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := range world {
		wg.Go(func() {
			if bufs[r], errs[r] = lib.DeviceAlloc(r, int(sizeBytes)); errs[r] == nil {
				comms[r], errs[r] = NewComm(ctx, lib, r, r, world, id)
			}
		})
	}
	wg.Wait()
	defer func() {
		for r := range world {
			if comms[r] != nil {
				comms[r].Close()
			}
			if bufs[r] != 0 {
				lib.DeviceFree(r, bufs[r])
			}
		}
	}()
	if err := errors.Join(errs...); err != nil {
		return collective.BenchRow{}, err
	}
	var times []time.Duration
	count := int(sizeBytes / 4)
	for it := range warmup + iters {
		start := time.Now()
		for r := range world {
			wg.Go(func() { errs[r] = comms[r].AllReduce(ctx, bufs[r], count, Float32, collective.Sum) })
		}
		wg.Wait()
		d := time.Since(start)
		if err := errors.Join(errs...); err != nil {
			return collective.BenchRow{}, err
		}
		if it >= warmup {
			times = append(times, d)
		}
	}
	return collective.NewBenchRow(BackendName, "allreduce", sizeBytes, world, times), nil
}
