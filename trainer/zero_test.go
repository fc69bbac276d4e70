package trainer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/collective/ring"
)

// replicaRun is one data-parallel run in this process: world model replicas
// on a real ring over loopback, each training its slice of every global
// batch.
type replicaRun struct {
	world, zero, micro int
	steps              int
	// build makes a replica's model; prepare (optional) runs after
	// SetShard (a state loaded); batch gives rank r's slice [from, to) of
	// global batch step; vqSwitch switches VQ on at shortSchedule.PhaseA.
	build    func(t *testing.T) *Model
	prepare  func(t *testing.T, m *Model)
	batch    func(t *testing.T, step int64, from, to int) *Batch
	vqSwitch bool
	// staged sends the flat buffers through the host staging buffer, as a
	// GPU model on the ring does.
	staged bool
	// precision and reduce are SetPrecision's arguments ("" is fp32);
	// buckets is SetBuckets' (0: reduce after backward).
	precision, reduce string
	buckets           int64
	// reduction, when set, builds rank r's Reduce (else ringReduceFor).
	reduction func(r int, c collective.Communicator, m *Model) Reduce
	// group, when positive, trains in bitwise mode (SetBitwise) with
	// groups of that many samples, each rank taking whole groups.
	group int
	// slices, when positive, deals ranks whole groups of that many
	// samples without bitwise mode (the float path on the same groups).
	slices int
}

// ringReduce is the Reduce a worker builds from a communicator for a
// model whose gradients are float32.
func ringReduce(c collective.Communicator) Reduce { return ringReduceFor(c, false) }

// ringReduceFor is the Reduce a worker builds for a model whose gradients
// are bf16 (gradsBF16: summed with the bf16 sum) or float32.
func ringReduceFor(c collective.Communicator, gradsBF16 bool) Reduce {
	op := collective.Sum
	if gradsBF16 {
		op = collective.SumBF16
	}
	red := Reduce{
		Host:    func(ctx context.Context, buf []float32) error { return c.AllReduce(ctx, buf, collective.Sum) },
		Grads:   func(ctx context.Context, buf []float32) error { return c.AllReduce(ctx, buf, op) },
		Scatter: func(ctx context.Context, buf []float32) error { return c.ReduceScatter(ctx, buf, op) },
		Gather:  func(ctx context.Context, buf []float32) error { return c.AllGather(ctx, buf) },
		Max:     func(ctx context.Context, buf []float32) error { return c.AllReduce(ctx, buf, collective.Max) },
		Words:   func(ctx context.Context, buf []float32) error { return c.AllReduce(ctx, buf, collective.SumUint32) },
		WordsScatter: func(ctx context.Context, buf []float32) error {
			return c.ReduceScatter(ctx, buf, collective.SumUint32)
		},
	}
	if p, ok := c.(collective.PartReducer); ok {
		red.GradsPart = func(ctx context.Context, buf []float32, off, total int) error {
			return p.AllReducePart(ctx, buf, op, off, total)
		}
		red.ScatterPart = func(ctx context.Context, buf []float32, off, total int) error {
			return p.ReduceScatterPart(ctx, buf, op, off, total)
		}
	}
	return red
}

// rings connects world ring communicators on loopback.
func rings(t testing.TB, world int) []collective.Communicator {
	t.Helper()
	if world == 1 {
		return []collective.Communicator{nil}
	}
	var ls []*ring.Listener
	var peers []string
	for range world {
		l, err := ring.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		peers = append(peers, l.Addr())
	}
	secret := ring.NewSecret()
	comms := make([]collective.Communicator, world)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := ring.Connect(ctx, ls[r], ring.Config{Rank: r, Size: world, Peers: peers, Run: "zero-test", Generation: 1, Secret: secret})
			comms[r], errs[r] = c, err
		}()
	}
	wg.Wait()
	for r := range world {
		if errs[r] != nil {
			t.Fatalf("rank %d: connect: %v", r, errs[r])
		}
		t.Cleanup(func() { comms[r].Close(); ls[r].Close() })
	}
	return comms
}

