package e2e

import (
	"errors"
	"maps"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// ckptSpec is a tiny stage-1 run that checkpoints every 20 steps (long
// enough that a test kills it mid-way on any machine):
// VQ switches on at step 60, so checkpoints on both sides of it exist.
func ckptSpec(data, ckpt string, extra ...string) []string {
	return append([]string{"data.url=" + data, "data.eval_url=", "checkpoint.url=" + ckpt,
		"steps=300", "stage1.phase_a_steps=60", "stage1.kmeans_batches=2", "global_batch=8",
		"checkpoint.every_steps=20", "checkpoint.keep=10", "metrics.every_steps=10", "min_workers=2", "max_workers=2"}, extra...)
}

// waitCkpt waits until the run has a committed checkpoint at step ≥ min.
func (f *trainFleet) waitCkpt(id string, min int64, timeout time.Duration) []wire.CheckpointInfo {
	f.t.Helper()
	var list []wire.CheckpointInfo
	testutil.WaitFor(f.t, timeout, "a checkpoint of "+id+" at step ≥ "+itoa(min), func() bool {
		var err error
		list, err = jsonOut[[]wire.CheckpointInfo](f.t, f.coordBin, f.env, "ckpt", "ls", id, "--json")
		return err == nil && len(list) > 0 && list[len(list)-1].Step >= min
	})
	return list
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// finalState reads a completed run's final model state (file:// or the
// S3 server through the fleet's store).
func finalState(t *testing.T, info wire.RunInfo) []byte {
	t.Helper()
	if info.Final == nil {
		t.Fatalf("run %s has no final state", info.ID)
	}
	m, err := checkpoint.ReadManifest(t.Context(), info.Checkpoints[len(info.Checkpoints)-1].URL)
	if err != nil {
		t.Fatal(err)
	}
	state, err := checkpoint.Fetch(t.Context(), info.Checkpoints[len(info.Checkpoints)-1].URL, m)
	if err != nil {
		t.Fatal(err)
	}
	return state
}

// paramsOf returns a state's flat parameters.
func paramsOf(t *testing.T, state []byte) []float32 {
	t.Helper()
	st, err := checkpoint.ParseState(state, checkpoint.StateFormat)
	if err != nil {
		t.Fatal(err)
	}
	return st.Values["params"]
}

// TestResumeAfterFullStop kills every process (the coordinator and both
// workers, SIGKILL) in the middle of a run, starts them again and lets the
// run resume by itself from its newest committed checkpoint on the S3
// server: the final state is bitwise the uninterrupted run's. A second run,
// with a sharded optimizer (ZeRO-2), two micro-batches per rank and
// activation checkpointing, is killed the same way and resumed (`run
// resume`, once three workers are idle) on three workers instead of two:
// its parameters match the uninterrupted plain run within 1e-5 (ZeRO-2
// trains the bits zero 0 trains at a world size; the checkpoint is the
// same bytes at any world size and stage).
func TestResumeAfterFullStop(t *testing.T) {
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "lavit")
	s3env := []string{"AWS_ENDPOINT_URL=" + srv.Endpoint, "AWS_ACCESS_KEY_ID=" + srv.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + srv.SecretKey, "AWS_REGION=" + srv.Region}
	for _, kv := range s3env { // this process reads the checkpoints too
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	f := startTrainFleet(t, 1, s3env)
	data := "file://" + filepath.Join(f.dir, "data")
	if _, stderr, code := f.cli("shards", "synth", "--out", data, "--samples", "2000", "--per-shard", "250"); code != 0 {
		t.Fatal(stderr)
	}
	ckpt := "s3://lavit/checkpoints"
	w1, w2 := f.addWorker("w1"), f.addWorker("w2")

	// The reference: the same run, uninterrupted.
	ref := f.submit("configs/tiny-stage1.yaml", ckptSpec(data, ckpt)...)
	refInfo := f.waitState(ref, 5*time.Minute, wire.RunCompleted, wire.RunFailed)
	if refInfo.State != wire.RunCompleted {
		t.Fatalf("reference run: %s: %s", refInfo.State, refInfo.Reason)
	}
	want := finalState(t, refInfo)

	killAll := func(workers ...*proc) {
		for _, w := range workers {
			w.signalAndWait(t, syscall.SIGKILL, 10*time.Second)
		}
		f.coords[0].signalAndWait(t, syscall.SIGKILL, 10*time.Second)
	}
	// restart starts the coordinator again if it is down, and the workers.
	restart := func(ids ...string) []*proc {
		select {
		case <-f.coords[0].done:
			f.coords[0].restart(t)
			testutil.WaitFor(t, time.Minute, "coordinator back", f.coords[0].ready)
		default:
		}
		var ws []*proc
		for _, id := range ids {
			ws = append(ws, f.addWorker(id))
		}
		return ws
	}

	// Same world size: bitwise.
	run := f.submit("configs/tiny-stage1.yaml", ckptSpec(data, ckpt)...)
	f.waitCkpt(run, 80, 3*time.Minute) // past the VQ switch at step 60
	killAll(w1, w2)
	ws := restart("w1", "w2")
	info := f.waitState(run, 5*time.Minute, wire.RunCompleted, wire.RunFailed)
	if info.State != wire.RunCompleted {
		t.Fatalf("resumed run: %s: %s", info.State, info.Reason)
	}
	if info.Generation < 2 || info.StartStep < 80 || info.RestoredFrom != info.StartStep {
		t.Errorf("resumed run: generation %d, asked to start from step %d, restored step %d; want a new generation restoring a step ≥ 80", info.Generation, info.StartStep, info.RestoredFrom)
	}
	got := finalState(t, info)
	if string(got) != string(want) {
		t.Errorf("resumed at the same world size: the final state differs from the uninterrupted run's (%d vs %d bytes)", len(got), len(want))
	}

	// Another world size: 2 → 3 workers, sharded, accumulating, recomputing.
	run3 := f.submit("configs/tiny-stage1.yaml", ckptSpec(data, ckpt, "max_workers=3", "optim.zero=2", "micro_batch=2", "activation_checkpointing=true")...)
	// Late in the run: float sums in another order drift further with every
	// step (VQ code choices amplify them), so the 1e-5 bar is checked over
	// the last third.
	f.waitCkpt(run3, 200, 3*time.Minute)
	killAll(ws...)
	// Left to itself the run resumes as soon as two workers are idle, and
	// the third may register later (a loaded machine starts processes
	// slowly): so it is cancelled while no worker is up, and resumed once
	// all three are idle.
	restart()
	if _, stderr, code := f.cli("run", "cancel", run3, "--reason", "to resume it on three workers"); code != 0 {
		t.Fatalf("run cancel: exit %d: %s", code, stderr)
	}
	restart("w1", "w2", "w3")
	testutil.WaitFor(t, time.Minute, "w1, w2 and w3 IDLE", func() bool {
		rows, err := jsonOut[[]workerRow](t, f.coordBin, f.env, "workers", "ls", "--json")
		idle := 0
		for _, r := range rows {
			if r.State == wire.WorkerIdle {
				idle++
			}
		}
		return err == nil && idle == 3
	})
	if _, stderr, code := f.cli("run", "resume", run3); code != 0 {
		t.Fatalf("run resume: exit %d: %s", code, stderr)
	}
	info3 := f.waitState(run3, 5*time.Minute, wire.RunCompleted, wire.RunFailed)
	if info3.State != wire.RunCompleted || len(info3.Members) != 3 || info3.RestoredFrom < 200 {
		t.Fatalf("run resumed on 3 workers: %s with %d members, restored step %d: %s", info3.State, len(info3.Members), info3.RestoredFrom, info3.Reason)
	}
	a, b := paramsOf(t, finalState(t, info3)), paramsOf(t, want)
	var diff, norm float64
	for i := range b {
		d := float64(a[i]) - float64(b[i])
		diff += d * d
		norm += float64(b[i]) * float64(b[i])
	}
	rel := math.Sqrt(diff / norm)
	t.Logf("ZeRO-2 run resumed on 3 workers: relative difference %.3g from the uninterrupted 2-worker run", rel)
	if rel > 1e-5 {
		t.Errorf("resumed on 3 workers: parameters differ by %.3g relative (> 1e-5)", rel)
	}
}

// TestCheckpointCrashPoints: a worker dies after writing its part but
// before reporting it; a part is corrupted after its checkpoint was
// committed. Neither a half-written nor a corrupt checkpoint is ever
// listed or loaded: the run resumes from the previous one, says so, and
// still ends bitwise where an uninterrupted run ends.
func TestCheckpointCrashPoints(t *testing.T) {
	f := startTrainFleet(t, 1, nil)
	data := "file://" + filepath.Join(f.dir, "data")
	if _, stderr, code := f.cli("shards", "synth", "--out", data, "--samples", "2000", "--per-shard", "250"); code != 0 {
		t.Fatal(stderr)
	}
	ckptDir := filepath.Join(f.dir, "ckpt")
	ckpt := "file://" + ckptDir
	w1 := f.addWorker("w1")
	f.addWorker("w2")
	ref := f.submit("configs/tiny-stage1.yaml", ckptSpec(data, ckpt)...)
	refInfo := f.waitState(ref, 5*time.Minute, wire.RunCompleted, wire.RunFailed)
	if refInfo.State != wire.RunCompleted {
		t.Fatalf("reference run: %s: %s", refInfo.State, refInfo.Reason)
	}
	want := finalState(t, refInfo)

	// 1. w3 writes its part of step 40 and dies before reporting it.
	w1.signalAndWait(t, syscall.SIGTERM, 30*time.Second)
	w3 := f.addWorker("w3", "LAVIT_TEST_CRASH_AFTER_PART=40")
	testutil.WaitFor(t, time.Minute, "w1 gone, w3 in", func() bool {
		rows, err := jsonOut[[]workerRow](t, f.coordBin, f.env, "workers", "ls", "--json")
		return err == nil && len(rows) == 2
	})
	run := f.submit("configs/tiny-stage1.yaml", ckptSpec(data, ckpt)...)
	paused := f.waitState(run, 3*time.Minute, wire.RunPaused, wire.RunFailed, wire.RunCompleted)
	w3.signalAndWait(t, syscall.SIGKILL, 10*time.Second) // it exited already; reap it
	if paused.State != wire.RunPaused || !strings.Contains(paused.Reason, "w3") {
		t.Fatalf("after w3 died: %s %q; want PAUSED naming w3", paused.State, paused.Reason)
	}
	for _, c := range paused.Checkpoints {
		if c.Step == 40 {
			t.Errorf("the checkpoint at step 40, missing w3's report, is listed")
		}
	}
	if _, err := os.Stat(filepath.Join(checkpointDir(ckptDir, run, 40), checkpoint.ManifestName)); err == nil {
		t.Errorf("a manifest was written for the incomplete checkpoint at step 40")
	}
	if len(paused.Checkpoints) == 0 || paused.Checkpoints[len(paused.Checkpoints)-1].Step != 20 {
		t.Fatalf("checkpoints after the crash: %+v; want the newest at step 20", paused.Checkpoints)
	}

	// 2. A worker comes back and the run resumes from step 20; once it is
	// past step 60 a worker is killed, and the newest committed
	// checkpoint gets a corrupt byte while the run is paused.
	w4 := f.addWorker("w4")
	f.waitCkpt(run, 60, 3*time.Minute)
	w4.signalAndWait(t, syscall.SIGKILL, 10*time.Second)
	f.waitState(run, 2*time.Minute, wire.RunPaused)
	list := mustJSON[[]wire.CheckpointInfo](t, f.coordBin, f.env, "ckpt", "ls", run, "--json")
	if len(list) == 0 {
		t.Fatal("the paused run lists no checkpoint")
	}
	newest := list[len(list)-1].Step
	part := filepath.Join(checkpointDir(ckptDir, run, newest), checkpoint.PartName(1, 2))
	b, err := os.ReadFile(part)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(part, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := f.cli("ckpt", "verify", run, itoa(newest)); code != 1 || !strings.Contains(stderr, "part-0001-of-0002") || !strings.Contains(stderr, "corrupt") {
		t.Errorf("ckpt verify of the corrupted checkpoint: exit %d: %s", code, stderr)
	}
	prev := list[len(list)-2].Step
	if _, stderr, code := f.cli("ckpt", "verify", run, itoa(prev)); code != 0 {
		t.Errorf("ckpt verify of the previous checkpoint: exit %d: %s", code, stderr)
	}
	f.addWorker("w5")
	info := f.waitState(run, 5*time.Minute, wire.RunCompleted, wire.RunFailed)
	if info.State != wire.RunCompleted {
		t.Fatalf("run: %s: %s", info.State, info.Reason)
	}
	note := "checkpoint at step " + itoa(newest) + " skipped"
	if !strings.Contains(info.RestoreNote, note) || info.RestoredFrom != prev {
		t.Errorf("restored step %d, note %q; want step %d and the note to say %q", info.RestoredFrom, info.RestoreNote, prev, note)
	}
	if got := finalState(t, info); string(got) != string(want) {
		t.Errorf("after the fallback the final state differs from the uninterrupted run's")
	}
}

func checkpointDir(root, run string, step int64) string {
	return strings.TrimPrefix(checkpoint.Dir("file://"+root, run, step), "file://")
}

// TestCheckpointStoreFaults: the leader dies after the parts of step 80
// are durable and its manifest is written, before the commit; then the S3
// server goes down and stays down until it has refused a number of
// connections, so that the checkpoint writes that come next (the parts of
// the following checkpoints, and any manifest due) meet the outage however
// fast or slow the machine trains. The step-80 checkpoint is never listed;
// the others commit once the store is back (uploads retry in the
// background, training goes on), and the run completes.
func TestCheckpointStoreFaults(t *testing.T) {
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "lavit")
	proxy := testutil.StartProxy(t, srv.Endpoint)
	s3env := []string{"AWS_ENDPOINT_URL=" + proxy.Endpoint, "AWS_ACCESS_KEY_ID=" + srv.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + srv.SecretKey, "AWS_REGION=" + srv.Region}
	f := startTrainFleet(t, 3, append(s3env, "LAVIT_TEST_CRASH_BEFORE_CHECKPOINT_COMMIT=80"))
	data := "file://" + filepath.Join(f.dir, "data")
	if _, stderr, code := f.cli("shards", "synth", "--out", data, "--samples", "2000", "--per-shard", "250"); code != 0 {
		t.Fatal(stderr)
	}
	workers := []*proc{f.addWorker("w1"), f.addWorker("w2")}
	run := f.submit("configs/tiny-stage1.yaml", ckptSpec(data, "s3://lavit/ck",
		"steps=400", "stage1.phase_a_steps=300", "checkpoint.every_steps=40", "checkpoint.keep=3")...)

	// The leader exits at step 80, between the manifest and the commit.
	var dead *coordNode
	testutil.WaitFor(t, 3*time.Minute, "the leader to die before committing step 80", func() bool {
		for _, c := range f.coords {
			select {
			case <-c.done:
				dead = c
				return true
			default:
			}
		}
		return false
	})
	t.Logf("%s exited: %s", dead.id, strings.TrimSpace(lastLine(dead.out.String(), "test hook")))

	// The store goes away at once, and comes back only once it has refused
	// `refusals` connections: whenever the run's next checkpoint writes
	// come, they meet it. The run cannot finish without them (a checkpoint
	// is due at step 400, and a worker waits for its previous upload before
	// the next), so the refusals come. That is more than one S3 call's
	// attempts (1 + 5 retries) for each of the writers (two workers' part
	// uploads, the leader's manifest): in practice a call gives up, and
	// lavit's own retry loop (the worker's upload, the leader's manifest
	// write) carries the checkpoint through.
	const refusals = 3*6 + 1
	select {
	case <-proxy.DownUntilRefused(refusals):
	case <-time.After(3 * time.Minute):
		t.Fatalf("the store refused %d connections in 3 minutes, want %d: the run wrote no checkpoint after the leader died", proxy.Refused(), refusals)
	}
	// Nothing commits while the store is down (a commit needs its
	// manifest); what was committed when it came back, the outage did not
	// stop. A checkpoint after it must commit, from a new leader.
	var atUp []wire.CheckpointInfo
	testutil.WaitFor(t, time.Minute, "ckpt ls once the store is back", func() bool {
		var err error
		atUp, err = jsonOut[[]wire.CheckpointInfo](t, f.coordBin, f.env, "ckpt", "ls", run, "--json")
		return err == nil
	})
	newest := int64(0)
	if len(atUp) > 0 {
		newest = atUp[len(atUp)-1].Step
	}
	t.Logf("the store is back after %d refusals; the newest committed checkpoint then: step %d", proxy.Refused(), newest)
	f.waitCkpt(run, max(newest+1, 120), 3*time.Minute)

	// Every checkpoint seen committed on the way (run show lists them).
	seen := map[int64]bool{}
	for _, c := range atUp {
		seen[c.Step] = true
	}
	var info wire.RunInfo
	testutil.WaitFor(t, 5*time.Minute, "run "+run+" to end", func() bool {
		var err error
		if info, err = f.show(run); err != nil {
			return false
		}
		for _, c := range info.Checkpoints {
			seen[c.Step] = true
		}
		return info.State == wire.RunCompleted || info.State == wire.RunFailed
	})
	if info.State != wire.RunCompleted {
		t.Fatalf("run: %s: %s", info.State, info.Reason)
	}
	if seen[80] {
		t.Error("the checkpoint at step 80, never committed, was listed")
	}
	if proxy.Refused() < refusals {
		t.Errorf("the proxy refused %d connections, want ≥ %d: the outage missed the run", proxy.Refused(), refusals)
	}
	var steps []int64
	for _, c := range info.Checkpoints {
		steps = append(steps, c.Step)
		if c.Step == 80 {
			t.Error("the checkpoint at step 80, never committed, is listed")
		}
	}
	if len(steps) != 3 || steps[0] != 320 || steps[2] != 400 {
		t.Errorf("checkpoints %v; want the newest three (keep 3), the last at step 400", steps)
	}
	retries := 0
	for _, w := range workers {
		retries += strings.Count(w.out.String(), "checkpoint part upload failed; retrying")
	}
	t.Logf("committed checkpoints: %v (the store refused %d connections; the workers retried a part upload %d times)", steps, proxy.Refused(), retries)
	// The step-80 manifest was written (the leader died after it), yet it
	// is not a checkpoint: only raft's list counts.
	for _, kv := range s3env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	if _, err := checkpoint.ReadManifest(t.Context(), "s3://lavit/ck/"+run+"/step-00000080"); err != nil {
		t.Errorf("the step-80 manifest should be on the store (written before the crash): %v", err)
	}
	// Retention deleted the objects of the checkpoints it forgot. It
	// forgets them (raft) first, deletes their objects after and then says
	// so; a delete that fails (the leader's term ended meanwhile, as on a
	// loaded machine) leaves garbage, by design, and says so too. So every
	// checkpoint a coordinator reported removed, and not as garbage, must
	// be gone from the store; there must be some.
	removed := map[int64]bool{}
	var garbage []string
	removedRe := regexp.MustCompile(`msg="retention: checkpoints removed".* run=` + run + ` steps="?\[([0-9 ]*)\]`)
	for _, c := range f.coords {
		for line := range strings.Lines(c.out.String()) {
			if m := removedRe.FindStringSubmatch(line); m != nil {
				for _, n := range strings.Fields(m[1]) {
					step, _ := strconv.ParseInt(n, 10, 64)
					removed[step] = true
				}
			}
			if strings.Contains(line, "(they are garbage now)") {
				garbage = append(garbage, line)
			}
		}
	}
	for step := range removed {
		for _, line := range garbage {
			if slices.Contains(strings.Fields(line), "dir="+checkpoint.Dir("s3://lavit/ck", run, step)) {
				t.Logf("retention left the checkpoint at step %d as garbage: %s", step, strings.TrimSpace(line))
				delete(removed, step)
			}
		}
	}
	if len(removed) == 0 {
		t.Error("no coordinator reported a checkpoint removed by retention")
	}
	for step := range removed {
		if _, err := checkpoint.ReadManifest(t.Context(), checkpoint.Dir("s3://lavit/ck", run, step)); !errors.Is(err, checkpoint.ErrMissing) {
			t.Errorf("the checkpoint at step %d, beyond keep 3 and reported removed: %v, want its manifest gone", step, err)
		}
	}
	t.Logf("retention deleted the checkpoints at steps %v", slices.Sorted(maps.Keys(removed)))
	// And the weights export from the last one.
	out := filepath.Join(t.TempDir(), "w.safetensors")
	if _, stderr, code := f.cli("ckpt", "export", run, "400", "--out", out); code != 0 {
		t.Errorf("ckpt export: exit %d: %s", code, stderr)
	} else if st, err := os.Stat(out); err != nil || st.Size() < 1<<20 {
		t.Errorf("exported file: %v %v", st, err)
	}
}

func lastLine(s, containing string) string {
	lines := strings.Split(s, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], containing) {
			return lines[i]
		}
	}
	return ""
}

