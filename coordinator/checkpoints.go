package coordinator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/internal/retry"
	"github.com/lavit-org/lavit/internal/wire"
)

// Checkpoints: every rank uploads its part and reports it; when the
// leader has every part of (run, step) it writes the manifest (last,
// create-only) and commits the checkpoint through raft, then applies the
// run's retention. Part reports live in leader memory: after a leader
// change a checkpoint whose parts were reported to the old leader is never
// committed (it is not listed, and its objects are garbage); the next one
// is.

// ckptTable is the leader's in-memory collection of part reports.
type ckptTable struct {
	mu      sync.Mutex
	pending map[ckptKey]*pendingCkpt
}

type ckptKey struct {
	run  string
	step int64
}

type pendingCkpt struct {
	generation uint64
	world      int
	parts      []*wire.CheckpointPart
	have       int
	meta       *wire.CheckpointMeta
	committing bool
}

func newCkptTable() *ckptTable { return &ckptTable{pending: map[ckptKey]*pendingCkpt{}} }

func (t *ckptTable) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.pending)
}

// add records a part; it returns the checkpoint once it is complete (only
// to the first caller that completes it).
func (t *ckptTable) add(req *wire.CheckpointPartRequest) *pendingCkpt {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := ckptKey{req.Run, req.Step}
	p := t.pending[k]
	if p == nil || p.generation != req.Generation || p.world != req.World {
		p = &pendingCkpt{generation: req.Generation, world: req.World, parts: make([]*wire.CheckpointPart, req.World)}
		t.pending[k] = p
	}
	if p.parts[req.Rank] == nil {
		p.have++
	}
	part := req.Part
	p.parts[req.Rank] = &part
	if req.Meta != nil {
		p.meta = req.Meta
	}
	if p.have == p.world && p.meta != nil && !p.committing {
		p.committing = true
		return p
	}
	return nil
}

func (t *ckptTable) done(run string, step int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.pending, ckptKey{run, step})
}

func (s *Server) handleCkptPart(req *wire.CheckpointPartRequest) (*wire.Empty, *wire.Error) {
	world, werr := s.checkMember(req.From, req.Instance, req.Run, req.Generation, req.Rank)
	if werr != nil {
		return nil, werr
	}
	switch {
	case req.World != world:
		return nil, wire.Errorf(wire.CodeBadRequest, "checkpoint part: world %d, the generation has %d", req.World, world)
	case req.Step < 0 || req.Part.Name != checkpoint.PartName(req.Rank, req.World) || len(req.Part.SHA256) != 64:
		return nil, wire.Errorf(wire.CodeBadRequest, "checkpoint part: bad part %+v for rank %d at step %d", req.Part, req.Rank, req.Step)
	case req.Rank == 0 && req.Meta == nil:
		return nil, wire.Errorf(wire.CodeBadRequest, "checkpoint part: rank 0 must describe the checkpoint (meta)")
	}
	if p := s.ckpts.add(req); p != nil {
		if !s.goLeader(func(ctx context.Context) { s.commitCheckpoint(ctx, req.Run, req.Step, p) }) {
			s.ckpts.done(req.Run, req.Step)
			return nil, wire.Errorf(wire.CodeNotLeader, "checkpoint part: this coordinator stopped leading; retry")
		}
	}
	return &wire.Empty{}, nil
}

