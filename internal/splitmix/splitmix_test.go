package splitmix

import "testing"

// TestKnownAnswers: the first outputs of SplitMix64 seeded with 1234567
// (the reference implementation's published values).
func TestKnownAnswers(t *testing.T) {
	state := uint64(1234567)
	for i, want := range []uint64{6457827717110365317, 3203168211198807973, 9817491932198370423} {
		if got := Next(&state); got != want {
			t.Fatalf("output %d = %d, want %d", i, got, want)
		}
	}
	if Mix(0) != Finalize(Golden) {
		t.Fatal("Mix(0) is not one step from state 0")
	}
}
