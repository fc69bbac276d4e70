package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestWaitsGrowAndCap(t *testing.T) {
	tests := []struct {
		name string
		b    Backoff
		want []time.Duration
	}{
		{"doubling to the cap", Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}, []time.Duration{10, 20, 40, 50, 50}},
		{"defaults", Backoff{}, []time.Duration{200, 400, 800, 1600, 3200, 5000, 5000}},
		{"triple", Backoff{Initial: time.Millisecond, Max: time.Second, Multiplier: 3}, []time.Duration{1, 3, 9, 27}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.b.Waits()
			for i, want := range tt.want {
				if got := w.Next(); got != want*time.Millisecond {
					t.Fatalf("wait %d = %v, want %v", i, got, want*time.Millisecond)
				}
			}
		})
	}
}

func TestJitterStaysInRange(t *testing.T) {
	for _, j := range []float64{0.25, 0.5, 1} {
		w := Backoff{Initial: 100 * time.Millisecond, Max: 100 * time.Millisecond, Jitter: j}.Waits()
		lo := time.Duration(float64(100*time.Millisecond) * (1 - j))
		seen := map[time.Duration]bool{}
		for range 200 {
			d := w.Next()
			if d < lo || d > 100*time.Millisecond {
				t.Fatalf("jitter %.2f: wait %v outside [%v, 100ms]", j, d, lo)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("jitter %.2f: only %d distinct waits in 200: not random", j, len(seen))
		}
	}
}

func TestDo(t *testing.T) {
	errFlaky := errors.New("flaky")
	errFatal := errors.New("fatal")
	fast := Backoff{Initial: time.Microsecond, Max: time.Microsecond}
	tests := []struct {
		name      string
		b         Backoff
		failFor   int   // tries that fail with errFlaky
		then      error // what the try after them returns
		wantTries int
		wantErr   error
	}{
		{"succeeds at once", fast, 0, nil, 1, nil},
		{"succeeds after failures", fast, 3, nil, 4, nil},
		{"permanent stops at once", fast, 2, Permanent(errFatal), 3, errFatal},
		{"max tries", Backoff{Initial: time.Microsecond, MaxTries: 3}, 10, nil, 3, errFlaky},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tries, retries := 0, 0
			err := Do(context.Background(), tt.b, func(attempt int) error {
				tries++
				if attempt != tries {
					t.Fatalf("attempt %d on try %d", attempt, tries)
				}
				if tries <= tt.failFor {
					return errFlaky
				}
				return tt.then
			}, func(Try) { retries++ })
			if tries != tt.wantTries {
				t.Errorf("%d tries, want %d", tries, tt.wantTries)
			}
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Errorf("err %v, want %v", err, tt.wantErr)
			}
			var p permanent
			if errors.As(err, &p) {
				t.Errorf("Do returned the Permanent wrapper, not the error")
			}
			if retries != tries-1 {
				t.Errorf("onRetry called %d times in %d tries, want %d", retries, tries, tries-1)
			}
		})
	}
}

func TestDoStopsWhenTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	errFlaky := errors.New("flaky")
	tries := 0
	err := Do(ctx, Backoff{Initial: time.Hour, Max: time.Hour}, func(int) error {
		tries++
		return errFlaky
	}, func(Try) { cancel() }) // cancelled while about to wait an hour
	if tries != 1 {
		t.Errorf("%d tries, want 1", tries)
	}
	if !errors.Is(err, errFlaky) || !errors.Is(err, context.Canceled) {
		t.Errorf("err %v: want both the last error and context.Canceled", err)
	}
}

func TestSleep(t *testing.T) {
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep on a cancelled context: %v", err)
	}
}
