package trainer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/testutil"
)

// The Go-driven step (StepBegin, StepFinish, ApplyGrads through cgo, with
// the reductions as Go calls) against the same step looped inside C++
// (BenchSteps): the difference is the binding's overhead. Run with
// -benchtime=Nx; both report ms/step and the parameter count.

func benchModels(b *testing.B, stage int) (*Model, *Batch) {
	lib := loadLib(b)
	if stage == 1 {
		m, err := lib.NewModel(TinyStage1(), "cpu", 1)
		if err != nil {
			b.Fatal(err)
		}
		_, batch := SyntheticBatch(0, 0, TinyBatch, 0, TinyBatch)
		return m, batch
	}
	tok, err := lib.NewModel(TinyStage1(), "cpu", 1)
	if err != nil {
		b.Fatal(err)
	}
	defer tok.Close()
	sched := Stage1Schedule{Batch: 8, PhaseA: 1, PhaseB: 0, KMeansBatches: 2}
	if err := TrainStage1(context.Background(), tok, 0, sched, nil); err != nil {
		b.Fatal(err)
	}
	if err := sched.EnableVQAt(tok, 0); err != nil {
		b.Fatal(err)
	}
	m, err := lib.NewModel(TinyStage2(), "cpu", 1)
	if err != nil {
		b.Fatal(err)
	}
	batch, err := Stage2Batch(tok, TinyVocab(256), 55, 0, 0, TinyBatch, 0, TinyBatch, false)
	if err != nil {
		b.Fatal(err)
	}
	return m, batch
}

// BenchmarkStepOverhead interleaves blocks of Go-driven and C++-looped
// steps on the same model and batch (so machine noise hits both alike) and
// reports the medians and the overhead, the median of the paired per-round
// ratios. One iteration = 20 rounds of 20 steps each way; run with
// -benchtime=1x.
func BenchmarkStepOverhead(b *testing.B) {
	for _, stage := range []int{1, 2} {
		b.Run(fmt.Sprintf("stage%d", stage), func(b *testing.B) {
			m, batch := benchModels(b, stage)
			defer m.Close()
			ctx := context.Background()
			const rounds, block = 20, 20
			var goMS, cppMS, ratios []float64
			for i := 0; i < b.N; i++ {
				for r := 0; r < rounds; r++ {
					start := time.Now()
					for k := 0; k < block; k++ {
						if _, err := m.Step(ctx, batch, Local, nil); err != nil {
							b.Fatal(err)
						}
					}
					goMS = append(goMS, float64(time.Since(start).Microseconds())/1000/block)
					ms, err := m.BenchSteps(batch, block)
					if err != nil {
						b.Fatal(err)
					}
					cppMS = append(cppMS, ms)
					ratios = append(ratios, goMS[len(goMS)-1]/ms)
				}
			}
			g, c := testutil.Median(goMS), testutil.Median(cppMS)
			b.ReportMetric(g, "go_ms/step")
			b.ReportMetric(c, "cpp_ms/step")
			b.ReportMetric(100*(testutil.Median(ratios)-1), "overhead_%")
			b.ReportMetric(float64(m.Info().ParamCount), "params")
		})
	}
}
