// Package wire defines lavit's control protocol: the NATS subjects the
// coordinator leader serves, the request and reply messages, their size
// bounds and validation, and a small client that makes the calls.
//
// Every subject carries the protocol version (lavit.v1.…); a message body is
// JSON with a "v" field. Only the current raft leader subscribes to these
// subjects, so a client never needs to know which coordinator leads.
//
// Bodies come from the network: DecodeRequest refuses anything over
// MaxMessageBytes before decoding it, and DecodeReply anything over 16
// times that. FuzzDecodeRequest (every request type) and FuzzDecodeReply
// (every reply type) hold them to never panicking, refusing with a stable
// code, and decoding to values that are stable through JSON.
package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Version is the control protocol version carried in subjects and bodies.
const Version = 1

// MaxMessageBytes bounds every control message body. Control messages are
// small; anything bigger is refused before it is decoded.
const MaxMessageBytes = 64 << 10

// Subjects served by the coordinator leader.
const (
	SubjectRegister   = "lavit.v1.ctl.register"
	SubjectHeartbeat  = "lavit.v1.ctl.heartbeat"
	SubjectDeregister = "lavit.v1.ctl.deregister"
	SubjectStatus     = "lavit.v1.ctl.status"
	SubjectRendezvous = "lavit.v1.ctl.rendezvous"
	SubjectProgress   = "lavit.v1.ctl.progress"
	SubjectRunFinish  = "lavit.v1.ctl.run.finish"
	SubjectCkptPart   = "lavit.v1.ctl.ckpt.part"

	SubjectRunSubmit = "lavit.v1.admin.run.submit"
	SubjectRunList   = "lavit.v1.admin.run.list"
	SubjectRunShow   = "lavit.v1.admin.run.show"
	SubjectRunCancel = "lavit.v1.admin.run.cancel"
	SubjectRunResume = "lavit.v1.admin.run.resume"
	SubjectRunCkpt   = "lavit.v1.admin.run.checkpoint"
	SubjectCkptList  = "lavit.v1.admin.ckpt.list"

	SubjectWorkers      = "lavit.v1.admin.workers"
	SubjectRaftPeers    = "lavit.v1.admin.raft.peers"
	SubjectRaftJoin     = "lavit.v1.admin.raft.join"
	SubjectRaftRemove   = "lavit.v1.admin.raft.remove"
	SubjectRaftTransfer = "lavit.v1.admin.raft.transfer"
	SubjectAnnounce     = "lavit.v1.admin.coord.announce"
)

// LeaderQueue is the queue group every leader subscription uses, so that
// during a leadership change at most one coordinator answers a request.
const LeaderQueue = "lavit-leader"

// Worker states as the registry reports them.
const (
	WorkerIdle     = "IDLE"
	WorkerTraining = "TRAINING"
	WorkerLost     = "LOST"
)

// Error codes in replies. Clients branch on these, so they are stable.
const (
	CodeBadRequest  = "bad_request"
	CodeTooLarge    = "too_large"
	CodeBadVersion  = "unsupported_version"
	CodeAuth        = "unauthorized"
	CodeUnknown     = "unknown_worker"
	CodeStale       = "stale_instance"
	CodeConflict    = "conflict"
	CodeNotLeader   = "not_leader"
	CodeUnavailable = "unavailable"
	CodeInternal    = "internal"
)

// Error is a failure reported by the coordinator.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message + " (" + e.Code + ")" }

// Errorf builds an *Error with a code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// HasCode reports whether err is a coordinator *Error with the given code.
func HasCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Reply wraps every answer: either Error or Body is set.
type Reply struct {
	V     int             `json:"v"`
	Error *Error          `json:"error,omitempty"`
	Body  json.RawMessage `json:"body,omitempty"`
}

// Auth is carried by every request.
type Auth struct {
	V     int    `json:"v"`
	Token string `json:"token"`
	// From names the caller: the worker id for worker requests, a free-form
	// client name for CLI calls.
	From string `json:"from"`
}

// Device is one accelerator (or the CPU) a worker can train on.
type Device struct {
	Name   string `json:"name"` // cpu, cuda:0, …
	Kind   string `json:"kind"` // cpu or cuda
	Detail string `json:"detail,omitempty"`
	// MemoryBytes is the device's total memory, reported for the device the
	// worker trains on when it is a GPU (0: not known). The coordinator
	// refuses a run whose memory plan cannot fit it.
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
}

