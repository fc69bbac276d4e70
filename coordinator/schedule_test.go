package coordinator

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/wire"
)

// The scheduler is a pure function: these tables give it a fleet and runs
// and check the commands it plans and what each waiting run is told.

const testTimeout = 2 * time.Second

// idle is an idle, live CPU worker that can train.
func idle(id string) fleetWorker {
	return fleetWorker{ID: id, Kind: DeviceCPU, State: wire.WorkerIdle, Capacity: 1, LastSeen: t0}
}

// idleGPU is an idle, live CUDA worker that can train.
func idleGPU(id string) fleetWorker {
	w := idle(id)
	w.Kind = DeviceCUDA
	return w
}

// training is a live CPU worker training run.
func training(id, run string) fleetWorker {
	return fleetWorker{ID: id, Kind: DeviceCPU, State: wire.WorkerTraining, Run: run, Capacity: 1, LastSeen: t0}
}

// pol is a policy needing min..max workers of any kind.
func pol(min, max int) RunPolicy {
	return RunPolicy{Stage: 1, MinWorkers: min, MaxWorkers: max, Device: DeviceAuto, Backend: wire.BackendRing, CheckpointURL: "file:///ck", CheckpointKeep: 3}
}

// on is p on one device kind.
func on(device string, p RunPolicy) RunPolicy {
	p.Device = device
	return p
}

// stage2 is a stage-2 policy taking its tokenizer from run tok.
func stage2(min, max int, tok string) RunPolicy {
	p := pol(min, max)
	p.Stage, p.TokenizerRun = 2, tok
	return p
}

// rec is a run record; n orders submission (created n seconds after t0).
func rec(n int, state string, p RunPolicy) *RunRecord {
	return &RunRecord{ID: runID(n), State: state, Policy: p, Created: t0.Add(time.Duration(n) * time.Second)}
}

// runningOn makes r RUNNING in generation gen on members (ranks in order).
func runningOn(r *RunRecord, gen uint64, members ...string) *RunRecord {
	r.State, r.Generation, r.Members = RunRunning, gen, map[string]int{}
	for rank, id := range members {
		r.Members[id] = rank
	}
	return r
}

// withCheckpoints gives r committed checkpoints at steps.
func withCheckpoints(r *RunRecord, steps ...int64) *RunRecord {
	for _, s := range steps {
		r.Checkpoints = append(r.Checkpoints, CheckpointRecord{Step: s})
	}
	return r
}

// describePlan renders a plan: commands in order, then the waiting runs
// by id.
func describePlan(p schedPlan) []string {
	var out []string
	for _, c := range p.Commands {
		out = append(out, c.describe())
	}
	var ids []string
	for id := range p.Waiting {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		out = append(out, fmt.Sprintf("waiting %s: %s", id, p.Waiting[id]))
	}
	return out
}

type schedCase struct {
	name    string
	workers []fleetWorker
	runs    []*RunRecord
	want    []string
}

func runSchedCases(t *testing.T, cases []schedCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sort.Slice(tc.workers, func(i, j int) bool { return tc.workers[i].ID < tc.workers[j].ID })
			st := newState()
			for _, r := range tc.runs {
				st.Runs[r.ID] = r
			}
			in := schedInput{Now: t0.Add(time.Second), WorkerTimeout: testTimeout, Workers: tc.workers, Runs: sortedRuns(st)}
			got := describePlan(planSchedule(in))
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("plan:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
			// Deciding twice on the same input decides the same (no map
			// order, no clock).
			if again := describePlan(planSchedule(in)); strings.Join(again, "\n") != strings.Join(got, "\n") {
				t.Errorf("a second pass on the same input planned differently:\n  %s", strings.Join(again, "\n  "))
			}
		})
	}
}

