package worker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/lavit-org/lavit/collective/nccl"
	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/trainer"
)

// Trainer is the Executor that trains LaVIT with the libtorch shim: it
// reads this rank's slice of every global batch from the run's data set,
// runs the trainer's step with the batch statistics and gradients summed
// over the ring, and reports progress; rank 0 saves the final model state
// and measures the checks the model config names.
type Trainer struct {
	Lib *trainer.Lib
	// ListenAddr is where this worker's ring listener binds (default: a
	// free port on this host's address towards the coordinators, not
	// every interface); Advertise, if set, is the host:port peers dial
	// instead of the one derived from the listener and that route.
	ListenAddr string
	Advertise  string
	// NCCL is the NCCL library runs with collective.backend nccl use (nil:
	// this worker cannot join them).
	NCCL *nccl.Lib
}

// training is one generation of a run on this rank, assembled from parts
// that each own one concern: the data feed, the stage (what differs
// between stage 1 and stage 2), the collective, checkpoints, progress, and
// the pure policy that decides when to report and checkpoint.
type training struct {
	j      *Job
	spec   *runspec.Spec
	log    *slog.Logger
	rank   int
	model  *trainer.Model
	stage  stage
	data   *dataFeed
	comm   *stepComm
	ckpt   *checkpointer
	prog   *progress
	policy stepPolicy
}

// Execute runs one generation of a run.
func (t *Trainer) Execute(ctx context.Context, j *Job) error {
	spec, err := fetchSpec(ctx, j, j.Desired.Run)
	if err != nil {
		return err
	}
	r, err := t.prepare(ctx, j, spec)
	if r != nil {
		defer r.close()
	}
	if err != nil {
		return err
	}
	return r.train(ctx)
}

// prepare opens the data set, builds the model and its stage, and joins
// the generation's ring.
func (t *Trainer) prepare(ctx context.Context, j *Job, spec *runspec.Spec) (*training, error) {
	d := j.Desired
	r := &training{j: j, spec: spec, log: j.Log, rank: d.Rank}
	if d.World < 1 || d.Rank < 0 || d.Rank >= d.World {
		return r, fmt.Errorf("rank %d of world %d is impossible", d.Rank, d.World)
	}
	var err error
	if r.data, err = openData(ctx, spec, d.Rank, d.World, j.Log); err != nil {
		return r, err
	}
	total := r.data.total
	cfg, err := modelConfig(spec, total)
	if err != nil {
		return r, err
	}
	device := j.Device
	if device == "" {
		device = "cpu"
	}
	if r.model, err = t.Lib.NewModel(cfg, device, spec.Seed); err != nil {
		return r, fmt.Errorf("build the %s model on %s: %w", spec.Model, device, err)
	}
	precision, reduce := spec.PrecisionOrDefault(), spec.Collective.ReduceDtypeOrDefault()
	if err := r.model.SetPrecision(precision, reduce); err != nil {
		return r, fmt.Errorf("precision %s, collective.reduce_dtype %s: %w", precision, reduce, err)
	}
	if err := r.model.SetShard(d.Rank, d.World, spec.Optim.Zero); err != nil {
		return r, fmt.Errorf("optim.zero %d: %w", spec.Optim.Zero, err)
	}
	if err := r.model.SetBuckets(spec.Collective.BucketBytes()); err != nil {
		return r, fmt.Errorf("collective.bucket_mb %v: %w", spec.Collective.BucketMB, err)
	}
	if err := r.model.SetMicroBatch(spec.MicroBatch); err != nil {
		return r, fmt.Errorf("micro_batch: %w", err)
	}
	if err := r.model.SetActivationCheckpointing(spec.ActivationCheckpointing); err != nil {
		return r, fmt.Errorf("activation_checkpointing: %w", err)
	}
	if group, ok := spec.Bitwise(); ok {
		if err := r.model.SetBitwise(group); err != nil {
			return r, fmt.Errorf("determinism %s: %w", spec.Determinism, err)
		}
	} else if err := t.Lib.SetDeterministic(false); err != nil {
		// libtorch's switch is per process: a bitwise run before this
		// one left it on, and a fast run wants the fastest kernels.
		return r, fmt.Errorf("determinism %s: %w", spec.DeterminismOrDefault(), err)
	}
	// The frozen encoder is not in the model's state: its released
	// weights load on every start. The LM's are all in the state, so they
	// load only when the run starts from step 0 (train).
	if err := initFrom(ctx, r.model, "encoder", spec.InitFrom.Encoder, j.Log); err != nil {
		return r, err
	}
	if r.stage, err = t.newStage(ctx, j, spec, r.model, total, device); err != nil {
		return r, err
	}
	r.data.image, r.data.imagesOnly = stagePreprocess(r.stage), spec.Stage == 1
	comm, err := t.joinCollective(ctx, j, spec.CollectiveTimeout())
	if err != nil {
		return r, err
	}
	r.comm = newStepComm(comm, spec.CollectiveTimeout(), r.model.GradsBF16())
	r.ckpt = newCheckpointer(j, spec, r.model, total)
	r.policy = stepPolicy{
		total: total, reportEvery: int64(spec.Metrics.EverySteps), checkpointEvery: spec.Checkpoint.EverySteps,
		checkpointTimer: time.Duration(spec.Checkpoint.EveryMinutes * float64(time.Minute)),
	}
	r.log.Info("prepared", "params", r.model.Info().ParamCount, "steps", total, "global_batch", spec.GlobalBatch,
		"zero", spec.Optim.Zero, "micro_batch", spec.MicroBatch, "activation_checkpointing", spec.ActivationCheckpointing,
		"precision", precision, "reduce_dtype", reduce, "bucket_mb", spec.Collective.BucketMB,
		"determinism", spec.DeterminismOrDefault(), "determinism_group", spec.DeterminismGroup,
		"slice", fmt.Sprintf("[%d,%d)", r.data.from, r.data.to), "samples", r.data.stream.Total())
	return r, nil
}

