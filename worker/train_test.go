package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/collective/nccl"
	"github.com/lavit-org/lavit/configs"
	"github.com/lavit-org/lavit/coordinator"
	"github.com/lavit-org/lavit/internal/logging"
	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/shards"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
	"github.com/lavit-org/lavit/trainer"
	"github.com/lavit-org/lavit/worker"
)

func loadLib(t testing.TB) *trainer.Lib {
	t.Helper()
	lib, err := trainer.Load("")
	if err != nil {
		t.Fatalf("%v (run `make torch`, or set LAVIT_TORCH_LIB)", err)
	}
	return lib
}

// fleet is one in-process coordinator and a client to it.
type fleet struct {
	t      *testing.T
	srv    *coordinator.Server
	client *wire.Client
}

func startFleet(t *testing.T) *fleet {
	t.Helper()
	cfg := coordinator.DefaultConfig()
	cfg.FileRoots = append(cfg.FileRoots, os.TempDir()) // the tests' data and checkpoints
	cfg.NodeID, cfg.DataDir = "c1", t.TempDir()
	cfg.RaftAddr, cfg.HTTPAddr, cfg.NATSAddr, cfg.NATSClusterAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = logging.Discard()
	srv, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown() })
	testutil.WaitFor(t, 10*time.Second, "coordinator ready", func() bool { return srv.Ready() == "" })
	nc, err := nats.Connect(srv.NATSURL(), wire.ConnectOptions(srv.Token())...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return &fleet{t: t, srv: srv, client: &wire.Client{NC: nc, Token: srv.Token(), From: "test"}}
}

// startTrainers starts n in-process worker agents that can train.
func (f *fleet) startTrainers(lib *trainer.Lib, prefix string, n int) (stop func()) {
	f.t.Helper()
	return f.startTrainersWith(lib, prefix, n, nil)
}

