package coordinator

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/lavit-org/lavit/internal/memplan"
	"github.com/lavit-org/lavit/internal/modelcfg"
	"github.com/lavit-org/lavit/internal/runspec"
)

// smallestDevice is the worker with the least device memory among those a
// run could train on.
type smallestDevice struct {
	Worker, Device, Kind string
	Bytes                uint64
}

// smallestMemory finds, among the workers that can train (capacity > 0)
// on the policy's device kind (either kind for auto), the one whose
// training device reports the least memory; ok is false when none
// reports any. Ties go to the smallest worker id, so the choice is
// deterministic.
func smallestMemory(workers []WorkerRecord, device string) (smallestDevice, bool) {
	sorted := append([]WorkerRecord(nil), workers...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })
	var best smallestDevice
	found := false
	for _, w := range sorted {
		kind := workerKind(w.Device)
		if w.Capacity < 1 || (device != DeviceAuto && device != kind) {
			continue
		}
		for _, d := range w.Devices {
			if d.Name != w.Device || d.MemoryBytes == 0 {
				continue
			}
			if !found || d.MemoryBytes < best.Bytes {
				best, found = smallestDevice{Worker: w.ID, Device: w.Device, Kind: kind, Bytes: d.MemoryBytes}, true
			}
		}
	}
	return best, found
}

// tokenizerConfig is the model config of the stage-1 run a stage-2 run
// takes its tokenizer from, when the run and its config are known (nil:
// the plan assumes the largest fitting built-in one).
func tokenizerConfig(st *State, run string) *modelcfg.Config {
	r, ok := st.Runs[run]
	if !ok {
		return nil
	}
	var spec runspec.Spec
	if err := json.Unmarshal(r.Spec, &spec); err != nil || len(spec.ModelConfig) == 0 {
		return nil
	}
	c, err := modelcfg.ParseConfig(spec.ModelConfig)
	if err != nil || c.Stage != 1 {
		return nil
	}
	return &c
}

// memoryVerdict says whether a run fits the smallest device it could run
// on, at min_workers (the smallest world: the least sharding): a refusal
// naming the plan and the settings that would fit, or "". An error means
// no plan could be made (a model config the plan cannot read).
func memoryVerdict(spec *runspec.Spec, dev smallestDevice, tokenizer *modelcfg.Config) (string, error) {
	in := memplan.Input{Spec: spec, Tokenizer: tokenizer, Workers: spec.MinWorkers, DeviceBytes: int64(dev.Bytes), Kind: dev.Kind}
	plan, err := memplan.Plan(in)
	if err != nil || plan.Fits {
		return "", err
	}
	fixes, err := memplan.Fixes(in)
	if err != nil {
		return "", err
	}
	where := fmt.Sprintf("on the smallest worker (%s, %s)", dev.Worker, dev.Device)
	return "run does not fit in device memory: " + memplan.NotFitMessage(plan, fixes, where, spec.MaxWorkers), nil
}