func TestScheduleFIFO(t *testing.T) {
	runSchedCases(t, []schedCase{
		{
			name:    "both start, in submission order",
			workers: []fleetWorker{idle("w1"), idle("w2")},
			runs:    []*RunRecord{rec(2, RunPending, pol(1, 1)), rec(1, RunPending, pol(1, 1))},
			want:    []string{"start r-0001 generation 1 on w1 from step 0", "start r-0002 generation 1 on w2 from step 0"},
		},
		{
			name:    "the oldest takes what it can, the next waits behind it",
			workers: []fleetWorker{idle("w1"), idle("w2")},
			runs:    []*RunRecord{rec(1, RunPending, pol(1, 4)), rec(2, RunPending, pol(1, 1))},
			want:    []string{"start r-0001 generation 1 on w1,w2 from step 0", "waiting r-0002: 1 idle workers that can train (0 now)"},
		},
		{
			name:    "no backfilling: a younger run that would fit waits behind the oldest",
			workers: []fleetWorker{idle("w1"), idle("w2")},
			runs:    []*RunRecord{rec(1, RunPending, pol(3, 3)), rec(2, RunPending, pol(1, 1)), rec(3, RunPaused, pol(1, 1))},
			want: []string{
				"waiting r-0001: 3 idle workers that can train (2 now)",
				"waiting r-0002: run r-0001, submitted earlier",
				"waiting r-0003: run r-0001, submitted earlier",
			},
		},
		{
			name:    "finished runs are not scheduled",
			workers: []fleetWorker{idle("w1")},
			runs:    []*RunRecord{rec(1, RunCompleted, pol(1, 1)), rec(2, RunFailed, pol(1, 1)), rec(3, RunCancelled, pol(1, 1)), rec(4, RunPending, pol(1, 1))},
			want:    []string{"start r-0004 generation 1 on w1 from step 0"},
		},
		{
			name:    "a paused run resumes from its newest checkpoint in its next generation",
			workers: []fleetWorker{idle("w1"), idle("w2")},
			runs: []*RunRecord{func() *RunRecord {
				r := withCheckpoints(rec(1, RunPaused, pol(1, 2)), 20, 40)
				r.Generation = 3
				return r
			}()},
			want: []string{"start r-0001 generation 4 on w1,w2 from step 40"},
		},
		{
			name:    "a run whose stored spec never decoded fails, and does not block the next",
			workers: []fleetWorker{idle("w1")},
			runs:    []*RunRecord{rec(1, RunPending, RunPolicy{Invalid: "stored spec is invalid: boom"}), rec(2, RunPending, pol(1, 1))},
			want:    []string{"failed r-0001: stored spec is invalid: boom", "start r-0002 generation 1 on w1 from step 0"},
		},
		{
			name:    "nothing to do",
			workers: []fleetWorker{idle("w1"), training("w2", "r-0001")},
			runs:    []*RunRecord{runningOn(rec(1, RunPending, pol(1, 1)), 1, "w2")},
			want:    nil,
		},
	})
}

func TestScheduleMinMaxWorkers(t *testing.T) {
	stale := idle("w3")
	stale.LastSeen = t0.Add(-testTimeout - time.Millisecond) // silent for longer than the timeout
	unseen := idle("w4")
	unseen.LastSeen = time.Time{} // never heard by this leader
	runSchedCases(t, []schedCase{
		{
			name:    "up to max_workers, by worker id, ranks in id order",
			workers: []fleetWorker{idle("w4"), idle("w2"), idle("w1"), idle("w3")},
			runs:    []*RunRecord{rec(1, RunPending, pol(2, 3))},
			want:    []string{"start r-0001 generation 1 on w1,w2,w3 from step 0"},
		},
		{
			name:    "exactly min_workers",
			workers: []fleetWorker{idle("w1"), idle("w2")},
			runs:    []*RunRecord{rec(1, RunPending, pol(2, 8))},
			want:    []string{"start r-0001 generation 1 on w1,w2 from step 0"},
		},
		{
			name:    "fewer than min_workers: waits, saying how many it has",
			workers: []fleetWorker{idle("w1")},
			runs:    []*RunRecord{rec(1, RunPending, pol(2, 2))},
			want:    []string{"waiting r-0001: 2 idle workers that can train (1 now)"},
		},
		{
			name:    "only idle, live workers count",
			workers: []fleetWorker{idle("w1"), training("w2", "r-0009"), stale, unseen, {ID: "w5", Kind: DeviceCPU, State: wire.WorkerLost, Capacity: 1, LastSeen: t0}},
			runs:    []*RunRecord{rec(1, RunPending, pol(2, 2))},
			want:    []string{"waiting r-0001: 2 idle workers that can train (1 now)"},
		},
		{
			name:    "an idle worker still assigned to a run is not free",
			workers: []fleetWorker{idle("w1"), {ID: "w2", Kind: DeviceCPU, State: wire.WorkerIdle, Run: "r-0009", Capacity: 1, LastSeen: t0}},
			runs:    []*RunRecord{rec(1, RunPending, pol(2, 2))},
			want:    []string{"waiting r-0001: 2 idle workers that can train (1 now)"},
		},
	})
}