// startTrainersWith is startTrainers with each Trainer adjusted by edit.
func (f *fleet) startTrainersWith(lib *trainer.Lib, prefix string, n int, edit func(*worker.Trainer)) (stop func()) {
	f.t.Helper()
	var cancels []context.CancelFunc
	var dones []chan error
	for i := 0; i < n; i++ {
		cfg := worker.DefaultConfig()
		cfg.Coord, cfg.Token, cfg.ID = f.srv.NATSURL(), f.srv.Token(), fmt.Sprintf("%s-%d", prefix, i)
		cfg.Host, cfg.Device = "host-"+cfg.ID, "cpu"
		cfg.Logger = logging.Discard()
		if os.Getenv("LAVIT_TEST_LOG") != "" {
			cfg.Logger, _ = logging.New(os.Stderr, logging.Options{Level: os.Getenv("LAVIT_TEST_LOG")})
		}
		tr := &worker.Trainer{Lib: lib, ListenAddr: "127.0.0.1:0"}
		if edit != nil {
			edit(tr)
		}
		cfg.Executor = tr
		a, err := worker.New(cfg)
		if err != nil {
			f.t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		cancels, dones = append(cancels, cancel), append(dones, done)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		for i, cancel := range cancels {
			cancel()
			<-dones[i]
		}
	}
	f.t.Cleanup(stop)
	return stop
}

// submit parses the built-in example spec with overrides, resolves it and
// submits it; it returns the run id.
func (f *fleet) submit(example string, sets ...string) string {
	f.t.Helper()
	data, err := configs.Example(example)
	if err != nil {
		f.t.Fatal(err)
	}
	spec, err := runspec.Parse(example, data, sets)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := spec.Resolve(f.t.TempDir(), os.ReadFile); err != nil {
		f.t.Fatal(err)
	}
	raw, _ := json.Marshal(spec)
	reply, err := wire.SubmitRun.Call(context.Background(), f.client, &wire.RunSubmitRequest{Spec: raw})
	if err != nil {
		f.t.Fatal(err)
	}
	return reply.ID
}

func (f *fleet) show(id string) wire.RunInfo {
	f.t.Helper()
	info, err := wire.ShowRun.Call(context.Background(), f.client, &wire.RunShowRequest{ID: id})
	if err != nil {
		f.t.Fatal(err)
	}
	return *info
}

// waitDone waits for a run to end and returns its final view.
func (f *fleet) waitDone(id string, timeout time.Duration) wire.RunInfo {
	f.t.Helper()
	var info wire.RunInfo
	testutil.WaitFor(f.t, timeout, "run "+id+" to end", func() bool {
		info = f.show(id)
		return info.State == wire.RunCompleted || info.State == wire.RunFailed || info.State == wire.RunCancelled
	})
	return info
}

// synthData writes n synthetic samples as shards under dir and indexes them.
func synthData(t *testing.T, dir string, split synth.Split, n, perShard int) string {
	t.Helper()
	ctx := context.Background()
	u := "file://" + dir
	src, err := objstore.OpenForWrite(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := shards.WriteSynth(ctx, src, 0, split, n, perShard, nil); err != nil {
		t.Fatal(err)
	}
	indexData(t, src)
	return u
}

// indexData indexes the shards in src and writes their manifest.
func indexData(t *testing.T, src objstore.Source) {
	t.Helper()
	ctx := context.Background()
	m, err := shards.Index(ctx, src, nil, wds.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := shards.WriteManifest(ctx, src, m); err != nil {
		t.Fatal(err)
	}
}

// finalParams loads a completed run's final state into a model and returns
// its flat parameters.
func finalParams(t *testing.T, lib *trainer.Lib, info wire.RunInfo) []float32 {
	t.Helper()
	dir := info.Final.URL[len("file://"):]
	cfgBytes, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	state, err := os.ReadFile(filepath.Join(dir, "state.lvst"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := trainer.ParseConfig(cfgBytes)
	if err != nil {
		t.Fatal(err)
	}
	m, err := lib.NewModel(cfg, "cpu", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Load(state); err != nil {
		t.Fatal(err)
	}
	return append([]float32(nil), m.Params()...) // Params is a view into the model
}

// TestDataParallelEquivalence: the same tiny stage-1 run (20 steps, VQ on
// from step 10 with its k-means init) trained by 1, 2 and 3 workers with
// the same global batch ends with the same parameters, up to float
// summation order.
func TestDataParallelEquivalence(t *testing.T) {
	lib := loadLib(t)
	f := startFleet(t)
	dir := t.TempDir()
	data := synthData(t, filepath.Join(dir, "train"), synth.Train, 300, 50)
	params := map[int][]float32{}
	for _, world := range []int{1, 2, 3} {
		stop := f.startTrainers(lib, fmt.Sprintf("w%d", world), world)
		id := f.submit("tiny-stage1",
			"steps=20", "stage1.phase_a_steps=10", "stage1.kmeans_batches=2", "global_batch=6",
			fmt.Sprintf("min_workers=%d", world), fmt.Sprintf("max_workers=%d", world),
			"data.url="+data, "data.eval_url=", "checkpoint.url=file://"+filepath.Join(dir, "ckpt"), "checkpoint.every_steps=0", "metrics.every_steps=5")
		info := f.waitDone(id, 3*time.Minute)
		stop()
		if info.State != wire.RunCompleted {
			t.Fatalf("world %d: run %s is %s: %s", world, id, info.State, info.Reason)
		}
		if len(info.Members) != world || info.Step != 20 {
			t.Fatalf("world %d: %d members, step %d; want %d members, step 20", world, len(info.Members), info.Step, world)
		}
		params[world] = finalParams(t, lib, info)
	}
	want := params[1]
	for _, world := range []int{2, 3} {
		got := params[world]
		if len(got) != len(want) {
			t.Fatalf("world %d: %d parameters, want %d", world, len(got), len(want))
		}
		rel, maxAbs := relDiff(got, want)
		t.Logf("world %d vs 1: relative difference %.3g, largest element difference %.3g", world, rel, maxAbs)
		if rel > 1e-5 {
			t.Errorf("world %d: parameters differ from world 1 by %.3g relative (> 1e-5)", world, rel)
		}
	}
}

// fakeNCCL loads the fake NCCL (testutil.FakeNCCL).
func fakeNCCL(t *testing.T) *nccl.Lib {
	t.Helper()
	lib, err := nccl.Load(testutil.FakeNCCL(t))
	if err != nil {
		t.Fatal(err)
	}
	return lib
}

// TestNCCLMatchesRing: the same tiny stage-1 run (20 steps, VQ on from step
// 10) trained over NCCL (the fake, on CPU models: every buffer through the
// communicator's device scratch) and over the ring, at worlds 2 and 3,
// ends with the same parameters up to float summation order (the fake
// sums in the ring's order: 0 in practice). At world 3 the NCCL run shards
// its optimizer (ZeRO-2: reduce-scatter, all-gather, the checkpoint's
// gather, all over NCCL), which trains the same bits.
func TestNCCLMatchesRing(t *testing.T) {
	lib := loadLib(t)
	ncclLib := fakeNCCL(t)
	f := startFleet(t)
	dir := t.TempDir()
	data := synthData(t, filepath.Join(dir, "train"), synth.Train, 300, 50)
	// World 3 over NCCL runs ZeRO-2 (the ring: plain all-reduce); the bf16
	// case sums bf16 gradients (collective.reduce_dtype bf16) on both; the
	// bucket case reduces 64 KiB buckets during backward on both.
	for _, tc := range []struct {
		world     int
		precision []string
	}{
		{2, nil},
		{2, []string{"collective.bucket_mb=0.0625"}},
		{3, nil},
		{3, []string{"precision=bf16", "collective.reduce_dtype=bf16"}},
	} {
		world := tc.world
		name := fmt.Sprintf("world %d %v", world, tc.precision)
		params := map[string][]float32{}
		for _, backend := range []string{"ring", "nccl"} {
			zero := "optim.zero=0"
			if world == 3 && backend == "nccl" {
				zero = "optim.zero=2"
			}
			stop := f.startTrainersWith(lib, fmt.Sprintf("%s%d%d", backend, world, len(tc.precision)), world, func(tr *worker.Trainer) { tr.NCCL = ncclLib })
			sets := append([]string{zero,
				"steps=20", "stage1.phase_a_steps=10", "stage1.kmeans_batches=2", "global_batch=6", "device=auto",
				"collective.backend=" + backend, fmt.Sprintf("min_workers=%d", world), fmt.Sprintf("max_workers=%d", world),
				"data.url=" + data, "data.eval_url=", "checkpoint.url=file://" + filepath.Join(dir, "ckpt"), "checkpoint.every_steps=0", "metrics.every_steps=5"},
				tc.precision...)
			id := f.submit("tiny-stage1", sets...)
			info := f.waitDone(id, 3*time.Minute)
			stop()
			if info.State != wire.RunCompleted || len(info.Members) != world {
				t.Fatalf("%s %s: run %s is %s with %d members: %s", name, backend, id, info.State, len(info.Members), info.Reason)
			}
			params[backend] = finalParams(t, lib, info)
		}
		if len(params["nccl"]) != len(params["ring"]) {
			t.Fatalf("%s: %d parameters over NCCL, %d over the ring", name, len(params["nccl"]), len(params["ring"]))
		}
		rel, _ := relDiff(params["nccl"], params["ring"])
		t.Logf("%s: nccl vs ring relative difference %.3g", name, rel)
		if rel > 1e-6 {
			t.Errorf("%s: the NCCL run's parameters differ from the ring run's by %.3g relative (> 1e-6)", name, rel)
		}
	}
}

// relDiff is ‖got − want‖ / ‖want‖ and the largest element difference.
func relDiff(got, want []float32) (rel, maxAbs float64) {
	var diff, norm float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		diff += d * d
		norm += float64(want[i]) * float64(want[i])
		maxAbs = max(maxAbs, math.Abs(d))
	}
	return math.Sqrt(diff / norm), maxAbs
}

// TestBitwiseRunAtAnyWorldSize: the same tiny stage-1 run with
// determinism: bitwise (80 steps, VQ on from step 10 with its k-means
// init; groups of 2 of a global batch of 6) trained by 1, 2 and 3 workers
// through the coordinator ends with the same final state, tensor for
// tensor and bit for bit, and run show reports the same loss. So does the
// run trained by 3 workers over the fake NCCL with ZeRO-2, and the run
// trained by 3 workers to a checkpoint past step 12, cancelled, and
// resumed from its newest checkpoint by 2. A fast run afterwards turns
// libtorch's deterministic algorithms off again.
func TestBitwiseRunAtAnyWorldSize(t *testing.T) {
	lib := loadLib(t)
	f := startFleet(t)
	dir := t.TempDir()
	data := synthData(t, filepath.Join(dir, "train"), synth.Train, 300, 50)
	spec := func(minW, maxW int, every string) []string {
		return []string{"steps=80", "stage1.phase_a_steps=10", "stage1.kmeans_batches=2", "global_batch=6",
			"determinism=bitwise", "determinism_group=2",
			fmt.Sprintf("min_workers=%d", minW), fmt.Sprintf("max_workers=%d", maxW),
			"data.url=" + data, "data.eval_url=", "checkpoint.url=file://" + filepath.Join(dir, "ckpt"), "checkpoint.every_steps=" + every, "metrics.every_steps=5"}
	}
	var want *trainer.StateInfo
	var wantLoss float64
	check := func(what string, info wire.RunInfo, members int) {
		t.Helper()
		if info.State != wire.RunCompleted || len(info.Members) != members || info.Step != 80 {
			t.Fatalf("%s: run %s is %s (%s), %d members, step %d", what, info.ID, info.State, info.Reason, len(info.Members), info.Step)
		}
		blob, err := os.ReadFile(filepath.Join(info.Final.URL[len("file://"):], "state.lvst"))
		if err != nil {
			t.Fatal(err)
		}
		st, err := trainer.ParseState(blob)
		if err != nil {
			t.Fatal(err)
		}
		if info.Loss == nil {
			t.Fatalf("%s: run show reports no loss", what)
		}
		if want == nil {
			want, wantLoss = st, *info.Loss
			return
		}
		for _, name := range want.Tensors {
			a, b := want.Values[name], st.Values[name]
			if len(a) != len(b) {
				t.Fatalf("%s: %s has %d values, want %d", what, name, len(b), len(a))
			}
			for i := range a {
				if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
					t.Fatalf("%s: %s[%d] = %v, world 1 has %v", what, name, i, b[i], a[i])
				}
			}
		}
		if *info.Loss != wantLoss {
			t.Errorf("%s: run show's loss %v, world 1's %v", what, *info.Loss, wantLoss)
		}
	}
	for _, world := range []int{1, 2, 3} {
		stop := f.startTrainers(lib, fmt.Sprintf("b%d", world), world)
		id := f.submit("tiny-stage1", spec(world, world, "0")...)
		info := f.waitDone(id, 3*time.Minute)
		stop()
		check(fmt.Sprintf("world %d", world), info, world)
	}

	// Over NCCL (the fake, CPU models) with a sharded optimizer and
	// gradients (ZeRO-2): the same bits.
	ncclLib := fakeNCCL(t)
	stopN := f.startTrainersWith(lib, "n3", 3, func(tr *worker.Trainer) { tr.NCCL = ncclLib })
	idN := f.submit("tiny-stage1", append(spec(3, 3, "0"), "collective.backend=nccl", "device=auto", "optim.zero=2")...)
	infoN := f.waitDone(idN, 3*time.Minute)
	stopN()
	check("3 workers over NCCL at ZeRO-2", infoN, 3)

	// 3 workers to a checkpoint past the VQ switch, then 2 from it.
	stop := f.startTrainers(lib, "r3", 3)
	testutil.WaitFor(t, time.Minute, "three idle workers", func() bool {
		ws, err := wire.ListWorkers.Call(context.Background(), f.client, &wire.WorkersRequest{})
		if err != nil {
			return false
		}
		idle := 0
		for _, w := range ws.Workers {
			if w.State == wire.WorkerIdle {
				idle++
			}
		}
		return idle == 3
	})
	id := f.submit("tiny-stage1", spec(2, 3, "4")...)
	testutil.WaitFor(t, 3*time.Minute, "a checkpoint at step 12", func() bool {
		info := f.show(id)
		return len(info.Members) == 3 && len(info.Checkpoints) > 0 && info.Checkpoints[len(info.Checkpoints)-1].Step >= 12
	})
	// Cancelled, so that it waits for run resume (left paused it would
	// resume as soon as two workers are idle); then resumed on two.
	if _, err := wire.CancelRun.Call(context.Background(), f.client, &wire.RunCancelRequest{ID: id, Reason: "to resume it on two workers"}); err != nil {
		t.Fatal(err)
	}
	if st := f.show(id).State; st != wire.RunCancelled {
		t.Fatalf("run %s is %s after cancel (it ended before the test could stop it: make it longer)", id, st)
	}
	stop()
	f.startTrainers(lib, "r2", 2)
	if _, err := wire.ResumeRun.Call(context.Background(), f.client, &wire.RunRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	info := f.waitDone(id, 3*time.Minute)
	if info.RestoredFrom < 12 || info.Generation < 2 {
		t.Fatalf("resumed run: generation %d restored step %d; want a new generation from a step ≥ 12", info.Generation, info.RestoredFrom)
	}
	check("3 workers, resumed on 2", info, 2)

	// libtorch's deterministic algorithms are a per-process switch: on
	// after the bitwise runs, off again for a fast run on the same lib.
	if bi, err := lib.BuildInfo(); err != nil || !bi.Deterministic {
		t.Fatalf("after bitwise runs: deterministic algorithms %v (%v), want on", bi.Deterministic, err)
	}
	stopF := f.startTrainers(lib, "f1", 1)
	idF := f.submit("tiny-stage1", "steps=6", "stage1.phase_a_steps=3", "stage1.kmeans_batches=2", "global_batch=6", "min_workers=1", "max_workers=1",
		"data.url="+data, "data.eval_url=", "checkpoint.url=file://"+filepath.Join(dir, "ckpt"), "checkpoint.every_steps=0")
	infoF := f.waitDone(idF, 3*time.Minute)
	stopF()
	if infoF.State != wire.RunCompleted {
		t.Fatalf("fast run %s is %s: %s", idF, infoF.State, infoF.Reason)
	}
	if bi, err := lib.BuildInfo(); err != nil || bi.Deterministic {
		t.Fatalf("after a fast run: deterministic algorithms %v (%v), want off", bi.Deterministic, err)
	}
}
