package coordinator

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/lavit-org/lavit/internal/wire"
)

// The scheduler decides, and the leader applies. planSchedule is a pure
// function of the fleet, the runs and the time: it returns the FSM commands
// to apply and why each waiting run waits. The leader (Server.schedule)
// builds its input from the FSM and the liveness clock, then applies the
// commands through raft; `run show` explains a waiting run from the same
// plan, so the scheduler and the explanation never disagree.
//
// The rules:
//   - A RUNNING run with a member that is LOST, gone from the registry, or
//     IDLE again (its process restarted) is PAUSED, naming the worker and
//     the checkpoint it will resume from.
//   - Waiting runs (PENDING or PAUSED) are taken in submission order
//     (FIFO, no backfilling: simple and predictable). A run starts when at
//     least its min_workers workers of its device kind are idle, alive and
//     able to train (capacity > 0); it takes up to max_workers of them, by
//     worker id, as ranks 0, 1, …, in a new generation that resumes from
//     its newest committed checkpoint. While the oldest waiting run cannot
//     start, younger ones wait behind it.
//   - Device kinds: a `device: cuda` run takes only CUDA workers, a `cpu`
//     run only CPU workers, an `auto` run either kind but never both in
//     one generation (CUDA when enough are idle, else CPU).
//   - A stage-2 run waits for its tokenizer run to complete, and fails if
//     that run failed, was cancelled or does not exist.
//   - A run whose stored spec never decoded (Policy.Invalid) fails.
//
// Workers freed by a pause in this pass are not handed out until the next
// pass: their jobs must stop first, and the next pass comes within a tick.

// fleetWorker is a worker as the scheduler sees it: its registry record
// and the leader's liveness clock.
type fleetWorker struct {
	ID       string
	Kind     string // DeviceCPU or DeviceCUDA: what it trains on
	State    string // IDLE, TRAINING or LOST
	Run      string // the run it is a member of ("" if none)
	Capacity int
	LastSeen time.Time // the last heartbeat this leader saw (zero: none)
}

// schedInput is everything one scheduling pass decides on.
type schedInput struct {
	Now           time.Time
	WorkerTimeout time.Duration
	Workers       []fleetWorker // sorted by id
	Runs          []*RunRecord  // in submission order (see sortedRuns); not modified
}

// plannedCommand is one FSM command the scheduler wants applied.
type plannedCommand struct {
	Type CommandType
	Body any // SetRunStateCmd or StartGenerationCmd
}

// schedPlan is the outcome of one pass.
type schedPlan struct {
	// Commands are applied in order.
	Commands []plannedCommand
	// Waiting says, for each run that stays PENDING or PAUSED, what it
	// waits for.
	Waiting map[string]string
}

// idleAndAlive reports whether a worker is free for a run: IDLE, in no
// run, and heard from within the timeout.
func (w fleetWorker) idleAndAlive(now time.Time, timeout time.Duration) bool {
	return !w.LastSeen.IsZero() && w.State == wire.WorkerIdle && w.Run == "" && now.Sub(w.LastSeen) <= timeout
}

// planSchedule decides one scheduling pass.
func planSchedule(in schedInput) schedPlan {
	plan := schedPlan{Waiting: map[string]string{}}
	at := in.Now.UTC()
	workers := make(map[string]fleetWorker, len(in.Workers))
	idle := map[string][]string{} // kind → idle workers able to train, in id order
	cannot := 0                   // idle and alive but without a trainer
	for _, w := range in.Workers {
		workers[w.ID] = w
		if w.idleAndAlive(in.Now, in.WorkerTimeout) {
			if w.Capacity > 0 {
				idle[w.Kind] = append(idle[w.Kind], w.ID)
			} else {
				cannot++
			}
		}
	}
	runState := make(map[string]string, len(in.Runs))
	for _, r := range in.Runs {
		runState[r.ID] = r.State
	}

	for _, r := range in.Runs {
		if r.State != RunRunning {
			continue
		}
		if why, id := lostMember(r, workers); why != "" {
			reason := fmt.Sprintf("worker %s %s during generation %d; the run resumes from %s when enough workers are idle", id, why, r.Generation, resumePoint(r))
			plan.add(CmdSetRunState, SetRunStateCmd{ID: r.ID, State: RunPaused, Reason: reason, At: at})
		}
	}

	blockedBy := "" // the oldest waiting run that cannot start; younger ones queue behind it
	for _, r := range in.Runs {
		if !waitingRun(r.State) {
			continue
		}
		if blockedBy != "" {
			plan.Waiting[r.ID] = fmt.Sprintf("run %s, submitted earlier", blockedBy)
			continue
		}
		p := r.Policy
		if p.Invalid != "" {
			plan.add(CmdSetRunState, SetRunStateCmd{ID: r.ID, State: RunFailed, Reason: p.Invalid, At: at})
			continue
		}
		if dep := p.TokenizerRun; dep != "" {
			switch st := runState[dep]; st {
			case RunCompleted:
			case RunFailed, RunCancelled, "":
				plan.add(CmdSetRunState, SetRunStateCmd{ID: r.ID, State: RunFailed, Reason: fmt.Sprintf("tokenizer.from: run %s is %s", dep, orNone(st)), At: at})
				continue
			default:
				plan.Waiting[r.ID] = fmt.Sprintf("tokenizer run %s to complete (it is %s)", dep, st)
				blockedBy = r.ID
				continue
			}
		}
		kind := placement(p, idle)
		pool := idle[kind]
		if kind == "" || len(pool) < p.MinWorkers {
			plan.Waiting[r.ID] = waitingForWorkers(p, idle, cannot)
			blockedBy = r.ID
			continue
		}
		take := min(len(pool), max(p.MaxWorkers, p.MinWorkers))
		members := make(map[string]int, take)
		for rank, id := range pool[:take] {
			members[id] = rank
		}
		idle[kind] = pool[take:]
		cmd := StartGenerationCmd{Run: r.ID, Generation: r.Generation + 1, Members: members, At: at}
		if n := len(r.Checkpoints); n > 0 {
			cmd.StartStep = r.Checkpoints[n-1].Step
		}
		plan.add(CmdStartGeneration, cmd)
	}
	return plan
}