// TestCheckpointPolicies: a checkpoint on request (`run checkpoint`), on a
// timer (checkpoint.every_minutes), and `run resume` of a cancelled run
// from its newest committed checkpoint.
func TestCheckpointPolicies(t *testing.T) {
	f := startTrainFleet(t, 1, nil)
	data := "file://" + filepath.Join(f.dir, "data")
	if _, stderr, code := f.cli("shards", "synth", "--out", data, "--samples", "400", "--per-shard", "100"); code != 0 {
		t.Fatal(stderr)
	}
	f.addWorker("w1")
	base := []string{"data.url=" + data, "data.eval_url=", "checkpoint.url=file://" + filepath.Join(f.dir, "ck"),
		"steps=1000000", "stage1.phase_a_steps=999999", "min_workers=1", "max_workers=1", "metrics.every_steps=5", "checkpoint.every_steps=0"}

	// On request: no step or time policy. The run trains 20 steps (its
	// progress comes every 5) without a checkpoint; then one `run
	// checkpoint`, and that is the only checkpoint: one taken before it was
	// asked for would be at an earlier step, and listed first (a worker
	// uploads one checkpoint at a time).
	id := f.submit("configs/tiny-stage1.yaml", base...)
	var before wire.RunInfo
	testutil.WaitFor(t, 2*time.Minute, "run "+id+" to train 20 steps", func() bool {
		var err error
		before, err = f.show(id)
		return err == nil && before.State == wire.RunRunning && before.Step >= 20
	})
	if len(before.Checkpoints) != 0 {
		t.Fatalf("checkpoints before any was asked for: %+v", before.Checkpoints)
	}
	if _, stderr, code := f.cli("run", "checkpoint", id); code != 0 {
		t.Fatalf("run checkpoint: exit %d: %s", code, stderr)
	}
	asked := f.waitCkpt(id, before.Step, 2*time.Minute)
	if len(asked) != 1 {
		t.Fatalf("checkpoints once one was asked for at step %d: %+v; want only that one", before.Step, asked)
	}

	// Resume after a cancel: from that checkpoint.
	if _, stderr, code := f.cli("run", "cancel", id); code != 0 {
		t.Fatal(stderr)
	}
	if _, stderr, code := f.cli("run", "resume", id); code != 0 {
		t.Fatalf("run resume: exit %d: %s", code, stderr)
	}
	testutil.WaitFor(t, 2*time.Minute, "the resumed run to report progress", func() bool {
		info, err := f.show(id)
		return err == nil && info.State == wire.RunRunning && info.Generation == 2 && info.RestoredFrom > 0
	})
	if info, _ := f.show(id); info.RestoredFrom != asked[0].Step {
		t.Errorf("resumed from step %d, want the requested checkpoint's %d", info.RestoredFrom, asked[0].Step)
	}
	f.cli("run", "cancel", id)
	if _, stderr, code := f.cli("run", "resume", "r-0999"); code != 1 || !strings.Contains(stderr, "does not exist") {
		t.Errorf("resume of an unknown run: exit %d: %s", code, stderr)
	}

	// On a timer: every 0.01 minutes (0.6 s).
	timed := f.submit("configs/tiny-stage1.yaml", append(base, "checkpoint.every_minutes=0.01")...)
	f.waitState(timed, 2*time.Minute, wire.RunRunning)
	list := f.waitCkpt(timed, 1, 2*time.Minute)
	testutil.WaitFor(t, 2*time.Minute, "a second timed checkpoint", func() bool {
		l, err := jsonOut[[]wire.CheckpointInfo](t, f.coordBin, f.env, "ckpt", "ls", timed, "--json")
		return err == nil && len(l) >= 2 && l[len(l)-1].Step > list[0].Step
	})
	f.cli("run", "cancel", timed)
}
