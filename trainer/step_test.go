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
	ra, err := a.Step(ctx, batch, identity, ride)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.Step(ctx, batch, LocalReducer, nil)
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
	r, err := a.Step(ctx, batch, double, ride)
	if err != nil {
		t.Fatal(err)
	}
	if ride[0] != 2 || r.GlobalLossSum != 2*float64(float32(r.LossSum)) {
		t.Fatalf("doubled: ride %v, global loss %v, rank loss %v", ride, r.GlobalLossSum, r.LossSum)
	}
}