func TestScheduleTokenizerRun(t *testing.T) {
	runSchedCases(t, []schedCase{
		{
			name:    "waits for its tokenizer run to complete, and so do younger runs",
			workers: []fleetWorker{idle("w1"), training("w2", "r-0001")},
			runs:    []*RunRecord{runningOn(rec(1, RunPending, pol(1, 1)), 1, "w2"), rec(2, RunPending, stage2(1, 1, "r-0001")), rec(3, RunPending, pol(1, 1))},
			want: []string{
				"waiting r-0002: tokenizer run r-0001 to complete (it is RUNNING)",
				"waiting r-0003: run r-0002, submitted earlier",
			},
		},
		{
			name:    "starts once the tokenizer run completed",
			workers: []fleetWorker{idle("w1")},
			runs:    []*RunRecord{rec(1, RunCompleted, pol(1, 1)), rec(2, RunPending, stage2(1, 1, "r-0001"))},
			want:    []string{"start r-0002 generation 1 on w1 from step 0"},
		},
		{
			name:    "fails when the tokenizer run failed; the next run is not held up",
			workers: []fleetWorker{idle("w1")},
			runs:    []*RunRecord{rec(1, RunFailed, pol(1, 1)), rec(2, RunPending, stage2(1, 1, "r-0001")), rec(3, RunPending, pol(1, 1))},
			want:    []string{"failed r-0002: tokenizer.from: run r-0001 is FAILED", "start r-0003 generation 1 on w1 from step 0"},
		},
		{
			name:    "fails when the tokenizer run was cancelled",
			workers: []fleetWorker{idle("w1")},
			runs:    []*RunRecord{rec(1, RunCancelled, pol(1, 1)), rec(2, RunPending, stage2(1, 1, "r-0001"))},
			want:    []string{"failed r-0002: tokenizer.from: run r-0001 is CANCELLED"},
		},
		{
			name:    "fails when the tokenizer run does not exist",
			workers: []fleetWorker{idle("w1")},
			runs:    []*RunRecord{rec(2, RunPending, stage2(1, 1, "r-0001"))},
			want:    []string{"failed r-0002: tokenizer.from: run r-0001 is unknown"},
		},
		{
			name:    "a tokenizer run that is paused is waited for",
			workers: []fleetWorker{},
			runs:    []*RunRecord{rec(1, RunPaused, pol(1, 1)), rec(2, RunPending, stage2(1, 1, "r-0001"))},
			want: []string{
				"waiting r-0001: 1 idle workers that can train (0 now)",
				"waiting r-0002: run r-0001, submitted earlier",
			},
		},
	})
}

func TestScheduleCapacityZero(t *testing.T) {
	shimless := func(id string) fleetWorker { w := idle(id); w.Capacity = 0; return w }
	runSchedCases(t, []schedCase{
		{
			name:    "workers without a trainer are never given a run, and the reason says so",
			workers: []fleetWorker{shimless("w1"), shimless("w2"), idle("w3")},
			runs:    []*RunRecord{rec(1, RunPending, pol(2, 2))},
			want:    []string{"waiting r-0001: 2 idle workers that can train (1 now); 2 more idle cannot train (started without the libtorch shim: see lavit-worker's log)"},
		},
		{
			name:    "the ones that can train are taken",
			workers: []fleetWorker{shimless("w1"), idle("w2")},
			runs:    []*RunRecord{rec(1, RunPending, pol(1, 2))},
			want:    []string{"start r-0001 generation 1 on w2 from step 0"},
		},
	})
}

