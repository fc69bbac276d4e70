package coordinator

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/lavit-org/lavit/internal/logging"
	"github.com/lavit-org/lavit/internal/wire"
)

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// entry builds a raft log entry the way raftApply would.
func entry(t *testing.T, index uint64, ct CommandType, body any) *raft.Log {
	t.Helper()
	data, err := encodeCommand(ct, body)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}
}

func applyAll(t *testing.T, f *FSM, logs []*raft.Log) []error {
	t.Helper()
	var errs []error
	for _, l := range logs {
		resp, ok := f.Apply(l).(applyResponse)
		if !ok {
			t.Fatalf("entry %d: Apply returned %T, want applyResponse", l.Index, resp)
		}
		errs = append(errs, resp.Err)
	}
	return errs
}

func worker(id, instance, host string) RegisterWorkerCmd {
	return RegisterWorkerCmd{Worker: WorkerRecord{
		ID: id, Instance: instance, Host: host, Device: "cpu", Capacity: 1,
		Devices: []wire.Device{{Name: "cpu", Kind: "cpu"}}, Since: t0, Registered: t0,
	}}
}

// gpuWorker is a worker training on cuda:0, which reports its memory.
func gpuWorker(id, instance, host string, memory uint64) RegisterWorkerCmd {
	c := worker(id, instance, host)
	c.Worker.Device = "cuda:0"
	c.Worker.Devices = append(c.Worker.Devices, wire.Device{Name: "cuda:0", Kind: "cuda", MemoryBytes: memory})
	return c
}

// crafted is a log that exercises every command type.
func crafted(t *testing.T) []*raft.Log {
	return []*raft.Log{
		entry(t, 1, CmdInitCluster, InitClusterCmd{ClusterID: "lavit-test", TokenHash: hashToken("secret-token-123456"), At: t0}),
		entry(t, 2, CmdUpsertCoordinator, UpsertCoordinatorCmd{Coordinator: CoordinatorRecord{ID: "c1", RaftAddr: "127.0.0.1:7000", NATSRoute: "nats-route://127.0.0.1:6222"}}),
		entry(t, 3, CmdUpsertCoordinator, UpsertCoordinatorCmd{Coordinator: CoordinatorRecord{ID: "c2", RaftAddr: "127.0.0.1:7001"}}),
		entry(t, 4, CmdRegisterWorker, worker("w1", "i1", "h1")),
		entry(t, 5, CmdRegisterWorker, gpuWorker("w2", "i2", "h2", 80<<30)),
		entry(t, 6, CmdSetWorkerState, SetWorkerStateCmd{ID: "w2", State: wire.WorkerLost, Reason: "no heartbeat", At: t0.Add(time.Minute)}),
		entry(t, 7, CmdCreateRun, CreateRunCmd{ID: "run-1", Spec: json.RawMessage(`{"stage":1}`), At: t0}),
		entry(t, 8, CmdSetRunState, SetRunStateCmd{ID: "run-1", State: RunRunning, At: t0.Add(time.Second)}),
		entry(t, 9, CmdRemoveCoordinator, RemoveCoordinatorCmd{ID: "c2"}),
		entry(t, 10, CmdStartGeneration, StartGenerationCmd{Run: "run-1", Generation: 1, Members: map[string]int{"w1": 0}, At: t0.Add(2 * time.Second)}),
		entry(t, 11, CmdCommitCheckpoint, CommitCheckpointCmd{Run: "run-1", Checkpoint: CheckpointRecord{Step: 40, World: 1, Generation: 1, URL: "file:///ck/run-1/step-00000040", Committed: t0}}),
		entry(t, 12, CmdCommitCheckpoint, CommitCheckpointCmd{Run: "run-1", Checkpoint: CheckpointRecord{Step: 20, World: 1, Generation: 1, URL: "file:///ck/run-1/step-00000020", Committed: t0}}),
		entry(t, 13, CmdRequestCheckpoint, RequestCheckpointCmd{Run: "run-1", At: t0}),
		entry(t, 14, CmdDeleteCheckpoints, DeleteCheckpointsCmd{Run: "run-1", Steps: []int64{20}}),
	}
}

