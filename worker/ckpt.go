package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/internal/retry"
	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/trainer"
)

// Checkpoints on the worker side: at a step boundary every rank copies its
// own part of the state to host memory (Model.StatePart: the header on rank
// 0 and the rank's block of the parameters and optimizer state, which
// under ZeRO is exactly its shard; the only pause the step loop sees, and
// no gather) and a background goroutine uploads it with its sha256, then
// reports it to the coordinator, whose leader writes the manifest once
// every part is in and commits it. Restore fetches every part of the newest
// committed checkpoint (any world size), verifies it (the manifest against
// the sha256 raft committed, the parts against the manifest), and falls
// back to an older one when a part is missing or corrupt or the manifest
// is not the committed one.

// checkpointer takes, uploads and restores one rank's checkpoints of a
// generation. It uploads one checkpoint at a time in the background.
type checkpointer struct {
	j           *Job
	log         *slog.Logger
	url         string // checkpoint.url
	rank, world int
	model       *trainer.Model
	// offset is where this rank's part starts in the state, stateBytes the
	// state's size (the parts' sizes are the model's BlockedLayout).
	offset, stateBytes int64
	total              int64               // the run's last step
	meta               wire.CheckpointMeta // what every checkpoint of the run records (see runMeta)

	inFlight chan struct{} // closed when the running upload ends; nil if none
	lastErr  error         // the last upload's error (read after inFlight closes)

	// For the policy and the progress report.
	lastTaken time.Time // the last checkpoint (or the generation's start)
	stallMs   float64   // the last host-copy pause
	taken     int
}

func newCheckpointer(j *Job, spec *runspec.Spec, model *trainer.Model, total int64) *checkpointer {
	c := &checkpointer{
		j: j, log: j.Log, url: spec.Checkpoint.URL, rank: j.Desired.Rank, world: j.Desired.World,
		model: model, total: total, lastTaken: time.Now(),
	}
	for r, n := range model.BlockedLayout() {
		if r < c.rank {
			c.offset += n
		}
		c.stateBytes += n
	}
	c.meta = runMeta(model, spec, j.Build)
	return c
}