func TestScheduleLostMembers(t *testing.T) {
	lost := fleetWorker{ID: "w2", Kind: DeviceCPU, State: wire.WorkerLost, Run: "r-0001", Capacity: 1, LastSeen: t0.Add(-time.Minute)}
	restarted := idle("w2") // registration leaves it IDLE in no run
	runSchedCases(t, []schedCase{
		{
			name:    "a lost member pauses the run, naming it and the checkpoint it resumes from",
			workers: []fleetWorker{training("w1", "r-0001"), lost},
			runs:    []*RunRecord{withCheckpoints(runningOn(rec(1, RunPending, pol(1, 2)), 3, "w1", "w2"), 20, 40)},
			want:    []string{"paused r-0001: worker w2 was lost during generation 3; the run resumes from its checkpoint at step 40 when enough workers are idle"},
		},
		{
			name:    "a member that left the fleet, before any checkpoint",
			workers: []fleetWorker{training("w1", "r-0001")},
			runs:    []*RunRecord{runningOn(rec(1, RunPending, pol(1, 2)), 1, "w1", "w2")},
			want:    []string{"paused r-0001: worker w2 left the fleet during generation 1; the run resumes from the start (no checkpoint yet) when enough workers are idle"},
		},
		{
			name:    "a member whose process restarted (IDLE again); it is not handed out in the same pass",
			workers: []fleetWorker{training("w1", "r-0001"), restarted},
			runs:    []*RunRecord{runningOn(rec(1, RunPending, pol(1, 2)), 2, "w1", "w2"), rec(2, RunPending, pol(2, 2))},
			want: []string{
				"paused r-0001: worker w2 restarted during generation 2; the run resumes from the start (no checkpoint yet) when enough workers are idle",
				"waiting r-0002: 2 idle workers that can train (1 now)",
			},
		},
		{
			name:    "the lowest rank that is gone is named",
			workers: []fleetWorker{training("w2", "r-0001")},
			runs:    []*RunRecord{runningOn(rec(1, RunPending, pol(1, 3)), 1, "w3", "w2", "w1")},
			want:    []string{"paused r-0001: worker w3 left the fleet during generation 1; the run resumes from the start (no checkpoint yet) when enough workers are idle"},
		},
		{
			name:    "healthy runs are left alone",
			workers: []fleetWorker{training("w1", "r-0001"), training("w2", "r-0001")},
			runs:    []*RunRecord{runningOn(rec(1, RunPending, pol(1, 2)), 1, "w1", "w2")},
			want:    nil,
		},
	})
}

func TestScheduleDeviceKinds(t *testing.T) {
	runSchedCases(t, []schedCase{
		{
			name:    "a cuda run takes only CUDA workers",
			workers: []fleetWorker{idle("c1"), idleGPU("g1"), idle("c2"), idleGPU("g2")},
			runs:    []*RunRecord{rec(1, RunPending, on(DeviceCUDA, pol(1, 4)))},
			want:    []string{"start r-0001 generation 1 on g1,g2 from step 0"},
		},
		{
			name:    "a cpu run takes only CPU workers",
			workers: []fleetWorker{idle("c1"), idleGPU("g1"), idle("c2")},
			runs:    []*RunRecord{rec(1, RunPending, on(DeviceCPU, pol(1, 4)))},
			want:    []string{"start r-0001 generation 1 on c1,c2 from step 0"},
		},
		{
			name:    "a cuda run on a CPU-only fleet waits, and says why",
			workers: []fleetWorker{idle("c1"), idle("c2"), idle("c3")},
			runs:    []*RunRecord{rec(1, RunPending, on(DeviceCUDA, pol(1, 2)))},
			want:    []string{"waiting r-0001: 1 idle CUDA workers that can train (0 now); 3 idle CPU workers do not match its device: cuda"},
		},
		{
			name:    "a cpu run on a GPU fleet waits, and says why",
			workers: []fleetWorker{idleGPU("g1")},
			runs:    []*RunRecord{rec(1, RunPending, on(DeviceCPU, pol(1, 2)))},
			want:    []string{"waiting r-0001: 1 idle CPU workers that can train (0 now); 1 idle CUDA workers do not match its device: cpu"},
		},
		{
			name:    "auto prefers CUDA workers when enough are idle",
			workers: []fleetWorker{idle("c1"), idle("c2"), idleGPU("g1"), idleGPU("g2")},
			runs:    []*RunRecord{rec(1, RunPending, pol(2, 4))},
			want:    []string{"start r-0001 generation 1 on g1,g2 from step 0"},
		},
		{
			name:    "auto falls back to CPU workers, never mixing",
			workers: []fleetWorker{idle("c1"), idle("c2"), idleGPU("g1")},
			runs:    []*RunRecord{rec(1, RunPending, pol(2, 4))},
			want:    []string{"start r-0001 generation 1 on c1,c2 from step 0"},
		},
		{
			name:    "auto with too few of each kind waits, and says the kinds do not mix",
			workers: []fleetWorker{idle("c1"), idleGPU("g1")},
			runs:    []*RunRecord{rec(1, RunPending, pol(2, 4))},
			want:    []string{"waiting r-0001: 2 idle workers of one kind that can train (1 CPU and 1 CUDA now; a generation never mixes them)"},
		},
		{
			name:    "runs of both kinds share a mixed fleet",
			workers: []fleetWorker{idle("c1"), idleGPU("g1")},
			runs:    []*RunRecord{rec(1, RunPending, on(DeviceCUDA, pol(1, 1))), rec(2, RunPending, on(DeviceCPU, pol(1, 1)))},
			want:    []string{"start r-0001 generation 1 on g1 from step 0", "start r-0002 generation 1 on c1 from step 0"},
		},
	})
}
