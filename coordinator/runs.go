package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lavit-org/lavit/internal/modelcfg"
	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/internal/wire"
)

// Runs: submit, list, show, cancel; the scheduler that starts a pending run
// once enough workers are idle; and the members' progress and finish
// reports. Progress lives in leader memory (per-step traffic never goes
// through raft); only the run's state changes are committed.

// progressTable is the leader's latest progress report per run.
type progressTable struct {
	mu   sync.Mutex
	runs map[string]*wire.ProgressRequest // rank 0's latest report
}

func newProgressTable() *progressTable {
	return &progressTable{runs: map[string]*wire.ProgressRequest{}}
}

func (p *progressTable) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.runs)
}

func (p *progressTable) record(req *wire.ProgressRequest) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if old := p.runs[req.Run]; old != nil && old.Generation == req.Generation && old.Step > req.Step {
		return // an older report arriving late
	}
	cp := *req
	cp.Auth = wire.Auth{}
	p.runs[req.Run] = &cp
}

func (p *progressTable) get(run string) *wire.ProgressRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r := p.runs[run]; r != nil {
		cp := *r
		return &cp
	}
	return nil
}

// runID is the id the leader hands the n-th run: r-0001, r-0002, …
func runID(n int) string { return fmt.Sprintf("r-%04d", n) }

