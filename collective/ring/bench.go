package ring

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/lavit-org/lavit/collective"
)

// BenchRow is one benchmark result (see collective.BenchRow).
type BenchRow = collective.BenchRow

// Backend names in benchmark rows.
const (
	BackendName = "ring"
	opAllReduce = "allreduce"
	opTransfer  = "transfer_only"
)

// Bench times an in-process world of ranks on loopback: warmup untimed
// iterations, then iters timed ones, each from the moment every rank is
// released to the moment the last rank returns. transferOnly times
// TransferOnly (the transport limit) instead of AllReduce (sum).
func Bench(ctx context.Context, world int, sizeBytes int64, warmup, iters int, transferOnly bool) (BenchRow, error) {
	b, err := newBencher(ctx, world, sizeBytes, nil)
	if err != nil {
		return BenchRow{}, err
	}
	defer b.close()
	op := opAllReduce
	if transferOnly {
		op = opTransfer
	}
	times, err := b.run(ctx, warmup, iters, []bool{transferOnly})
	if err != nil {
		return BenchRow{}, err
	}
	return collective.NewBenchRow(BackendName, op, sizeBytes, world, times[0]), nil
}

// BenchWithLimit times AllReduce and TransferOnly on the same world,
// interleaved iteration by iteration (loopback throughput drifts with the
// machine's load, so the limit must be measured alongside), and sets the
// all-reduce row's OfLimit.
func BenchWithLimit(ctx context.Context, world int, sizeBytes int64, warmup, iters int) (allreduce, limit BenchRow, err error) {
	b, err := newBencher(ctx, world, sizeBytes, nil)
	if err != nil {
		return BenchRow{}, BenchRow{}, err
	}
	defer b.close()
	times, err := b.run(ctx, warmup, iters, []bool{false, true})
	if err != nil {
		return BenchRow{}, BenchRow{}, err
	}
	allreduce = collective.NewBenchRow(BackendName, opAllReduce, sizeBytes, world, times[0])
	limit = collective.NewBenchRow(BackendName, opTransfer, sizeBytes, world, times[1])
	allreduce.OfLimit = pairedShare(times[0], times[1])
	return allreduce, limit, nil
}

// pairedShare is the median over iterations of limit time / all-reduce
// time, each all-reduce paired with the transfer-only run right after it:
// the machine's drift over a run (it swings ±10 % on a shared VM) moves
// both of a pair alike, so the share is steadier than a ratio of the two
// medians.
func pairedShare(allreduce, limit []time.Duration) float64 {
	var shares []float64
	for i := range min(len(allreduce), len(limit)) {
		if allreduce[i] > 0 {
			shares = append(shares, float64(limit[i])/float64(allreduce[i]))
		}
	}
	if len(shares) == 0 {
		return 0
	}
	slices.Sort(shares)
	mid := len(shares) / 2
	if len(shares)%2 == 0 {
		return (shares[mid-1] + shares[mid]) / 2
	}
	return shares[mid]
}

type bencher struct {
	comms []*Comm
	bufs  [][]float32
}

func newBencher(ctx context.Context, world int, sizeBytes int64, edit func(*Config)) (*bencher, error) {
	if sizeBytes < 4 {
		return nil, fmt.Errorf("size %d bytes: want at least one float32 (4 bytes)", sizeBytes)
	}
	if world < 1 {
		return nil, fmt.Errorf("world %d: want ≥ 1", world)
	}
	if edit == nil {
		edit = func(*Config) {}
	}
	comms, err := localWorld(ctx, world, edit)
	if err != nil {
		return nil, err
	}
	b := &bencher{comms: comms}
	for r := range world {
		buf := make([]float32, sizeBytes/4)
		for i := range buf {
			buf[i] = float32(r+i%7) * 0.25
		}
		b.bufs = append(b.bufs, buf)
	}
	return b, nil
}

func (b *bencher) close() {
	for _, c := range b.comms {
		c.Close()
	}
}

// run does warmup+iters rounds; each round runs every mode once, in order.
// It returns the timed durations per mode.
func (b *bencher) run(ctx context.Context, warmup, iters int, modes []bool) ([][]time.Duration, error) {
	if iters < 1 {
		return nil, fmt.Errorf("iters %d: want ≥ 1", iters)
	}
	times := make([][]time.Duration, len(modes))
	errs := make([]error, len(b.comms))
	for it := range warmup + iters {
		for m, transferOnly := range modes {
			var wg sync.WaitGroup
			start := time.Now()
			for r, c := range b.comms {
				wg.Go(func() {
					if transferOnly {
						errs[r] = c.TransferOnly(ctx, b.bufs[r])
					} else {
						errs[r] = c.AllReduce(ctx, b.bufs[r], collective.Sum)
					}
				})
			}
			wg.Wait()
			d := time.Since(start)
			if err := errors.Join(errs...); err != nil {
				return nil, err
			}
			if it >= warmup {
				times[m] = append(times[m], d)
			}
		}
	}
	return times, nil
}
