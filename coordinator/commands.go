package coordinator

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/lavit-org/lavit/internal/wire"
)

// CommandType numbers the FSM commands. The numbers are written into the
// raft log, so they are append-only: never renumber or reuse one.
type CommandType uint8

const (
	CmdInitCluster       CommandType = 1
	CmdUpsertCoordinator CommandType = 2
	CmdRemoveCoordinator CommandType = 3
	CmdRegisterWorker    CommandType = 4
	CmdDeregisterWorker  CommandType = 5
	CmdSetWorkerState    CommandType = 6
	CmdCreateRun         CommandType = 7
	CmdSetRunState       CommandType = 8
	CmdStartGeneration   CommandType = 9
	CmdCommitCheckpoint  CommandType = 10
	CmdDeleteCheckpoints CommandType = 11
	CmdRequestCheckpoint CommandType = 12
	CmdCreateToken       CommandType = 13
	CmdRevokeToken       CommandType = 14
	CmdRotateAdmin       CommandType = 15
)

// IgnorableCommandFlag marks a command that an older coordinator may skip
// if it does not know the type. Without it, an unknown command stops the
// node: applying the rest of the log without it could diverge from the
// other replicas.
const IgnorableCommandFlag CommandType = 0x80

// commandVersions is the newest body version of each command type this
// build writes. Apply reads every version from 1 up to it, so a log
// written by an older build still replays; a newer version stops the node
// (see FSM). A type not listed is at version 1. Raising a version is
// append-only like the type numbers: the old body stays decodable.
var commandVersions = map[CommandType]uint8{
	CmdCreateRun:        2, // v2 adds the run's policy, decoded once at submit
	CmdCommitCheckpoint: 2, // v2 adds the manifest's sha256 (CheckpointRecord.ManifestSHA256)
}

// commandVersion returns the body version this build writes for t.
func commandVersion(t CommandType) uint8 {
	if v, ok := commandVersions[t&^IgnorableCommandFlag]; ok {
		return v
	}
	return 1
}

func (t CommandType) String() string {
	switch t &^ IgnorableCommandFlag {
	case CmdInitCluster:
		return "InitCluster"
	case CmdUpsertCoordinator:
		return "UpsertCoordinator"
	case CmdRemoveCoordinator:
		return "RemoveCoordinator"
	case CmdRegisterWorker:
		return "RegisterWorker"
	case CmdDeregisterWorker:
		return "DeregisterWorker"
	case CmdSetWorkerState:
		return "SetWorkerState"
	case CmdCreateRun:
		return "CreateRun"
	case CmdSetRunState:
		return "SetRunState"
	case CmdStartGeneration:
		return "StartGeneration"
	case CmdCommitCheckpoint:
		return "CommitCheckpoint"
	case CmdDeleteCheckpoints:
		return "DeleteCheckpoints"
	case CmdRequestCheckpoint:
		return "RequestCheckpoint"
	case CmdCreateToken:
		return "CreateToken"
	case CmdRevokeToken:
		return "RevokeToken"
	case CmdRotateAdmin:
		return "RotateAdmin"
	}
	return fmt.Sprintf("Command(%d)", uint8(t))
}

// encodeCommand frames a command as [type][version][JSON body].
func encodeCommand(t CommandType, body any) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	out := make([]byte, 0, 2+len(b))
	out = append(out, byte(t), commandVersion(t))
	return append(out, b...), nil
}

// The command bodies. The leader fills in every time stamp and id before
// Apply, so applying a command never reads a clock or a random source.

// InitClusterCmd is the first command of a new cluster.
type InitClusterCmd struct {
	ClusterID string    `json:"cluster_id"`
	TokenHash string    `json:"token_hash"` // hex sha256 of the join token
	At        time.Time `json:"at"`
}

// UpsertCoordinatorCmd records a coordinator's addresses.
type UpsertCoordinatorCmd struct {
	Coordinator CoordinatorRecord `json:"coordinator"`
}

// RemoveCoordinatorCmd forgets a coordinator's addresses.
type RemoveCoordinatorCmd struct {
	ID string `json:"id"`
}

// RegisterWorkerCmd adds a worker or refreshes a known one (a restart).
type RegisterWorkerCmd struct {
	Worker WorkerRecord `json:"worker"`
}

// DeregisterWorkerCmd removes a worker that left on purpose.
type DeregisterWorkerCmd struct {
	ID       string    `json:"id"`
	Instance string    `json:"instance"`
	Reason   string    `json:"reason,omitempty"`
	At       time.Time `json:"at"`
}

// SetWorkerStateCmd records a worker state transition (IDLE ↔ LOST, …).
type SetWorkerStateCmd struct {
	ID     string    `json:"id"`
	State  string    `json:"state"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// CreateRunCmd records a submitted run: its normalised spec (what the
// workers build the run from) and its policy (what the coordinator acts
// on), both fixed for the run's life.
//
// Version 2. Version 1 had no Policy; applying a v1 entry derives the
// policy from the spec (PolicyFromSpecJSON), the same on every replica.
type CreateRunCmd struct {
	ID     string          `json:"id"`
	Spec   json.RawMessage `json:"spec"`
	Policy RunPolicy       `json:"policy"`
	At     time.Time       `json:"at"`
}

// createRunCmdV1 is CreateRun as version-1 builds wrote it.
type createRunCmdV1 struct {
	ID   string          `json:"id"`
	Spec json.RawMessage `json:"spec"`
	At   time.Time       `json:"at"`
}

// SetRunStateCmd moves a run to another state. A run that ends releases
// its workers; a completed one records its final model state.
type SetRunStateCmd struct {
	ID     string         `json:"id"`
	State  string         `json:"state"`
	Reason string         `json:"reason,omitempty"`
	Step   int64          `json:"step,omitempty"`
	Final  *wire.Artifact `json:"final,omitempty"`
	Eval   []wire.Check   `json:"eval,omitempty"`
	At     time.Time      `json:"at"`
}

// StartGenerationCmd starts a new generation of a run: a new set of members
// (worker id → rank 0..n-1) trains it from here. Generation must be the
// run's current generation + 1, so a replayed or raced command is refused.
type StartGenerationCmd struct {
	Run        string         `json:"run"`
	Generation uint64         `json:"generation"`
	Members    map[string]int `json:"members"`
	// StartStep is where training resumes: the step of the checkpoint the
	// members restore (0: from the start).
	StartStep int64     `json:"start_step,omitempty"`
	At        time.Time `json:"at"`
}

// CommitCheckpointCmd records a checkpoint whose parts and manifest are
// durable. Only committed checkpoints are listed or restored. Version 2
// carries the manifest's sha256 in the record; a version-1 body decodes
// into the same struct with it empty.
type CommitCheckpointCmd struct {
	Run        string           `json:"run"`
	Checkpoint CheckpointRecord `json:"checkpoint"`
}

// DeleteCheckpointsCmd forgets checkpoints (retention); their objects are
// deleted after this commits.
type DeleteCheckpointsCmd struct {
	Run   string  `json:"run"`
	Steps []int64 `json:"steps"`
}

// RequestCheckpointCmd asks a running run for a checkpoint now.
type RequestCheckpointCmd struct {
	Run string    `json:"run"`
	At  time.Time `json:"at"`
}