// RegisterRequest announces a worker to the coordinator.
type RegisterRequest struct {
	Auth
	// Instance is a random id for this worker process; a restarted worker
	// gets a new one, which lets the coordinator tell a restart from a
	// duplicate id.
	Instance string   `json:"instance"`
	Host     string   `json:"host"`
	Devices  []Device `json:"devices"`
	// Device is the device this worker trains on.
	Device string `json:"device"`
	// Capacity is how many training slots the worker offers (1 today).
	Capacity int    `json:"capacity"`
	Build    string `json:"build,omitempty"`
}

// DesiredState is what the coordinator wants a worker to be doing. A worker
// reconciles to it after every heartbeat reply (level-triggered).
//
// A TRAINING worker learns its run, generation, rank and world size here;
// its peers' addresses (ring) or the NCCL unique id come from the
// rendezvous call, which completes once every member has posted.
type DesiredState struct {
	State      string `json:"state"` // IDLE or TRAINING
	Run        string `json:"run,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
	Rank       int    `json:"rank,omitempty"`
	World      int    `json:"world,omitempty"`
	Backend    string `json:"backend,omitempty"` // ring or nccl
	// StartStep is the step to resume from: the members restore the run's
	// newest committed checkpoint at or before it (0: start fresh).
	StartStep int64 `json:"start_step,omitempty"`
	// CheckpointRequests counts `run checkpoint` requests; rank 0 takes a
	// checkpoint whenever it grows.
	CheckpointRequests uint64 `json:"checkpoint_requests,omitempty"`
}

// RegisterReply confirms a registration.
type RegisterReply struct {
	Worker            Worker       `json:"worker"`
	HeartbeatInterval Duration     `json:"heartbeat_interval"`
	Desired           DesiredState `json:"desired"`
	Leader            string       `json:"leader"`
}

// HeartbeatRequest says a worker is alive and what it is doing.
type HeartbeatRequest struct {
	Auth
	Instance string `json:"instance"`
	Seq      uint64 `json:"seq"`
	// State is the worker's observed state (IDLE or TRAINING).
	State string `json:"state"`
	// Run and Generation echo what the worker is reconciled to.
	Run        string `json:"run,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
}

// HeartbeatReply carries the worker's desired state.
type HeartbeatReply struct {
	Desired DesiredState `json:"desired"`
	Leader  string       `json:"leader"`
}

// Collective backends.
const (
	BackendRing = "ring"
	BackendNCCL = "nccl"
)

// RendezvousRequest is a run member posting what its peers need to reach
// it for one generation: its ring listener address (ring), or, from rank 0,
// the NCCL unique id (nccl). Members repeat it until the reply is
// Complete; a new leader rebuilds the table from these repeats.
type RendezvousRequest struct {
	Auth
	Instance   string `json:"instance"`
	Run        string `json:"run"`
	Generation uint64 `json:"generation"`
	Rank       int    `json:"rank"`
	Addr       string `json:"addr,omitempty"`    // ring: host:port of this rank's listener
	NCCLID     []byte `json:"nccl_id,omitempty"` // nccl: rank 0's unique id (128 bytes)
}

// RendezvousReply says whether every member has posted and, once they
// have, the addresses of all ranks (index = rank) and the generation's
// ring secret (ring), or the NCCL id.
type RendezvousReply struct {
	Complete bool     `json:"complete"`
	Posted   int      `json:"posted"` // members that have posted so far
	World    int      `json:"world"`
	Peers    []string `json:"peers,omitempty"`
	NCCLID   []byte   `json:"nccl_id,omitempty"`
	// RingSecret is the secret ring neighbours prove they hold before they
	// connect (collective/ring's handshake): fresh for each generation,
	// given only to its members.
	RingSecret []byte `json:"ring_secret,omitempty"`
}

// Run states. How a run moves between them is the coordinator's rule
// (coordinator/DESIGN.md, "Run states").
const (
	RunPending   = "PENDING"
	RunRunning   = "RUNNING"
	RunPaused    = "PAUSED"
	RunCompleted = "COMPLETED"
	RunFailed    = "FAILED"
	RunCancelled = "CANCELLED"
)