func (s *Server) handleRunSubmit(req *wire.RunSubmitRequest) (*wire.RunSubmitReply, *wire.Error) {
	var spec runspec.Spec
	dec := json.NewDecoder(strings.NewReader(string(req.Spec)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return nil, wire.Errorf(wire.CodeBadRequest, "run submit: spec: %v", err)
	}
	if err := spec.Validate(); err != nil {
		return nil, wire.Errorf(wire.CodeBadRequest, "run submit: %v", err)
	}
	if spec.Checkpoint.URL == "" {
		return nil, wire.Errorf(wire.CodeBadRequest, "run submit: checkpoint.url is required: it is where the run's final model state goes")
	}
	if len(spec.ModelConfig) == 0 {
		return nil, wire.Errorf(wire.CodeBadRequest, "run submit: the spec has no model_config (submit with lavit-coord run submit, which inlines the model)")
	}
	if refusal := checkFileRoots(&spec, s.cfg.FileRoots); refusal != "" {
		return nil, wire.Errorf(wire.CodeBadRequest, "run submit: %s", refusal)
	}
	policy := PolicyFromSpec(&spec)
	if dep := policy.TokenizerRun; dep != "" {
		var state string
		var found bool
		s.fsm.Read(func(st *State, _ uint64) {
			if r, ok := st.Runs[dep]; ok {
				state, found = r.State, true
			}
		})
		switch {
		case !found:
			return nil, wire.Errorf(wire.CodeBadRequest, "run submit: tokenizer.from: run %q does not exist (see lavit-coord run ls)", spec.Tokenizer.From)
		case state == RunFailed || state == RunCancelled:
			return nil, wire.Errorf(wire.CodeBadRequest, "run submit: tokenizer.from: run %q is %s; it has no tokenizer to give", spec.Tokenizer.From, state)
		}
	}
	if refusal := s.checkMemory(&spec, policy); refusal != "" {
		return nil, wire.Errorf(wire.CodeBadRequest, "run submit: %s", refusal)
	}
	normalized, err := json.Marshal(&spec)
	if err != nil {
		return nil, wire.Errorf(wire.CodeInternal, "run submit: %v", err)
	}
	var n int
	s.fsm.Read(func(st *State, _ uint64) { n = len(st.Runs) })
	for try := 0; try < 100; try++ {
		id := runID(n + 1 + try)
		err := s.raftApply(CmdCreateRun, CreateRunCmd{ID: id, Spec: normalized, Policy: policy, At: time.Now().UTC()})
		if errors.Is(err, ErrRunExists) {
			continue
		}
		if err != nil {
			return nil, toWireError(err)
		}
		s.log.Info("run submitted", "run", id, "stage", spec.Stage, "by", req.From, "min_workers", spec.MinWorkers, "max_workers", spec.MaxWorkers)
		s.kickScheduler()
		return &wire.RunSubmitReply{ID: id}, nil
	}
	return nil, wire.Errorf(wire.CodeInternal, "run submit: could not allocate a run id")
}

// checkMemory plans the run against the smallest device among the
// registered workers it could run on; it returns the refusal when the plan
// cannot fit, else "". Without a worker that reports its memory, or
// without a plan, the run is accepted (and the reason logged).
func (s *Server) checkMemory(spec *runspec.Spec, policy RunPolicy) string {
	var dev smallestDevice
	var found bool
	var tok *modelcfg.Config
	s.fsm.Read(func(st *State, _ uint64) {
		workers := make([]WorkerRecord, 0, len(st.Workers))
		for _, w := range st.Workers {
			workers = append(workers, *w)
		}
		dev, found = smallestMemory(workers, policy.Device)
		if policy.TokenizerRun != "" {
			tok = tokenizerConfig(st, policy.TokenizerRun)
		}
	})
	if !found {
		s.log.Debug("run submit: no worker of the run's device kind reports its memory; accepted without a memory plan", "device", policy.Device)
		return ""
	}
	refusal, err := memoryVerdict(spec, dev, tok)
	if err != nil {
		s.log.Info("run submit: no memory plan; accepted", "err", err)
	}
	return refusal
}

func (s *Server) handleRunList(*wire.RunListRequest) (*wire.RunListReply, *wire.Error) {
	var out []wire.RunInfo
	s.fsm.Read(func(st *State, _ uint64) {
		plan := planSchedule(s.schedInput(st, time.Now()))
		for _, r := range sortedRuns(st) {
			out = append(out, s.runInfo(r, st, plan.Waiting, false))
		}
	})
	if out == nil {
		out = []wire.RunInfo{}
	}
	return &wire.RunListReply{Runs: out}, nil
}

func (s *Server) handleRunShow(req *wire.RunShowRequest) (*wire.RunInfo, *wire.Error) {
	var info wire.RunInfo
	werr := s.readRun(req.ID, func(st *State, r *RunRecord) {
		var waiting map[string]string
		if waitingRun(r.State) {
			waiting = planSchedule(s.schedInput(st, time.Now())).Waiting
		}
		info = s.runInfo(r, st, waiting, true)
	})
	if werr != nil {
		return nil, werr
	}
	return &info, nil
}

func (s *Server) handleRunCancel(req *wire.RunCancelRequest) (*wire.Empty, *wire.Error) {
	state, werr := s.runState(req.ID)
	if werr != nil {
		return nil, werr
	}
	if terminalRun(state) {
		return nil, wire.Errorf(wire.CodeConflict, "run %q is already %s", req.ID, state)
	}
	reason := "cancelled by " + req.From
	if req.Reason != "" {
		reason += ": " + truncate(req.Reason, 256)
	}
	if err := s.raftApply(CmdSetRunState, SetRunStateCmd{ID: req.ID, State: RunCancelled, Reason: reason, At: time.Now().UTC()}); err != nil {
		return nil, toWireError(err)
	}
	s.log.Info("run cancelled", "run", req.ID, "by", req.From)
	s.kickScheduler()
	return &wire.Empty{}, nil
}

// checkMember verifies that a worker request comes from the current
// instance of a member of the run's current generation, with its rank, and
// returns the generation's world size.
func (s *Server) checkMember(from, instance, run string, generation uint64, rank int) (int, *wire.Error) {
	w, ok := s.lookupWorker(from)
	if !ok {
		return 0, wire.Errorf(wire.CodeUnknown, "worker %q is not registered; register first", from)
	}
	if w.Instance != instance {
		return 0, wire.Errorf(wire.CodeStale, "worker %q is now instance %s; this process (instance %s) should stop", from, w.Instance, instance)
	}
	var (
		found, member bool
		state         string
		gen           uint64
		have, world   int
	)
	s.fsm.Read(func(st *State, _ uint64) {
		if r, ok := st.Runs[run]; ok {
			found, state, gen, world = true, r.State, r.Generation, len(r.Members)
			have, member = r.Members[from]
		}
	})
	switch {
	case !found:
		return 0, wire.Errorf(wire.CodeBadRequest, "unknown run %q", run)
	case state != RunRunning:
		return 0, wire.Errorf(wire.CodeStale, "run %q is %s, not RUNNING", run, state)
	case generation != gen:
		return 0, wire.Errorf(wire.CodeStale, "stale generation %d: run %q is at generation %d", generation, run, gen)
	case !member:
		return 0, wire.Errorf(wire.CodeStale, "worker %q is not a member of run %q generation %d", from, run, gen)
	case have != rank:
		return 0, wire.Errorf(wire.CodeConflict, "worker %q has rank %d in run %q generation %d, not %d", from, have, run, gen, rank)
	}
	return world, nil
}

func (s *Server) handleProgress(req *wire.ProgressRequest) (*wire.Empty, *wire.Error) {
	if _, werr := s.checkMember(req.From, req.Instance, req.Run, req.Generation, req.Rank); werr != nil {
		return nil, werr
	}
	if len(req.Metrics) > 64 {
		return nil, wire.Errorf(wire.CodeBadRequest, "progress: %d metrics, at most 64", len(req.Metrics))
	}
	s.live.seen(req.From, time.Now())
	if req.Rank == 0 {
		s.progress.record(req)
	}
	return &wire.Empty{}, nil
}

func (s *Server) handleRunFinish(req *wire.RunFinishRequest) (*wire.Empty, *wire.Error) {
	if _, werr := s.checkMember(req.From, req.Instance, req.Run, req.Generation, req.Rank); werr != nil {
		return nil, werr
	}
	cmd := SetRunStateCmd{ID: req.Run, Step: req.Step, At: time.Now().UTC()}
	switch req.Outcome {
	case RunCompleted:
		if req.Rank != 0 {
			return nil, wire.Errorf(wire.CodeBadRequest, "run finish: only rank 0 reports completion (rank %d did)", req.Rank)
		}
		if req.Final == nil || req.Final.URL == "" {
			return nil, wire.Errorf(wire.CodeBadRequest, "run finish: a completed run must name its final model state")
		}
		if len(req.Eval) > 32 {
			return nil, wire.Errorf(wire.CodeBadRequest, "run finish: %d checks, at most 32", len(req.Eval))
		}
		cmd.State, cmd.Final, cmd.Eval = RunCompleted, req.Final, req.Eval
	case RunFailed:
		cmd.State = RunFailed
		cmd.Reason = truncate(fmt.Sprintf("rank %d (%s) at step %d: %s", req.Rank, req.From, req.Step, req.Reason), 1024)
	default:
		return nil, wire.Errorf(wire.CodeBadRequest, "run finish: outcome must be COMPLETED or FAILED, got %q", req.Outcome)
	}
	if err := s.raftApply(CmdSetRunState, cmd); err != nil {
		return nil, toWireError(err)
	}
	s.log.Info("run finished", "run", req.Run, "state", cmd.State, "step", req.Step, "reason", cmd.Reason)
	s.kickScheduler()
	return &wire.Empty{}, nil
}

// kickScheduler asks the leader loop to schedule now rather than at its
// next tick.
func (s *Server) kickScheduler() {
	select {
	case s.schedKick <- struct{}{}:
	default:
	}
}

func (s *Server) failRun(id, reason string) {
	if err := s.raftApply(CmdSetRunState, SetRunStateCmd{ID: id, State: RunFailed, Reason: reason, At: time.Now().UTC()}); err != nil {
		s.log.Warn("fail run", "run", id, "err", err)
		return
	}
	s.log.Warn("run failed", "run", id, "reason", reason)
}

// runInfo builds the client view of a run (under the FSM read lock);
// waiting is the scheduler's explanation of each waiting run (planSchedule),
// needed only when r waits.
func (s *Server) runInfo(r *RunRecord, st *State, waiting map[string]string, withSpec bool) wire.RunInfo {
	info := wire.RunInfo{
		ID: r.ID, State: r.State, Reason: r.Reason, Generation: r.Generation,
		Created: r.Created, Updated: r.Updated, Step: r.Step, Members: []wire.RunMember{},
	}
	if r.Final != nil {
		f := *r.Final
		info.Final = &f
	}
	info.Eval = append([]wire.Check(nil), r.Eval...)
	info.Name, info.Stage, info.TotalSteps = r.Policy.Name, r.Policy.Stage, r.Policy.Steps
	for id, rank := range r.Members {
		m := wire.RunMember{Worker: id, Rank: rank}
		if w, ok := st.Workers[id]; ok {
			m.State = w.State
		}
		info.Members = append(info.Members, m)
	}
	sort.Slice(info.Members, func(i, j int) bool { return info.Members[i].Rank < info.Members[j].Rank })
	if p := s.progress.get(r.ID); p != nil && p.Generation == r.Generation {
		if p.Step > info.Step {
			info.Step = p.Step
		}
		if p.TotalSteps > 0 {
			info.TotalSteps = p.TotalSteps
		}
		loss := p.Loss
		info.Loss, info.SamplesPerS, info.Metrics, info.RestoreNote = &loss, p.SamplesPerS, p.Metrics, p.RestoreNote
		info.RestoredFrom = p.RestoredFrom
		t := p.Timing
		info.Timing = &t
	}
	if waitingRun(r.State) {
		info.WaitingFor = waiting[r.ID]
	}
	info.StartStep = r.StartStep
	info.Checkpoints = checkpointInfos(r)
	if withSpec {
		info.Spec = append(json.RawMessage(nil), r.Spec...)
	}
	return info
}

// sortedRuns returns the runs in submission order.
func sortedRuns(st *State) []*RunRecord {
	out := make([]*RunRecord, 0, len(st.Runs))
	for _, r := range st.Runs {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return runNumber(out[i].ID) < runNumber(out[j].ID)
	})
	return out
}

// waitingRun reports whether a run in state waits to be scheduled.
func waitingRun(state string) bool { return state == RunPending || state == RunPaused }

// readRun calls fn with run id under the FSM read lock; a missing run is
// the client error "run ... does not exist".
func (s *Server) readRun(id string, fn func(st *State, r *RunRecord)) *wire.Error {
	found := false
	s.fsm.Read(func(st *State, _ uint64) {
		if r, ok := st.Runs[id]; ok {
			found = true
			fn(st, r)
		}
	})
	if !found {
		return wire.Errorf(wire.CodeBadRequest, "run %q does not exist (see lavit-coord run ls)", id)
	}
	return nil
}

// runState returns a run's state, or the readRun error if it is missing.
func (s *Server) runState(id string) (string, *wire.Error) {
	var state string
	werr := s.readRun(id, func(_ *State, r *RunRecord) { state = r.State })
	return state, werr
}

func runNumber(id string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(id, "r-"))
	return n
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func orNone(state string) string {
	if state == "" {
		return "unknown"
	}
	return state
}
