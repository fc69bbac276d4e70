package ring

import (
	"context"
	"fmt"
	"testing"

	"github.com/lavit-org/lavit/collective"
)

// BenchmarkAllReduce measures the ring's all-reduce; BenchmarkTransferOnly
// the same traffic without the adds: the loopback limit for the all-reduce
// on this machine. Metrics follow nccl-tests: algbw = bytes/time, busbw =
// algbw·2(n−1)/n (GB = 1e9).
// Run: go test -run '^$' -bench . -benchtime 3x ./collective/ring/
func BenchmarkAllReduce(b *testing.B)    { benchRing(b, false) }
func BenchmarkTransferOnly(b *testing.B) { benchRing(b, true) }

func benchRing(b *testing.B, transferOnly bool) {
	for _, size := range []int64{1 << 10, 1 << 20, 64 << 20} {
		for _, n := range []int{2, 3, 4} {
			b.Run(fmt.Sprintf("size=%s/world=%d", collective.FormatSize(size), n), func(b *testing.B) {
				comms := world(b, n, nil)
				bufs := make([][]float32, n)
				for r := range bufs {
					bufs[r] = make([]float32, size/4)
					for i := range bufs[r] {
						bufs[r][i] = float32(r + i%5)
					}
				}
				ctx := context.Background()
				for b.Loop() {
					for r, err := range onAll(comms, func(r int, c *Comm) error {
						if transferOnly {
							return c.TransferOnly(ctx, bufs[r])
						}
						return c.AllReduce(ctx, bufs[r], collective.Sum)
					}) {
						if err != nil {
							b.Fatalf("rank %d: %v", r, err)
						}
					}
				}
				algbw := float64(size) / (b.Elapsed().Seconds() / float64(b.N)) / 1e9
				b.ReportMetric(algbw, "algbw_GBps")
				b.ReportMetric(algbw*collective.BusFactor(n), "busbw_GBps")
			})
		}
	}
}
