package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/lavit-org/lavit/internal/wire"
)

// Errors an Apply can return. They are deterministic: every replica
// returns the same one for the same command.
var (
	ErrUnknownWorker      = errors.New("unknown worker")
	ErrStaleInstance      = errors.New("stale worker instance")
	ErrUnknownRun         = errors.New("unknown run")
	ErrRunExists          = errors.New("run already exists")
	ErrBadTransition      = errors.New("invalid state transition")
	ErrAlreadyInitialized = errors.New("cluster already initialized")
	ErrStaleGeneration    = errors.New("stale generation")
	ErrBadMembers         = errors.New("invalid members")
)

// Run states; runTransitions says how they change.
const (
	RunPending   = wire.RunPending
	RunRunning   = wire.RunRunning
	RunPaused    = wire.RunPaused
	RunCompleted = wire.RunCompleted
	RunFailed    = wire.RunFailed
	RunCancelled = wire.RunCancelled
)

// terminalRun reports whether a run state is final.
func terminalRun(state string) bool {
	return state == RunCompleted || state == RunFailed || state == RunCancelled
}

// CoordinatorRecord is what the cluster knows about one coordinator node
// besides its raft address.
type CoordinatorRecord struct {
	ID        string `json:"id"`
	RaftAddr  string `json:"raft_addr"`
	HTTPAddr  string `json:"http_addr,omitempty"`
	NATSURL   string `json:"nats_url,omitempty"`
	NATSRoute string `json:"nats_route,omitempty"`
}

// WorkerRecord is one worker in the replicated registry. Liveness (the last
// heartbeat) is not here: it lives in the leader's memory.
type WorkerRecord struct {
	ID         string        `json:"id"`
	Instance   string        `json:"instance"`
	Host       string        `json:"host"`
	Device     string        `json:"device"`
	Devices    []wire.Device `json:"devices"`
	Capacity   int           `json:"capacity"`
	Build      string        `json:"build,omitempty"`
	State      string        `json:"state"`
	Since      time.Time     `json:"since"`
	Registered time.Time     `json:"registered"`
	Run        string        `json:"run,omitempty"`
	// TokenID is the token that registered the worker: "admin", an issued
	// token's id, or "" (registered before tokens were recorded). Only
	// that token, or an admin one, may act as this worker.
	TokenID string `json:"token_id,omitempty"`
}

// RunRecord is one training run. Generation and Members change whenever
// the set of workers training it changes.
type RunRecord struct {
	ID    string          `json:"id"`
	State string          `json:"state"`
	Spec  json.RawMessage `json:"spec"`
	// Policy is what the coordinator acts on from the spec (decoded once,
	// at submit).
	Policy     RunPolicy      `json:"policy"`
	Generation uint64         `json:"generation"`
	Members    map[string]int `json:"members,omitempty"` // worker id → rank
	Created    time.Time      `json:"created"`
	Updated    time.Time      `json:"updated"`
	Reason     string         `json:"reason,omitempty"`
	// Step is the last step the run reported finishing (set when it ends).
	Step int64 `json:"step,omitempty"`
	// Final is the model state a COMPLETED run produced.
	Final *wire.Artifact `json:"final,omitempty"`
	// Eval holds the checks measured when the run completed.
	Eval []wire.Check `json:"eval,omitempty"`
	// StartStep is the step the current generation started from.
	StartStep int64 `json:"start_step,omitempty"`
	// Checkpoints are the committed checkpoints, oldest first.
	Checkpoints []CheckpointRecord `json:"checkpoints,omitempty"`
	// CheckpointRequests counts `run checkpoint` requests; workers take
	// one when the count grows.
	CheckpointRequests uint64 `json:"checkpoint_requests,omitempty"`
}

// CheckpointRecord is one committed checkpoint.
type CheckpointRecord struct {
	Step        int64  `json:"step"`
	World       int    `json:"world"`
	Generation  uint64 `json:"generation"`
	URL         string `json:"url"` // the checkpoint's directory; its manifest is manifest.json there
	StateBytes  int64  `json:"state_bytes"`
	StateSHA256 string `json:"state_sha256"`
	// ManifestSHA256 is the sha256 of the manifest object the leader
	// wrote: restores, `ckpt verify` and `ckpt export` refuse a manifest
	// in the store that differs (checkpoint.LoadCommitted). Empty for a
	// checkpoint committed before it was recorded (CommitCheckpoint
	// version 1, snapshot format 2).
	ManifestSHA256 string    `json:"manifest_sha256,omitempty"`
	Committed      time.Time `json:"committed"`
}

