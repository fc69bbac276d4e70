package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/trainer"
)

// Checkpoints on the worker side: at a step boundary every rank copies the
// model's state to host memory (the only pause the step loop sees) and a
// background goroutine uploads this rank's 1/W slice with its sha256, then
// reports it to the coordinator, whose leader writes the manifest once
// every part is in and commits it. Restore fetches every part of the newest
// committed checkpoint (any world size), verifies it, and falls back to an
// older one when a part is missing or corrupt.

// saver uploads one checkpoint at a time in the background.
type saver struct {
	r        *runState
	inFlight chan struct{} // closed when the running upload ends; nil if none
	lastErr  error
	stallMs  float64 // last host-copy pause
	taken    int
}

// maybeWait blocks until the previous upload has finished.
func (s *saver) wait(ctx context.Context) error {
	if s.inFlight == nil {
		return nil
	}
	select {
	case <-s.inFlight:
		s.inFlight = nil
		return s.lastErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// save takes a checkpoint of the state after `step` steps (the next step to
// run is `step`). The pause is the host copy, plus waiting for the previous
// upload if it has not finished.
func (s *saver) save(ctx context.Context, step int64) error {
	r := s.r
	began := time.Now()
	if err := s.wait(ctx); err != nil {
		r.log.Warn("the previous checkpoint upload failed; it is not committed", "err", err)
	}
	state, err := r.model.State()
	if err != nil {
		return fmt.Errorf("checkpoint at step %d: copy the state: %w", step, err)
	}
	stall := float64(time.Since(began).Microseconds()) / 1000
	s.stallMs = stall
	s.taken++
	done := make(chan struct{})
	s.inFlight = done
	go func() {
		defer close(done)
		t0 := time.Now()
		s.lastErr = r.uploadPart(ctx, step, state)
		if s.lastErr == nil {
			r.log.Info("checkpoint part saved", "step", step, "bytes", len(state), "stall_ms", stall, "upload", time.Since(t0).Round(time.Millisecond))
		}
		if s.lastErr != nil && ctx.Err() == nil {
			r.log.Warn("checkpoint part not saved", "step", step, "err", s.lastErr)
		}
	}()
	return nil
}

// uploadPart writes this rank's part (retrying while the store refuses)
// and reports it to the coordinator.
func (r *runState) uploadPart(ctx context.Context, step int64, state []byte) error {
	dir := checkpoint.Dir(r.spec.Checkpoint.URL, r.j.Desired.Run, step)
	var part checkpoint.Part
	wait := 200 * time.Millisecond
	for {
		var err error
		part, err = checkpoint.WritePart(ctx, dir, state, r.rank, r.world)
		if err == nil {
			break
		}
		r.log.Warn("checkpoint part upload failed; retrying", "step", step, "retry_in", wait, "err", err)
		if err := sleepCtx(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, 5*time.Second)
	}
	if v := os.Getenv("LAVIT_TEST_CRASH_AFTER_PART"); v != "" {
		if n, _ := strconv.ParseInt(v, 10, 64); n == step {
			r.log.Error("test hook: exiting after writing the part, before reporting it", "step", step)
			os.Exit(137)
		}
	}
	req := &wire.CheckpointPartRequest{
		Instance: r.j.Instance, Run: r.j.Desired.Run, Generation: r.j.Desired.Generation, Rank: r.rank, World: r.world, Step: step,
		Part: wire.CheckpointPart(part),
	}
	if r.rank == 0 {
		req.Meta = r.checkpointMeta(state, part)
	}
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := wire.ReportCheckpointPart.Call(cctx, r.j.Client, req)
		cancel()
		if err == nil {
			return nil
		}
		if wire.HasCode(err, wire.CodeStale) || wire.HasCode(err, wire.CodeBadRequest) || ctx.Err() != nil {
			return fmt.Errorf("report checkpoint part: %w", err)
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
	}
}

// runMeta is what every checkpoint of the run records that does not
// change during it: the config and spec hashes, the build and the
// parameter table.
func (r *runState) runMeta() wire.CheckpointMeta {
	cfg, _ := json.Marshal(r.model.Config())
	spec, _ := json.Marshal(r.spec)
	m := wire.CheckpointMeta{ConfigHash: checkpoint.SHA256(cfg), SpecHash: checkpoint.SHA256(spec), CodeVersion: r.j.Build}
	for _, p := range trainer.CheckpointParams(r.model.Info().Params) {
		m.Params = append(m.Params, wire.ParamInfo(p))
	}
	return m
}

// checkpointMeta describes the whole checkpoint (rank 0). A world of one's
// part is the whole state, whose checksum is then already known.
func (r *runState) checkpointMeta(state []byte, part checkpoint.Part) *wire.CheckpointMeta {
	sum := part.SHA256
	if part.Bytes != int64(len(state)) {
		sum = checkpoint.SHA256(state)
	}
	m := r.meta
	m.StateBytes, m.StateSHA256 = int64(len(state)), sum
	return &m
}

// listCheckpoints asks the coordinator for the run's committed checkpoints.
func listCheckpoints(ctx context.Context, c *wire.Client, run string) ([]wire.CheckpointInfo, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	reply, err := wire.ListCheckpoints.Call(cctx, c, &wire.RunRequest{ID: run})
	if err != nil {
		return nil, fmt.Errorf("list checkpoints of run %s: %w", run, err)
	}
	return reply.Checkpoints, nil
}

// restore loads the newest committed checkpoint at or before the desired
// start step that verifies, and returns its step (0 and no error when
// there is none to restore) and a note when it had to skip one.
func (r *runState) restore(ctx context.Context) (int64, string, error) {
	want := r.j.Desired.StartStep
	if want <= 0 {
		return 0, "", nil
	}
	list, err := listCheckpoints(ctx, r.j.Client, r.j.Desired.Run)
	if err != nil {
		return 0, "", err
	}
	note := ""
	for i := len(list) - 1; i >= 0; i-- {
		c := list[i]
		if c.Step > want {
			continue
		}
		began := time.Now()
		m, state, err := checkpoint.Load(ctx, c.URL)
		if err == nil {
			err = r.model.Load(state)
		}
		if err != nil {
			if ctx.Err() != nil {
				return 0, note, ctx.Err()
			}
			r.log.Warn("checkpoint unusable; falling back to the previous one", "step", c.Step, "err", err)
			note += fmt.Sprintf("checkpoint at step %d skipped: %v; ", c.Step, err)
			continue
		}
		r.log.Info("restored", "step", c.Step, "from", c.URL, "world_then", m.World, "bytes", len(state), "took", time.Since(began).Round(time.Millisecond))
		if note != "" {
			note += fmt.Sprintf("restored step %d instead", c.Step)
		}
		return c.Step, note, nil
	}
	note += "no usable checkpoint: starting from step 0"
	r.log.Warn("no usable checkpoint; starting from the beginning", "wanted", want)
	return 0, note, nil
}

// agreeOnStep checks that every rank restored the same step (each rank
// fills its slot of a vector summed over the ring).
func (r *runState) agreeOnStep(ctx context.Context, step int64) error {
	if r.comm == nil {
		return nil
	}
	buf := make([]float32, r.world)
	buf[r.rank] = float32(step) + 1
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := r.comm.AllReduce(cctx, buf, collective.Sum); err != nil {
		return fmt.Errorf("agree on the restored step: %w", err)
	}
	for k, v := range buf {
		if int64(v)-1 != step {
			return fmt.Errorf("rank %d restored step %d, this rank step %d: the ranks disagree (a checkpoint part changed while they read it?)", k, int64(v)-1, step)
		}
	}
	return nil
}

// waitCommitted waits until the coordinator lists a checkpoint at step.
func (r *runState) waitCommitted(ctx context.Context, step int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		list, err := listCheckpoints(ctx, r.j.Client, r.j.Desired.Run)
		if err == nil {
			for _, c := range list {
				if c.Step == step {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the checkpoint at step %d was not committed within %s (last error: %v)", step, timeout, err)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}