// placement is the device kind a run's generation would run on: the
// run's own kind, or for an auto run CUDA when enough CUDA workers are
// idle, else CPU when enough CPU workers are, else "" (it waits).
func placement(p RunPolicy, idle map[string][]string) string {
	switch p.Device {
	case DeviceCPU, DeviceCUDA:
		return p.Device
	}
	for _, kind := range []string{DeviceCUDA, DeviceCPU} {
		if len(idle[kind]) >= p.MinWorkers {
			return kind
		}
	}
	return ""
}

// waitingForWorkers says what a run that cannot start waits for: how many
// workers of which kind, how many there are, and the idle ones that do not
// count (the other kind, or without a trainer).
func waitingForWorkers(p RunPolicy, idle map[string][]string, cannot int) string {
	var why string
	switch p.Device {
	case DeviceCPU, DeviceCUDA:
		other := DeviceCPU
		if p.Device == DeviceCPU {
			other = DeviceCUDA
		}
		why = fmt.Sprintf("%d idle %s workers that can train (%d now)", p.MinWorkers, strings.ToUpper(p.Device), len(idle[p.Device]))
		if n := len(idle[other]); n > 0 {
			why += fmt.Sprintf("; %d idle %s workers do not match its device: %s", n, strings.ToUpper(other), p.Device)
		}
	default:
		cpu, cuda := len(idle[DeviceCPU]), len(idle[DeviceCUDA])
		if cpu > 0 && cuda > 0 {
			why = fmt.Sprintf("%d idle workers of one kind that can train (%d CPU and %d CUDA now; a generation never mixes them)", p.MinWorkers, cpu, cuda)
		} else {
			why = fmt.Sprintf("%d idle workers that can train (%d now)", p.MinWorkers, cpu+cuda)
		}
	}
	if cannot > 0 {
		why += fmt.Sprintf("; %d more idle cannot train (started without the libtorch shim: see lavit-worker's log)", cannot)
	}
	return why
}

func (p *schedPlan) add(t CommandType, body any) {
	p.Commands = append(p.Commands, plannedCommand{Type: t, Body: body})
}

// lostMember returns why a running run's member is gone (and which), or
// "" if every member is still training it. Members are checked in rank
// order, so the answer does not depend on map order.
func lostMember(r *RunRecord, workers map[string]fleetWorker) (why, id string) {
	ids := make([]string, 0, len(r.Members))
	for id := range r.Members {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return r.Members[ids[i]] < r.Members[ids[j]] })
	for _, id := range ids {
		w, ok := workers[id]
		switch {
		case !ok:
			return "left the fleet", id
		case w.State == wire.WorkerLost:
			return "was lost", id
		case w.State == wire.WorkerIdle:
			return "restarted", id
		}
	}
	return "", ""
}

// resumePoint says where a paused run will resume.
func resumePoint(r *RunRecord) string {
	if n := len(r.Checkpoints); n > 0 {
		return fmt.Sprintf("its checkpoint at step %d", r.Checkpoints[n-1].Step)
	}
	return "the start (no checkpoint yet)"
}

// describe renders a planned command in one line (logs and tests).
func (c plannedCommand) describe() string {
	switch b := c.Body.(type) {
	case SetRunStateCmd:
		return fmt.Sprintf("%s %s: %s", strings.ToLower(b.State), b.ID, b.Reason)
	case StartGenerationCmd:
		ids := make([]string, len(b.Members))
		for id, rank := range b.Members {
			ids[rank] = id
		}
		return fmt.Sprintf("start %s generation %d on %s from step %d", b.Run, b.Generation, strings.Join(ids, ","), b.StartStep)
	}
	return c.Type.String()
}

// schedInput builds the scheduler's input from the state (under the FSM
// read lock) and the leader's liveness clock.
func (s *Server) schedInput(st *State, now time.Time) schedInput {
	in := schedInput{Now: now, WorkerTimeout: s.cfg.WorkerTimeout, Runs: sortedRuns(st)}
	for _, w := range st.sortedWorkers() {
		fw := fleetWorker{ID: w.ID, Kind: workerKind(w.Device), State: w.State, Run: w.Run, Capacity: w.Capacity}
		if last, ok := s.live.last(w.ID); ok {
			fw.LastSeen = last
		}
		in.Workers = append(in.Workers, fw)
	}
	return in
}

// schedule runs one scheduling pass on the leader: plan on the current
// state, then apply the plan's commands in order. A failed command ends
// the pass (the next tick plans again from what was applied).
func (s *Server) schedule() {
	var plan schedPlan
	s.fsm.Read(func(st *State, _ uint64) { plan = planSchedule(s.schedInput(st, time.Now())) })
	for _, c := range plan.Commands {
		if err := s.raftApply(c.Type, c.Body); err != nil {
			s.log.Warn("scheduler: command not applied", "command", c.describe(), "err", err)
			return
		}
		switch b := c.Body.(type) {
		case SetRunStateCmd:
			s.log.Warn("run "+strings.ToLower(b.State), "run", b.ID, "reason", b.Reason)
		case StartGenerationCmd:
			s.log.Info("run started", "run", b.Run, "generation", b.Generation, "workers", len(b.Members), "from_step", b.StartStep)
		}
	}
}
