package coordinator

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/hashicorp/raft"
)

// FSM is the coordinator's replicated state machine.
//
// The rules (hashicorp/raft's FSM contract, and ours on top):
//   - Apply is deterministic: it reads only the log entry and the current
//     state. No clock, no randomness, no I/O, no map-order dependence. The
//     leader stamps times and ids into the command before it is proposed.
//   - Apply never fails silently: a rejected command returns an error as
//     its response, and every replica rejects it the same way.
//   - An unknown command type, or a body version newer than this build
//     writes (commandVersions), stops the node (panic) unless it carries
//     IgnorableCommandFlag: skipping it could make this replica diverge.
//     Every older version still applies, so an old log replays.
//   - Snapshot copies the state under the read lock (it is small); Persist
//     writes it out while Apply goes on.
//   - Restore discards all previous state.
type FSM struct {
	mu        sync.RWMutex
	state     *State
	lastIndex uint64
	log       *slog.Logger

	// changed is signalled (without blocking) after every applied command,
	// so the server can refresh things derived from the state.
	changed chan struct{}
}

// NewFSM returns an empty state machine.
func NewFSM(log *slog.Logger) *FSM {
	return &FSM{state: newState(), log: log, changed: make(chan struct{}, 1)}
}

// applyResponse is what Apply returns to raft.ApplyFuture.Response().
type applyResponse struct {
	Err error
}

// Apply applies one committed log entry.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	resp := f.applyCommand(l.Index, l.Data)
	select {
	case f.changed <- struct{}{}:
	default:
	}
	return resp
}

func (f *FSM) applyCommand(index uint64, data []byte) applyResponse {
	if len(data) < 2 {
		return applyResponse{Err: fmt.Errorf("log entry %d: %d bytes is too short for a command", index, len(data))}
	}
	t, version, body := CommandType(data[0]), data[1], data[2:]
	if version == 0 || version > commandVersion(t) {
		if t&IgnorableCommandFlag != 0 {
			f.log.Warn("skipping command with unknown version", "index", index, "type", t, "version", version)
			return applyResponse{}
		}
		panic(fmt.Sprintf("log entry %d: %s version %d is newer than this lavit-coord understands (%d); upgrade this node", index, t, version, commandVersion(t)))
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastIndex = index

	var err error
	switch t &^ IgnorableCommandFlag {
	case CmdInitCluster:
		err = applyBody(t, body, f.state.applyInitCluster)
	case CmdUpsertCoordinator:
		err = applyBody(t, body, f.state.applyUpsertCoordinator)
	case CmdRemoveCoordinator:
		err = applyBody(t, body, f.state.applyRemoveCoordinator)
	case CmdRegisterWorker:
		err = applyBody(t, body, f.state.applyRegisterWorker)
	case CmdDeregisterWorker:
		err = applyBody(t, body, f.state.applyDeregisterWorker)
	case CmdSetWorkerState:
		err = applyBody(t, body, f.state.applySetWorkerState)
	case CmdCreateRun:
		if version == 1 {
			err = applyBody(t, body, f.state.applyCreateRunV1)
		} else {
			err = applyBody(t, body, f.state.applyCreateRun)
		}
	case CmdStartGeneration:
		err = applyBody(t, body, f.state.applyStartGeneration)
	case CmdCommitCheckpoint:
		err = applyBody(t, body, f.state.applyCommitCheckpoint)
	case CmdDeleteCheckpoints:
		err = applyBody(t, body, f.state.applyDeleteCheckpoints)
	case CmdRequestCheckpoint:
		err = applyBody(t, body, f.state.applyRequestCheckpoint)
	case CmdSetRunState:
		err = applyBody(t, body, f.state.applySetRunState)
	case CmdCreateToken:
		err = applyBody(t, body, f.state.applyCreateToken)
	case CmdRevokeToken:
		err = applyBody(t, body, f.state.applyRevokeToken)
	case CmdRotateAdmin:
		err = applyBody(t, body, f.state.applyRotateAdmin)
	default:
		if t&IgnorableCommandFlag != 0 {
			f.log.Warn("skipping unknown ignorable command", "index", index, "type", uint8(t))
			return applyResponse{}
		}
		panic(fmt.Sprintf("log entry %d: unknown command type %d; this lavit-coord is older than the cluster's log, upgrade it", index, uint8(t)))
	}
	return applyResponse{Err: err}
}

// applyBody decodes a command body of type C and applies it with fn.
func applyBody[C any](t CommandType, body []byte, fn func(C) error) error {
	var c C
	if err := json.Unmarshal(body, &c); err != nil {
		return fmt.Errorf("decode %s: %w", t, err)
	}
	return fn(c)
}

// Read calls fn with the current state under the read lock. fn must not
// keep references into the state or change it.
func (f *FSM) Read(fn func(s *State, lastIndex uint64)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.state, f.lastIndex)
}

// Changed is signalled after commands are applied (coalesced).
func (f *FSM) Changed() <-chan struct{} { return f.changed }

// snapshotFormat versions the snapshot encoding. Format 2 added each run's
// policy; a format-1 snapshot restores with the policies derived from the
// stored specs. Format 3 added each checkpoint's manifest sha256; a
// format-2 snapshot restores with it empty (those checkpoints are checked
// by step and state hash). Format 4 added the issued tokens; an older
// snapshot restores with none. An older build refuses a newer format rather
// than drop what it does not know.
const snapshotFormat = 4

type snapshotFile struct {
	Format    int    `json:"format"`
	LastIndex uint64 `json:"last_index"`
	State     *State `json:"state"`
}

// Snapshot captures the state for raft to persist.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	data, err := json.Marshal(snapshotFile{Format: snapshotFormat, LastIndex: f.lastIndex, State: f.state})
	if err != nil {
		return nil, fmt.Errorf("encode snapshot: %w", err)
	}
	return &fsmSnapshot{data: data}, nil
}

// Restore replaces the whole state with a snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var snap snapshotFile
	if err := json.NewDecoder(rc).Decode(&snap); err != nil {
		return fmt.Errorf("decode snapshot: %w", err)
	}
	if snap.Format < 1 || snap.Format > snapshotFormat {
		return fmt.Errorf("snapshot format %d is not supported (this build reads 1 to %d)", snap.Format, snapshotFormat)
	}
	st := snap.State
	if st == nil {
		st = newState()
	}
	if st.Coordinators == nil {
		st.Coordinators = map[string]*CoordinatorRecord{}
	}
	if st.Workers == nil {
		st.Workers = map[string]*WorkerRecord{}
	}
	if st.Runs == nil {
		st.Runs = map[string]*RunRecord{}
	}
	if snap.Format == 1 {
		for _, r := range st.Runs {
			r.Policy = policyFromSpecJSON(r.Spec)
		}
	}
	f.mu.Lock()
	f.state, f.lastIndex = st, snap.LastIndex
	f.mu.Unlock()
	select {
	case f.changed <- struct{}{}:
	default:
	}
	return nil
}

type fsmSnapshot struct{ data []byte }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s.data); err != nil {
		sink.Cancel()
		return fmt.Errorf("write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
