package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/trainer"
)

// progress accumulates the step time split between reports and sends rank
// 0's progress report (step, loss, samples/s, the split, the model's
// metrics) to the coordinator and the log.
type progress struct {
	r            *training
	sum          stepTiming    // since the last report
	staged       time.Duration // copying a GPU model's gradients to the host and back, since the last report
	steps        int
	since        time.Time // the last report
	bad          int       // masked samples so far in this generation
	cutCaptions  int       // captions cut to fit the sequence so far in this generation
	restoreNote  string
	restoredFrom int64
}

// stepTiming splits one step's wall time.
type stepTiming struct {
	data      time.Duration // waiting for the step's samples
	compute   time.Duration // the trainer's forward, backward, optimizer
	allreduce time.Duration // moving and adding bytes in the collective
	idle      time.Duration // waiting in the collective for a slower peer
	other     time.Duration // reports and checkpoints
	wall      time.Duration
}

func newProgress(r *training, restoredFrom int64, note string) *progress {
	return &progress{r: r, since: time.Now(), restoredFrom: restoredFrom, restoreNote: note}
}

func (p *progress) addBad(n int) { p.bad += n }

// addCutCaptions counts a batch's captions cut to fit the sequence (stage 2).
func (p *progress) addCutCaptions(b *trainer.Batch) {
	if b != nil {
		p.cutCaptions += b.CutCaptions
	}
}

// addStaged records what copying the gradients through host memory cost
// (a GPU model on the ring).
func (p *progress) addStaged(d time.Duration) { p.staged += d }

func (p *progress) addStep(t stepTiming) {
	p.steps++
	p.sum.data += t.data
	p.sum.compute += t.compute
	p.sum.allreduce += t.allreduce
	p.sum.idle += t.idle
	p.sum.other += t.other
	p.sum.wall += t.wall
}

// report sends the progress after step (rank 0; other ranks only start a
// new interval). lossSum is the step's loss summed over every rank.
func (p *progress) report(ctx context.Context, step int64, lossSum float64) error {
	r := p.r
	defer func() { p.sum, p.staged, p.steps, p.since = stepTiming{}, 0, 0, time.Now() }()
	if r.rank != 0 {
		return nil
	}
	n := max(p.steps, 1)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
	batch := r.spec.GlobalBatch
	loss := lossSum / float64(batch)
	timing := wire.StepTiming{DataMs: ms(p.sum.data), ComputeMs: ms(p.sum.compute), AllReduceMs: ms(p.sum.allreduce),
		IdleMs: ms(p.sum.idle), OtherMs: ms(p.sum.other), StepMs: ms(p.sum.wall)}
	rate := 0.0
	if el := time.Since(p.since).Seconds(); el > 0 && p.steps > 0 {
		rate = float64(p.steps*batch) / el
	}
	metrics := map[string]float64{"bad_samples": float64(p.bad)}
	if r.spec.Stage == 2 {
		metrics["cut_captions"] = float64(p.cutCaptions)
	}
	if p.staged > 0 {
		metrics["grad_stage_ms"] = ms(p.staged) // per step, part of the compute time
	}
	if c := r.ckpt; c.taken > 0 {
		metrics["checkpoints"], metrics["ckpt_stall_ms"] = float64(c.taken), c.stallMs
	}
	if m, err := r.model.Metrics(); err == nil {
		for k, v := range m {
			if len(metrics) < 48 {
				metrics[k] = v
			}
		}
	}
	r.log.Info("progress", "step", step, "of", r.policy.total, "loss", fmt.Sprintf("%.4f", loss), "samples_per_s", fmt.Sprintf("%.1f", rate),
		"step_ms", fmt.Sprintf("%.1f", timing.StepMs), "data_ms", fmt.Sprintf("%.2f", timing.DataMs), "compute_ms", fmt.Sprintf("%.1f", timing.ComputeMs),
		"allreduce_ms", fmt.Sprintf("%.2f", timing.AllReduceMs), "idle_ms", fmt.Sprintf("%.2f", timing.IdleMs))
	req := &wire.ProgressRequest{
		Instance: r.j.Instance, Run: r.j.Desired.Run, Generation: r.j.Desired.Generation, Rank: r.rank,
		Step: step, TotalSteps: r.policy.total, Loss: loss, SamplesPerS: rate, Timing: timing, Metrics: metrics,
		RestoreNote: p.restoreNote, RestoredFrom: p.restoredFrom,
	}
	cctx, cancel := r.j.callContext(ctx)
	defer cancel()
	if _, err := wire.ReportProgress.Call(cctx, r.j.Client, req); err != nil {
		if wire.HasCode(err, wire.CodeStale) {
			return fmt.Errorf("%w: %v", ErrStaleGeneration, err)
		}
		r.log.Warn("progress report not delivered", "err", err) // the next one carries the news
	}
	return nil
}