// run trains every replica and returns them (rank order) once all are done.
func (rr replicaRun) run(t *testing.T) []*Model {
	t.Helper()
	comms := rings(t, rr.world)
	models := make([]*Model, rr.world)
	for r := range rr.world {
		m := rr.build(t)
		if err := m.SetPrecision(rr.precision, rr.reduce); err != nil {
			t.Fatal(err)
		}
		if err := m.SetShard(r, rr.world, rr.zero); err != nil {
			t.Fatal(err)
		}
		if err := m.SetMicroBatch(rr.micro); err != nil {
			t.Fatal(err)
		}
		if err := m.SetBuckets(rr.buckets); err != nil {
			t.Fatal(err)
		}
		if rr.prepare != nil {
			rr.prepare(t, m)
		}
		if err := m.SetBitwise(rr.group); err != nil {
			t.Fatal(err)
		}
		m.forceStaging = rr.staged
		models[r] = m
	}
	// Batches are built up front, in this goroutine (t.Fatal must not run
	// in the replicas' goroutines).
	batches := make([][]*Batch, rr.world)
	for r := range rr.world {
		for s := range rr.steps {
			from, to := r*8/rr.world, (r+1)*8/rr.world
			if g := max(rr.group, rr.slices); g > 0 { // whole groups, as the worker's data feed deals them
				groups := 8 / g
				from, to = r*groups/rr.world*g, (r+1)*groups/rr.world*g
			}
			batches[r] = append(batches[r], rr.batch(t, int64(s), from, to))
		}
	}
	errs := make([]error, rr.world)
	var wg sync.WaitGroup
	for r := range rr.world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			red := Local
			switch {
			case rr.reduction != nil:
				red = rr.reduction(r, comms[r], models[r])
			case rr.world > 1:
				red = ringReduceFor(comms[r], models[r].GradsBF16())
			}
			for s := range rr.steps {
				if rr.vqSwitch && s == shortSchedule.PhaseA {
					if err := shortSchedule.EnableVQAt(models[r], 0); err != nil {
						errs[r] = err
						return
					}
				}
				if _, err := models[r].Step(context.Background(), batches[r][s], red, nil); err != nil {
					errs[r] = fmt.Errorf("step %d: %w", s, err)
					if comms[r] != nil {
						comms[r].Abort(errs[r])
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("world %d zero %d rank %d: %v", rr.world, rr.zero, r, err)
		}
	}
	return models
}

// runErrs is run for a run expected to fail: every rank's error.
func (rr replicaRun) runErrs(t *testing.T) []error {
	t.Helper()
	comms := rings(t, rr.world)
	errs := make([]error, rr.world)
	var wg sync.WaitGroup
	for r := range rr.world {
		m := rr.build(t)
		for _, err := range []error{m.SetShard(r, rr.world, rr.zero), m.SetBuckets(rr.buckets)} {
			if err != nil {
				t.Fatal(err)
			}
		}
		batch := rr.batch(t, 0, r*8/rr.world, (r+1)*8/rr.world)
		red := rr.reduction(r, comms[r], m)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, errs[r] = m.Step(context.Background(), batch, red, nil); errs[r] != nil {
				comms[r].Abort(errs[r])
			}
		}()
	}
	wg.Wait()
	return errs
}

// gatheredStates are every rank's whole training state after the ranks
// gather the sharded optimizer state.
func gatheredStates(t *testing.T, models []*Model) []*StateInfo {
	t.Helper()
	blobs := gatheredBlobs(t, models)
	states := make([]*StateInfo, len(models))
	for r, b := range blobs {
		s, err := ParseState(b)
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
		states[r] = s
	}
	return states
}