// initFrom loads released weights (the spec's init_from.<module>, "" for
// none) into the model, after its precision and sharding are set.
func initFrom(ctx context.Context, m *trainer.Model, module, url string, log *slog.Logger) error {
	if url == "" {
		return nil
	}
	began := time.Now()
	if err := m.InitFromURL(ctx, module, url); err != nil {
		return fmt.Errorf("init_from.%s: %w", module, err)
	}
	log.Info("loaded pretrained weights", "module", module, "url", url, "took", time.Since(began).Round(time.Millisecond))
	return nil
}

// newStage builds the run's stage around the model: stage 1 switches VQ
// on after phase A; stage 2 loads its frozen visual tokenizer.
func (t *Trainer) newStage(ctx context.Context, j *Job, spec *runspec.Spec, model *trainer.Model, total int64, device string) (stage, error) {
	if spec.Stage == 1 {
		return newStage1(model, spec.PhaseASteps(total), spec.Stage1.KMeansBatches), nil
	}
	from := spec.Tokenizer.From
	loc := from
	var committed *wire.Artifact // what raft recorded of the tokenizer run's final state
	if runspec.IsRunID(from) {
		info, err := j.showRun(ctx, from)
		if err != nil {
			return nil, fmt.Errorf("tokenizer.from: %w", err)
		}
		if info.State != wire.RunCompleted || info.Final == nil {
			return nil, fmt.Errorf("tokenizer.from: run %s is %s and has no final model state", from, info.State)
		}
		loc, committed = info.Final.URL, info.Final
	}
	tok, err := t.loadTokenizer(ctx, loc, committed, device, spec.Seed)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.from %s: %w", from, err)
	}
	st, err := newStage2(model, tok, spec.Seed)
	if err != nil {
		tok.Close()
		return nil, err
	}
	return st, nil
}

// modelConfig is the spec's model config with its optimizer overrides and
// the run's length (the cosine schedule needs it).
func modelConfig(spec *runspec.Spec, total int64) (trainer.Config, error) {
	cfg, err := trainer.ParseConfig(spec.ModelConfig)
	if err != nil {
		return cfg, fmt.Errorf("model %s: %w", spec.Model, err)
	}
	if cfg.Optim == nil {
		cfg.Optim = &trainer.OptimConfig{}
	}
	o := spec.Optim
	set := func(dst *float64, v *float64) {
		if v != nil {
			*dst = *v
		}
	}
	set(&cfg.Optim.LR, o.LR)
	set(&cfg.Optim.SelectorLR, o.SelectorLR)
	set(&cfg.Optim.MinLRRatio, o.MinLRRatio)
	set(&cfg.Optim.WeightDecay, o.WeightDecay)
	set(&cfg.Optim.Clip, o.Clip)
	if o.WarmupSteps != nil {
		cfg.Optim.WarmupSteps = *o.WarmupSteps
	}
	if cfg.Optim.TotalSteps == 0 {
		cfg.Optim.TotalSteps = total
	}
	return cfg, cfg.Validate()
}