func TestFSMApplyCraftedLog(t *testing.T) {
	f := NewFSM(logging.Discard())
	for i, err := range applyAll(t, f, crafted(t)) {
		if err != nil {
			t.Fatalf("entry %d: %v", i+1, err)
		}
	}
	f.Read(func(s *State, last uint64) {
		if last != 14 {
			t.Errorf("last index = %d, want 14", last)
		}
		if r := s.Runs["run-1"]; len(r.Checkpoints) != 1 || r.Checkpoints[0].Step != 40 || r.CheckpointRequests != 1 {
			t.Errorf("run-1 checkpoints %+v, requests %d; want only step 40 and one request", r.Checkpoints, r.CheckpointRequests)
		}
		if s.ClusterID != "lavit-test" || !tokenMatches("secret-token-123456", s.TokenHash) {
			t.Errorf("cluster id %q / token hash not recorded", s.ClusterID)
		}
		if _, ok := s.Coordinators["c2"]; ok || len(s.Coordinators) != 1 {
			t.Errorf("coordinators = %v, want only c1", s.Coordinators)
		}
		if w := s.Workers["w1"]; w == nil || w.State != wire.WorkerTraining || w.Run != "run-1" {
			t.Errorf("w1 = %+v, want TRAINING run-1", w)
		}
		if w := s.Workers["w2"]; w == nil || w.State != wire.WorkerLost || !w.Since.Equal(t0.Add(time.Minute)) {
			t.Errorf("w2 = %+v, want LOST since t0+1m", w)
		}
		if r := s.Runs["run-1"]; r == nil || r.State != RunRunning || string(r.Spec) != `{"stage":1}` || r.Generation != 1 || r.Members["w1"] != 0 {
			t.Errorf("run-1 = %+v", r)
		}
	})
}

// TestFSMDeterministic applies the same log to two replicas and compares.
func TestFSMDeterministic(t *testing.T) {
	a, b := NewFSM(logging.Discard()), NewFSM(logging.Discard())
	applyAll(t, a, crafted(t))
	applyAll(t, b, crafted(t))
	if !reflect.DeepEqual(snapshotState(t, a), snapshotState(t, b)) {
		t.Fatal("two replicas applying the same log differ")
	}
}

func TestFSMRejections(t *testing.T) {
	base := []*raft.Log{
		entry(t, 1, CmdInitCluster, InitClusterCmd{ClusterID: "x", TokenHash: "h", At: t0}),
		entry(t, 2, CmdRegisterWorker, worker("w1", "i1", "h1")),
		entry(t, 3, CmdCreateRun, CreateRunCmd{ID: "r1", At: t0}),
		entry(t, 4, CmdSetRunState, SetRunStateCmd{ID: "r1", State: RunCancelled, At: t0}),
	}
	tests := []struct {
		name string
		ct   CommandType
		body any
		want error
	}{
		{"second init", CmdInitCluster, InitClusterCmd{ClusterID: "y", TokenHash: "h", At: t0}, ErrAlreadyInitialized},
		{"deregister unknown worker", CmdDeregisterWorker, DeregisterWorkerCmd{ID: "nope", At: t0}, ErrUnknownWorker},
		{"deregister stale instance", CmdDeregisterWorker, DeregisterWorkerCmd{ID: "w1", Instance: "old", At: t0}, ErrStaleInstance},
		{"state of unknown worker", CmdSetWorkerState, SetWorkerStateCmd{ID: "nope", State: wire.WorkerLost, At: t0}, ErrUnknownWorker},
		{"bogus worker state", CmdSetWorkerState, SetWorkerStateCmd{ID: "w1", State: "SLEEPING", At: t0}, ErrBadTransition},
		{"duplicate run", CmdCreateRun, CreateRunCmd{ID: "r1", At: t0}, ErrRunExists},
		{"terminal run restarted", CmdSetRunState, SetRunStateCmd{ID: "r1", State: RunRunning, At: t0}, ErrBadTransition},
		{"unknown run", CmdSetRunState, SetRunStateCmd{ID: "r9", State: RunRunning, At: t0}, ErrUnknownRun},
		{"checkpoint request to a cancelled run", CmdRequestCheckpoint, RequestCheckpointCmd{Run: "r1", At: t0}, ErrBadTransition},
		{"checkpoint of an unknown run", CmdCommitCheckpoint, CommitCheckpointCmd{Run: "r9"}, ErrUnknownRun},
		{"generation of a cancelled run", CmdStartGeneration, StartGenerationCmd{Run: "r1", Generation: 1, Members: map[string]int{"w1": 0}, At: t0}, ErrBadTransition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFSM(logging.Discard())
			applyAll(t, f, base)
			before := snapshotState(t, f)
			err := applyAll(t, f, []*raft.Log{entry(t, 5, tc.ct, tc.body)})[0]
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			after := snapshotState(t, f)
			before.LastIndex, after.LastIndex = 0, 0
			if !reflect.DeepEqual(before, after) {
				t.Fatal("a rejected command changed the state")
			}
		})
	}
	t.Run("invalid worker id", func(t *testing.T) {
		f := NewFSM(logging.Discard())
		err := applyAll(t, f, []*raft.Log{entry(t, 1, CmdRegisterWorker, worker("bad id!", "i", "h"))})[0]
		if err == nil {
			t.Fatal("registering an invalid id succeeded")
		}
	})
	t.Run("truncated entry", func(t *testing.T) {
		f := NewFSM(logging.Discard())
		resp := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{1}}).(applyResponse)
		if resp.Err == nil {
			t.Fatal("a 1-byte entry was accepted")
		}
	})
	t.Run("malformed body", func(t *testing.T) {
		f := NewFSM(logging.Discard())
		data := append([]byte{byte(CmdRegisterWorker), commandVersion(CmdRegisterWorker)}, "{not json"...)
		resp := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data}).(applyResponse)
		if resp.Err == nil {
			t.Fatal("a malformed body was accepted")
		}
	})
}