// gatheredBlobs are the state bytes of every rank, gathered.
func gatheredBlobs(t *testing.T, models []*Model) [][]byte {
	t.Helper()
	comms := rings(t, len(models))
	states := make([][]byte, len(models))
	errs := make([]error, len(models))
	var wg sync.WaitGroup
	for r, m := range models {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if comms[r] != nil {
				if errs[r] = m.GatherState(context.Background(), ringReduce(comms[r]).Gather); errs[r] != nil {
					return
				}
			}
			states[r], errs[r] = m.State()
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return states
}

// compareStates fails when any tensor of got differs from want by more
// than tol relative, and returns the largest difference.
func compareStates(t *testing.T, name string, got, want *StateInfo, tol float64) float64 {
	t.Helper()
	worst := 0.0
	for _, tensor := range want.Tensors {
		d := relDiff(got.Values[tensor], want.Values[tensor])
		worst = max(worst, d)
		if d > tol {
			t.Errorf("%s: %s differs by %.3g relative (bar %.0e)", name, tensor, d, tol)
		}
	}
	return worst
}

// stage1Run is the short stage-1 schedule (VQ switches on at step 6) for
// steps steps.
func stage1Run(lib *Lib, world, zero, micro, steps int) replicaRun {
	return replicaRun{
		world: world, zero: zero, micro: micro, steps: steps,
		build: func(t *testing.T) *Model { return newModel(t, lib, TinyStage1(), 21) },
		batch: func(t *testing.T, step int64, from, to int) *Batch {
			_, b := SyntheticBatch(0, step, 8, from, to)
			return b
		},
		vqSwitch: true,
	}
}

// stage2Run trains the tiny LM on a frozen tokenizer's tokens.
func stage2Run(lib *Lib, tok *Model, world, zero, micro, steps int) replicaRun {
	return replicaRun{
		world: world, zero: zero, micro: micro, steps: steps,
		build: func(t *testing.T) *Model { return newModel(t, lib, TinyStage2(), 22) },
		batch: func(t *testing.T, step int64, from, to int) *Batch { return stage2Batch(t, tok, step, from, to) },
	}
}

// TestZeroMatchesPlainDataParallel: ZeRO-1 and ZeRO-2 at worlds 1 to 4
// train the same parameters, moments and codebook as zero 0 at that world
// (50 steps of tiny stage 1 across the VQ switch, and of tiny stage 2), the
// ranks agree bit for bit, and each rank holds ⌈P/W⌉ × 12 bytes of
// optimizer state (fp32 master weights and two moments).
func TestZeroMatchesPlainDataParallel(t *testing.T) {
	lib := loadLib(t)
	tok := newModel(t, lib, TinyStage1(), 11)
	runStage1(t, tok, 0, shortSchedule.PhaseA+1)
	const steps = 50
	for _, st := range []struct {
		name string
		run  func(world, zero int) replicaRun
	}{
		{"stage 1", func(w, z int) replicaRun { return stage1Run(lib, w, z, 0, steps) }},
		{"stage 2", func(w, z int) replicaRun { return stage2Run(lib, tok, w, z, 0, steps) }},
	} {
		for world := 1; world <= 4; world++ {
			t.Run(fmt.Sprintf("%s world %d", st.name, world), func(t *testing.T) {
				plain := st.run(world, 0).run(t)
				want := gatheredStates(t, plain)[0]
				for zero := 1; zero <= 2; zero++ {
					models := st.run(world, zero).run(t)
					for _, m := range models {
						if err := m.refreshInfo(); err != nil { // the optimizer's bytes, read from the shim now
							t.Fatal(err)
						}
					}
					P := models[0].Info().ParamCount
					shard := (P + int64(world) - 1) / int64(world)
					for r, m := range models {
						if got := m.Info().OptimBytes; got != 12*shard {
							t.Errorf("zero %d rank %d holds %d bytes of optimizer state, want ⌈P/W⌉·12 = %d", zero, r, got, 12*shard)
						}
						if r > 0 && !bitsEqual(m.Params(), models[0].Params()) {
							t.Errorf("zero %d: rank %d's parameters differ from rank 0's", zero, r)
						}
					}
					states := gatheredStates(t, models)
					d := compareStates(t, fmt.Sprintf("zero %d", zero), states[0], want, 1e-6)
					for r := 1; r < world; r++ {
						compareStates(t, fmt.Sprintf("zero %d rank %d", zero, r), states[r], states[0], 0)
					}
					t.Logf("zero %d vs zero 0: %.3g relative after %d steps", zero, d, steps)
				}
				if err := plain[0].refreshInfo(); err != nil {
					t.Fatal(err)
				}
				if got, want := plain[0].Info().OptimBytes, 8*plain[0].Info().ParamCount; got != want {
					t.Errorf("zero 0 holds %d bytes of optimizer state, want 8·P = %d", got, want)
				}
			})
		}
	}
}

// TestAccumulationEqualsOneBatch: 4 micro-batches on each of 2 ranks give
// one step on a batch of 8 on one rank, across the VQ switch (the keep
// ratio and codebook statistics accumulate over micro-batches) and for the
// LM, also under ZeRO-2.
func TestAccumulationEqualsOneBatch(t *testing.T) {
	lib := loadLib(t)
	tok := newModel(t, lib, TinyStage1(), 11)
	runStage1(t, tok, 0, shortSchedule.PhaseA+1)
	// Stage 1 crosses the VQ switch; stage 2 stops after 3 steps: its rows
	// are cut to each pass's longest row, so matrix shapes (and float
	// rounding) differ from the whole batch's and drift step by step
	// (1.2e-6 after 9 steps).
	for _, tc := range []struct {
		name string
		run  func(world, zero, micro int) replicaRun
	}{
		{"stage 1", func(w, z, m int) replicaRun { return stage1Run(lib, w, z, m, shortSchedule.PhaseA+3) }},
		{"stage 2", func(w, z, m int) replicaRun { return stage2Run(lib, tok, w, z, m, 3) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := gatheredStates(t, tc.run(1, 0, 0).run(t))[0]
			for _, zero := range []int{0, 2} {
				got := gatheredStates(t, tc.run(2, zero, 1).run(t))[0]
				d := compareStates(t, fmt.Sprintf("2 ranks × 4 micro-batches, zero %d", zero), got, want, 1e-6)
				t.Logf("2 ranks × 4 micro-batches, zero %d, vs one batch of 8: %.3g relative", zero, d)
			}
		})
	}
}

// TestShardedStateReslices: a state gathered from a ZeRO-2 world of 3
// loads into a ZeRO-1 world of 2 and into one plain model, and each trains
// on like the uninterrupted run (the checkpoint is the same bytes at any
// world size and stage).
func TestShardedStateReslices(t *testing.T) {
	lib := loadLib(t)
	const first, then = 8, 4
	whole := stage1Run(lib, 3, 2, 0, first+then)
	want := gatheredStates(t, whole.run(t))[0]

	blob := gatheredBlobs(t, stage1Run(lib, 3, 2, 0, first).run(t))[0]
	for _, target := range []struct{ world, zero int }{{2, 1}, {1, 0}, {3, 2}} {
		rr := stage1Run(lib, target.world, target.zero, 0, then)
		rr.prepare = func(t *testing.T, m *Model) {
			if err := m.Load(blob); err != nil {
				t.Fatal(err)
			}
		}
		inner := rr.batch
		rr.batch = func(t *testing.T, step int64, from, to int) *Batch { return inner(t, step+first, from, to) }
		rr.vqSwitch = false // VQ is on already (step 8 > 6): the state carries it
		got := gatheredStates(t, rr.run(t))[0]
		d := compareStates(t, fmt.Sprintf("resumed at world %d zero %d", target.world, target.zero), got, want, 1e-5)
		t.Logf("resumed at world %d zero %d: %.3g relative to the uninterrupted world-3 ZeRO-2 run", target.world, target.zero, d)
	}
}

// TestZeroThroughStaging: a ZeRO-2 world of 3 whose gradients and
// parameters go through the host staging buffer (a GPU model on the ring:
// reduce-scatter and all-gather on the host copies) trains the same bits as
// one that reduces in place.
func TestZeroThroughStaging(t *testing.T) {
	lib := loadLib(t)
	inPlace := stage1Run(lib, 3, 2, 0, shortSchedule.PhaseA+3)
	staged := inPlace
	staged.staged = true
	want := gatheredStates(t, inPlace.run(t))[0]
	got := gatheredStates(t, staged.run(t))[0]
	compareStates(t, "staged", got, want, 0)
}

// TestBF16ZeroMatchesPlainDataParallel: in bf16, with the gradients summed
// in float32 or in bf16, ZeRO-1 and ZeRO-2 train the same bits as zero 0
// at world 3 (tiny stage 1 across the VQ switch, and tiny stage 2), and a
// rank holds what the precision promises: bf16 parameters and gradients,
// a float32 buffer for float32 reduction, float32 master weights and two
// moments of its shard (blocks rounded up to an even length).
func TestBF16ZeroMatchesPlainDataParallel(t *testing.T) {
	lib := loadLib(t)
	tok := newModel(t, lib, TinyStage1(), 11)
	runStage1(t, tok, 0, shortSchedule.PhaseA+1)
	const steps, world = 12, 3
	for _, st := range []struct {
		name string
		run  func(world, zero int) replicaRun
	}{
		{"stage 1", func(w, z int) replicaRun { return stage1Run(lib, w, z, 0, steps) }},
		{"stage 2", func(w, z int) replicaRun { return stage2Run(lib, tok, w, z, 0, steps) }},
	} {
		plainByReduce := map[string]*StateInfo{}
		for _, reduce := range []string{PrecisionFP32, PrecisionBF16} {
			t.Run(fmt.Sprintf("%s reduce %s", st.name, reduce), func(t *testing.T) {
				bf16 := func(zero int) replicaRun {
					rr := st.run(world, zero)
					rr.precision, rr.reduce = PrecisionBF16, reduce
					return rr
				}
				plain := bf16(0).run(t)
				want := gatheredStates(t, plain)[0]
				plainByReduce[reduce] = want
				P := plain[0].Info().ParamCount
				S := (P + world - 1) / world
				S += S % 2
				for zero := 0; zero <= 2; zero++ {
					models := plain
					if zero > 0 {
						models = bf16(zero).run(t)
					}
					for r, m := range models {
						if err := m.refreshInfo(); err != nil {
							t.Fatal(err)
						}
						in := m.Info()
						grads := 2 * world * S
						if reduce == PrecisionFP32 {
							grads += 4 * world * S
						}
						optim := 12 * S
						if zero == 0 {
							optim = 12 * P
						}
						if in.ParamBytes != 2*world*S || in.GradBytes != grads || in.OptimBytes != optim {
							t.Errorf("zero %d rank %d holds params/grads/optimizer %d/%d/%d bytes, want %d/%d/%d",
								zero, r, in.ParamBytes, in.GradBytes, in.OptimBytes, 2*world*S, grads, optim)
						}
						if r > 0 && !bitsEqual(m.Params(), models[0].Params()) {
							t.Errorf("zero %d: rank %d's parameters differ from rank 0's", zero, r)
						}
					}
					if zero == 0 {
						continue
					}
					d := compareStates(t, fmt.Sprintf("zero %d", zero), gatheredStates(t, models)[0], want, 0)
					t.Logf("bf16, reduce %s, zero %d vs zero 0: %.3g relative after %d steps", reduce, zero, d, steps)
				}
			})
		}
		// Summing in bf16 rounds after every add: not the float32 sums.
		if a, b := plainByReduce[PrecisionFP32], plainByReduce[PrecisionBF16]; a != nil && b != nil {
			if d := relDiff(a.Values["params"], b.Values["params"]); d == 0 {
				t.Errorf("%s: the bf16 reduction trained the same bits as the float32 one", st.name)
			} else {
				t.Logf("%s: bf16 vs float32 reduction: %.3g relative after %d steps", st.name, d, steps)
			}
		}
	}
}

// TestBF16StateResumes: a bf16 state holds the float32 master weights, so
// a bf16 ZeRO-2 world of 3 stopped and resumed at the same world trains on
// bit for bit, and the state loads into a float32 model and a bf16 ZeRO-1
// world of 2 (which train on from it).
func TestBF16StateResumes(t *testing.T) {
	lib := loadLib(t)
	const first, then = 8, 4
	bf16 := func(world, zero, steps int) replicaRun {
		rr := stage1Run(lib, world, zero, 0, steps)
		rr.precision = PrecisionBF16
		return rr
	}
	want := gatheredStates(t, bf16(3, 2, first+then).run(t))[0]
	blob := gatheredBlobs(t, bf16(3, 2, first).run(t))[0]
	for _, target := range []struct {
		world, zero int
		precision   string
		tol         float64
	}{{3, 2, PrecisionBF16, 0}, {2, 1, PrecisionBF16, 1e-2}, {1, 0, PrecisionFP32, 1e-2}} {
		rr := bf16(target.world, target.zero, then)
		rr.precision = target.precision
		rr.prepare = func(t *testing.T, m *Model) {
			if err := m.Load(blob); err != nil {
				t.Fatal(err)
			}
		}
		inner := rr.batch
		rr.batch = func(t *testing.T, step int64, from, to int) *Batch { return inner(t, step+first, from, to) }
		rr.vqSwitch = false
		got := gatheredStates(t, rr.run(t))[0]
		d := compareStates(t, fmt.Sprintf("resumed at world %d zero %d %s", target.world, target.zero, target.precision), got, want, target.tol)
		t.Logf("resumed at world %d zero %d %s: %.3g relative to the uninterrupted bf16 world-3 ZeRO-2 run", target.world, target.zero, target.precision, d)
	}
}

// blockedState is every rank's StatePart, concatenated in rank order (a
// checkpoint's parts), after checking each part's size against
// checkpoint.BlockedLayout.
func blockedState(t *testing.T, models []*Model) []byte {
	t.Helper()
	in := models[0].Info()
	cb := in.Codebook * in.CodeDim
	sizes := checkpoint.BlockedLayout(in.ParamCount, in.GradNumel/int64(in.World), in.World, cb)
	var all []byte
	for r, m := range models {
		part, err := m.StatePart()
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
		if int64(len(part)) != sizes[r] {
			t.Fatalf("rank %d wrote %d bytes, checkpoint.BlockedLayout says %d", r, len(part), sizes[r])
		}
		all = append(all, part...)
	}
	return all
}

// TestBlockedStateIsTheGatheredState: the parts each rank writes from its
// own shard (no gather), put together, are the gathered state: the same
// values bit for bit, in float32 and bf16, at zero 0 and under ZeRO, and
// they load at another world size and stage into the same model as the
// gathered state does. A corrupt byte is refused by its block's checksum
// and changes nothing.
func TestBlockedStateIsTheGatheredState(t *testing.T) {
	lib := loadLib(t)
	for _, tc := range []struct {
		world, zero int
		precision   string
	}{{1, 0, ""}, {2, 0, ""}, {3, 2, ""}, {3, 1, PrecisionBF16}, {2, 2, PrecisionBF16}} {
		t.Run(fmt.Sprintf("world %d zero %d %s", tc.world, tc.zero, tc.precision), func(t *testing.T) {
			rr := stage1Run(lib, tc.world, tc.zero, 0, shortSchedule.PhaseA+2)
			rr.precision = tc.precision
			models := rr.run(t)
			blocked := blockedState(t, models)
			whole := gatheredBlobs(t, models)[0]
			got, err := ParseState(blocked)
			if err != nil {
				t.Fatal(err)
			}
			want, err := ParseState(whole)
			if err != nil {
				t.Fatal(err)
			}
			if got.AdamT != want.AdamT || got.Step != want.Step || got.VQOn != want.VQOn || got.Frozen != want.Frozen {
				t.Errorf("blocked state's counters %+v, the gathered one's %+v", got, want)
			}
			compareStates(t, "blocked vs gathered", got, want, 0)

			// Both load into a world of 2 at ZeRO-1 the same.
			loaded := map[string]*StateInfo{}
			for name, blob := range map[string][]byte{"blocked": blocked, "gathered": whole} {
				into := stage1Run(lib, 2, 1, 0, 0)
				into.precision = tc.precision
				into.prepare = func(t *testing.T, m *Model) {
					if err := m.Load(blob); err != nil {
						t.Fatalf("load the %s state: %v", name, err)
					}
				}
				loaded[name] = gatheredStates(t, into.run(t))[0]
			}
			compareStates(t, "loaded from blocked vs from gathered", loaded["blocked"], loaded["gathered"], 0)

			bad := append([]byte(nil), blocked...)
			bad[len(bad)-20] ^= 0x40 // inside the last block's values
			m := models[len(models)-1]
			before, err := m.StatePart()
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Load(bad); err == nil || !strings.Contains(err.Error(), "checksum") {
				t.Fatalf("a corrupt blocked state loaded (err %v)", err)
			}
			after, err := m.StatePart()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Error("a refused state changed the model")
			}
			if _, err := ParseState(bad); err == nil {
				t.Error("ParseState read a corrupt blocked state")
			}
		})
	}
}

