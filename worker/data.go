package worker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/shards"
	"github.com/lavit-org/lavit/shards/decode"
	"github.com/lavit-org/lavit/shards/stream"
	"github.com/lavit-org/lavit/trainer"
)

// dataFeed reads this rank's samples of every global batch: global batch
// s is stream positions [s·B, (s+1)·B) of the run's data set, and this
// rank takes the slice [from, to) of it (stream.RankSlice). It prefetches
// the shards of the next step while the current one is decoded.
type dataFeed struct {
	stream   *stream.Stream
	loader   *shards.Loader
	batch    int // the global batch B
	from, to int // this rank's slice of every global batch
	total    int64
	image    decode.Preprocess // how images become the model's input
	// imagesOnly masks text-only samples (stage 1 cannot use them).
	imagesOnly bool
	log        *slog.Logger

	// next is the refs prefetched for the next step, reused when it comes.
	next nextRefs
}

// nextRefs is one prefetched slice [from, to) of global batch step.
type nextRefs struct {
	step     int64
	from, to int
	refs     []stream.Ref
}

// openData opens the run's data set and its sample stream for one rank.
func openData(ctx context.Context, spec *runspec.Spec, rank, world int, log *slog.Logger) (*dataFeed, error) {
	src, err := objstore.Open(ctx, spec.Data.URL)
	if err != nil {
		return nil, fmt.Errorf("data.url %s: %w", spec.Data.URL, err)
	}
	m, err := shards.LoadManifest(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("data.url %s: %w", spec.Data.URL, err)
	}
	s, err := m.Stream(spec.Seed, spec.Data.BlockShards)
	if err != nil {
		return nil, fmt.Errorf("data.url %s: %w", spec.Data.URL, err)
	}
	if int64(spec.GlobalBatch) > s.Total() {
		return nil, fmt.Errorf("global_batch %d is larger than the data set's %d samples", spec.GlobalBatch, s.Total())
	}
	d := &dataFeed{stream: s, loader: shards.NewLoader(src, m, 0), batch: spec.GlobalBatch, total: spec.TotalSteps(s.Total()), log: log}
	d.from, d.to = stream.RankSlice(d.batch, world, rank)
	if group, ok := spec.Bitwise(); ok {
		d.from, d.to = stream.GroupSlice(d.batch, group, world, rank)
	}
	return d, nil
}

// samples reads and decodes [from, to) of global batch step, and starts
// prefetching the same slice of the next step.
func (d *dataFeed) samples(ctx context.Context, step int64, from, to int) (shards.Decoded, []int64, error) {
	refs := d.next.refs
	if d.next.step != step || d.next.from != from || d.next.to != to || refs == nil {
		var err error
		if refs, err = d.stream.Batch(step, d.batch, from, to); err != nil {
			return shards.Decoded{}, nil, err
		}
	}
	d.next = nextRefs{}
	if step+1 < d.total {
		if next, err := d.stream.Batch(step+1, d.batch, from, to); err == nil {
			d.loader.Prefetch(ctx, next)
			d.next = nextRefs{step: step + 1, from: from, to: to, refs: next}
		}
	}
	samples, err := d.loader.Samples(ctx, refs)
	if err != nil {
		return shards.Decoded{}, nil, err
	}
	decoded := shards.DecodeBatchWith(samples, d.image, 0)
	if d.imagesOnly {
		decoded.MaskTextOnly()
	}
	positions := make([]int64, to-from)
	for i := range positions {
		positions[i] = step*int64(d.batch) + int64(from+i)
	}
	return decoded, positions, nil
}

// item is what the data goroutine hands the step loop: one step's batch,
// or (once) the input of the stage's phase switch.
type item struct {
	step     int64
	batch    *trainer.Batch
	phase    *phaseInput
	dataTime time.Duration // time spent reading, decoding, batching
	bad      int           // masked samples in this batch
	err      error
}

// phaseInput is the samples a stage's phase switch starts from: the valid
// samples of whole global batches, the same on every rank.
type phaseInput struct {
	images    []float32
	positions []int64
}

// produce reads and builds the batches of steps [start, total) in order,
// one step ahead of the step loop, so reading overlaps compute; before
// the stage's phase switch it reads that switch's input.
func (d *dataFeed) produce(ctx context.Context, st stage, start int64, out chan<- item) {
	defer close(out)
	send := func(it item) bool {
		select {
		case out <- it:
			return it.err == nil
		case <-ctx.Done():
			return false
		}
	}
	switchAt, switchBatches := st.phaseSwitch()
	for step := start; step < d.total; step++ {
		if step == switchAt && switchAt > 0 {
			began := time.Now()
			in, err := d.phaseInput(ctx, step, switchBatches)
			if !send(item{step: step, phase: in, dataTime: time.Since(began), err: err}) {
				return
			}
		}
		began := time.Now()
		b, bad, err := d.rankBatch(ctx, st, step)
		if !send(item{step: step, batch: b, bad: bad, dataTime: time.Since(began), err: err}) {
			return
		}
	}
}

// rankBatch is this rank's slice of global batch step as trainer input.
func (d *dataFeed) rankBatch(ctx context.Context, st stage, step int64) (*trainer.Batch, int, error) {
	decoded, positions, err := d.samples(ctx, step, d.from, d.to)
	if err != nil {
		return nil, 0, fmt.Errorf("step %d: read data: %w", step, err)
	}
	bad := 0
	for i, ok := range decoded.Valid {
		if !ok {
			bad++
			d.log.Warn("bad sample masked", "step", step, "position", positions[i], "err", decoded.Errors[i])
		}
	}
	valid := decoded.Valid
	if bad == 0 {
		valid = nil
	}
	b, err := st.batch(step, int64(d.batch), positions, decoded, valid)
	if err != nil {
		return nil, bad, fmt.Errorf("step %d: build the batch: %w", step, err)
	}
	return b, bad, nil
}

// phaseInput reads the valid samples of the whole global batches of steps
// [at, at+batches), the same on every rank.
func (d *dataFeed) phaseInput(ctx context.Context, at int64, batches int) (*phaseInput, error) {
	in := &phaseInput{}
	for s := at; s < at+int64(batches); s++ {
		decoded, positions, err := d.samples(ctx, s, 0, d.batch)
		if err != nil {
			return nil, fmt.Errorf("phase switch input, step %d: %w", s, err)
		}
		per := len(decoded.Images) / max(len(decoded.Valid), 1)
		for i, ok := range decoded.Valid {
			if ok {
				in.images = append(in.images, decoded.Images[i*per:(i+1)*per]...)
				in.positions = append(in.positions, positions[i])
			}
		}
	}
	return in, nil
}
