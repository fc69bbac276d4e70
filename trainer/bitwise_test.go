package trainer

import (
	"bytes"
	"testing"
)

// TestBitwiseAtAnyWorldSize: in bitwise mode (groups of 2 of the global
// batch of 8) tiny stage 1, across the VQ switch at step 6, and tiny stage
// 2 train bitwise-equal states (parameters, Adam moments, codebook: the
// exported state bytes) at worlds 1, 2, 3 and 4: 100 steps at ZeRO 0, and
// 16 at ZeRO 0, 1 and 2. The mutation: the same groups as micro-batches
// with float sums instead of fixed-point ones give other bits at worlds
// 1 and 3, so the comparison can fail.
func TestBitwiseAtAnyWorldSize(t *testing.T) {
	lib := loadLib(t)
	tok := newModel(t, lib, TinyStage1(), 11)
	runStage1(t, tok, 0, shortSchedule.PhaseA+1)
	for _, tc := range []struct {
		name string
		run  func(world, zero, steps int) replicaRun
	}{
		{"stage1", func(world, zero, steps int) replicaRun { return stage1Run(lib, world, zero, 0, steps) }},
		{"stage2", func(world, zero, steps int) replicaRun { return stage2Run(lib, tok, world, zero, 0, steps) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := map[int][]byte{} // by steps: world 1's state
			for _, c := range []struct{ zero, steps int }{{0, 100}, {0, 16}, {1, 16}, {2, 16}} {
				for world := 1; world <= 4; world++ {
					rr := tc.run(world, c.zero, c.steps)
					rr.group = 2
					blobs := gatheredBlobs(t, rr.run(t))
					if want[c.steps] == nil {
						want[c.steps] = blobs[0]
					}
					for r, b := range blobs {
						if !bytes.Equal(b, want[c.steps]) {
							t.Fatalf("%d steps, world %d zero %d rank %d: state differs from world 1's", c.steps, world, c.zero, r)
						}
					}
				}
			}
			// Through the host staging buffer, as a GPU model does it: the
			// same bits.
			for _, zero := range []int{0, 2} {
				for _, world := range []int{1, 3} {
					rr := tc.run(world, zero, 16)
					rr.group, rr.staged = 2, true
					for r, b := range gatheredBlobs(t, rr.run(t)) {
						if !bytes.Equal(b, want[16]) {
							t.Fatalf("staged, world %d zero %d rank %d: state differs from world 1's", world, zero, r)
						}
					}
				}
			}
			// bf16 (float32 master weights, moments and sums): the same
			// bits at every world, ZeRO 0 and 2.
			var bf []byte
			for _, zero := range []int{0, 2} {
				for world := 1; world <= 4; world++ {
					rr := tc.run(world, zero, 16)
					rr.group, rr.precision, rr.reduce = 2, "bf16", "fp32"
					blobs := gatheredBlobs(t, rr.run(t))
					if bf == nil {
						bf = blobs[0]
					}
					for r, b := range blobs {
						if !bytes.Equal(b, bf) {
							t.Fatalf("bf16, world %d zero %d rank %d: state differs from world 1's", world, zero, r)
						}
					}
				}
			}
			// The mutation: the same groups, each a micro-batch, summed in
			// float (accumulated in the gradient buffer, then all-reduced)
			// at worlds 1 and 3: not the same bits.
			float := func(world int) []byte {
				rr := tc.run(world, 0, 16)
				rr.micro, rr.slices = 2, 2
				return gatheredBlobs(t, rr.run(t))[0]
			}
			if bytes.Equal(float(1), float(3)) {
				t.Fatal("float sums of the same groups trained the same bits at worlds 1 and 3: this test shows nothing")
			}
		})
	}
}

// TestSetBitwiseRefuses: what bitwise mode does not cover yet is refused
// with an error that names it.
func TestSetBitwiseRefuses(t *testing.T) {
	lib := loadLib(t)
	for _, tc := range []struct {
		name    string
		prepare func(m *Model) error
		group   int
		want    string
	}{
		{"negative group", nil, -1, "group of -1"},
		{"bf16 sums", func(m *Model) error { return m.SetPrecision("bf16", "bf16") }, 2, "reduce_dtype bf16"},
		{"buckets", func(m *Model) error { return m.SetBuckets(1 << 16) }, 2, "buckets"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newModel(t, lib, TinyStage1(), 3)
			if tc.prepare != nil {
				if err := tc.prepare(m); err != nil {
					t.Fatal(err)
				}
			}
			err := m.SetBitwise(tc.group)
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Fatalf("SetBitwise: %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// TestSetDeterministic: libtorch's deterministic algorithms follow the
// switch (a bitwise model turns them on; a worker turns them off for a
// fast run), as the shim's build info reports them.
func TestSetDeterministic(t *testing.T) {
	lib := loadLib(t)
	for _, on := range []bool{true, false, true, false} {
		if err := lib.SetDeterministic(on); err != nil {
			t.Fatal(err)
		}
		bi, err := lib.BuildInfo()
		if err != nil {
			t.Fatal(err)
		}
		if bi.Deterministic != on {
			t.Fatalf("SetDeterministic(%v): build info says %v", on, bi.Deterministic)
		}
	}
	m := newModel(t, lib, TinyStage1(), 3)
	if err := m.SetBitwise(2); err != nil {
		t.Fatal(err)
	}
	if bi, _ := lib.BuildInfo(); !bi.Deterministic {
		t.Fatal("SetBitwise left deterministic algorithms off")
	}
	if err := lib.SetDeterministic(false); err != nil {
		t.Fatal(err)
	}
}
