package e2e

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// TestWorkerPerGPU: `lavit-worker join --device all` on a host with two
// (fake) GPUs starts one worker process per GPU, each registered with its
// own id and device; a child that is killed is started again and
// registers anew; SIGTERM stops them all, and they leave the fleet.
func TestWorkerPerGPU(t *testing.T) {
	f := startTrainFleet(t, 1, nil)
	sup := startProc(t, "supervisor", filepath.Join(f.bin, "lavit-worker"), append(append([]string{}, f.env...), "LAVIT_FAKE_GPUS=2"),
		"join", "--device", "all", "--id", "gpuhost", "--nccl-lib", testutil.FakeNCCL(t), "--collective-listen", "127.0.0.1:0")
	instances := func() map[string]workerRow {
		rows, err := jsonOut[[]workerRow](t, f.coordBin, f.env, "workers", "ls", "--json")
		if err != nil {
			return nil
		}
		out := map[string]workerRow{}
		for _, r := range rows {
			out[r.ID] = r
		}
		return out
	}
	var before map[string]workerRow
	testutil.WaitFor(t, time.Minute, "a worker per GPU", func() bool {
		before = instances()
		return before["gpuhost-cuda0"].State == wire.WorkerIdle && before["gpuhost-cuda1"].State == wire.WorkerIdle
	})
	if d0, d1 := before["gpuhost-cuda0"].Device, before["gpuhost-cuda1"].Device; d0 != "cuda:0" || d1 != "cuda:1" {
		t.Fatalf("devices %q and %q, want cuda:0 and cuda:1", d0, d1)
	}
	if len(before) != 2 {
		t.Fatalf("workers %v: want exactly the two children (the supervisor is no worker)", before)
	}
	// Each reports its GPU's memory (the fake CUDA runtime says 16 GiB).
	for _, id := range []string{"gpuhost-cuda0", "gpuhost-cuda1"} {
		w := before[id]
		found := false
		for _, d := range w.Devices {
			found = found || (d.Name == w.Device && strings.Contains(d.Detail, "16.0 GiB"))
		}
		if !found {
			t.Errorf("%s reports devices %+v: want its own with its memory", id, w.Devices)
		}
	}

	pidOf := func(child string) int {
		m := regexp.MustCompile(`msg="worker started".*child=`+child+` pid=(\d+)`).FindAllStringSubmatch(sup.out.String(), -1)
		if len(m) == 0 {
			return 0
		}
		pid, _ := strconv.Atoi(m[len(m)-1][1])
		return pid
	}
	victim := pidOf("gpuhost-cuda1")
	if victim == 0 {
		t.Fatalf("the supervisor did not log gpuhost-cuda1's pid:\n%s", sup.out.String())
	}
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, time.Minute, "gpuhost-cuda1 started again and registered anew", func() bool {
		now := instances()
		w := now["gpuhost-cuda1"]
		return pidOf("gpuhost-cuda1") != victim && w.State == wire.WorkerIdle && w.Instance != before["gpuhost-cuda1"].Instance
	})
	if !strings.Contains(sup.out.String(), "worker exited; restarting it") {
		t.Error("the supervisor did not say it restarted the child")
	}
	if now := instances(); now["gpuhost-cuda0"].Instance != before["gpuhost-cuda0"].Instance {
		t.Error("the other child was restarted too")
	}

	children := []int{pidOf("gpuhost-cuda0"), pidOf("gpuhost-cuda1")}
	if code := sup.signalAndWait(t, syscall.SIGTERM, 2*time.Minute); code != 0 {
		t.Fatalf("supervisor exited %d on SIGTERM", code)
	}
	for _, pid := range children {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("child %d still runs after the supervisor stopped", pid)
		}
	}
	testutil.WaitFor(t, time.Minute, "both children to leave the fleet", func() bool {
		now := instances()
		_, a := now["gpuhost-cuda0"]
		_, b := now["gpuhost-cuda1"]
		return now != nil && !a && !b
	})
}

// TestNCCLBackendProcesses: two worker processes given the fake NCCL
// with --nccl-lib train the tiny stage-1 run with collective.backend nccl
// to completion; rank 0 made the unique id and both joined through the
// coordinator's rendezvous.
func TestNCCLBackendProcesses(t *testing.T) {
	f := startTrainFleet(t, 1, nil)
	data := "file://" + filepath.Join(f.dir, "data")
	if _, stderr, code := f.cli("shards", "synth", "--out", data, "--samples", "300", "--per-shard", "50"); code != 0 {
		t.Fatal(stderr)
	}
	lib := testutil.FakeNCCL(t)
	var workers []*proc
	for _, id := range []string{"n1", "n2"} {
		workers = append(workers, startProc(t, "worker "+id, filepath.Join(f.bin, "lavit-worker"), f.env,
			"join", "--id", id, "--device", "cpu", "--nccl-lib", lib, "--collective-listen", "127.0.0.1:0"))
	}
	run := f.submit("configs/tiny-stage1.yaml", "data.url="+data, "data.eval_url=", "checkpoint.url=file://"+filepath.Join(f.dir, "ckpt"),
		"steps=20", "stage1.phase_a_steps=10", "stage1.kmeans_batches=2", "global_batch=6", "checkpoint.every_steps=10",
		"device=auto", "collective.backend=nccl", "min_workers=2", "max_workers=2")
	info := f.waitState(run, 5*time.Minute, wire.RunCompleted, wire.RunFailed)
	if info.State != wire.RunCompleted || len(info.Members) != 2 {
		t.Fatalf("run over NCCL: %s with %d members: %s", info.State, len(info.Members), info.Reason)
	}
	for _, w := range workers {
		if !strings.Contains(w.out.String(), "nccl communicator joined") {
			t.Errorf("%s did not join an NCCL communicator:\n%s", w.name, w.out.String())
		}
	}
}