func TestFSMWorkerReRegisterKeepsFirstRegistration(t *testing.T) {
	f := NewFSM(logging.Discard())
	later := worker("w1", "i2", "h1")
	later.Worker.Registered = t0.Add(time.Hour)
	applyAll(t, f, []*raft.Log{
		entry(t, 1, CmdRegisterWorker, worker("w1", "i1", "h1")),
		entry(t, 2, CmdSetWorkerState, SetWorkerStateCmd{ID: "w1", State: wire.WorkerLost, At: t0}),
		entry(t, 3, CmdRegisterWorker, later),
	})
	f.Read(func(s *State, _ uint64) {
		w := s.Workers["w1"]
		if w.Instance != "i2" || w.State != wire.WorkerIdle || !w.Registered.Equal(t0) {
			t.Fatalf("after re-register: %+v; want instance i2, IDLE, registered at t0", w)
		}
	})
}

func TestFSMUnknownCommand(t *testing.T) {
	f := NewFSM(logging.Discard())
	t.Run("ignorable is skipped", func(t *testing.T) {
		data := []byte{byte(IgnorableCommandFlag | 0x7e), 1, '{', '}'}
		if resp := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data}).(applyResponse); resp.Err != nil {
			t.Fatalf("ignorable unknown command: %v", resp.Err)
		}
	})
	t.Run("unknown stops the node", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Fatal("an unknown, non-ignorable command was applied without stopping")
			}
		}()
		f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: []byte{0x7e, 1, '{', '}'}})
	})
	t.Run("newer version stops the node", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Fatal("a command of a newer version was applied")
			}
		}()
		f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: []byte{byte(CmdRegisterWorker), commandVersion(CmdRegisterWorker) + 1, '{', '}'}})
	})
	t.Run("newer CreateRun version stops the node", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Fatal("a CreateRun of a newer version was applied")
			}
		}()
		f.Apply(&raft.Log{Index: 4, Type: raft.LogCommand, Data: []byte{byte(CmdCreateRun), commandVersion(CmdCreateRun) + 1, '{', '}'}})
	})
	t.Run("version 0 stops the node", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Fatal("a command of version 0 was applied")
			}
		}()
		f.Apply(&raft.Log{Index: 5, Type: raft.LogCommand, Data: []byte{byte(CmdRegisterWorker), 0, '{', '}'}})
	})
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { m.cancelled = true; return nil }
func (m *memSink) Close() error  { return nil }

func snapshotBytes(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	return sink.Bytes()
}

func snapshotState(t *testing.T, f *FSM) snapshotFile {
	t.Helper()
	var sf snapshotFile
	if err := json.Unmarshal(snapshotBytes(t, f), &sf); err != nil {
		t.Fatal(err)
	}
	return sf
}