func (r *training) close() {
	if r.comm != nil {
		r.comm.close()
	}
	if r.stage != nil {
		r.stage.close()
	}
	if r.model != nil {
		r.model.Close()
	}
}

// train runs the step loop from the restored step to the end of the run.
func (r *training) train(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer r.comm.abortWhenDone(ctx)()

	start, note, err := r.ckpt.restore(ctx, r.j.Desired.StartStep)
	if err != nil {
		return err
	}
	if start == 0 {
		if err := initFrom(ctx, r.model, "lm", r.spec.InitFrom.LM, r.log); err != nil {
			return err
		}
	}
	if err := r.comm.agreeOnStep(ctx, r.rank, r.j.Desired.World, start); err != nil {
		return err
	}
	r.prog = newProgress(r, start, note)
	r.ckpt.lastTaken = time.Now()
	_, seenRequests := r.j.checkpointRequested(r.j.Desired.CheckpointRequests)

	items := make(chan item, 1)
	go r.data.produce(ctx, r.stage, start, items)

	ride := make([]float32, 1) // rank 0's checkpoint wish for this step
	step := start
	for {
		waitStart := time.Now()
		it, ok := <-items
		if !ok {
			break
		}
		waited := time.Since(waitStart)
		if it.err != nil {
			return it.err
		}
		if it.phase != nil {
			if err := r.stage.switchPhase(it.step, it.phase); err != nil {
				return err
			}
			r.log.Info("phase switch: VQ on, codebook initialised by k-means", "step", it.step, "samples", len(it.phase.positions))
			continue
		}

		ride[0] = 0
		if r.rank == 0 {
			requested, count := r.j.checkpointRequested(seenRequests)
			if r.policy.wantCheckpoint(time.Since(r.ckpt.lastTaken), requested) {
				ride[0] = 1
				if requested {
					seenRequests = count
					r.log.Info("checkpoint requested", "after_step", it.step+1)
				}
			}
		}
		stepStart := time.Now()
		res, err := r.model.Step(ctx, it.batch, r.comm.reduction(), ride)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("step %d: %w", it.step, err)
		}
		computeAndReduce := time.Since(stepStart)
		busy, idle := r.comm.take()
		step = it.step + 1

		otherStart := time.Now()
		act := r.policy.after(step, ride[0] > 0)
		r.prog.addBad(it.bad)
		r.prog.addCutCaptions(it.batch)
		r.prog.addStaged(res.StageTime)
		if act.report {
			if err := r.prog.report(ctx, step, res.GlobalLossSum); err != nil {
				return err
			}
		}
		if act.checkpoint {
			if err := r.ckpt.save(ctx, step); err != nil {
				return err
			}
		}
		r.prog.addStep(stepTiming{
			data: waited, compute: computeAndReduce - busy - idle, allreduce: busy, idle: idle,
			other: time.Since(otherStart), wall: time.Since(waitStart),
		})
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if step < r.policy.total {
		return fmt.Errorf("the data stopped at step %d of %d", step, r.policy.total)
	}
	// The policy checkpointed the last step: a completed run always ends
	// with a committed checkpoint of it.
	if err := r.ckpt.wait(ctx); err != nil {
		return fmt.Errorf("final checkpoint: %w", err)
	}
	if r.rank != 0 {
		// Stay in the ring until the coordinator ends the run (rank 0
		// reports it): a rank that closed its sockets now could cut the
		// last all-reduce short on a slower peer.
		<-ctx.Done()
		return nil
	}
	last, err := r.ckpt.waitCommitted(ctx, step)
	if err != nil {
		return fmt.Errorf("final checkpoint: %w", err)
	}
	return r.finish(ctx, step, last)
}
