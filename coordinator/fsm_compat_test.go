package coordinator

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/lavit-org/lavit/internal/logging"
	"github.com/lavit-org/lavit/internal/wire"
)

// Logs and snapshots written by builds before runs had a policy must still
// replay: the entries below are byte for byte what such a build wrote
// ([type][version 1][JSON], the spec as `run submit` stored it).

const (
	v1Stage1Spec = `{"name":"tiny-stage1","stage":1,"model":"tiny-stage1","model_config":{"stage":1},"seed":1,"steps":600,"global_batch":8,"min_workers":1,"max_workers":2,"device":"cpu","data":{"url":"file:///data/train","block_shards":4},"collective":{"backend":"ring","timeout":"120s"},"checkpoint":{"url":"s3://lavit/ck","every_steps":200,"keep":5},"metrics":{"every_steps":20}}`
	v1Stage2Spec = `{"stage":2,"model":"tiny-stage2","model_config":{"stage":2},"seed":1,"epochs":3,"global_batch":8,"min_workers":2,"max_workers":4,"device":"cuda","data":{"url":"file:///data/train","block_shards":4},"collective":{"backend":"nccl","timeout":"120s"},"checkpoint":{"url":"file:///ck","every_steps":0,"keep":3},"tokenizer":{"from":"r-0001"},"metrics":{"every_steps":10}}`
)

func v1Entry(index uint64, t CommandType, body string) *raft.Log {
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: append([]byte{byte(t), 1}, body...)}
}

func v1Log() []*raft.Log {
	return []*raft.Log{
		v1Entry(1, CmdInitCluster, `{"cluster_id":"lavit-old","token_hash":"abc","at":"2026-11-20T10:00:00Z"}`),
		v1Entry(2, CmdRegisterWorker, `{"worker":{"id":"w1","instance":"i1","host":"h1","device":"cpu","devices":[{"name":"cpu","kind":"cpu"}],"capacity":1,"state":"IDLE","since":"2026-11-20T10:00:01Z","registered":"2026-11-20T10:00:01Z"}}`),
		v1Entry(3, CmdCreateRun, `{"id":"r-0001","spec":`+v1Stage1Spec+`,"at":"2026-11-20T10:01:00Z"}`),
		v1Entry(4, CmdCreateRun, `{"id":"r-0002","spec":`+v1Stage2Spec+`,"at":"2026-11-20T10:02:00Z"}`),
		v1Entry(5, CmdCreateRun, `{"id":"r-0003","spec":{"stage":"one"},"at":"2026-11-20T10:03:00Z"}`),
		v1Entry(6, CmdStartGeneration, `{"run":"r-0001","generation":1,"members":{"w1":0},"at":"2026-11-20T10:01:01Z"}`),
	}
}

func wantV1Policies(t *testing.T, st *State) {
	t.Helper()
	want := map[string]RunPolicy{
		"r-0001": {Name: "tiny-stage1", Stage: 1, Steps: 600, MinWorkers: 1, MaxWorkers: 2, Device: DeviceCPU, Backend: wire.BackendRing, CheckpointURL: "s3://lavit/ck", CheckpointKeep: 5},
		"r-0002": {Stage: 2, MinWorkers: 2, MaxWorkers: 4, Device: DeviceCUDA, Backend: wire.BackendNCCL, CheckpointURL: "file:///ck", CheckpointKeep: 3, TokenizerRun: "r-0001"},
	}
	for id, w := range want {
		r := st.Runs[id]
		if r == nil {
			t.Fatalf("run %s missing after replay", id)
		}
		if r.Policy != w {
			t.Errorf("run %s policy\n got %+v\nwant %+v", id, r.Policy, w)
		}
	}
	bad := st.Runs["r-0003"]
	if bad == nil || bad.Policy.Invalid == "" || !strings.Contains(bad.Policy.Invalid, "stored spec is invalid") {
		t.Errorf("run r-0003 (undecodable spec): policy %+v, want Invalid set", bad.Policy)
	}
	if r := st.Runs["r-0001"]; r.State != RunRunning || r.Generation != 1 {
		t.Errorf("r-0001 after replay: %s generation %d", r.State, r.Generation)
	}
}

