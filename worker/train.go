package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/collective/ring"
	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/shards"
	"github.com/lavit-org/lavit/shards/stream"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/trainer"
)

// Trainer is the Executor that trains LaVIT with the libtorch shim: it
// reads this rank's slice of every global batch from the run's data set,
// runs the trainer's step with the batch statistics and gradients summed
// over the ring, and reports progress; rank 0 saves the final model state
// and measures the "it learned" checks.
type Trainer struct {
	Lib *trainer.Lib
	// ListenAddr is where this worker's ring listener binds (default
	// "0.0.0.0:0"); Advertise, if set, is the host:port peers dial instead
	// of the one derived from the listener and the route to the
	// coordinators.
	ListenAddr string
	Advertise  string
}

// Final model states are written under <checkpoint.url>/<run>/final/.
const (
	finalConfigName = "config.json"
	finalStateName  = "state.lvst"
)

// Execute runs one generation of a run.
func (t *Trainer) Execute(ctx context.Context, j *Job) error {
	spec, err := fetchSpec(ctx, j.Client, j.Desired.Run)
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

// fetchSpec reads the run's spec from the coordinator.
func fetchSpec(ctx context.Context, c *wire.Client, run string) (*runspec.Spec, error) {
	info, err := showRun(ctx, c, run)
	if err != nil {
		return nil, err
	}
	var spec runspec.Spec
	if err := json.Unmarshal(info.Spec, &spec); err != nil {
		return nil, fmt.Errorf("run %s: spec: %w", run, err)
	}
	return &spec, nil
}

func showRun(ctx context.Context, c *wire.Client, run string) (wire.RunInfo, error) {
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := wire.ShowRun.Call(callCtx, c, &wire.RunShowRequest{ID: run})
	if err != nil {
		return wire.RunInfo{}, fmt.Errorf("read run %s: %w", run, err)
	}
	return *info, nil
}

// runState is one job's training state.
type runState struct {
	j      *Job
	spec   *runspec.Spec
	log    *slog.Logger
	rank   int
	world  int
	batch  int
	from   int
	to     int
	total  int64
	stream *stream.Stream
	loader *shards.Loader
	model  *trainer.Model
	tok    *trainer.Model // stage 2: the frozen tokenizer
	comm   collective.Communicator
	// Stage 1: VQ switches on before step phaseA.
	phaseA int64
	// Stage 2 sequence layout.
	vocab      trainer.Vocab
	seqLen     int
	continuous bool
	image      int
	timeout    time.Duration
	// Checkpoints.
	saver        *saver
	lastCkpt     time.Time
	seenRequests uint64
	restoreNote  string
	restoredFrom int64
	meta         wire.CheckpointMeta // the run's part of every checkpoint's meta
	// The refs samples prefetched for the next step, reused when it comes
	// (used by the data goroutine only).
	next nextRefs
}

// nextRefs is one prefetched slice [from, to) of global batch step.
type nextRefs struct {
	step     int64
	from, to int
	refs     []stream.Ref
}

func (r *runState) close() {
	if r.comm != nil {
		r.comm.Close()
	}
	if r.model != nil {
		r.model.Close()
	}
	if r.tok != nil {
		r.tok.Close()
	}
}

// prepare opens the data set, builds the model (and the tokenizer for
// stage 2) and joins the generation's ring.
func (t *Trainer) prepare(ctx context.Context, j *Job, spec *runspec.Spec) (*runState, error) {
	d := j.Desired
	r := &runState{j: j, spec: spec, log: j.Log, rank: d.Rank, world: d.World, batch: spec.GlobalBatch}
	if r.world < 1 || r.rank < 0 || r.rank >= r.world {
		return r, fmt.Errorf("rank %d of world %d is impossible", r.rank, r.world)
	}
	r.from, r.to = stream.RankSlice(r.batch, r.world, r.rank)
	timeout := spec.CollectiveTimeout()
	r.timeout = timeout

	src, err := objstore.Open(ctx, spec.Data.URL)
	if err != nil {
		return r, fmt.Errorf("data.url %s: %w", spec.Data.URL, err)
	}
	m, err := shards.LoadManifest(ctx, src)
	if err != nil {
		return r, fmt.Errorf("data.url %s: %w", spec.Data.URL, err)
	}
	if r.stream, err = m.Stream(spec.Seed, spec.Data.BlockShards); err != nil {
		return r, fmt.Errorf("data.url %s: %w", spec.Data.URL, err)
	}
	if int64(r.batch) > r.stream.Total() {
		return r, fmt.Errorf("global_batch %d is larger than the data set's %d samples", r.batch, r.stream.Total())
	}
	r.total = spec.TotalSteps(r.stream.Total())
	r.loader = shards.NewLoader(src, m, 0)

	cfg, err := modelConfig(spec, r.total)
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
	info := r.model.Info()
	r.meta = r.runMeta()
	r.image = int(info.Image)
	if spec.Stage == 1 {
		r.phaseA = spec.PhaseASteps(r.total)
	} else {
		if r.tok, err = t.loadTokenizer(ctx, j, spec, device); err != nil {
			return r, err
		}
		r.image = int(r.tok.Info().Image)
		r.vocab = trainer.TinyVocab(int(r.tok.Info().Codebook))
		r.seqLen = int(info.MaxLen) - 1
		r.continuous = info.ImageInput == "continuous"
		if r.continuous {
			dir, err := os.MkdirTemp("", "lavit-vision-")
			if err != nil {
				return r, err
			}
			defer os.RemoveAll(dir)
			if err := trainer.InitVisionFrom(r.model, r.tok, dir); err != nil {
				return r, fmt.Errorf("copy the tokenizer's merger into the LM: %w", err)
			}
		}
	}
	if r.comm, err = t.joinRing(ctx, j, timeout); err != nil {
		return r, err
	}
	r.log.Info("prepared", "params", info.ParamCount, "steps", r.total, "global_batch", r.batch, "slice", fmt.Sprintf("[%d,%d)", r.from, r.to), "samples", r.stream.Total())
	return r, nil
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

// joinRing rendezvouses through the coordinator and connects the ring (a
// world of one needs neither).
func (t *Trainer) joinRing(ctx context.Context, j *Job, timeout time.Duration) (collective.Communicator, error) {
	d := j.Desired
	if d.Backend == wire.BackendNCCL {
		return nil, errors.New("collective.backend nccl: the worker's step loop runs on host buffers and has no NCCL path yet; use ring")
	}
	if d.World == 1 {
		return nil, nil
	}
	listen := t.ListenAddr
	if listen == "" {
		listen = "0.0.0.0:0"
	}
	l, err := ring.Listen(listen)
	if err != nil {
		return nil, fmt.Errorf("ring listener: %w", err)
	}
	addr, err := advertiseAddr(t.Advertise, l.Addr(), j.CoordURL)
	if err != nil {
		l.Close()
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply, err := Rendezvous(rctx, j.Client, wire.RendezvousRequest{Instance: j.Instance, Run: d.Run, Generation: d.Generation, Rank: d.Rank, Addr: addr})
	if err != nil {
		l.Close()
		return nil, err
	}
	comm, err := ring.Connect(rctx, l, ring.Config{Rank: d.Rank, Size: d.World, Peers: reply.Peers, Run: d.Run, Generation: d.Generation, Timeout: timeout, Logger: j.Log})
	l.Close()
	if err != nil {
		return nil, fmt.Errorf("connect the ring: %w", err)
	}
	j.Log.Info("ring connected", "peers", reply.Peers)
	return comm, nil
}

// advertiseAddr is the host:port peers dial: the explicit one, else the
// listener's port on the address this host uses to reach the coordinators.
func advertiseAddr(explicit, listenAddr, coordURL string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	host, port, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return listenAddr, nil
	}
	first, _, _ := strings.Cut(coordURL, ",")
	u, err := url.Parse(first)
	if err != nil || u.Host == "" {
		return net.JoinHostPort("127.0.0.1", port), nil
	}
	conn, err := net.Dial("udp", u.Host) // no packet is sent: this picks the route
	if err != nil {
		return "", fmt.Errorf("find this host's address towards %s: %w (set --collective-advertise)", u.Host, err)
	}
	defer conn.Close()
	local := conn.LocalAddr().(*net.UDPAddr)
	return net.JoinHostPort(local.IP.String(), port), nil
}

// loadTokenizer builds the frozen stage-1 model a stage-2 run uses: from a
// completed run's final state, or from a state URL.
func (t *Trainer) loadTokenizer(ctx context.Context, j *Job, spec *runspec.Spec, device string) (*trainer.Model, error) {
	from := spec.Tokenizer.From
	loc := from
	if runspec.IsRunID(from) {
		info, err := showRun(ctx, j.Client, from)
		if err != nil {
			return nil, fmt.Errorf("tokenizer.from: %w", err)
		}
		if info.State != wire.RunCompleted || info.Final == nil {
			return nil, fmt.Errorf("tokenizer.from: run %s is %s and has no final model state", from, info.State)
		}
		loc = info.Final.URL
	}
	src, err := objstore.Open(ctx, loc)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.from %s: %w", from, err)
	}
	cfgBytes, err := objstore.ReadObject(ctx, src, finalConfigName)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.from %s: %w", from, err)
	}
	state, err := objstore.ReadObject(ctx, src, finalStateName)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.from %s: %w", from, err)
	}
	cfg, err := trainer.ParseConfig(cfgBytes)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.from %s: %w", from, err)
	}
	if cfg.Stage != 1 {
		return nil, fmt.Errorf("tokenizer.from %s: a stage-%d model, not a stage-1 tokenizer", from, cfg.Stage)
	}
	tok, err := t.Lib.NewModel(cfg, device, spec.Seed)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.from %s: %w", from, err)
	}
	if err := tok.Load(state); err != nil {
		tok.Close()
		return nil, fmt.Errorf("tokenizer.from %s: %w", from, err)
	}
	return tok, nil
}

