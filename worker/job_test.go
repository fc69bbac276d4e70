package worker

import (
	"testing"

	"github.com/lavit-org/lavit/internal/wire"
)

func TestCheckpointRequested(t *testing.T) {
	desired := wire.DesiredState{State: wire.WorkerTraining, Run: "r-0001", Generation: 2, CheckpointRequests: 3}
	tests := []struct {
		name      string
		latest    wire.DesiredState
		seen      uint64
		want      bool
		wantCount uint64
	}{
		{"no new request", desired, 3, false, 3},
		{"a new request", wire.DesiredState{State: wire.WorkerTraining, Run: "r-0001", Generation: 2, CheckpointRequests: 4}, 3, true, 4},
		{"two requests count as one checkpoint", wire.DesiredState{State: wire.WorkerTraining, Run: "r-0001", Generation: 2, CheckpointRequests: 5}, 3, true, 5},
		{"another generation's count is not ours", wire.DesiredState{State: wire.WorkerTraining, Run: "r-0001", Generation: 3, CheckpointRequests: 9}, 3, false, 3},
		{"the run ended", wire.DesiredState{State: wire.WorkerIdle}, 3, false, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := &Job{Desired: desired, Latest: func() wire.DesiredState { return tt.latest }}
			got, count := j.checkpointRequested(tt.seen)
			if got != tt.want || count != tt.wantCount {
				t.Fatalf("checkpointRequested(%d) = %v, %d; want %v, %d", tt.seen, got, count, tt.want, tt.wantCount)
			}
		})
	}
}
