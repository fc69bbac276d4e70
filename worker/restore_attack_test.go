package worker_test

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/shards/synth"
)

// ckpts lists a run's committed checkpoints, oldest first.
func (f *fleet) ckpts(id string) []wire.CheckpointInfo {
	f.t.Helper()
	reply, err := wire.ListCheckpoints.Call(context.Background(), f.client, &wire.RunRequest{ID: id})
	if err != nil {
		f.t.Fatal(err)
	}
	return reply.Checkpoints
}

// TestRestoreRefusesAnOlderCheckpointCopiedOver: someone with write
// access to the store copies an older step's checkpoint (manifest and
// parts, self-consistent) over the newest committed one while the run is
// paused. The restore compares the manifest with the sha256 raft
// committed, refuses it naming the step and both digests, and resumes
// from the older checkpoint under its own step (never the older state
// under the newer step); the run then completes.
func TestRestoreRefusesAnOlderCheckpointCopiedOver(t *testing.T) {
	lib := loadLib(t)
	f := startFleet(t)
	dir := t.TempDir()
	data := synthData(t, filepath.Join(dir, "train"), synth.Train, 300, 50)
	ckptRoot := filepath.Join(dir, "ckpt")
	stop := f.startTrainers(lib, "a", 1)
	id := f.submit("tiny-stage1",
		"steps=400", "stage1.phase_a_steps=10", "stage1.kmeans_batches=2", "global_batch=6",
		"min_workers=1", "max_workers=1", "data.url="+data, "data.eval_url=",
		"checkpoint.url=file://"+ckptRoot, "checkpoint.every_steps=10", "checkpoint.keep=20", "metrics.every_steps=5")
	testutil.WaitFor(t, 3*time.Minute, "two committed checkpoints", func() bool { return len(f.ckpts(id)) >= 2 })
	stop() // the worker deregisters: the run pauses
	testutil.WaitFor(t, time.Minute, "the run to pause", func() bool { return f.show(id).State == wire.RunPaused })

	list := f.ckpts(id)
	newest, prev := list[len(list)-1], list[len(list)-2]
	for _, k := range list {
		if len(k.ManifestSHA256) != 64 {
			t.Fatalf("checkpoint at step %d: committed manifest sha256 %q, want one", k.Step, k.ManifestSHA256)
		}
	}
	testutil.ReplaceDir(t, strings.TrimPrefix(prev.URL, "file://"), strings.TrimPrefix(newest.URL, "file://"))

	f.startTrainers(lib, "b", 1)
	info := f.waitDone(id, 5*time.Minute)
	if info.State != wire.RunCompleted {
		t.Fatalf("run %s is %s: %s", id, info.State, info.Reason)
	}
	if info.RestoredFrom != prev.Step {
		t.Errorf("restored step %d, want %d (the checkpoint before the replaced one)", info.RestoredFrom, prev.Step)
	}
	for _, want := range []string{
		"checkpoint at step " + strconv.FormatInt(newest.Step, 10) + " skipped",
		"not the committed one",
		"raft committed " + newest.ManifestSHA256,
		"it says step " + strconv.FormatInt(prev.Step, 10),
	} {
		if !strings.Contains(info.RestoreNote, want) {
			t.Errorf("restore note %q does not say %q", info.RestoreNote, want)
		}
	}
	if info.Step != 400 {
		t.Errorf("the run ended at step %d, want 400", info.Step)
	}
}