// State is the replicated state machine's data. It is only changed by
// apply* methods, which the FSM calls with its write lock held.
type State struct {
	ClusterID    string                        `json:"cluster_id"`
	TokenHash    string                        `json:"token_hash"`
	Created      time.Time                     `json:"created"`
	Coordinators map[string]*CoordinatorRecord `json:"coordinators"`
	Workers      map[string]*WorkerRecord      `json:"workers"`
	Runs         map[string]*RunRecord         `json:"runs"`
	// Tokens are the issued tokens by id (tokens.go); nil until the
	// first is made.
	Tokens map[string]*TokenRecord `json:"tokens,omitempty"`
	// AdminRotation is a rotation of the admin token in progress
	// (rotate.go); nil when there is none.
	AdminRotation *AdminRotation `json:"admin_rotation,omitempty"`
}

func newState() *State {
	return &State{
		Coordinators: map[string]*CoordinatorRecord{},
		Workers:      map[string]*WorkerRecord{},
		Runs:         map[string]*RunRecord{},
	}
}

func (s *State) applyInitCluster(c InitClusterCmd) error {
	if s.ClusterID != "" {
		return ErrAlreadyInitialized
	}
	if c.ClusterID == "" || c.TokenHash == "" {
		return errors.New("init cluster: cluster id and token hash are required")
	}
	s.ClusterID, s.TokenHash, s.Created = c.ClusterID, c.TokenHash, c.At
	return nil
}

func (s *State) applyUpsertCoordinator(c UpsertCoordinatorCmd) error {
	if err := wire.ValidateID("coordinator", c.Coordinator.ID); err != nil {
		return err
	}
	rec := c.Coordinator
	s.Coordinators[rec.ID] = &rec
	return nil
}

func (s *State) applyRemoveCoordinator(c RemoveCoordinatorCmd) error {
	delete(s.Coordinators, c.ID)
	return nil
}

// applyRegisterWorker adds a worker, or refreshes it when it comes back
// (a restart gets a new instance id). Registration always leaves the
// worker IDLE: a restarted process has lost whatever it was doing.
func (s *State) applyRegisterWorker(c RegisterWorkerCmd) error {
	w := c.Worker
	if err := wire.ValidateID("worker", w.ID); err != nil {
		return err
	}
	if old, ok := s.Workers[w.ID]; ok {
		w.Registered = old.Registered
	}
	w.State = wire.WorkerIdle
	w.Run = ""
	s.Workers[w.ID] = &w
	return nil
}

func (s *State) applyDeregisterWorker(c DeregisterWorkerCmd) error {
	w, ok := s.Workers[c.ID]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownWorker, c.ID)
	}
	if c.Instance != "" && w.Instance != c.Instance {
		return fmt.Errorf("%w: worker %q is now instance %s, not %s", ErrStaleInstance, c.ID, w.Instance, c.Instance)
	}
	delete(s.Workers, c.ID)
	return nil
}

func (s *State) applySetWorkerState(c SetWorkerStateCmd) error {
	w, ok := s.Workers[c.ID]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownWorker, c.ID)
	}
	switch c.State {
	case wire.WorkerIdle, wire.WorkerTraining, wire.WorkerLost:
	default:
		return fmt.Errorf("%w: worker state %q", ErrBadTransition, c.State)
	}
	if w.State != c.State {
		w.State, w.Since = c.State, c.At
	}
	return nil
}

func (s *State) applyCreateRun(c CreateRunCmd) error {
	if err := wire.ValidateID("run", c.ID); err != nil {
		return err
	}
	if _, ok := s.Runs[c.ID]; ok {
		return fmt.Errorf("%w: %q", ErrRunExists, c.ID)
	}
	s.Runs[c.ID] = &RunRecord{ID: c.ID, State: RunPending, Spec: c.Spec, Policy: c.Policy, Created: c.At, Updated: c.At}
	return nil
}

// applyCreateRunV1 applies a version-1 CreateRun (written before runs had
// a policy): the policy is derived from the stored spec.
func (s *State) applyCreateRunV1(c createRunCmdV1) error {
	return s.applyCreateRun(CreateRunCmd{ID: c.ID, Spec: c.Spec, Policy: policyFromSpecJSON(c.Spec), At: c.At})
}

// runTransitions lists the states each run state may move to; DESIGN.md
// ("Run states") draws the same table, and a test keeps the two equal.
// RUNNING is entered by StartGeneration (from PENDING, PAUSED, or RUNNING
// itself for a new generation); the rest by SetRunState. A failed or
// cancelled run can be resumed (to PAUSED, from where the scheduler
// restarts it from its newest checkpoint); a completed one is done.
var runTransitions = map[string][]string{
	RunPending:   {RunRunning, RunCancelled, RunFailed},
	RunRunning:   {RunPaused, RunCompleted, RunFailed, RunCancelled},
	RunPaused:    {RunRunning, RunCancelled, RunFailed},
	RunFailed:    {RunPaused},
	RunCancelled: {RunPaused},
}