// commitCheckpoint writes the manifest and commits the checkpoint, then
// applies retention. It runs as leader work outside the NATS handler
// (object stores are slow); ctx ends, and it gives up, when leadership
// moves on.
func (s *Server) commitCheckpoint(ctx context.Context, run string, step int64, p *pendingCkpt) {
	defer s.ckpts.done(run, step)
	log := s.log.With("run", run, "step", step)
	var policy RunPolicy
	var found, committed bool
	s.fsm.Read(func(st *State, _ uint64) {
		if r, ok := st.Runs[run]; ok {
			policy, found = r.Policy, true
			committed = slices.ContainsFunc(r.Checkpoints, func(k CheckpointRecord) bool { return k.Step == step })
		}
	})
	base := policy.CheckpointURL
	if !found || base == "" {
		log.Warn("checkpoint parts for a run without a checkpoint.url; ignored")
		return
	}
	if committed {
		// The run resumed from before a committed checkpoint (it fell
		// back past one it could not restore) and reached its step
		// again: the committed record stands, and its manifest is never
		// rewritten.
		log.Warn("a checkpoint at this step is already committed; the new one is not recorded")
		return
	}
	dir := checkpoint.Dir(base, run, step)
	m := &checkpoint.Manifest{
		Format: checkpoint.FormatVersion, Run: run, Generation: p.generation, Step: step, World: p.world,
		StateBytes: p.meta.StateBytes, ConfigHash: p.meta.ConfigHash,
		SpecHash: p.meta.SpecHash, CodeVersion: p.meta.CodeVersion, Created: time.Now().UTC(),
	}
	for _, part := range p.parts {
		m.Parts = append(m.Parts, checkpoint.Part(*part))
	}
	// No rank holds the whole state (each wrote its own part): the
	// state's hash is the digest of the parts' sha256s.
	m.StateSHA256 = checkpoint.PartsDigest(m.Parts)
	for _, pi := range p.meta.Params {
		m.Params = append(m.Params, checkpoint.ParamInfo(pi))
	}
	// Raft records the manifest's sha256, so that what is read back from
	// the store later is checked against it (checkpoint.LoadCommitted).
	manifestSHA, err := checkpoint.ManifestSHA256(m)
	if err != nil {
		log.Error("checkpoint manifest not encoded; the checkpoint is dropped", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	err = writeManifestRetrying(ctx, dir, m)
	if errors.Is(err, checkpoint.ErrExists) {
		// An earlier leader wrote it and died before committing: the same
		// state is fine to commit (with the digest of the manifest it
		// wrote), another is not.
		if old, sum, rerr := checkpoint.ReadManifestSHA256(ctx, dir); rerr == nil && old.StateSHA256 == m.StateSHA256 && old.World == m.World && old.Step == step {
			err, manifestSHA = nil, sum
		}
	}
	if errors.Is(err, checkpoint.ErrExists) {
		// Another checkpoint already lives there (another cluster's run
		// with the same id and checkpoint.url?): never overwrite it, and
		// stop the run rather than train on without checkpoints.
		reason := fmt.Sprintf("checkpoint at step %d: %s already holds a different checkpoint (another run with the same id and checkpoint.url?); give this run its own checkpoint.url", step, dir)
		log.Error("checkpoint directory taken; failing the run", "dir", dir)
		s.failRun(run, reason)
		return
	}
	if err != nil {
		log.Error("checkpoint manifest not written; the checkpoint is dropped", "dir", dir, "err", err)
		return
	}
	if v := os.Getenv("LAVIT_TEST_CRASH_BEFORE_CHECKPOINT_COMMIT"); v != "" && v == strconv.FormatInt(step, 10) {
		log.Error("test hook: exiting after the manifest, before the commit")
		os.Exit(3)
	}
	if ctx.Err() != nil {
		log.Info("stopped leading before the commit; the checkpoint is dropped")
		return
	}
	rec := CheckpointRecord{Step: step, World: p.world, Generation: p.generation, URL: dir, StateBytes: m.StateBytes,
		StateSHA256: m.StateSHA256, ManifestSHA256: manifestSHA, Committed: time.Now().UTC()}
	if err := s.raftApply(CmdCommitCheckpoint, CommitCheckpointCmd{Run: run, Checkpoint: rec}); err != nil {
		log.Warn("checkpoint not committed", "err", err)
		return
	}
	log.Info("checkpoint committed", "dir", dir, "world", p.world, "bytes", m.StateBytes, "manifest_sha256", manifestSHA)
	s.applyRetention(ctx, run, policy.keep())
}

// writeManifestRetrying retries transient store failures until ctx ends;
// a manifest that already exists is not retried.
func writeManifestRetrying(ctx context.Context, dir string, m *checkpoint.Manifest) error {
	return retry.Do(ctx, retry.Default, func(int) error {
		err := checkpoint.WriteManifest(ctx, dir, m)
		if errors.Is(err, checkpoint.ErrExists) {
			return retry.Permanent(err)
		}
		return err
	}, nil)
}

// applyRetention forgets all but the newest keep checkpoints (through raft
// first), then deletes their objects.
func (s *Server) applyRetention(ctx context.Context, run string, keep int) {
	var drop []CheckpointRecord
	s.fsm.Read(func(st *State, _ uint64) {
		if r, ok := st.Runs[run]; ok && len(r.Checkpoints) > keep {
			drop = append(drop, r.Checkpoints[:len(r.Checkpoints)-keep]...)
		}
	})
	if len(drop) == 0 {
		return
	}
	steps := make([]int64, len(drop))
	for i, d := range drop {
		steps[i] = d.Step
	}
	if err := s.raftApply(CmdDeleteCheckpoints, DeleteCheckpointsCmd{Run: run, Steps: steps}); err != nil {
		s.log.Warn("retention: forget checkpoints", "run", run, "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, d := range drop {
		if err := checkpoint.Delete(ctx, d.URL); err != nil {
			s.log.Warn("retention: delete checkpoint objects (they are garbage now)", "dir", d.URL, "err", err)
		}
	}
	s.log.Info("retention: checkpoints removed", "run", run, "steps", steps)
}

func (s *Server) handleCkptList(req *wire.RunRequest) (*wire.CheckpointListReply, *wire.Error) {
	var out []wire.CheckpointInfo
	if werr := s.readRun(req.ID, func(_ *State, r *RunRecord) { out = checkpointInfos(r) }); werr != nil {
		return nil, werr
	}
	return &wire.CheckpointListReply{Checkpoints: out}, nil
}

func checkpointInfos(r *RunRecord) []wire.CheckpointInfo {
	out := []wire.CheckpointInfo{}
	for _, c := range r.Checkpoints {
		out = append(out, wire.CheckpointInfo{Step: c.Step, Committed: true, World: c.World, Generation: c.Generation,
			URL: c.URL, StateBytes: c.StateBytes, StateSHA256: c.StateSHA256, ManifestSHA256: c.ManifestSHA256, Time: c.Committed})
	}
	return out
}

func (s *Server) handleRunCheckpoint(req *wire.RunRequest) (*wire.Empty, *wire.Error) {
	if err := s.raftApply(CmdRequestCheckpoint, RequestCheckpointCmd{Run: req.ID, At: time.Now().UTC()}); err != nil {
		if errors.Is(err, ErrUnknownRun) || errors.Is(err, ErrBadTransition) {
			return nil, wire.Errorf(wire.CodeBadRequest, "run checkpoint: %v", err)
		}
		return nil, toWireError(err)
	}
	return &wire.Empty{}, nil
}

// handleRunResume moves a failed, cancelled or paused run to PAUSED: the
// scheduler restarts it from its newest committed checkpoint as soon as
// min_workers are idle.
func (s *Server) handleRunResume(req *wire.RunRequest) (*wire.Empty, *wire.Error) {
	state, werr := s.runState(req.ID)
	if werr != nil {
		return nil, werr
	}
	switch state {
	case RunPaused:
		return &wire.Empty{}, nil
	case RunFailed, RunCancelled:
	default:
		return nil, wire.Errorf(wire.CodeConflict, "run %q is %s; only a FAILED, CANCELLED or PAUSED run resumes", req.ID, state)
	}
	cmd := SetRunStateCmd{ID: req.ID, State: RunPaused, Reason: "resume requested by " + req.From, At: time.Now().UTC()}
	if err := s.raftApply(CmdSetRunState, cmd); err != nil {
		return nil, toWireError(err)
	}
	s.kickScheduler()
	return &wire.Empty{}, nil
}
