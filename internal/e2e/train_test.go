package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// trainFleet is coordinators and workers as processes, plus the env the
// CLI needs to reach them.
type trainFleet struct {
	t        *testing.T
	coords   []*coordNode
	bin      string
	coordBin string
	env      []string
	urls     string
	dir      string // the CLI's working directory
}

// startTrainFleet starts n coordinators (the first bootstraps, the others
// join) and returns the fleet; workers are started with addWorker.
func startTrainFleet(t *testing.T, n int, extraEnv []string) *trainFleet {
	t.Helper()
	bin := testutil.Binaries(t)
	f := &trainFleet{t: t, bin: bin, coordBin: filepath.Join(bin, "lavit-coord"), dir: t.TempDir()}
	c1 := startCoordEnv(t, bin, "c1", extraEnv)
	testutil.WaitFor(t, time.Minute, "c1 ready", c1.ready)
	token, err := os.ReadFile(filepath.Join(c1.dataDir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	f.env = append([]string{"LAVIT_TOKEN=" + strings.TrimSpace(string(token))}, extraEnv...)
	coords := []*coordNode{c1}
	for i := 2; i <= n; i++ {
		coords = append(coords, startCoordEnv(t, bin, "c"+string(rune('0'+i)), extraEnv, "--join", c1.http, "--token", strings.TrimSpace(string(token))))
	}
	var urls []string
	for _, c := range coords {
		testutil.WaitFor(t, time.Minute, c.id+" ready", c.ready)
		urls = append(urls, "nats://"+c.nats)
	}
	f.urls = strings.Join(urls, ",")
	f.coords = coords
	f.env = append(f.env, "LAVIT_COORD="+f.urls)
	return f
}

func (f *trainFleet) addWorker(id string, env ...string) *proc {
	return startProc(f.t, "worker "+id, filepath.Join(f.bin, "lavit-worker"), append(append([]string{}, f.env...), env...),
		"join", "--id", id, "--device", "cpu", "--collective-listen", "127.0.0.1:0")
}

// workerToken issues a worker token (it carries the cluster CA's
// fingerprint, so it is all a worker needs).
func (f *trainFleet) workerToken() string {
	f.t.Helper()
	reply := mustJSON[wire.TokenCreateReply](f.t, f.coordBin, f.env, "token", "create", "--role", "worker", "--json")
	if cred, fp := wire.SplitToken(reply.Token); cred == "" || len(fp) != 64 {
		f.t.Fatalf("worker token %q carries no CA fingerprint", reply.Token)
	}
	return reply.Token
}

// cli runs lavit-coord in the fleet's working directory.
func (f *trainFleet) cli(args ...string) (string, string, int) {
	f.t.Helper()
	return runIn(f.t, f.dir, f.coordBin, f.env, args...)
}

// submit submits a spec file with overrides and returns the run id.
func (f *trainFleet) submit(spec string, sets ...string) string {
	f.t.Helper()
	args := []string{"run", "submit", "--json", "-f", filepath.Join(testutil.RepoRoot(), spec)}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	stdout, stderr, code := f.cli(args...)
	if code != 0 {
		f.t.Fatalf("run submit %s: exit %d: %s", spec, code, stderr)
	}
	var reply wire.RunSubmitReply
	if err := json.Unmarshal([]byte(stdout), &reply); err != nil || reply.ID == "" {
		f.t.Fatalf("run submit printed %q: %v", stdout, err)
	}
	return reply.ID
}

func (f *trainFleet) show(id string) (wire.RunInfo, error) {
	return jsonOut[wire.RunInfo](f.t, f.coordBin, f.env, "run", "show", id, "--json")
}

// waitState waits until the run reaches one of states and returns it.
func (f *trainFleet) waitState(id string, timeout time.Duration, states ...string) wire.RunInfo {
	f.t.Helper()
	var info wire.RunInfo
	testutil.WaitFor(f.t, timeout, "run "+id+" to be "+strings.Join(states, " or "), func() bool {
		var err error
		if info, err = f.show(id); err != nil {
			f.t.Logf("run show: %v", err)
			return false
		}
		for _, s := range states {
			if info.State == s {
				return true
			}
		}
		return false
	})
	return info
}

// TestTrainEndToEnd: three coordinators, two workers, the data set and the
// checkpoints on the loopback S3 server; the tiny stage-1 run, then the
// stage-2 run on its tokenizer (submitted at once: it waits), both to
// completion with MODEL.md's bars met, as `run show --json` and `eval`
// report them.
func TestTrainEndToEnd(t *testing.T) {
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "lavit")
	s3env := []string{"AWS_ENDPOINT_URL=" + srv.Endpoint, "AWS_ACCESS_KEY_ID=" + srv.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + srv.SecretKey, "AWS_REGION=" + srv.Region}
	f := startTrainFleet(t, 3, s3env)
	for _, c := range [][]string{
		{"shards", "synth", "--out", "s3://lavit/train", "--samples", "5000", "--per-shard", "500"},
		{"shards", "synth", "--out", "s3://lavit/eval", "--split", "eval", "--samples", "256", "--per-shard", "128"},
	} {
		if _, stderr, code := f.cli(c...); code != 0 {
			t.Fatalf("%v: exit %d: %s", c, code, stderr)
		}
	}
	// The workers hold a worker token, which pins the cluster CA: every
	// connection is TLS (raft, routes, clients, the join) with tokens.
	wt := f.workerToken()
	f.addWorker("w1", "LAVIT_TOKEN="+wt)
	f.addWorker("w2", "LAVIT_TOKEN="+wt)

	data := []string{"data.url=s3://lavit/train", "data.eval_url=s3://lavit/eval", "checkpoint.url=s3://lavit/checkpoints", "min_workers=2"}
	run1 := f.submit("configs/tiny-stage1.yaml", data...)
	run2 := f.submit("configs/tiny-stage2.yaml", append(data, "tokenizer.from="+run1)...)
	pending, err := f.show(run2)
	if err != nil || pending.State != wire.RunPending || !strings.Contains(pending.WaitingFor, run1) {
		t.Errorf("stage-2 run right after submit: %+v %v; want PENDING, waiting for %s", pending, err, run1)
	}
	for _, id := range []string{run1, run2} {
		info := f.waitState(id, 6*time.Minute, wire.RunCompleted, wire.RunFailed, wire.RunCancelled)
		if info.State != wire.RunCompleted {
			t.Fatalf("run %s is %s: %s", id, info.State, info.Reason)
		}
		if info.Generation != 1 || len(info.Members) != 2 || info.Step != info.TotalSteps || info.TotalSteps == 0 {
			t.Errorf("run %s: generation %d, %d members, step %d of %d", id, info.Generation, len(info.Members), info.Step, info.TotalSteps)
		}
		if info.Final == nil || !strings.HasPrefix(info.Final.URL, "s3://lavit/checkpoints/"+id+"/final") || len(info.Final.SHA256) != 64 {
			t.Errorf("run %s: final state %+v, want one under s3://lavit/checkpoints", id, info.Final)
		}
		if len(info.Eval) == 0 {
			t.Errorf("run %s: no checks", id)
		}
		for _, c := range info.Eval {
			t.Logf("run %s: %-4v %s: %s", id, c.Pass, c.Name, c.Value)
			if !c.Pass {
				t.Errorf("run %s: check failed: %s: %s", id, c.Name, c.Value)
			}
		}
	}
	if stdout, stderr, code := f.cli("eval", run1, run2); code != 0 || strings.Count(stdout, "PASS") != 7 {
		t.Errorf("eval: exit %d, want 0 with 7 PASS lines:\n%s%s", code, stdout, stderr)
	}
}

// TestRunBadInput: each mistake is a clear error where the user looks
// (the CLI's exit status and message, or the run's state and reason in
// run show), and the fleet keeps working.
func TestRunBadInput(t *testing.T) {
	f := startTrainFleet(t, 1, nil)
	data := filepath.Join(f.dir, "data")
	if _, stderr, code := f.cli("shards", "synth", "--out", "file://"+data, "--samples", "200", "--per-shard", "50"); code != 0 {
		t.Fatal(stderr)
	}
	specFile := filepath.Join(f.dir, "bad.yaml")
	good := []string{"data.url=file://" + data, "data.eval_url=", "checkpoint.url=file://" + filepath.Join(f.dir, "ckpt"), "steps=6", "stage1.phase_a_steps=3", "stage1.kmeans_batches=1", "metrics.every_steps=2"}

	// Mistakes the CLI catches before anything is submitted (exit 2).
	cliCases := []struct {
		name string
		file string // spec file content ("" = configs/tiny-stage1.yaml)
		sets []string
		want string
	}{
		{"unknown field", "stage: 1\nmodel: tiny-stage1\nstepz: 10\n", nil, `bad.yaml:3: unknown field "stepz"`},
		{"wrong type", "stage: 1\nmodel: tiny-stage1\nsteps: lots\n", nil, `bad.yaml:3: steps: want an integer`},
		{"min above max", "", []string{"min_workers=3", "max_workers=2"}, "max_workers 2 is less than min_workers 3"},
		{"batch not splittable", "", []string{"global_batch=1", "max_workers=2"}, "global_batch 1 cannot be split over max_workers 2"},
		{"missing data set", "", []string{"data.url=file:///nonexistent/lavit-data"}, "no usable data set"},
		{"stage 2 without tokenizer", "stage: 2\nmodel: tiny-stage2\nsteps: 10\nglobal_batch: 8\ndata:\n  url: ./data\n", nil, "tokenizer.from"},
	}
	for _, tc := range cliCases {
		path := filepath.Join(testutil.RepoRoot(), "configs/tiny-stage1.yaml")
		if tc.file != "" {
			os.WriteFile(specFile, []byte(tc.file), 0o644)
			path = specFile
		}
		args := []string{"run", "submit", "-f", path}
		for _, s := range append(append([]string{}, good...), tc.sets...) {
			args = append(args, "--set", s)
		}
		if tc.file != "" {
			args = []string{"run", "submit", "-f", path}
		}
		_, stderr, code := f.cli(args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit 2 mentioning %q", tc.name, code, stderr, tc.want)
		}
	}

	// A stage-2 run naming a run that does not exist is refused by the
	// coordinator (exit 1).
	args := []string{"run", "submit", "-f", filepath.Join(testutil.RepoRoot(), "configs/tiny-stage2.yaml"), "--set", "tokenizer.from=r-0099"}
	for _, s := range good[:3] {
		args = append(args, "--set", s)
	}
	if _, stderr, code := f.cli(args...); code != 1 || !strings.Contains(stderr, `run "r-0099" does not exist`) {
		t.Errorf("missing tokenizer run: exit %d, stderr %q", code, stderr)
	}

	// A worker without the libtorch shim joins but is never given a run:
	// the run waits and says why.
	// (a copy of the binary with no shim beside it, and no LAVIT_TORCH_LIB)
	lone := filepath.Join(t.TempDir(), "lavit-worker")
	if b, err := os.ReadFile(filepath.Join(f.bin, "lavit-worker")); err != nil || os.WriteFile(lone, b, 0o755) != nil {
		t.Fatal("copy lavit-worker:", err)
	}
	startProc(t, "worker no-shim", lone, append(append([]string{}, f.env...), "LAVIT_TORCH_LIB="), "join", "--id", "no-shim", "--device", "cpu")
	testutil.WaitFor(t, time.Minute, "no-shim registered", func() bool {
		rows, err := jsonOut[[]workerRow](t, f.coordBin, f.env, "workers", "ls", "--json")
		return err == nil && len(rows) == 1 && rows[0].State == "IDLE"
	})
	waiting := f.submit("configs/tiny-stage1.yaml", good...)
	info, err := f.show(waiting)
	if err != nil || info.State != wire.RunPending || !strings.Contains(info.WaitingFor, "cannot train (started without the libtorch shim") {
		t.Errorf("run with only a shim-less worker: %+v %v; want PENDING saying why", info, err)
	}

	// A worker that can train arrives: the waiting run trains to the end,
	// on it alone and in its first generation. That is what proves the
	// shim-less worker was never given the run, whenever the scheduler
	// looked (the submit kicks it): a start with it would have taken it
	// (ids sort "no-shim" first) or used up a generation.
	f.addWorker("w1")
	if info := f.waitState(waiting, 3*time.Minute, wire.RunCompleted, wire.RunFailed); info.State != wire.RunCompleted {
		t.Fatalf("run %s: %s: %s", waiting, info.State, info.Reason)
	} else if info.Generation != 1 || len(info.Members) != 1 || info.Members[0].Worker != "w1" {
		t.Errorf("run %s: generation %d, members %+v; want generation 1 on w1 alone", waiting, info.Generation, info.Members)
	}

	// Runs that fail on the worker: a data set that is not there (S3
	// bucket unknown to this machine) and a tokenizer state that is not
	// there (inside the coordinator's file roots, so it passes submit).
	// Each ends FAILED with the cause in run show; the fleet goes on.
	missingTokenizer := "file://" + filepath.Join(t.TempDir(), "nonexistent", "tokenizer")
	for _, tc := range []struct {
		spec string
		sets []string
		want string
	}{
		{"configs/tiny-stage1.yaml", []string{"data.url=s3://no-such-bucket-lavit/train"}, "data.url s3://no-such-bucket-lavit/train"},
		{"configs/tiny-stage2.yaml", []string{"tokenizer.from=" + missingTokenizer, "stage1.phase_a_steps=0"}, "tokenizer.from " + missingTokenizer},
	} {
		sets := append(append([]string{}, good...), tc.sets...)
		if strings.Contains(tc.spec, "stage2") {
			sets = append([]string{good[0], good[1], good[2], "steps=4", "metrics.every_steps=2"}, tc.sets[0])
		}
		id := f.submit(tc.spec, sets...)
		info := f.waitState(id, 2*time.Minute, wire.RunFailed, wire.RunCompleted)
		if info.State != wire.RunFailed || !strings.Contains(info.Reason, tc.want) {
			t.Errorf("run %s: %s %q; want FAILED mentioning %q", id, info.State, info.Reason, tc.want)
		}
	}

	// A busy fleet queues runs in submission order; cancelling the running
	// one frees its worker for the next.
	// The queued run must not start before the cancel: its only start is
	// in the coordinator's log after the point where the cancel was asked
	// for (a line written before can only land earlier in the buffer).
	long := f.submit("configs/tiny-stage1.yaml", append(append([]string{}, good...), "steps=100000", "stage1.phase_a_steps=99999")...)
	running := f.waitState(long, 2*time.Minute, wire.RunRunning)
	last := f.submit("configs/tiny-stage1.yaml", good...)
	if info, err := f.show(last); err != nil || info.State != wire.RunPending || !strings.Contains(info.WaitingFor, "idle CPU workers that can train") {
		t.Errorf("run behind a busy fleet: %+v %v; want PENDING waiting for idle CPU workers", info, err)
	}
	// The fleet keeps training the running one meanwhile.
	testutil.WaitFor(t, 2*time.Minute, "run "+long+" to train on after "+last+" was submitted", func() bool {
		info, err := f.show(long)
		return err == nil && info.State == wire.RunRunning && info.Step >= running.Step+10
	})
	if info, err := f.show(last); err != nil || info.State != wire.RunPending {
		t.Errorf("run behind a busy fleet, 10 steps later: %+v %v; want PENDING", info, err)
	}
	coordLog := f.coords[0].out
	cancelAt := len(coordLog.String())
	if _, stderr, code := f.cli("run", "cancel", long, "--reason", "test"); code != 0 {
		t.Fatalf("run cancel: exit %d: %s", code, stderr)
	}
	if info, _ := f.show(long); info.State != wire.RunCancelled || !strings.Contains(info.Reason, "test") {
		t.Errorf("cancelled run: %s %q", info.State, info.Reason)
	}
	if _, stderr, code := f.cli("run", "cancel", long); code != 1 || !strings.Contains(stderr, "already CANCELLED") {
		t.Errorf("second cancel: exit %d: %s", code, stderr)
	}
	if info := f.waitState(last, 3*time.Minute, wire.RunCompleted, wire.RunFailed); info.State != wire.RunCompleted {
		t.Errorf("the fleet after the failures and the cancel: run %s is %s: %s", last, info.State, info.Reason)
	} else if starts := logLines(coordLog.String(), "run started", last); len(starts) != 1 || starts[0] < cancelAt || info.Generation != 1 {
		t.Errorf("run %s (generation %d) started at log offsets %v, the cancel of %s asked for at %d; want one start, after it", last, info.Generation, starts, long, cancelAt)
	}

	// A checkpoint directory that already holds another checkpoint (the
	// next run's id under the same checkpoint.url, as another cluster
	// would leave it) is never overwritten: the run fails and says why.
	runs := mustJSON[[]wire.RunInfo](t, f.coordBin, f.env, "run", "ls", "--json")
	next := fmt.Sprintf("r-%04d", len(runs)+1)
	taken := filepath.Join(f.dir, "ckpt", next, "step-00000006")
	os.MkdirAll(taken, 0o755)
	os.WriteFile(filepath.Join(taken, "manifest.json"), []byte(`{"format":1,"run":"someone else's"}`), 0o644)
	clash := f.submit("configs/tiny-stage1.yaml", good...)
	if clash != next {
		t.Fatalf("run id %s, expected %s", clash, next)
	}
	if info := f.waitState(clash, 3*time.Minute, wire.RunCompleted, wire.RunFailed); info.State != wire.RunFailed || !strings.Contains(info.Reason, "already holds a different checkpoint") {
		t.Errorf("run over a taken checkpoint directory: %s %q", info.State, info.Reason)
	}
}

// logLines returns the offsets in a process's log of the lines with
// msg="msg" and run=id.
func logLines(out, msg, id string) []int {
	var at []int
	off := 0
	for line := range strings.Lines(out) {
		if strings.Contains(line, `msg="`+msg+`"`) && slices.Contains(strings.Fields(line), "run="+id) {
			at = append(at, off)
		}
		off += len(line)
	}
	return at
}

// BenchmarkTrainScaling: the tiny stage-1 run (300 steps, global batch 8,
// VQ on for the last third) trained by 1 and by 2 worker processes on this
// machine; it reports rank 0's samples/s and step time split over the last
// 100 steps, and the scaling efficiency. With 2 workers each gets one
// libtorch thread (the machine's cores split between them). Run with
// -benchtime 1x.
func BenchmarkTrainScaling(b *testing.B) {
	bin := testutil.Binaries(b)
	data := benchData(b, bin)
	cores := runtime.NumCPU()
	rates := map[int]float64{}
	for _, world := range []int{1, 2} {
		for i := 0; i < b.N; i++ {
			info := benchRun(b, bin, data, world, nil, "--threads", fmt.Sprint(max(1, cores/threadDiv(world))))
			rates[world] = info.SamplesPerS
			reportTiming(b, fmt.Sprintf("w%d_", world), info)
		}
	}
	b.ReportMetric(100*rates[2]/(2*rates[1]), "scaling_efficiency_%")
}

// BenchmarkNCCLVsRing: the same tiny stage-1 run on 2 worker processes
// (one libtorch thread each) over the ring and over NCCL, here the fake
// NCCL on the CPU (make fake-nccl): a sanity check of the NCCL path's
// staging and polling overhead in the step, not of NCCL itself. Run with
// -benchtime 1x.
func BenchmarkNCCLVsRing(b *testing.B) {
	bin := testutil.Binaries(b)
	data := benchData(b, bin)
	lib := testutil.FakeNCCL(b)
	for _, backend := range []string{"ring", "nccl"} {
		for i := 0; i < b.N; i++ {
			info := benchRun(b, bin, data, 2, []string{"collective.backend=" + backend, "device=auto"}, "--threads", "1", "--nccl-lib", lib)
			reportTiming(b, backend+"_", info)
		}
	}
}

// benchData makes the synthetic data set the training benchmarks read.
func benchData(b *testing.B, bin string) string {
	data := filepath.Join(b.TempDir(), "data")
	if out, err := exec.Command(filepath.Join(bin, "lavit-coord"), "shards", "synth", "--out", "file://"+data, "--samples", "3000", "--per-shard", "500").CombinedOutput(); err != nil {
		b.Fatalf("synth: %v: %s", err, out)
	}
	return data
}

// benchRun trains the tiny stage-1 benchmark run (300 steps, VQ on for the
// last 100) on world worker processes under a fresh coordinator and returns
// the completed run, whose timing is rank 0's over the last 100 steps.
func benchRun(b *testing.B, bin, data string, world int, sets []string, workerArgs ...string) wire.RunInfo {
	return benchRunEach(b, bin, data, world, sets, func(int) []string { return workerArgs })
}

// benchRunEach is benchRun with each worker's own arguments (rank w's:
// workerArgs(w)).
func benchRunEach(b *testing.B, bin, data string, world int, sets []string, workerArgs func(w int) []string) wire.RunInfo {
	coordBin := filepath.Join(bin, "lavit-coord")
	c := startCoord(b, bin, "c1", "--log-level", "warn")
	testutil.WaitFor(b, time.Minute, "ready", c.ready)
	tok, _ := os.ReadFile(filepath.Join(c.dataDir, "token"))
	env := []string{"LAVIT_TOKEN=" + strings.TrimSpace(string(tok)), "LAVIT_COORD=nats://" + c.nats}
	var workers []*proc
	for w := 0; w < world; w++ {
		args := append([]string{"join", "--id", fmt.Sprintf("w%d", w), "--device", "cpu", "--log-level", "warn", "--collective-listen", "127.0.0.1:0"}, workerArgs(w)...)
		workers = append(workers, startProc(b, fmt.Sprintf("w%d", w), filepath.Join(bin, "lavit-worker"), env, args...))
	}
	args := []string{"run", "submit", "--json", "-f", filepath.Join(testutil.RepoRoot(), "configs/tiny-stage1.yaml"),
		"--set", "data.url=file://" + data, "--set", "data.eval_url=", "--set", "checkpoint.url=file://" + filepath.Join(b.TempDir(), "ckpt"),
		"--set", "steps=300", "--set", "stage1.phase_a_steps=200", "--set", "metrics.every_steps=100",
		"--set", fmt.Sprintf("min_workers=%d", world), "--set", fmt.Sprintf("max_workers=%d", world)}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	cmd := exec.Command(coordBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("submit: %v", err)
	}
	var reply wire.RunSubmitReply
	json.Unmarshal(out, &reply)
	// Poll for the end once a second: every poll starts a CLI process, and
	// polling at WaitFor's pace took over a third of this 2-core machine
	// from the workers being measured (the rates come from the workers'
	// own clocks, so seeing the end late changes nothing).
	var info wire.RunInfo
	for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(time.Second) {
		info, err = jsonOut[wire.RunInfo](b, coordBin, env, "run", "show", reply.ID, "--json")
		if err == nil && (info.State == wire.RunCompleted || info.State == wire.RunFailed) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("world %d: the run did not end in 10 minutes (last: %+v, %v)", world, info, err)
		}
	}
	if info.State != wire.RunCompleted || info.Timing == nil {
		b.Fatalf("world %d: run %s: %s", world, info.State, info.Reason)
	}
	for _, w := range workers {
		w.signalAndWait(b, syscall.SIGTERM, time.Minute)
	}
	c.signalAndWait(b, syscall.SIGTERM, time.Minute)
	return info
}

// reportTiming reports a benchmark run's rate and step time split.
func reportTiming(b *testing.B, prefix string, info wire.RunInfo) {
	t := info.Timing
	b.ReportMetric(info.SamplesPerS, prefix+"samples/s")
	b.ReportMetric(t.StepMs, prefix+"step_ms")
	b.ReportMetric(t.ComputeMs, prefix+"compute_ms")
	b.ReportMetric(t.DataMs, prefix+"data_ms")
	b.ReportMetric(t.AllReduceMs, prefix+"allreduce_ms")
	b.ReportMetric(t.IdleMs, prefix+"idle_ms")
	b.ReportMetric(100*(t.StepMs-t.ComputeMs-t.IdleMs)/t.StepMs, prefix+"overhead_%")
	b.ReportMetric(100*(t.StepMs-t.ComputeMs)/t.StepMs, prefix+"overhead_with_idle_%")
}

// threadDiv: LAVIT_BENCH_SHARE_CORES=1 splits the cores between the
// workers; by default each worker uses them all.
func threadDiv(world int) int {
	if os.Getenv("LAVIT_BENCH_SHARE_CORES") == "1" {
		return world
	}
	return 1
}