// TestBucketedReductionMatchesFlat: reducing the gradients bucket by
// bucket while backward runs trains exactly what one reduction after
// backward trains: the ring reduces each bucket as a part of the whole
// buffer (AllReducePart, ReduceScatterPart), so every element is summed
// in the same order and the states are bitwise equal, at worlds 2 and 3,
// across the VQ switch, for the LM, with micro-batches, at ZeRO-1 and 2,
// and with bf16 gradients. A collective without part reductions (NCCL)
// reduces each bucket as a call of its own: the same sums, each element's
// perhaps in another order (1e-6 over the 20 steps for the tokenizer; the
// LM's Adam steps amplify it to about 2e-6). The shim cuts several
// buckets.
func TestBucketedReductionMatchesFlat(t *testing.T) {
	lib := loadLib(t)
	tok := newModel(t, lib, TinyStage1(), 11)
	runStage1(t, tok, 0, shortSchedule.PhaseA+1)
	const steps, bucket = 20, 64 << 10
	withoutParts := func(rr replicaRun) replicaRun {
		rr.reduction = func(r int, c collective.Communicator, m *Model) Reduce {
			red := ringReduceFor(c, m.GradsBF16())
			red.GradsPart, red.ScatterPart = nil, nil
			return red
		}
		return rr
	}
	bf16 := func(rr replicaRun) replicaRun {
		rr.precision, rr.reduce = PrecisionBF16, PrecisionBF16
		return rr
	}
	for _, tc := range []struct {
		name string
		rr   replicaRun
		tol  float64 // 0: bitwise
	}{
		{"stage 1 world 2", stage1Run(lib, 2, 0, 0, steps), 0},
		{"stage 1 world 3 zero 1", stage1Run(lib, 3, 1, 0, steps), 0},
		{"stage 1 world 3 zero 2", stage1Run(lib, 3, 2, 0, steps), 0},
		{"stage 1 world 2 micro-batches", stage1Run(lib, 2, 0, 2, steps), 0},
		{"stage 2 world 3", stage2Run(lib, tok, 3, 0, 0, steps), 0},
		{"stage 2 world 3 zero 2 bf16 reduction", bf16(stage2Run(lib, tok, 3, 2, 0, steps)), 0},
		{"stage 2 world 2 bf16 reduction", bf16(stage2Run(lib, tok, 2, 0, 0, steps)), 0},
		{"stage 1 world 3 without part reductions", withoutParts(stage1Run(lib, 3, 0, 0, steps)), 1e-6},
		{"stage 2 world 3 without part reductions", withoutParts(stage2Run(lib, tok, 3, 0, 0, steps)), 1e-5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flat := gatheredStates(t, tc.rr.run(t))[0]
			bucketed := tc.rr
			bucketed.buckets = bucket
			models := bucketed.run(t)
			if n := len(models[0].Info().Buckets); n < 3 {
				t.Fatalf("%d buckets of %d bytes: want several", n, bucket)
			}
			if !models[0].overlapped {
				t.Fatal("the last step was not reduced bucket by bucket")
			}
			d := compareStates(t, "bucketed vs flat", gatheredStates(t, models)[0], flat, tc.tol)
			t.Logf("%s: bucketed vs flat %.3g relative after %d steps, %d buckets", tc.name, d, steps, len(models[0].Info().Buckets))
		})
	}
}