func TestFSMSnapshotRoundTrip(t *testing.T) {
	src := NewFSM(logging.Discard())
	applyAll(t, src, crafted(t))
	data := snapshotBytes(t, src)

	// Restore into a replica that holds other state: it must be discarded.
	dst := NewFSM(logging.Discard())
	applyAll(t, dst, []*raft.Log{entry(t, 1, CmdRegisterWorker, worker("stale", "i", "h"))})
	if err := dst.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(snapshotState(t, src), snapshotState(t, dst)) {
		t.Fatal("restored state differs from the snapshotted one")
	}
	dst.Read(func(s *State, last uint64) {
		if _, ok := s.Workers["stale"]; ok {
			t.Error("Restore kept state from before the snapshot")
		}
		if last != 14 {
			t.Errorf("last index after restore = %d, want 14", last)
		}
	})
	// The restored replica goes on applying like the original.
	next := entry(t, 15, CmdDeregisterWorker, DeregisterWorkerCmd{ID: "w1", Instance: "i1", At: t0})
	applyAll(t, src, []*raft.Log{next})
	applyAll(t, dst, []*raft.Log{next})
	if !reflect.DeepEqual(snapshotState(t, src), snapshotState(t, dst)) {
		t.Fatal("original and restored replica diverge after the next command")
	}
}

func TestFSMRestoreRejectsBadSnapshots(t *testing.T) {
	for name, data := range map[string]string{
		"not json":       "garbage",
		"unknown format": `{"format":99,"state":{}}`,
	} {
		t.Run(name, func(t *testing.T) {
			f := NewFSM(logging.Discard())
			applyAll(t, f, crafted(t))
			before := snapshotState(t, f)
			if err := f.Restore(io.NopCloser(bytes.NewReader([]byte(data)))); err == nil {
				t.Fatal("bad snapshot restored")
			}
			if !reflect.DeepEqual(before, snapshotState(t, f)) {
				t.Fatal("a failed restore changed the state")
			}
		})
	}
}

// TestFSMResumeTransitions: a cancelled or failed run can be resumed (to
// PAUSED, then a new generation from a checkpoint step); a completed one
// cannot; a lost member pauses a running run and frees its workers.
func TestFSMResumeTransitions(t *testing.T) {
	f := NewFSM(logging.Discard())
	log := []*raft.Log{
		entry(t, 1, CmdRegisterWorker, worker("w1", "i1", "h1")),
		entry(t, 2, CmdCreateRun, CreateRunCmd{ID: "r1", At: t0}),
		entry(t, 3, CmdStartGeneration, StartGenerationCmd{Run: "r1", Generation: 1, Members: map[string]int{"w1": 0}, At: t0}),
		entry(t, 4, CmdSetRunState, SetRunStateCmd{ID: "r1", State: RunPaused, Reason: "w1 lost", At: t0}),
		entry(t, 5, CmdSetRunState, SetRunStateCmd{ID: "r1", State: RunCancelled, At: t0}),
		entry(t, 6, CmdSetRunState, SetRunStateCmd{ID: "r1", State: RunPaused, Reason: "resume", At: t0}),
		entry(t, 7, CmdStartGeneration, StartGenerationCmd{Run: "r1", Generation: 2, Members: map[string]int{"w1": 0}, StartStep: 40, At: t0}),
		entry(t, 8, CmdSetRunState, SetRunStateCmd{ID: "r1", State: RunCompleted, At: t0}),
		entry(t, 9, CmdSetRunState, SetRunStateCmd{ID: "r1", State: RunPaused, At: t0}),
	}
	errs := applyAll(t, f, log)
	for i, err := range errs[:8] {
		if err != nil {
			t.Fatalf("entry %d: %v", i+1, err)
		}
	}
	if !errors.Is(errs[8], ErrBadTransition) {
		t.Errorf("resuming a completed run: %v, want ErrBadTransition", errs[8])
	}
	f.Read(func(s *State, _ uint64) {
		r, w := s.Runs["r1"], s.Workers["w1"]
		if r.State != RunCompleted || r.Generation != 2 || r.StartStep != 40 || w.Run != "" || w.State != wire.WorkerIdle {
			t.Errorf("run %+v, worker %+v", r, w)
		}
	})
}
