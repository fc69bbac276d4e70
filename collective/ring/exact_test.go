package ring

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/collective/fixedpoint"
)

// TestExactOps: SumUint32 and Max over the ring give, on every rank and
// for every world size, exactly the modular sum and the maximum (ragged
// sizes, words that wrap past 2^32, NaNs and signed zeros for Max), in
// all-reduce and reduce-scatter.
func TestExactOps(t *testing.T) {
	for n := 1; n <= 4; n++ {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			comms := world(t, n, nil)
			for _, size := range []int{4, 1<<16 + 4*3} {
				size -= size % n // reduce-scatter wants Size() equal blocks
				for _, op := range []collective.Op{collective.SumUint32, collective.Max} {
					for _, scatter := range []bool{false, true} {
						bufs, want := exactInputs(n, size, op, uint64(size*10+n))
						ctx, cancel := callCtx()
						for r, err := range onAll(comms, func(r int, c *Comm) error {
							if scatter {
								return c.ReduceScatter(ctx, bufs[r], op)
							}
							return c.AllReduce(ctx, bufs[r], op)
						}) {
							if err != nil {
								t.Fatalf("%v scatter=%v: rank %d: %v", op, scatter, r, err)
							}
						}
						cancel()
						for r := range n {
							lo, hi := 0, size
							if scatter {
								lo, hi = r*size/n, (r+1)*size/n
							}
							for i := lo; i < hi; i++ {
								if math.Float32bits(bufs[r][i]) != want[i] {
									t.Fatalf("%v scatter=%v size %d: rank %d [%d] = %#x, want %#x", op, scatter, size, r, i, math.Float32bits(bufs[r][i]), want[i])
								}
							}
						}
					}
				}
			}
		})
	}
}

// exactInputs makes n ranks' buffers and the bits of their exact
// reduction by op.
func exactInputs(n, size int, op collective.Op, seed uint64) ([][]float32, []uint32) {
	rng := rand.New(rand.NewPCG(seed, 7))
	special := []float32{float32(math.NaN()), float32(math.Copysign(0, -1)), 0, float32(math.Inf(-1))}
	bufs := make([][]float32, n)
	for r := range bufs {
		bufs[r] = make([]float32, size)
		for i := range bufs[r] {
			if op == collective.SumUint32 {
				bufs[r][i] = math.Float32frombits(rng.Uint32()) // wraps often
			} else if rng.IntN(8) == 0 {
				bufs[r][i] = special[rng.IntN(len(special))]
			} else {
				bufs[r][i] = rng.Float32()*2 - 1
			}
		}
	}
	want := make([]uint32, size)
	for i := range want {
		acc := []float32{bufs[0][i]}
		for r := 1; r < n; r++ {
			if op == collective.SumUint32 {
				collective.AddUint32(acc, []float32{bufs[r][i]})
			} else {
				collective.MaxFloat32(acc, []float32{bufs[r][i]})
			}
		}
		want[i] = math.Float32bits(acc[0])
	}
	return bufs, want
}

// TestFixedPointSumIsTheSameAtAnyWorld: 24 groups of values summed in
// fixed point by worlds of 1 to 4 ranks over the ring (each rank
// accumulates the groups it is dealt, the split words are all-reduced
// with SumUint32, then joined) give the same bits, where float32 sums
// would not.
func TestFixedPointSumIsTheSameAtAnyWorld(t *testing.T) {
	const groups, n = 24, 1000
	rng := rand.New(rand.NewPCG(17, 17))
	vals := make([][]float32, groups)
	var maxAbs float32
	for g := range vals {
		vals[g] = make([]float32, n)
		for i := range vals[g] {
			v := float32(math.Ldexp(rng.Float64()*2-1, rng.IntN(24)-12))
			vals[g][i], maxAbs = v, max(maxAbs, float32(math.Abs(float64(v))))
		}
	}
	scale, err := fixedpoint.ScaleFor(maxAbs, groups)
	if err != nil {
		t.Fatal(err)
	}
	var want []float32
	for w := 1; w <= 4; w++ {
		comms := world(t, w, nil)
		out := make([][]float32, w)
		ctx, cancel := callCtx()
		for r, err := range onAll(comms, func(r int, c *Comm) error {
			acc := make([]int64, n)
			for g := r * groups / w; g < (r+1)*groups/w; g++ {
				scale.Accumulate(acc, vals[g])
			}
			words := make([]float32, 2*n)
			fixedpoint.Split(words, acc)
			if err := c.AllReduce(ctx, words, collective.SumUint32); err != nil {
				return err
			}
			fixedpoint.Join(acc, words)
			out[r] = make([]float32, n)
			for i, v := range acc {
				out[r][i] = scale.Value(v)
			}
			return nil
		}) {
			if err != nil {
				t.Fatalf("world %d: rank %d: %v", w, r, err)
			}
		}
		cancel()
		if want == nil {
			want = out[0]
		}
		for r := range w {
			for i := range want {
				if math.Float32bits(out[r][i]) != math.Float32bits(want[i]) {
					t.Fatalf("world %d rank %d [%d] = %v, want %v (world 1)", w, r, i, out[r][i], want[i])
				}
			}
		}
	}
}