// TestBucketFailureAbortsTheStep: a bucket's reduction that fails (the
// third on rank 1) fails the step on every rank with the bucket named,
// and nobody waits forever: backward runs to its end, the reduction of
// the remaining buckets is abandoned, the communicator is aborted. The
// same through each way a bucket is reduced: a part of the whole buffer
// (the ring at ZeRO 0 and 2) or a call of its own (NCCL).
func TestBucketFailureAbortsTheStep(t *testing.T) {
	lib := loadLib(t)
	for _, tc := range []struct {
		name  string
		zero  int
		parts bool
	}{
		{"all-reduce of a part", 0, true},
		{"reduce-scatter of a part (ZeRO-2)", 2, true},
		{"all-reduce of its own", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rr := stage1Run(lib, 2, tc.zero, 0, 1)
			rr.buckets = 64 << 10
			rr.reduction = func(r int, c collective.Communicator, m *Model) Reduce {
				red := ringReduce(c)
				calls := 0
				fail := func() error {
					calls++
					if r == 1 && calls == 3 {
						err := errors.New("injected failure")
						c.Abort(err)
						return err
					}
					return nil
				}
				red.Grads = func(ctx context.Context, buf []float32) error {
					if err := fail(); err != nil {
						return err
					}
					return c.AllReduce(ctx, buf, collective.Sum)
				}
				if !tc.parts {
					red.GradsPart, red.ScatterPart = nil, nil
					return red
				}
				gradsPart, scatterPart := red.GradsPart, red.ScatterPart
				red.GradsPart = func(ctx context.Context, buf []float32, off, total int) error {
					if err := fail(); err != nil {
						return err
					}
					return gradsPart(ctx, buf, off, total)
				}
				red.ScatterPart = func(ctx context.Context, buf []float32, off, total int) error {
					if err := fail(); err != nil {
						return err
					}
					return scatterPart(ctx, buf, off, total)
				}
				return red
			}
			errs := rr.runErrs(t)
			if errs[1] == nil || !strings.Contains(errs[1].Error(), "bucket 2") || !strings.Contains(errs[1].Error(), "injected failure") {
				t.Errorf("rank 1: %v, want the failure in bucket 2", errs[1])
			}
			if errs[0] == nil {
				t.Error("rank 0's step succeeded with its peer's reduction broken")
			}
		})
	}
}

