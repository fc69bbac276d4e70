package coordinator

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/internal/wire"
)

// RunPolicy is what the coordinator acts on from a run's spec: who may
// train it, how, where its checkpoints go and what it waits for. It is
// decoded once, when the run is submitted, and stored in the run's raft
// record (CreateRunCmd), so no handler decodes the spec again. The spec
// itself is kept for the workers, which build the run from it.
type RunPolicy struct {
	Name  string `json:"name,omitempty"`
	Stage int    `json:"stage"`
	// Steps is the run's length as submitted; 0 when it counts epochs
	// (the workers then report the total steps once they know the data).
	Steps      int64 `json:"steps,omitempty"`
	MinWorkers int   `json:"min_workers"`
	MaxWorkers int   `json:"max_workers"`
	// Device is the kind of worker the run needs: DeviceCPU, DeviceCUDA,
	// or DeviceAuto (either, never both in one generation).
	Device  string `json:"device"`
	Backend string `json:"backend"` // wire.BackendRing or wire.BackendNCCL
	// CheckpointURL is where checkpoints and the final model state go;
	// CheckpointKeep is how many committed checkpoints retention keeps.
	CheckpointURL  string `json:"checkpoint_url,omitempty"`
	CheckpointKeep int    `json:"checkpoint_keep,omitempty"`
	// TokenizerRun is, for stage 2, the run whose final model state is the
	// visual tokenizer ("" when the tokenizer comes from a URL).
	TokenizerRun string `json:"tokenizer_run,omitempty"`
	// Invalid says why a stored spec did not decode. Only runs created by
	// version-1 commands can have it (their spec was never decoded when
	// applied); the scheduler fails such a run with this reason.
	Invalid string `json:"invalid,omitempty"`
}

// PolicyFromSpec extracts the policy of a validated spec.
func PolicyFromSpec(spec *runspec.Spec) RunPolicy {
	p := RunPolicy{
		Name: spec.Name, Stage: spec.Stage, Steps: spec.Steps,
		MinWorkers: spec.MinWorkers, MaxWorkers: spec.MaxWorkers,
		Device:        deviceKind(spec.Device),
		Backend:       wire.BackendRing,
		CheckpointURL: spec.Checkpoint.URL, CheckpointKeep: spec.Checkpoint.Keep,
	}
	if spec.Collective.Backend == wire.BackendNCCL {
		p.Backend = wire.BackendNCCL
	}
	if spec.Stage == 2 && runspec.IsRunID(spec.Tokenizer.From) {
		p.TokenizerRun = spec.Tokenizer.From
	}
	return p
}

// policyFromSpecJSON derives the policy of a stored spec, for runs whose
// record predates policies (a version-1 CreateRun entry or snapshot). It is
// deterministic, so every replica derives the same policy while applying
// the same entry.
func policyFromSpecJSON(raw json.RawMessage) RunPolicy {
	var spec runspec.Spec
	if err := json.Unmarshal(raw, &spec); err != nil {
		return RunPolicy{Invalid: fmt.Sprintf("stored spec is invalid: %v", err)}
	}
	return PolicyFromSpec(&spec)
}

// The device kinds a run asks for (the spec's device) and a worker offers.
const (
	DeviceCPU  = "cpu"
	DeviceCUDA = "cuda"
	DeviceAuto = "auto"
)

// deviceKind is the policy's device for a spec's device ("" means auto).
func deviceKind(d string) string {
	switch d {
	case DeviceCPU, DeviceCUDA:
		return d
	}
	return DeviceAuto
}

// workerKind is the kind of device a worker trains on: cuda for cuda:N,
// else cpu.
func workerKind(device string) string {
	if strings.HasPrefix(device, "cuda") {
		return DeviceCUDA
	}
	return DeviceCPU
}

// keep is the number of checkpoints retention keeps (at least one: the run
// must be able to resume).
func (p RunPolicy) keep() int { return max(p.CheckpointKeep, 1) }
