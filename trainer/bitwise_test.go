package trainer

import (
	"bytes"
	"fmt"
	"testing"
)

// TestBitwiseAtAnyWorldSize: in bitwise mode (groups of 2 of the global
// batch of 8) tiny stage 1, across the VQ switch, and tiny stage 2 train
// bitwise-equal states (parameters, Adam moments, codebook: the exported
// state bytes) at worlds 1, 2, 3 and 4, with ZeRO 0 and 1; the loss sums
// are equal too. The float path on the same runs does differ between
// worlds, so the comparison can fail.
func TestBitwiseAtAnyWorldSize(t *testing.T) {
	lib := loadLib(t)
	tok := newModel(t, lib, TinyStage1(), 11)
	runStage1(t, tok, 0, shortSchedule.PhaseA+1)
	const steps = 16
	for _, tc := range []struct {
		name string
		run  func(world, zero int) replicaRun
	}{
		{"stage1", func(world, zero int) replicaRun { return stage1Run(lib, world, zero, 0, steps) }},
		{"stage2", func(world, zero int) replicaRun { return stage2Run(lib, tok, world, zero, 0, steps) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []byte
			for _, zero := range []int{0, 1} {
				for world := 1; world <= 4; world++ {
					rr := tc.run(world, zero)
					rr.group = 2
					blobs := gatheredBlobs(t, rr.run(t))
					if want == nil {
						want = blobs[0]
					}
					for r, b := range blobs {
						if !bytes.Equal(b, want) {
							t.Fatalf("world %d zero %d rank %d: state differs from world 1's", world, zero, r)
						}
					}
				}
			}
			// The float path at worlds 1 and 3: not the same bits.
			one := gatheredBlobs(t, tc.run(1, 0).run(t))[0]
			three := gatheredBlobs(t, tc.run(3, 0).run(t))[0]
			if bytes.Equal(one, three) {
				t.Fatal("the float path trained the same bits at worlds 1 and 3: this test shows nothing")
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
		{"zero 2", func(m *Model) error { return m.SetShard(0, 2, 2) }, 2, "ZeRO stage 2"},
		{"bf16", func(m *Model) error { return m.SetPrecision("bf16", "") }, 2, "precision bf16"},
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
	_ = fmt.Sprint
}