// item is what the data goroutine hands the step loop: the k-means sample
// (once, before step phaseA of stage 1) or one step's batch.
type item struct {
	step     int64
	batch    *trainer.Batch
	kmeans   *trainer.Batch
	dataTime time.Duration // time spent reading, decoding, batching
	bad      int           // masked samples in this batch
	err      error
}

// produce reads and decodes the batches of steps [start, total) in order,
// one step ahead of the step loop, so reading overlaps compute.
func (r *runState) produce(ctx context.Context, start int64, out chan<- item) {
	defer close(out)
	send := func(it item) bool {
		select {
		case out <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for step := start; step < r.total; step++ {
		if r.spec.Stage == 1 && step == r.phaseA && r.phaseA > 0 {
			began := time.Now()
			kb, err := r.kmeansBatch(ctx)
			if !send(item{step: step, kmeans: kb, dataTime: time.Since(began), err: err}) || err != nil {
				return
			}
		}
		began := time.Now()
		b, bad, err := r.rankBatch(ctx, step)
		if !send(item{step: step, batch: b, bad: bad, dataTime: time.Since(began), err: err}) || err != nil {
			return
		}
	}
}

// samples reads and decodes [from, to) of global batch step.
func (r *runState) samples(ctx context.Context, step int64, from, to int) (shards.Decoded, []int64, error) {
	refs := r.next.refs
	if r.next.step != step || r.next.from != from || r.next.to != to || refs == nil {
		var err error
		if refs, err = r.stream.Batch(step, r.batch, from, to); err != nil {
			return shards.Decoded{}, nil, err
		}
	}
	r.next = nextRefs{}
	if step+1 < r.total {
		if next, err := r.stream.Batch(step+1, r.batch, from, to); err == nil {
			r.loader.Prefetch(ctx, next)
			r.next = nextRefs{step: step + 1, from: from, to: to, refs: next}
		}
	}
	samples, err := r.loader.Samples(ctx, refs)
	if err != nil {
		return shards.Decoded{}, nil, err
	}
	d := shards.DecodeBatch(samples, r.image, 0)
	positions := make([]int64, to-from)
	for i := range positions {
		positions[i] = step*int64(r.batch) + int64(from+i)
	}
	return d, positions, nil
}

// rankBatch is this rank's slice of global batch step as trainer input.
func (r *runState) rankBatch(ctx context.Context, step int64) (*trainer.Batch, int, error) {
	d, positions, err := r.samples(ctx, step, r.from, r.to)
	if err != nil {
		return nil, 0, fmt.Errorf("step %d: read data: %w", step, err)
	}
	bad := 0
	for i, ok := range d.Valid {
		if !ok {
			bad++
			r.log.Warn("bad sample masked", "step", step, "position", positions[i], "err", d.Errors[i])
		}
	}
	valid := d.Valid
	if bad == 0 {
		valid = nil
	}
	if r.spec.Stage == 1 {
		return &trainer.Batch{Step: step, GlobalBatch: int64(r.batch), Positions: positions, Images: d.Images, Valid: valid}, bad, nil
	}
	b, err := trainer.Stage2BatchFrom(r.tok, r.vocab, r.seqLen, r.spec.Seed, step, int64(r.batch), positions, d.Images, d.Captions, valid, r.continuous)
	if err != nil {
		return nil, bad, fmt.Errorf("step %d: build the stage-2 batch: %w", step, err)
	}
	return b, bad, nil
}

// kmeansBatch is the sample VQ's k-means starts from: the whole global
// batches of steps phaseA … phaseA+K−1, the same on every rank.
func (r *runState) kmeansBatch(ctx context.Context) (*trainer.Batch, error) {
	k := r.spec.Stage1.KMeansBatches
	b := &trainer.Batch{}
	for s := r.phaseA; s < r.phaseA+int64(k); s++ {
		d, positions, err := r.samples(ctx, s, 0, r.batch)
		if err != nil {
			return nil, fmt.Errorf("k-means sample, step %d: %w", s, err)
		}
		for i, ok := range d.Valid {
			if ok {
				per := len(d.Images) / len(d.Valid)
				b.Images = append(b.Images, d.Images[i*per:(i+1)*per]...)
				b.Positions = append(b.Positions, positions[i])
			}
		}
	}
	return b, nil
}

// stepTimes accumulates the step time split between reports.
type stepTimes struct {
	steps                                 int
	data, compute, allreduce, idle, other time.Duration
	wall                                  time.Duration
}

// train runs the step loop from the desired start step to the end.
func (r *runState) train(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if r.comm != nil {
		// Leaving the job (cancel) must unblock a pending all-reduce.
		stop := context.AfterFunc(ctx, func() { r.comm.Abort(errors.New("the job was stopped")) })
		defer stop()
	}
	start, note, err := r.restore(ctx)
	if err != nil {
		return err
	}
	if err := r.agreeOnStep(ctx, start); err != nil {
		return err
	}
	r.restoreNote, r.restoredFrom = note, start
	r.seenRequests = r.j.Desired.CheckpointRequests
	sv := &saver{r: r}
	r.saver = sv
	r.lastCkpt = time.Now()

	items := make(chan item, 1)
	go r.produce(ctx, start, items)

	var times stepTimes
	var reduceTime, waitTime time.Duration
	waiter, _ := r.comm.(interface{ LastWait() time.Duration })
	reduce := func(ctx context.Context, buf []float32) error {
		if r.comm == nil {
			return nil
		}
		began := time.Now()
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		err := r.comm.AllReduce(cctx, buf, collective.Sum)
		reduceTime += time.Since(began)
		if waiter != nil {
			waitTime += waiter.LastWait() // waiting for a slower peer to arrive
		}
		return err
	}
	every := max(r.spec.Metrics.EverySteps, 1)
	ckptEvery := r.spec.Checkpoint.EverySteps
	lastReport := time.Now()
	var lossSum float64
	var badTotal int
	step, savedAt := start, int64(-1)
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
		if it.kmeans != nil {
			if err := r.model.EnableVQ(it.kmeans.Images, it.kmeans.Positions, it.step); err != nil {
				return fmt.Errorf("step %d: switch VQ on: %w", it.step, err)
			}
			r.log.Info("VQ on: codebook initialised by k-means", "step", it.step, "samples", len(it.kmeans.Positions))
			continue
		}
		badTotal += it.bad
		stepStart := time.Now()
		reduceTime, waitTime = 0, 0
		res, err := r.model.Step(ctx, it.batch, reduce)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("step %d: %w", it.step, err)
		}
		computeAndReduce := time.Since(stepStart)
		stepReduce, stepWait := reduceTime, waitTime // before the report's own all-reduce
		lossSum = res.LossSum
		step = it.step + 1

		otherStart := time.Now()
		ckpt := ckptEvery > 0 && step%ckptEvery == 0
		if step%every == 0 || step == r.total {
			asked, err := r.report(ctx, reduce, step, lossSum, &times, lastReport, badTotal)
			if err != nil {
				return err
			}
			ckpt = ckpt || asked
			lastReport = time.Now()
			times = stepTimes{}
		}
		if ckpt && step < r.total { // the last step's checkpoint is taken below
			if err := sv.save(ctx, step); err != nil {
				return err
			}
			savedAt, r.lastCkpt = step, time.Now()
		}
		times.steps++
		times.data += waited
		times.allreduce += stepReduce - stepWait
		times.idle += stepWait
		times.compute += computeAndReduce - stepReduce
		times.other += time.Since(otherStart)
		times.wall += time.Since(waitStart)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if step < r.total {
		return fmt.Errorf("the data stopped at step %d of %d", step, r.total)
	}
	// A completed run always ends with a committed checkpoint of its last
	// step.
	if savedAt != step {
		if err := sv.save(ctx, step); err != nil {
			return err
		}
	}
	if err := sv.wait(ctx); err != nil {
		return fmt.Errorf("final checkpoint: %w", err)
	}
	if r.rank != 0 {
		// Stay in the ring until the coordinator ends the run (rank 0
		// reports it): a rank that closed its sockets now could cut the
		// last all-reduce short on a slower peer.
		<-ctx.Done()
		return nil
	}
	if err := r.waitCommitted(ctx, step, 5*time.Minute); err != nil {
		return fmt.Errorf("final checkpoint: %w", err)
	}
	return r.finish(ctx, step)
}

// report sums the loss over the ranks (every rank calls it at the same
// steps) and rank 0 sends the progress to the coordinator and the log.
func (r *runState) report(ctx context.Context, reduce trainer.Reducer, step int64, lossSum float64, times *stepTimes, since time.Time, bad int) (checkpointNow bool, err error) {
	n := max(times.steps, 1)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
	// One all-reduce carries the loss and rank 0's checkpoint decision (a
	// timed checkpoint or a `run checkpoint` request: only rank 0 decides,
	// so every rank saves at the same step).
	buf := make([]float32, 2)
	buf[0] = float32(lossSum)
	if r.rank == 0 {
		latest := r.j.Desired
		if r.j.Latest != nil {
			latest = r.j.Latest()
		}
		mins := r.spec.Checkpoint.EveryMinutes
		requested := latest.Run == r.j.Desired.Run && latest.Generation == r.j.Desired.Generation && latest.CheckpointRequests > r.seenRequests
		if requested || (mins > 0 && time.Since(r.lastCkpt) >= time.Duration(mins*float64(time.Minute))) {
			buf[1] = 1
			if requested {
				r.seenRequests = latest.CheckpointRequests
				r.log.Info("checkpoint requested", "step", step)
			}
		}
	}
	if err := reduce(ctx, buf); err != nil {
		return false, fmt.Errorf("step %d: sum the loss: %w", step, err)
	}
	checkpointNow = buf[1] > 0
	if r.rank != 0 {
		return checkpointNow, nil
	}
	loss := float64(buf[0]) / float64(r.batch)
	timing := wire.StepTiming{DataMs: ms(times.data), ComputeMs: ms(times.compute), AllReduceMs: ms(times.allreduce), IdleMs: ms(times.idle), OtherMs: ms(times.other), StepMs: ms(times.wall)}
	rate := 0.0
	if el := time.Since(since).Seconds(); el > 0 && times.steps > 0 {
		rate = float64(times.steps*r.batch) / el
	}
	metrics := map[string]float64{"bad_samples": float64(bad)}
	if sv := r.saver; sv != nil && sv.taken > 0 {
		metrics["checkpoints"], metrics["ckpt_stall_ms"] = float64(sv.taken), sv.stallMs
	}
	if m, err := r.model.Metrics(); err == nil {
		for k, v := range m {
			if len(metrics) < 48 {
				metrics[k] = v
			}
		}
	}
	r.log.Info("progress", "step", step, "of", r.total, "loss", fmt.Sprintf("%.4f", loss), "samples_per_s", fmt.Sprintf("%.1f", rate),
		"step_ms", fmt.Sprintf("%.1f", timing.StepMs), "data_ms", fmt.Sprintf("%.2f", timing.DataMs), "compute_ms", fmt.Sprintf("%.1f", timing.ComputeMs),
		"allreduce_ms", fmt.Sprintf("%.2f", timing.AllReduceMs), "idle_ms", fmt.Sprintf("%.2f", timing.IdleMs))
	req := &wire.ProgressRequest{
		Instance: r.j.Instance, Run: r.j.Desired.Run, Generation: r.j.Desired.Generation, Rank: r.rank,
		Step: step, TotalSteps: r.total, Loss: loss, SamplesPerS: rate, Timing: timing, Metrics: metrics,
		RestoreNote: r.restoreNote, RestoredFrom: r.restoredFrom,
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := wire.ReportProgress.Call(cctx, r.j.Client, req); err != nil {
		if wire.HasCode(err, wire.CodeStale) {
			return checkpointNow, fmt.Errorf("%w: %v", ErrStaleGeneration, err)
		}
		r.log.Warn("progress report not delivered", "err", err) // the next one carries the news
	}
	return checkpointNow, nil
}

// finish saves the final model state (rank 0), measures the checks on the
// eval set, and reports the run COMPLETED.
func (r *runState) finish(ctx context.Context, step int64) error {
	artifact, err := r.saveFinal(ctx, step)
	if err != nil {
		return fmt.Errorf("save the final model state: %w", err)
	}
	var checks []wire.Check
	if r.spec.Data.EvalURL != "" {
		if checks, err = r.evaluate(ctx); err != nil {
			return fmt.Errorf("evaluate on data.eval_url: %w", err)
		}
	}
	req := &wire.RunFinishRequest{
		Instance: r.j.Instance, Run: r.j.Desired.Run, Generation: r.j.Desired.Generation, Rank: 0,
		Outcome: wire.RunCompleted, Step: step, Final: artifact, Eval: checks,
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := wire.FinishRun.Call(cctx, r.j.Client, req); err != nil {
		return fmt.Errorf("report completion: %w", err)
	}
	r.log.Info("run completed", "step", step, "final", artifact.URL)
	return nil
}

// saveFinal writes the model config and state under
// <checkpoint.url>/<run>/final/.
func (r *runState) saveFinal(ctx context.Context, step int64) (*wire.Artifact, error) {
	state, err := r.model.State()
	if err != nil {
		return nil, err
	}
	cfg, err := json.Marshal(r.model.Config())
	if err != nil {
		return nil, err
	}
	base := strings.TrimSuffix(r.spec.Checkpoint.URL, "/") + "/" + r.j.Desired.Run + "/final"
	dst, err := objstore.OpenForWrite(ctx, base)
	if err != nil {
		return nil, err
	}
	if err := dst.Put(ctx, finalConfigName, bytes.NewReader(cfg), int64(len(cfg))); err != nil {
		return nil, err
	}
	if err := dst.Put(ctx, finalStateName, bytes.NewReader(state), int64(len(state))); err != nil {
		return nil, err
	}
	return &wire.Artifact{URL: base, Step: step, Bytes: int64(len(state)), SHA256: checkpoint.SHA256(state)}, nil
}

// evaluate measures MODEL.md's checks on the eval data set.
func (r *runState) evaluate(ctx context.Context) ([]wire.Check, error) {
	set, err := loadEvalSet(ctx, r.spec.Data.EvalURL, r.image)
	if err != nil {
		return nil, err
	}
	var checks []trainer.Check
	if r.spec.Stage == 1 {
		cfg := r.model.Config()
		patch := 4
		if cfg.Tokenizer != nil && cfg.Tokenizer.Patch > 0 {
			patch = int(cfg.Tokenizer.Patch)
		}
		rep, err := trainer.EvaluateStage1(r.model, set, patch)
		if err != nil {
			return nil, err
		}
		checks = rep.Checks()
	} else {
		rep, err := trainer.EvaluateStage2(r.model, r.tok, set)
		if err != nil {
			return nil, err
		}
		checks = rep.Checks()
	}
	out := make([]wire.Check, len(checks))
	for i, c := range checks {
		out[i] = wire.Check{Name: c.Name, Value: c.Value, Pass: c.Pass}
	}
	r.log.Info("checks on the eval set\n" + trainer.FormatChecks(fmt.Sprintf("stage %d", r.spec.Stage), checks))
	return out, nil
}

// loadEvalSet reads every sample of an eval data set in manifest order:
// images, captions, and the objects from each sample's JSON.
func loadEvalSet(ctx context.Context, u string, image int) (*trainer.EvalSet, error) {
	src, err := objstore.Open(ctx, u)
	if err != nil {
		return nil, err
	}
	m, err := shards.LoadManifest(ctx, src)
	if err != nil {
		return nil, err
	}
	l := shards.NewLoader(src, m, 0)
	set := &trainer.EvalSet{}
	for si, e := range m.Shards {
		refs := make([]stream.Ref, e.Samples)
		for i := range refs {
			refs[i] = stream.Ref{Shard: si, Index: i}
		}
		samples, err := l.Samples(ctx, refs)
		if err != nil {
			return nil, err
		}
		d := shards.DecodeBatch(samples, image, 0)
		per := 3 * image * image
		for i, s := range samples {
			if !d.Valid[i] {
				continue
			}
			var objects []synth.Object
			js, _ := s.Field("json")
			if err := json.Unmarshal(js, &objects); err != nil {
				return nil, fmt.Errorf("eval sample %s in %s: objects: %w", s.Key, s.Shard, err)
			}
			set.Samples = append(set.Samples, synth.Sample{Key: s.Key, Caption: d.Captions[i], Objects: objects})
			set.Images = append(set.Images, d.Images[i*per:(i+1)*per]...)
			set.Positions = append(set.Positions, int64(len(set.Positions)))
		}
	}
	if len(set.Samples) == 0 {
		return nil, errors.New("the eval data set has no usable samples")
	}
	return set, nil
}
