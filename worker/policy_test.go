package worker

import (
	"testing"
	"time"
)

func TestStepPolicyAfter(t *testing.T) {
	p := stepPolicy{total: 100, reportEvery: 10, checkpointEvery: 40}
	tests := []struct {
		name  string
		p     stepPolicy
		done  int64
		asked bool
		want  stepActions
	}{
		{"an ordinary step", p, 7, false, stepActions{}},
		{"a report step", p, 30, false, stepActions{report: true}},
		{"a checkpoint step that is also a report step", p, 80, false, stepActions{report: true, checkpoint: true}},
		{"a checkpoint step off the report grid", stepPolicy{total: 100, reportEvery: 10, checkpointEvery: 25}, 25, false, stepActions{checkpoint: true}},
		{"asked by rank 0: the very next step, not the next report step", p, 7, true, stepActions{checkpoint: true}},
		{"the last step reports and checkpoints", p, 100, false, stepActions{report: true, checkpoint: true}},
		{"the last step off every grid", stepPolicy{total: 97, reportEvery: 10, checkpointEvery: 40}, 97, false, stepActions{report: true, checkpoint: true}},
		{"every_steps 0: no periodic checkpoints", stepPolicy{total: 100, reportEvery: 10}, 40, false, stepActions{report: true}},
		{"report every step", stepPolicy{total: 100, reportEvery: 1}, 3, false, stepActions{report: true}},
		{"a zero report interval means every step", stepPolicy{total: 100}, 3, false, stepActions{report: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.after(tt.done, tt.asked); got != tt.want {
				t.Errorf("after(%d, asked=%v) = %+v, want %+v", tt.done, tt.asked, got, tt.want)
			}
		})
	}
}

func TestStepPolicyWantCheckpoint(t *testing.T) {
	timed := stepPolicy{total: 100, checkpointTimer: 10 * time.Minute}
	untimed := stepPolicy{total: 100}
	tests := []struct {
		name      string
		p         stepPolicy
		sinceLast time.Duration
		requested bool
		want      bool
	}{
		{"nothing due", timed, time.Minute, false, false},
		{"the timer ran out", timed, 10 * time.Minute, false, true},
		{"long past the timer", timed, time.Hour, false, true},
		{"a request", timed, time.Second, true, true},
		{"a request without a timer", untimed, 0, true, true},
		{"no timer, no request", untimed, 24 * time.Hour, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.wantCheckpoint(tt.sinceLast, tt.requested); got != tt.want {
				t.Errorf("wantCheckpoint(%v, requested=%v) = %v, want %v", tt.sinceLast, tt.requested, got, tt.want)
			}
		})
	}
}
