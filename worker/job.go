package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/internal/retry"
	"github.com/lavit-org/lavit/internal/wire"
)

// Executor runs one generation of a run on this worker. It returns when
// the generation is done (nil), when ctx is cancelled (the coordinator
// moved on), or with the error that stopped it.
type Executor interface {
	Execute(ctx context.Context, j *Job) error
}

// Job is one generation of a run as this worker takes part in it.
type Job struct {
	Desired  wire.DesiredState
	WorkerID string
	Instance string
	Device   string
	// CoordURL is the coordinators' NATS URL (the ring's advertised
	// address is picked to reach the host it names).
	CoordURL string
	Client   *wire.Client
	Log      *slog.Logger
	// RequestTimeout bounds one control call (the worker's
	// --request-timeout).
	RequestTimeout time.Duration
	// Latest returns the newest desired state from the heartbeats (a
	// checkpoint request arrives there while the job runs).
	Latest func() wire.DesiredState
	// Build is the worker's version, recorded in checkpoint manifests.
	Build string
}

// callContext bounds one control call by the request timeout.
func (j *Job) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, j.RequestTimeout)
}

// showRun reads a run from the coordinator.
func (j *Job) showRun(ctx context.Context, run string) (*wire.RunInfo, error) {
	cctx, cancel := j.callContext(ctx)
	defer cancel()
	info, err := wire.ShowRun.Call(cctx, j.Client, &wire.RunShowRequest{ID: run})
	if err != nil {
		return nil, fmt.Errorf("read run %s: %w", run, err)
	}
	return info, nil
}

// listCheckpoints asks the coordinator for a run's committed checkpoints.
func (j *Job) listCheckpoints(ctx context.Context, run string) ([]wire.CheckpointInfo, error) {
	cctx, cancel := j.callContext(ctx)
	defer cancel()
	reply, err := wire.ListCheckpoints.Call(cctx, j.Client, &wire.RunRequest{ID: run})
	if err != nil {
		return nil, fmt.Errorf("list checkpoints of run %s: %w", run, err)
	}
	return reply.Checkpoints, nil
}

// checkpointRequested reports whether `run checkpoint` asked this
// generation for a checkpoint that has not been taken (more requests than
// seen), and the request count to remember once it is.
func (j *Job) checkpointRequested(seen uint64) (bool, uint64) {
	latest := j.Desired
	if j.Latest != nil {
		latest = j.Latest()
	}
	if latest.Run != j.Desired.Run || latest.Generation != j.Desired.Generation {
		return false, seen
	}
	return latest.CheckpointRequests > seen, latest.CheckpointRequests
}

// ReportFailure tells the coordinator this member failed the run, with the
// reason; the run becomes FAILED and its workers go idle. It tries for a
// few request timeouts (a leader election may be in progress).
func (j *Job) ReportFailure(step int64, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*j.RequestTimeout)
	defer cancel()
	req := &wire.RunFinishRequest{
		Instance: j.Instance, Run: j.Desired.Run, Generation: j.Desired.Generation,
		Rank: j.Desired.Rank, Outcome: wire.RunFailed, Reason: reason, Step: step,
	}
	err := retry.Do(ctx, retry.Default, func(int) error {
		_, err := wire.FinishRun.Call(ctx, j.Client, req)
		if wire.HasCode(err, wire.CodeStale) || wire.HasCode(err, wire.CodeBadRequest) {
			return retry.Permanent(err)
		}
		return err
	}, nil)
	if err != nil {
		j.Log.Warn("could not report the failure to the coordinator", "err", err)
	}
}

// peerLostGrace is how long a member whose ring broke waits for the
// coordinator to move on before it reports the run failed.
const peerLostGrace = 30 * time.Second

// runningJob is the agent's handle on the job it runs.
type runningJob struct {
	run    string
	gen    uint64
	cancel context.CancelFunc
	done   chan struct{}
}

// running reports whether the job has not ended yet.
func (j *runningJob) running() bool {
	select {
	case <-j.done:
		return false
	default:
		return true
	}
}

// reconcile starts, stops or keeps the job to match the desired state. A
// new job starts only once the previous one has stopped, and a finished
// (run, generation) is never started again.
func (a *Agent) reconcile(ctx context.Context, c *wire.Client) {
	a.mu.Lock()
	defer a.mu.Unlock()
	d := a.desired
	if j := a.job; j != nil {
		if j.running() {
			if d.State != wire.WorkerTraining || d.Run != j.run || d.Generation != j.gen {
				a.log.Info("stopping the job: the coordinator moved on", "run", j.run, "generation", j.gen, "desired", d.State, "desired_run", d.Run, "desired_generation", d.Generation)
				j.cancel()
			}
			return
		}
		a.job = nil
	}
	if d.State != wire.WorkerTraining || (d.Run == a.lastRun && d.Generation == a.lastGen) {
		return
	}
	a.lastRun, a.lastGen = d.Run, d.Generation
	jobCtx, cancel := context.WithCancel(ctx)
	j := &runningJob{run: d.Run, gen: d.Generation, cancel: cancel, done: make(chan struct{})}
	a.job = j
	job := &Job{
		Desired: d, WorkerID: a.cfg.ID, Instance: a.instance, Device: a.cfg.Device, CoordURL: a.cfg.Coord,
		Client: c, Log: a.log.With("run", d.Run, "generation", d.Generation, "rank", d.Rank),
		RequestTimeout: a.cfg.RequestTimeout, Latest: a.Desired, Build: a.cfg.Build,
	}
	go func() {
		defer close(j.done)
		defer cancel()
		job.Log.Info("job starting", "world", d.World, "backend", d.Backend)
		if a.cfg.Executor == nil {
			job.ReportFailure(0, "this worker cannot train: it has no trainer (started without the libtorch shim)")
			return
		}
		err := a.cfg.Executor.Execute(jobCtx, job)
		if err != nil && jobCtx.Err() == nil && (errors.Is(err, collective.ErrPeerLost) || errors.Is(err, ErrStaleGeneration)) {
			// A peer died or the generation moved on: the coordinator
			// notices (the peer's heartbeats stop) and pauses the run or
			// starts a new generation. Wait for that rather than failing
			// the run; report only if it does not come.
			job.Log.Warn("the ring broke; waiting for the coordinator to start a new generation", "err", err)
			if retry.Sleep(jobCtx, peerLostGrace) != nil {
				job.Log.Info("job stopped")
				return
			}
		}
		switch {
		case jobCtx.Err() != nil:
			job.Log.Info("job stopped", "err", err)
		case err != nil:
			job.Log.Error("job failed", "err", err)
			job.ReportFailure(0, err.Error())
		default:
			job.Log.Info("job finished")
		}
	}()
}

// trainingLocked reports the job that is running, if any (for the
// heartbeat). The caller holds a.mu.
func (a *Agent) trainingLocked() (run string, gen uint64, ok bool) {
	if j := a.job; j != nil && j.running() {
		return j.run, j.gen, true
	}
	return "", 0, false
}

// stopJob cancels the running job and waits for it (bounded).
func (a *Agent) stopJob(wait time.Duration) {
	a.mu.Lock()
	j := a.job
	a.mu.Unlock()
	if j == nil {
		return
	}
	j.cancel()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-j.done:
	case <-t.C:
		a.log.Warn("the job did not stop in time", "waited", wait)
	}
}