// RunSubmitRequest submits a run. Spec is the run spec as JSON, already
// resolved by the CLI (model config inlined, local paths made file:// URLs).
type RunSubmitRequest struct {
	Auth
	Spec json.RawMessage `json:"spec"`
}

// RunSubmitReply names the new run.
type RunSubmitReply struct {
	ID string `json:"id"`
}

// RunListRequest lists every run, oldest first.
type RunListRequest struct {
	Auth
}

// RunListReply is the run list.
type RunListReply struct {
	Runs []RunInfo `json:"runs"`
}

// RunShowRequest asks for one run.
type RunShowRequest struct {
	Auth
	ID string `json:"id"`
}

// RunCancelRequest cancels a run that has not finished.
type RunCancelRequest struct {
	Auth
	ID     string `json:"id"`
	Reason string `json:"reason,omitempty"`
}

// RunInfo is a run as clients see it: the committed record plus the
// leader's latest progress report (in memory: blank for a moment after a
// leader change).
type RunInfo struct {
	ID           string             `json:"id"`
	Name         string             `json:"name,omitempty"`
	Stage        int                `json:"stage"`
	State        string             `json:"state"`
	Reason       string             `json:"reason,omitempty"`
	Generation   uint64             `json:"generation"`
	Members      []RunMember        `json:"members"`
	Step         int64              `json:"step"`
	TotalSteps   int64              `json:"total_steps"`
	SamplesPerS  float64            `json:"samples_per_s"`
	Loss         *float64           `json:"loss"`
	Metrics      map[string]float64 `json:"metrics,omitempty"`
	Timing       *StepTiming        `json:"timing,omitempty"`
	Created      time.Time          `json:"created"`
	Updated      time.Time          `json:"updated"`
	Final        *Artifact          `json:"final,omitempty"`
	Eval         []Check            `json:"eval,omitempty"`
	StartStep    int64              `json:"start_step,omitempty"`    // the checkpoint step this generation was asked to resume from
	RestoredFrom int64              `json:"restored_from,omitempty"` // the step the workers restored (rank 0's report)
	RestoreNote  string             `json:"restore_note,omitempty"`
	Checkpoints  []CheckpointInfo   `json:"checkpoints,omitempty"`
	WaitingFor   string             `json:"waiting_for,omitempty"` // why a PENDING run has not started
	Spec         json.RawMessage    `json:"spec,omitempty"`        // run show only
}

// RunMember is one worker of a run's current generation.
type RunMember struct {
	Worker string `json:"worker"`
	Rank   int    `json:"rank"`
	State  string `json:"state"` // the worker's registry state
}