// wait blocks until the upload in flight (if any) has finished and returns
// its error.
func (c *checkpointer) wait(ctx context.Context) error {
	if c.inFlight == nil {
		return nil
	}
	select {
	case <-c.inFlight:
		c.inFlight = nil
		return c.lastErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// save takes a checkpoint of the state after `step` steps (the next step to
// run is `step`). The pause is the host copy, plus waiting for the previous
// upload if it has not finished.
func (c *checkpointer) save(ctx context.Context, step int64) error {
	began := time.Now()
	if err := c.wait(ctx); err != nil {
		c.log.Warn("the previous checkpoint upload failed; it is not committed", "err", err)
	}
	part, err := c.model.StatePart()
	if err != nil {
		return fmt.Errorf("checkpoint at step %d: copy this rank's part of the state: %w", step, err)
	}
	stall := float64(time.Since(began).Microseconds()) / 1000
	c.stallMs, c.lastTaken = stall, time.Now()
	c.taken++
	done := make(chan struct{})
	c.inFlight = done
	go func() {
		defer close(done)
		t0 := time.Now()
		c.lastErr = c.upload(ctx, step, part)
		switch {
		case c.lastErr == nil:
			c.log.Info("checkpoint part saved", "step", step, "bytes", len(part), "stall_ms", stall, "upload", time.Since(t0).Round(time.Millisecond))
		case ctx.Err() == nil:
			c.log.Warn("checkpoint part not saved", "step", step, "err", c.lastErr)
		}
	}()
	return nil
}

// upload writes this rank's part (retrying while the store refuses) and
// reports it to the coordinator (retrying until the leader takes it).
func (c *checkpointer) upload(ctx context.Context, step int64, data []byte) error {
	dir := checkpoint.Dir(c.url, c.j.Desired.Run, step)
	end := c.offset + int64(len(data))
	if end > c.stateBytes || (c.rank == c.world-1 && end != c.stateBytes) {
		return fmt.Errorf("checkpoint part of %d bytes at %d does not fit the state's %d bytes", len(data), c.offset, c.stateBytes)
	}
	var part checkpoint.Part
	err := retry.Do(ctx, retry.Default, func(int) error {
		var err error
		part, err = checkpoint.WritePartAt(ctx, dir, data, c.offset, c.rank, c.world)
		return err
	}, func(t retry.Try) {
		c.log.Warn("checkpoint part upload failed; retrying", "step", step, "retry_in", t.Wait.Round(time.Millisecond), "err", t.Err)
	})
	if err != nil {
		return err
	}
	if v := os.Getenv("LAVIT_TEST_CRASH_AFTER_PART"); v != "" {
		if n, _ := strconv.ParseInt(v, 10, 64); n == step {
			c.log.Error("test hook: exiting after writing the part, before reporting it", "step", step)
			os.Exit(137)
		}
	}
	req := &wire.CheckpointPartRequest{
		Instance: c.j.Instance, Run: c.j.Desired.Run, Generation: c.j.Desired.Generation, Rank: c.rank, World: c.world, Step: step,
		Part: wire.CheckpointPart(part),
	}
	if c.rank == 0 {
		m := c.meta
		m.StateBytes = c.stateBytes // the leader hashes the parts (checkpoint.PartsDigest)
		req.Meta = &m
	}
	return retry.Do(ctx, retry.Backoff{Initial: time.Second, Max: 5 * time.Second, Jitter: 0.5}, func(int) error {
		cctx, cancel := c.j.callContext(ctx)
		defer cancel()
		_, err := wire.ReportCheckpointPart.Call(cctx, c.j.Client, req)
		if wire.HasCode(err, wire.CodeStale) || wire.HasCode(err, wire.CodeBadRequest) {
			return retry.Permanent(fmt.Errorf("report checkpoint part: %w", err))
		}
		return err
	}, nil)
}

// runMeta is what every checkpoint of the run records that does not
// change during it: the config and spec hashes, the build and the
// parameter table.
func runMeta(model *trainer.Model, spec *runspec.Spec, build string) wire.CheckpointMeta {
	cfg, _ := json.Marshal(model.Config())
	sp, _ := json.Marshal(spec)
	m := wire.CheckpointMeta{ConfigHash: checkpoint.SHA256(cfg), SpecHash: checkpoint.SHA256(sp), CodeVersion: build}
	for _, p := range trainer.CheckpointParams(model.Info().Params) {
		pi := wire.ParamInfo(p)
		// A copy: the model's info is decoded again in place (EnableVQ)
		// while an upload's report encodes this.
		pi.Shape = slices.Clone(p.Shape)
		m.Params = append(m.Params, pi)
	}
	return m
}

// restore loads the newest committed checkpoint at or before step want
// that verifies, and returns its step (0 and no error when there is none
// to restore) and a note when it had to skip one.
func (c *checkpointer) restore(ctx context.Context, want int64) (int64, string, error) {
	if want <= 0 {
		return 0, "", nil
	}
	list, err := c.j.listCheckpoints(ctx, c.j.Desired.Run)
	if err != nil {
		return 0, "", err
	}
	note := ""
	for i := len(list) - 1; i >= 0; i-- {
		k := list[i]
		if k.Step > want {
			continue
		}
		began := time.Now()
		m, state, err := checkpoint.LoadCommitted(ctx, k.URL, committed(k))
		if err == nil {
			err = loadState(c.model, k.Step, state)
		}
		if err != nil {
			if ctx.Err() != nil {
				return 0, note, ctx.Err()
			}
			c.log.Warn("checkpoint unusable; falling back to the previous one", "step", k.Step, "err", err)
			note += fmt.Sprintf("checkpoint at step %d skipped: %v; ", k.Step, err)
			continue
		}
		c.log.Info("restored", "step", k.Step, "from", k.URL, "world_then", m.World, "bytes", len(state), "took", time.Since(began).Round(time.Millisecond))
		if note != "" {
			note += fmt.Sprintf("restored step %d instead", k.Step)
		}
		return k.Step, note, nil
	}
	note += "no usable checkpoint: starting from step 0"
	c.log.Warn("no usable checkpoint; starting from the beginning", "wanted", want)
	return 0, note, nil
}

// loadState checks a fetched state in Go (checkpoint.CheckState: every
// size, name and checksum, before anything is allocated from them) and
// only then hands it to the shim's loader, so a hostile state is refused
// here, with an error naming the problem, before C++ reads a byte of it.
func loadState(model *trainer.Model, step int64, state []byte) error {
	if err := checkpoint.CheckState(state, checkpoint.StateFormat); err != nil {
		return fmt.Errorf("checkpoint at step %d: %w: the state: %v", step, checkpoint.ErrCorrupt, err)
	}
	return model.Load(state)
}

// committed is what raft committed about checkpoint k: the manifest
// read from the store must match it (an older checkpoint copied over k's
// directory is refused, not restored under k's step).
func committed(k wire.CheckpointInfo) checkpoint.Committed {
	return checkpoint.Committed{Step: k.Step, ManifestSHA256: k.ManifestSHA256, StateSHA256: k.StateSHA256}
}

// finalCommitWait bounds how long rank 0 waits for the leader to commit
// the run's last checkpoint before it reports the run completed.
const finalCommitWait = 5 * time.Minute

// waitCommitted waits until the coordinator lists a checkpoint at step
// and returns its record.
func (c *checkpointer) waitCommitted(parent context.Context, step int64) (wire.CheckpointInfo, error) {
	ctx, cancel := context.WithTimeout(parent, finalCommitWait)
	defer cancel()
	var last error
	for {
		list, err := c.j.listCheckpoints(ctx, c.j.Desired.Run)
		last = err
		for _, k := range list {
			if k.Step == step {
				return k, nil
			}
		}
		if err := retry.Sleep(ctx, 200*time.Millisecond); err != nil {
			if parent.Err() != nil {
				return wire.CheckpointInfo{}, parent.Err()
			}
			return wire.CheckpointInfo{}, fmt.Errorf("the checkpoint at step %d was not committed within %s (last error: %v)", step, finalCommitWait, last)
		}
	}
}