// TestFSMReplaysVersion1RunCommands: a log with version-1 CreateRun entries
// replays, each run getting the policy its spec implies, and the scheduler
// acts on it as on a new run (the stage-2 run waits for its tokenizer run;
// TestScheduleFIFO shows that a run with an undecodable spec fails).
func TestFSMReplaysVersion1RunCommands(t *testing.T) {
	f := NewFSM(logging.Discard())
	for i, err := range applyAll(t, f, v1Log()) {
		if err != nil {
			t.Fatalf("entry %d: %v", i+1, err)
		}
	}
	var plan schedPlan
	f.Read(func(st *State, _ uint64) {
		wantV1Policies(t, st)
		plan = planSchedule(schedInput{Now: t0, WorkerTimeout: 2e9, Runs: sortedRuns(st), Workers: []fleetWorker{
			{ID: "w1", Kind: DeviceCPU, State: wire.WorkerTraining, Run: "r-0001", Capacity: 1, LastSeen: t0},
		}})
	})
	got := describePlan(plan)
	want := []string{
		"waiting r-0002: tokenizer run r-0001 to complete (it is RUNNING)",
		"waiting r-0003: run r-0002, submitted earlier",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("plan on the replayed state:\n got %q\nwant %q", got, want)
	}

	// The same state through this build's encoding: a v2 entry of the
	// same run gives the same record.
	g := NewFSM(logging.Discard())
	var p RunPolicy
	f.Read(func(st *State, _ uint64) { p = st.Runs["r-0001"].Policy })
	applyAll(t, g, []*raft.Log{entry(t, 1, CmdCreateRun, CreateRunCmd{ID: "r-0001", Spec: []byte(v1Stage1Spec), Policy: p, At: t0})})
	g.Read(func(st *State, _ uint64) {
		if st.Runs["r-0001"].Policy != p {
			t.Errorf("v2 entry: policy %+v, want %+v", st.Runs["r-0001"].Policy, p)
		}
	})
}

// TestFSMRestoresFormat1Snapshot: a snapshot taken before runs had a policy
// restores with the policies derived from the stored specs.
func TestFSMRestoresFormat1Snapshot(t *testing.T) {
	snap := `{"format":1,"last_index":6,"state":{"cluster_id":"lavit-old","token_hash":"abc","created":"2026-11-20T10:00:00Z","coordinators":{},` +
		`"workers":{"w1":{"id":"w1","instance":"i1","host":"h1","device":"cpu","devices":[{"name":"cpu","kind":"cpu"}],"capacity":1,"state":"TRAINING","since":"2026-11-20T10:01:01Z","registered":"2026-11-20T10:00:01Z","run":"r-0001"}},` +
		`"runs":{"r-0001":{"id":"r-0001","state":"RUNNING","spec":` + v1Stage1Spec + `,"generation":1,"members":{"w1":0},"created":"2026-11-20T10:01:00Z","updated":"2026-11-20T10:01:01Z"},` +
		`"r-0002":{"id":"r-0002","state":"PENDING","spec":` + v1Stage2Spec + `,"generation":0,"created":"2026-11-20T10:02:00Z","updated":"2026-11-20T10:02:00Z"},` +
		`"r-0003":{"id":"r-0003","state":"PENDING","spec":{"stage":"one"},"generation":0,"created":"2026-11-20T10:03:00Z","updated":"2026-11-20T10:03:00Z"}}}}`
	f := NewFSM(logging.Discard())
	if err := f.Restore(io.NopCloser(bytes.NewReader([]byte(snap)))); err != nil {
		t.Fatal(err)
	}
	f.Read(func(st *State, last uint64) {
		if last != 6 {
			t.Errorf("last index %d, want 6", last)
		}
		wantV1Policies(t, st)
	})
	// And it snapshots in the current format, policies included.
	if sf := snapshotState(t, f); sf.Format != snapshotFormat || sf.State.Runs["r-0002"].Policy.TokenizerRun != "r-0001" {
		t.Errorf("re-snapshot: format %d, r-0002 policy %+v", sf.Format, sf.State.Runs["r-0002"].Policy)
	}
}