// Artifact is a model state a run produced: where it is and how to check it.
type Artifact struct {
	URL    string `json:"url"`
	Step   int64  `json:"step"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// StepTiming splits a rank's mean step time (milliseconds).
type StepTiming struct {
	DataMs      float64 `json:"data_ms"`      // waiting for this step's samples
	ComputeMs   float64 `json:"compute_ms"`   // the trainer's forward, backward, optimizer
	AllReduceMs float64 `json:"allreduce_ms"` // the collective calls, less IdleMs
	IdleMs      float64 `json:"idle_ms"`      // waiting in the collective for a slower peer to arrive
	OtherMs     float64 `json:"other_ms"`     // bookkeeping: metrics, batching
	StepMs      float64 `json:"step_ms"`      // wall time per step
}

// ProgressRequest is a member's periodic report (every metrics.every_steps
// steps); rank 0's also carries the run's loss and throughput.
type ProgressRequest struct {
	Auth
	Instance    string             `json:"instance"`
	Run         string             `json:"run"`
	Generation  uint64             `json:"generation"`
	Rank        int                `json:"rank"`
	Step        int64              `json:"step"` // steps completed
	TotalSteps  int64              `json:"total_steps"`
	Loss        float64            `json:"loss"` // mean over the global batch, last step
	SamplesPerS float64            `json:"samples_per_s"`
	Timing      StepTiming         `json:"timing"`
	Metrics     map[string]float64 `json:"metrics,omitempty"`
	// RestoredFrom is the checkpoint step this generation restored (0:
	// none); RestoreNote says what the restore did when it was not plain
	// (a checkpoint skipped as corrupt or missing, and why).
	RestoredFrom int64  `json:"restored_from,omitempty"`
	RestoreNote  string `json:"restore_note,omitempty"`
}

// RunRequest names a run (run checkpoint, run resume, ckpt ls).
type RunRequest struct {
	Auth
	ID string `json:"id"`
}

// CheckpointInfo is one committed checkpoint.
type CheckpointInfo struct {
	Step        int64  `json:"step"`
	Committed   bool   `json:"committed"`
	World       int    `json:"world"`
	Generation  uint64 `json:"generation"`
	URL         string `json:"url"`
	StateBytes  int64  `json:"state_bytes"`
	StateSHA256 string `json:"state_sha256"`
	// ManifestSHA256 is the sha256 of the manifest raft committed: a
	// restore, `ckpt verify` and `ckpt export` refuse any other manifest
	// found at URL (checkpoint.LoadCommitted). Empty for a checkpoint
	// committed before it was recorded.
	ManifestSHA256 string    `json:"manifest_sha256,omitempty"`
	Time           time.Time `json:"time"`
}

// CheckpointListReply lists a run's committed checkpoints, oldest first.
type CheckpointListReply struct {
	Checkpoints []CheckpointInfo `json:"checkpoints"`
}

// CheckpointPart is one rank's durable slice of a checkpoint's state.
type CheckpointPart struct {
	Name   string `json:"name"`
	Offset int64  `json:"offset"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// CheckpointMeta is what rank 0 adds about the whole checkpoint.
type CheckpointMeta struct {
	StateBytes  int64       `json:"state_bytes"`
	StateSHA256 string      `json:"state_sha256"`
	ConfigHash  string      `json:"config_hash"`
	SpecHash    string      `json:"spec_hash"`
	CodeVersion string      `json:"code_version"`
	Params      []ParamInfo `json:"params"`
}

// ParamInfo is one weight's name, shape and place in the flat params.
type ParamInfo struct {
	Name   string  `json:"name"`
	Shape  []int64 `json:"shape"`
	Offset int64   `json:"offset"`
	Numel  int64   `json:"numel"`
}

// CheckpointPartRequest reports that a rank's part is durable. When every
// rank's part of (run, step) has arrived, the leader writes the manifest
// and commits the checkpoint.
type CheckpointPartRequest struct {
	Auth
	Instance   string          `json:"instance"`
	Run        string          `json:"run"`
	Generation uint64          `json:"generation"`
	Rank       int             `json:"rank"`
	World      int             `json:"world"`
	Step       int64           `json:"step"`
	Part       CheckpointPart  `json:"part"`
	Meta       *CheckpointMeta `json:"meta,omitempty"` // rank 0 only
}

// RunFinishRequest ends a run: rank 0 reports COMPLETED with the final
// model state; any rank may report FAILED with the reason.
type RunFinishRequest struct {
	Auth
	Instance   string    `json:"instance"`
	Run        string    `json:"run"`
	Generation uint64    `json:"generation"`
	Rank       int       `json:"rank"`
	Outcome    string    `json:"outcome"` // COMPLETED or FAILED
	Reason     string    `json:"reason,omitempty"`
	Step       int64     `json:"step"`
	Final      *Artifact `json:"final,omitempty"`
	// Eval is rank 0's "it learned" checks on the run's eval set.
	Eval []Check `json:"eval,omitempty"`
}

// Check is one "it learned" bar measured at the end of a run.
type Check struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Pass  bool   `json:"pass"`
}

// DeregisterRequest says a worker leaves on purpose.
type DeregisterRequest struct {
	Auth
	Instance string `json:"instance"`
	Reason   string `json:"reason,omitempty"`
}

// DeregisterReply confirms a deregistration.
type DeregisterReply struct {
	Removed bool `json:"removed"`
}

// StatusRequest asks the leader for the cluster status.
type StatusRequest struct {
	Auth
}

