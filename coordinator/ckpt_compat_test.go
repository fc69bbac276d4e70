package coordinator

import (
	"bytes"
	"io"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/lavit-org/lavit/internal/logging"
)

// Checkpoints committed before raft recorded the manifest's sha256 must
// still replay and restore (with it empty: restores then check their step
// and state hash), and newer ones keep it through a snapshot.

const manifestSHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// TestFSMReplaysVersion1CommitCheckpoint: a version-1 CommitCheckpoint
// entry, byte for byte what an older build wrote, applies with no
// manifest sha256; a version-2 entry keeps it; both reach `ckpt ls`.
func TestFSMReplaysVersion1CommitCheckpoint(t *testing.T) {
	f := NewFSM(logging.Discard())
	logs := append(v1Log()[:3],
		v1Entry(4, CmdCommitCheckpoint, `{"run":"r-0001","checkpoint":{"step":200,"world":1,"generation":1,"url":"s3://lavit/ck/r-0001/step-00000200","state_bytes":3600000,"state_sha256":"`+manifestSHA+`","committed":"2026-11-20T10:05:00Z"}}`),
		entry(t, 5, CmdCommitCheckpoint, CommitCheckpointCmd{Run: "r-0001", Checkpoint: CheckpointRecord{Step: 400, World: 1, Generation: 1,
			URL: "s3://lavit/ck/r-0001/step-00000400", StateSHA256: manifestSHA, ManifestSHA256: manifestSHA, Committed: t0}}),
	)
	if got := logs[4].Data[1]; got != 2 {
		t.Fatalf("this build writes CommitCheckpoint version %d, want 2", got)
	}
	for i, err := range applyAll(t, f, logs) {
		if err != nil {
			t.Fatalf("entry %d: %v", i+1, err)
		}
	}
	f.Read(func(st *State, _ uint64) {
		infos := checkpointInfos(st.Runs["r-0001"])
		if len(infos) != 2 || infos[0].Step != 200 || infos[0].ManifestSHA256 != "" || infos[0].StateSHA256 != manifestSHA ||
			infos[1].Step != 400 || infos[1].ManifestSHA256 != manifestSHA {
			t.Errorf("ckpt ls after replay: %+v; want step 200 without a manifest sha256, step 400 with it", infos)
		}
	})
}

// TestFSMRestoresFormat2SnapshotCheckpoints: a format-2 snapshot (before
// the manifest's sha256 was recorded) restores its checkpoints with it
// empty; a snapshot of this build keeps it.
func TestFSMRestoresFormat2SnapshotCheckpoints(t *testing.T) {
	snap := `{"format":2,"last_index":9,"state":{"cluster_id":"lavit-old","token_hash":"abc","created":"2026-11-20T10:00:00Z","coordinators":{},"workers":{},` +
		`"runs":{"r-0001":{"id":"r-0001","state":"PAUSED","spec":` + v1Stage1Spec + `,"policy":{"name":"tiny-stage1","stage":1},"generation":1,"created":"2026-11-20T10:01:00Z","updated":"2026-11-20T10:01:01Z",` +
		`"checkpoints":[{"step":200,"world":1,"generation":1,"url":"s3://lavit/ck/r-0001/step-00000200","state_bytes":3600000,"state_sha256":"` + manifestSHA + `","committed":"2026-11-20T10:05:00Z"}]}}}}`
	f := NewFSM(logging.Discard())
	if err := f.Restore(io.NopCloser(bytes.NewReader([]byte(snap)))); err != nil {
		t.Fatal(err)
	}
	f.Read(func(st *State, _ uint64) {
		if ks := st.Runs["r-0001"].Checkpoints; len(ks) != 1 || ks[0].Step != 200 || ks[0].ManifestSHA256 != "" || ks[0].StateSHA256 != manifestSHA {
			t.Errorf("restored checkpoints %+v", ks)
		}
	})

	applyAll(t, f, []*raft.Log{entry(t, 10, CmdCommitCheckpoint, CommitCheckpointCmd{Run: "r-0001", Checkpoint: CheckpointRecord{Step: 400, World: 1,
		URL: "s3://lavit/ck/r-0001/step-00000400", StateSHA256: manifestSHA, ManifestSHA256: manifestSHA, Committed: t0}})})
	sf := snapshotState(t, f)
	if ks := sf.State.Runs["r-0001"].Checkpoints; sf.Format != snapshotFormat || len(ks) != 2 || ks[1].ManifestSHA256 != manifestSHA {
		t.Errorf("re-snapshot: format %d, checkpoints %+v", sf.Format, ks)
	}
	g := NewFSM(logging.Discard())
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	g.Read(func(st *State, _ uint64) {
		if ks := st.Runs["r-0001"].Checkpoints; len(ks) != 2 || ks[1].ManifestSHA256 != manifestSHA {
			t.Errorf("restored from this build's snapshot: %+v", ks)
		}
	})
}