// BenchmarkOverlap: tiny stage 1 (phase A, global batch 8) on a world of 2
// in this process (a ring over loopback, one libtorch thread each), with
// the gradients reduced in one call after backward and in 64 KiB and
// 256 KiB buckets during it (18 and 3 buckets of its 0.6 MB): samples per
// second of each, and each relative to one call.
func BenchmarkOverlap(b *testing.B) {
	lib := loadLib(b)
	const world, steps = 2, 40
	rate := map[int64]float64{}
	for _, bucket := range []int64{0, 64 << 10, 256 << 10} {
		comms := rings(b, world)
		models := make([]*Model, world)
		for r := range world {
			m, err := lib.NewModel(TinyStage1(), "cpu", 21)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(m.Close)
			if err := m.SetShard(r, world, 0); err != nil {
				b.Fatal(err)
			}
			if err := m.SetBuckets(bucket); err != nil {
				b.Fatal(err)
			}
			models[r] = m
		}
		var elapsed time.Duration
		for i := 0; i < b.N; i++ {
			began := time.Now()
			errs := make([]error, world)
			var wg sync.WaitGroup
			for r := range world {
				wg.Add(1)
				go func() {
					defer wg.Done()
					red := ringReduce(comms[r])
					for s := range steps {
						_, batch := SyntheticBatch(0, int64(s), 8, r*8/world, (r+1)*8/world)
						if _, err := models[r].Step(context.Background(), batch, red, nil); err != nil {
							errs[r] = err
							comms[r].Abort(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed += time.Since(began)
			for _, err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		rate[bucket] = float64(8*steps*b.N) / elapsed.Seconds()
		b.ReportMetric(rate[bucket], fmt.Sprintf("samples/s_bucket%dKiB", bucket>>10))
	}
	b.ReportMetric(rate[64<<10]/rate[0], "64KiB/flat")
	b.ReportMetric(rate[256<<10]/rate[0], "256KiB/flat")
}