func (s *State) applySetRunState(c SetRunStateCmd) error {
	r, ok := s.Runs[c.ID]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownRun, c.ID)
	}
	if r.State == c.State {
		return nil
	}
	allowed := false
	for _, next := range runTransitions[r.State] {
		allowed = allowed || next == c.State
	}
	if !allowed {
		return fmt.Errorf("%w: run %q from %s to %s", ErrBadTransition, c.ID, r.State, c.State)
	}
	r.State, r.Updated, r.Reason = c.State, c.At, c.Reason
	if c.Step > 0 {
		r.Step = c.Step
	}
	if c.Final != nil {
		f := *c.Final
		r.Final = &f
	}
	if c.Eval != nil {
		r.Eval = append([]wire.Check(nil), c.Eval...)
	}
	if c.State != RunRunning {
		// The members are free for the next run.
		for id := range r.Members {
			s.releaseWorker(id, c.ID, c.At)
		}
	}
	return nil
}

// releaseWorker frees a worker from run (if it is still that run's): it
// leaves the run and a TRAINING worker becomes IDLE.
func (s *State) releaseWorker(id, run string, at time.Time) {
	if w, ok := s.Workers[id]; ok && w.Run == run {
		w.Run = ""
		if w.State == wire.WorkerTraining {
			w.State, w.Since = wire.WorkerIdle, at
		}
	}
}

// applyStartGeneration moves a run to a new generation and member set: the
// run is RUNNING, its members TRAINING it, and workers that were members
// of the old generation but not the new one go back to IDLE.
func (s *State) applyStartGeneration(c StartGenerationCmd) error {
	r, ok := s.Runs[c.Run]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownRun, c.Run)
	}
	switch r.State {
	case RunPending, RunRunning, RunPaused:
	default:
		return fmt.Errorf("%w: run %q is %s", ErrBadTransition, c.Run, r.State)
	}
	if c.Generation != r.Generation+1 {
		return fmt.Errorf("%w: run %q is at generation %d; cannot start %d", ErrStaleGeneration, c.Run, r.Generation, c.Generation)
	}
	if len(c.Members) == 0 {
		return fmt.Errorf("%w: a generation needs at least one member", ErrBadMembers)
	}
	seen := make([]bool, len(c.Members))
	for id, rank := range c.Members {
		w, ok := s.Workers[id]
		if !ok {
			return fmt.Errorf("%w %q", ErrUnknownWorker, id)
		}
		if rank < 0 || rank >= len(c.Members) || seen[rank] {
			return fmt.Errorf("%w: ranks must be 0..%d, each once (worker %q has %d)", ErrBadMembers, len(c.Members)-1, id, rank)
		}
		seen[rank] = true
		if w.Run != "" && w.Run != c.Run {
			return fmt.Errorf("%w: worker %q is training run %q", ErrBadMembers, id, w.Run)
		}
	}
	for id := range r.Members {
		if _, still := c.Members[id]; !still {
			s.releaseWorker(id, c.Run, c.At)
		}
	}
	for id := range c.Members {
		w := s.Workers[id]
		w.Run = c.Run
		if w.State != wire.WorkerTraining {
			w.State, w.Since = wire.WorkerTraining, c.At
		}
	}
	r.Generation, r.State, r.Updated, r.StartStep, r.Reason = c.Generation, RunRunning, c.At, c.StartStep, ""
	r.Members = maps.Clone(c.Members)
	return nil
}

func (s *State) applyCommitCheckpoint(c CommitCheckpointCmd) error {
	r, ok := s.Runs[c.Run]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownRun, c.Run)
	}
	for _, k := range r.Checkpoints {
		if k.Step == c.Checkpoint.Step {
			return fmt.Errorf("run %q already has a checkpoint at step %d", c.Run, k.Step)
		}
	}
	r.Checkpoints = append(r.Checkpoints, c.Checkpoint)
	sort.Slice(r.Checkpoints, func(i, j int) bool { return r.Checkpoints[i].Step < r.Checkpoints[j].Step })
	return nil
}

func (s *State) applyDeleteCheckpoints(c DeleteCheckpointsCmd) error {
	r, ok := s.Runs[c.Run]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownRun, c.Run)
	}
	r.Checkpoints = slices.DeleteFunc(r.Checkpoints, func(k CheckpointRecord) bool {
		return slices.Contains(c.Steps, k.Step)
	})
	return nil
}

func (s *State) applyRequestCheckpoint(c RequestCheckpointCmd) error {
	r, ok := s.Runs[c.Run]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownRun, c.Run)
	}
	if r.State != RunRunning {
		return fmt.Errorf("%w: run %q is %s, not RUNNING", ErrBadTransition, c.Run, r.State)
	}
	r.CheckpointRequests++
	return nil
}

// sortedWorkers returns the workers ordered by id.
func (s *State) sortedWorkers() []*WorkerRecord {
	out := make([]*WorkerRecord, 0, len(s.Workers))
	for _, w := range s.Workers {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
