package ring

import (
	"context"
	"fmt"
	"testing"

	"github.com/lavit-org/lavit/collective"
)

// BenchmarkAllReduce measures the ring's all-reduce; BenchmarkTransferOnly
// the same traffic without the adds: the loopback limit for the all-reduce
// on this machine; BenchmarkReduceScatter and BenchmarkAllGather its two
// halves. Metrics follow nccl-tests: algbw = bytes/time, busbw =
// algbw·2(n−1)/n for the all-reduce, algbw·(n−1)/n for the halves (GB =
// 1e9; the halves' buffers are cut down to a multiple of the world size).
// Run: go test -run '^$' -bench . -benchtime 3x ./collective/ring/
func BenchmarkAllReduce(b *testing.B) {
	benchRing(b, collective.BusFactor, func(ctx context.Context, c *Comm, buf []float32) error {
		return c.AllReduce(ctx, buf, collective.Sum)
	})
}

func BenchmarkTransferOnly(b *testing.B) {
	benchRing(b, collective.BusFactor, func(ctx context.Context, c *Comm, buf []float32) error {
		return c.TransferOnly(ctx, buf)
	})
}

func BenchmarkReduceScatter(b *testing.B) {
	benchRing(b, halfBusFactor, func(ctx context.Context, c *Comm, buf []float32) error {
		return c.ReduceScatter(ctx, buf, collective.Sum)
	})
}

func BenchmarkAllGather(b *testing.B) {
	benchRing(b, halfBusFactor, func(ctx context.Context, c *Comm, buf []float32) error {
		return c.AllGather(ctx, buf)
	})
}

// halfBusFactor is nccl-tests' bus-bandwidth factor of a reduce-scatter
// or all-gather, (n−1)/n.
func halfBusFactor(n int) float64 { return float64(n-1) / float64(n) }

func benchRing(b *testing.B, busFactor func(int) float64, call func(context.Context, *Comm, []float32) error) {
	for _, size := range []int64{1 << 10, 1 << 20, 64 << 20} {
		for _, n := range []int{2, 3, 4} {
			b.Run(fmt.Sprintf("size=%s/world=%d", collective.FormatSize(size), n), func(b *testing.B) {
				comms := world(b, n, nil)
				floats := int(size/4) / n * n
				bufs := make([][]float32, n)
				for r := range bufs {
					bufs[r] = make([]float32, floats)
					for i := range bufs[r] {
						bufs[r][i] = float32(r + i%5)
					}
				}
				ctx := context.Background()
				for b.Loop() {
					for r, err := range onAll(comms, func(r int, c *Comm) error { return call(ctx, c, bufs[r]) }) {
						if err != nil {
							b.Fatalf("rank %d: %v", r, err)
						}
					}
				}
				algbw := float64(4*floats) / (b.Elapsed().Seconds() / float64(b.N)) / 1e9
				b.ReportMetric(algbw, "algbw_GBps")
				b.ReportMetric(algbw*busFactor(n), "busbw_GBps")
			})
		}
	}
}
