package trainer

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkBitwiseStep is a step's time in bitwise mode against the fast
// path, on the tiny stage-1 and stage-2 models and a medium stage-2 model
// (midLM: 3.4M parameters; the GPU check's 254M medium LM would take about 13 s a step here) at worlds 1 and 2 (ranks
// in this process over a loopback ring, one libtorch thread each), with
// the global batch of 8 in groups of 2. Three modes: fast (the rank's
// share in one forward/backward), fast-groups (the fast path with
// micro-batches of the group size: the extra micro-batch cost alone), and
// bitwise (that plus the fixed-point sums). It also reports the bytes one
// rank hands the all-reduce for the gradients per step: 4 per value fast,
// 8 per value plus 4 per tensor bitwise.
func BenchmarkBitwiseStep(b *testing.B) {
	lib, err := Load("")
	if err != nil {
		b.Skipf("no libtorch shim: %v", err)
	}
	if err := lib.SetThreads(1); err != nil {
		b.Fatal(err)
	}
	tok, err := lib.NewModel(TinyStage1(), "cpu", 11)
	if err != nil {
		b.Fatal(err)
	}
	defer tok.Close()
	if err := shortSchedule.EnableVQAt(tok, 0); err != nil {
		b.Fatal(err)
	}
	const group, steps = 2, 12
	for _, stage := range []string{"stage1", "stage2", "stage2-mid"} {
		for _, world := range []int{1, 2} {
			for _, mode := range []string{"fast", "fast-groups", "bitwise"} {
				b.Run(fmt.Sprintf("%s/world=%d/%s", stage, world, mode), func(b *testing.B) {
					for range b.N {
						ms, bytes := benchSteps(b, lib, tok, stage, world, mode, group, steps)
						b.ReportMetric(ms, "ms/step")
						b.ReportMetric(bytes, "grad_bytes/step")
					}
				})
			}
		}
	}
}

// benchSteps trains steps steps on world ranks and returns the mean time
// of the steps after the first two, and the gradient bytes per step.
func benchSteps(b *testing.B, lib *Lib, tok *Model, stage string, world int, mode string, group, steps int) (float64, float64) {
	b.StopTimer()
	comms := rings(b, world)
	models := make([]*Model, world)
	batches := make([][]*Batch, world)
	for r := range world {
		cfg := TinyStage1()
		switch stage {
		case "stage2":
			cfg = TinyStage2()
		case "stage2-mid":
			cfg = midLM()
		}
		m, err := lib.NewModel(cfg, "cpu", 21)
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		if err := m.SetShard(r, world, 0); err != nil {
			b.Fatal(err)
		}
		switch mode {
		case "fast-groups":
			err = m.SetMicroBatch(group)
		case "bitwise":
			err = m.SetBitwise(group)
		}
		if err != nil {
			b.Fatal(err)
		}
		models[r] = m
		groups := 8 / group
		from, to := r*groups/world*group, (r+1)*groups/world*group
		for s := range steps {
			if stage == "stage1" {
				_, bt := SyntheticBatch(0, int64(s), 8, from, to)
				batches[r] = append(batches[r], bt)
			} else {
				bt, err := Stage2Batch(tok, TinyVocab(int(tok.Info().Codebook)), 55, 0, int64(s), 8, from, to, false)
				if err != nil {
					b.Fatal(err)
				}
				batches[r] = append(batches[r], bt)
			}
		}
	}
	var took time.Duration
	errs := make([]error, world)
	var wg sync.WaitGroup
	b.StartTimer()
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			red := Local
			if world > 1 {
				red = ringReduce(comms[r])
			}
			var began time.Time
			for s := range steps {
				if s == 2 {
					began = time.Now()
				}
				if _, err := models[r].Step(context.Background(), batches[r][s], red, nil); err != nil {
					errs[r] = err
					if comms[r] != nil {
						comms[r].Abort(err)
					}
					return
				}
			}
			if r == 0 {
				took = time.Since(began)
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	for r, err := range errs {
		if err != nil {
			b.Fatalf("rank %d: %v", r, err)
		}
	}
	info := models[0].Info()
	bytes := 4 * float64(info.GradWords)
	if mode == "bitwise" {
		bytes = 8*float64(info.GradWords) + 4*float64(len(info.Params)+1)
	}
	if world == 1 {
		bytes = 0
	}
	return float64(took.Milliseconds()) / float64(steps-2), bytes
}

// midLM is the tiny LM widened and deepened (d_model 256, 4 layers,
// MLP 1024: 3.4M parameters), for costs that grow with the parameters.
func midLM() Config {
	cfg := TinyStage2()
	lm := *cfg.LM
	lm.DModel, lm.Layers, lm.Heads, lm.MLP = 256, 4, 4, 1024
	cfg.LM = &lm
	return cfg
}
