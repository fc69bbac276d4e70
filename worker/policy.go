package worker

import "time"

// stepPolicy decides what the step loop does besides training: when to
// report progress and when to take a checkpoint. It is pure (the loop
// feeds it the clock and the coordinator's requests), so the rules are
// table-tested.
//
// A checkpoint must be taken by every rank after the same step. Steps
// counted by the spec (checkpoint.every_steps, and the final step) are
// known to every rank; a timed checkpoint (checkpoint.every_minutes) or a
// `run checkpoint` request is rank 0's decision, made before a step and
// carried to every rank by that step's last all-reduce (trainer.Model.Step
// sums it with the codebook statistics), so the checkpoint is taken right
// after that step.
type stepPolicy struct {
	total           int64         // steps in the run
	reportEvery     int64         // metrics.every_steps (≥ 1)
	checkpointEvery int64         // checkpoint.every_steps (0: only the final one)
	checkpointTimer time.Duration // checkpoint.every_minutes (0: off)
}

// stepActions is what follows a completed step.
type stepActions struct {
	report     bool
	checkpoint bool
}

// wantCheckpoint is rank 0's wish, decided before a step: a `run
// checkpoint` request not yet honoured, or the timer since the last
// checkpoint (or the start of this generation) running out.
func (p stepPolicy) wantCheckpoint(sinceLast time.Duration, requested bool) bool {
	return requested || (p.checkpointTimer > 0 && sinceLast >= p.checkpointTimer)
}

// after decides what follows once done steps are complete; asked is rank
// 0's wish for this step as every rank received it.
func (p stepPolicy) after(done int64, asked bool) stepActions {
	last := done >= p.total
	return stepActions{
		report:     last || done%max(p.reportEvery, 1) == 0,
		checkpoint: last || asked || (p.checkpointEvery > 0 && done%p.checkpointEvery == 0),
	}
}
