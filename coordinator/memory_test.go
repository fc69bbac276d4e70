package coordinator

import (
	"testing"

	"github.com/lavit-org/lavit/internal/wire"
)

// TestSmallestMemory: the smallest reported memory among the workers of
// the run's device kind that can train.
func TestSmallestMemory(t *testing.T) {
	gpu := func(id string, mem uint64) WorkerRecord {
		return WorkerRecord{ID: id, Device: "cuda:0", Capacity: 1, Devices: []wire.Device{
			{Name: "cpu", Kind: "cpu"}, {Name: "cuda:0", Kind: "cuda", MemoryBytes: mem}, {Name: "cuda:1", Kind: "cuda", MemoryBytes: 1}}}
	}
	cpu := func(id string) WorkerRecord {
		return WorkerRecord{ID: id, Device: "cpu", Capacity: 1, Devices: []wire.Device{{Name: "cpu", Kind: "cpu"}}}
	}
	noShim := gpu("g0", 10)
	noShim.Capacity = 0
	fleet := []WorkerRecord{gpu("g2", 80<<30), gpu("g1", 40<<30), gpu("g3", 40<<30), gpu("g4", 0), noShim, cpu("c1")}
	tests := []struct {
		name    string
		workers []WorkerRecord
		device  string
		want    string // worker id; "" for none
	}{
		{"smallest cuda, ties to the lowest id, the other GPUs and capacity 0 ignored", fleet, DeviceCUDA, "g1"},
		{"auto takes either kind", fleet, DeviceAuto, "g1"},
		{"cpu workers report none", fleet, DeviceCPU, ""},
		{"a GPU that reports none", []WorkerRecord{gpu("g4", 0)}, DeviceCUDA, ""},
		{"no workers", nil, DeviceAuto, ""},
	}
	for _, tt := range tests {
		got, ok := smallestMemory(tt.workers, tt.device)
		if ok != (tt.want != "") || got.Worker != tt.want {
			t.Errorf("%s: %+v, %v; want %q", tt.name, got, ok, tt.want)
		}
	}
}