// Worker is one worker in the registry, as clients see it.
type Worker struct {
	ID       string    `json:"id"`
	Host     string    `json:"host"`
	Device   string    `json:"device"`
	Devices  []Device  `json:"devices"`
	Capacity int       `json:"capacity"`
	State    string    `json:"state"`
	Since    time.Time `json:"since"`
	// Registered is when the worker first registered.
	Registered time.Time `json:"registered"`
	Run        string    `json:"run,omitempty"`
	// LastHeartbeat is the leader's in-memory view; zero after a leader
	// change until the worker's next heartbeat arrives.
	LastHeartbeat time.Time `json:"last_heartbeat,omitempty"`
	Instance      string    `json:"instance"`
	Build         string    `json:"build,omitempty"`
}

// Coordinator is one coordinator node.
type Coordinator struct {
	ID         string `json:"id"`
	RaftAddr   string `json:"raft_addr"`
	HTTPAddr   string `json:"http_addr,omitempty"`
	NATSURL    string `json:"nats_url,omitempty"`
	NATSRoute  string `json:"nats_route,omitempty"`
	Suffrage   string `json:"suffrage"`
	Leader     bool   `json:"leader"`
	Registered bool   `json:"registered"` // false: in the raft configuration but never announced itself
}

// Status is the cluster status the leader reports.
type Status struct {
	ClusterID    string        `json:"cluster_id"`
	Leader       string        `json:"leader"`
	LeaderAddr   string        `json:"leader_addr"`
	Term         uint64        `json:"term"`
	CommitIndex  uint64        `json:"commit_index"`
	AppliedIndex uint64        `json:"applied_index"`
	Coordinators []Coordinator `json:"coordinators"`
	Workers      WorkerCounts  `json:"workers"`
	Runs         int           `json:"runs"`
	Build        string        `json:"build,omitempty"`
	// AdminRotationSince is when the admin token rotation in progress
	// started (zero when none is).
	AdminRotationSince time.Time `json:"admin_rotation_since,omitzero"`
}

// WorkerCounts summarises the registry by state.
type WorkerCounts struct {
	Total    int `json:"total"`
	Idle     int `json:"idle"`
	Training int `json:"training"`
	Lost     int `json:"lost"`
}

// WorkersRequest lists the registry.
type WorkersRequest struct {
	Auth
}

// WorkersReply is the registry, sorted by id.
type WorkersReply struct {
	Workers []Worker `json:"workers"`
}

// RaftPeersRequest lists the raft configuration.
type RaftPeersRequest struct {
	Auth
}

// RaftPeersReply is the raft configuration with coordinator metadata.
type RaftPeersReply struct {
	Peers []Coordinator `json:"peers"`
}

// RaftJoinRequest adds a coordinator to the raft configuration as a voter.
type RaftJoinRequest struct {
	Auth
	ID        string `json:"id"`
	RaftAddr  string `json:"raft_addr"`
	HTTPAddr  string `json:"http_addr,omitempty"`
	NATSURL   string `json:"nats_url,omitempty"`
	NATSRoute string `json:"nats_route,omitempty"`
}

// RaftJoinReply answers a join with the NATS routes of the cluster, so the
// new node's embedded NATS server can route to the others.
type RaftJoinReply struct {
	Leader     string   `json:"leader"`
	NATSRoutes []string `json:"nats_routes"`
}

// RaftRemoveRequest removes a coordinator from the raft configuration.
type RaftRemoveRequest struct {
	Auth
	ID string `json:"id"`
}

// RaftTransferRequest moves leadership, to ID if set.
type RaftTransferRequest struct {
	Auth
	ID string `json:"id,omitempty"`
}

// AnnounceRequest is a coordinator telling the leader its addresses.
type AnnounceRequest struct {
	Auth
	Coordinator Coordinator `json:"coordinator"`
}

// Empty is the body of replies that carry nothing but success.
type Empty struct{}

// Duration is a time.Duration that marshals as a Go duration string.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string like \"500ms\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateID checks a worker or coordinator id: 1 to 128 characters of
// letters, digits, dot, dash and underscore, starting with a letter or digit.
func ValidateID(kind, id string) error {
	if id == "" {
		return fmt.Errorf("%s id is empty", kind)
	}
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%s id %q is invalid: use 1-128 letters, digits, '.', '-' or '_', starting with a letter or digit", kind, id)
	}
	return nil
}
