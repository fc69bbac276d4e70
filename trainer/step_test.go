package trainer

import (
	"context"
	"testing"
)

// TestStepRidesOnTheLastAllReduce: Step's last all-reduce carries the post
// statistics, this rank's loss sum and the caller's ride-along values, all
// summed over the ranks and handed back; with an identity reducer the step
// trains exactly as a world of one does.
func TestStepRidesOnTheLastAllReduce(t *testing.T) {
	lib := loadLib(t)
	ctx := context.Background()
	a, b := newModel(t, lib, TinyStage1(), 3), newModel(t, lib, TinyStage1(), 3)
	// Past the VQ switch, so the post statistics are not empty.
	if err := shortSchedule.EnableVQAt(a, 0); err != nil {
		t.Fatal(err)
	}
	if err := shortSchedule.EnableVQAt(b, 0); err != nil {
		t.Fatal(err)
	}
	post := int(a.Info().PostStats)
	if post == 0 {
		t.Fatal("phase B has no post statistics; the test would prove nothing")
	}
	_, batch := SyntheticBatch(0, int64(shortSchedule.PhaseA), 8, 0, 8)

	// Identity reducer: same parameters as the world-of-one step.
	var lens []int
	identity := func(_ context.Context, buf []float32) error { lens = append(lens, len(buf)); return nil }
	ride := []float32{7, -2}
	ra, err := a.Step(ctx, batch, Reduce{Host: identity}, ride)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.Step(ctx, batch, Local, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bitsEqual(a.Params(), b.Params()) || ra.LossSum != rb.LossSum {
		t.Fatal("riding values along changed the step")
	}
	if len(lens) != 3 || lens[2] != post+1+len(ride) {
		t.Fatalf("reduce calls with %v floats; want 3 calls, the last of %d (post statistics, loss, ride)", lens, post+1+len(ride))
	}
	if ride[0] != 7 || ride[1] != -2 || ra.GlobalLossSum != float64(float32(ra.LossSum)) {
		t.Fatalf("identity reduce: ride %v, global loss %v (rank loss %v)", ride, ra.GlobalLossSum, ra.LossSum)
	}

	// A reducer that doubles the last buffer, as two identical ranks
	// would: the ride values and the loss come back summed.
	calls := 0
	double := func(_ context.Context, buf []float32) error {
		if calls++; calls == 3 {
			for i := range buf {
				buf[i] *= 2
			}
		}
		return nil
	}
	ride = []float32{1}
	_, batch = SyntheticBatch(0, int64(shortSchedule.PhaseA+1), 8, 0, 8)
	r, err := a.Step(ctx, batch, Reduce{Host: double}, ride)
	if err != nil {
		t.Fatal(err)
	}
	if ride[0] != 2 || r.GlobalLossSum != 2*float64(float32(r.LossSum)) {
		t.Fatalf("doubled: ride %v, global loss %v, rank loss %v", ride, r.GlobalLossSum, r.LossSum)
	}
}

// TestStagedGradientsTrainTheSame: a GPU model without a device collective
// reduces its gradients through the host staging buffer; on a CPU model
// forced down that path the step must train exactly as the in-place one,
// and the reducer must see the whole gradient buffer.
func TestStagedGradientsTrainTheSame(t *testing.T) {
	lib := loadLib(t)
	ctx := context.Background()
	direct, staged := newModel(t, lib, TinyStage1(), 5), newModel(t, lib, TinyStage1(), 5)
	staged.forceStaging = true
	for step := range 3 {
		_, batch := SyntheticBatch(0, int64(step), 8, 0, 8)
		var seen []int
		record := func(_ context.Context, buf []float32) error { seen = append(seen, len(buf)); return nil }
		if _, err := direct.Step(ctx, batch, Local, nil); err != nil {
			t.Fatal(err)
		}
		r, err := staged.Step(ctx, batch, Reduce{Host: record}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(seen) != 3 || seen[1] != int(staged.Info().GradNumel) {
			t.Fatalf("step %d: reduce calls with %v floats; the second must be the whole gradient buffer (%d)", step, seen, staged.Info().GradNumel)
		}
		if r.StageTime <= 0 {
			t.Errorf("step %d: staging took no time at all: the copy cost was not measured", step)
		}
	}
	if !bitsEqual(direct.Params(), staged.Params()) {
		t.Fatal("staging the gradients through the host changed the training")
	}
}

// TestReduceRefusesPartialGradients: an empty or short gradient buffer is
// an error, never a silent no-op all-reduce.
func TestReduceRefusesPartialGradients(t *testing.T) {
	calls := 0
	count := func(context.Context, []float32) error { calls++; return nil }
	tests := []struct {
		name string
		buf  []float32
		want int
		ok   bool
	}{
		{"the whole buffer", make([]float32, 10), 10, true},
		{"no trainable parameters", nil, 0, true},
		{"nil for a model with parameters (a GPU model's host view)", nil, 10, false},
		{"empty", []float32{}, 10, false},
		{"short", make([]float32, 9), 10, false},
		{"long", make([]float32, 11), 10, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := calls
			err := reduceWhole(context.Background(), count, tt.buf, tt.want)
			if tt.ok != (err == nil) {
				t.Fatalf("reduceWhole(%d floats, want %d) = %v", len(tt.buf), tt.want, err)
			}
			if !tt.ok && calls != before {
				t.Fatal("the collective was called with a partial buffer")
			}
		})
	}
}
