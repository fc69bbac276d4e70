package fixedpoint

import (
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/lavit-org/lavit/collective"
)

// sumAnyWay sums groups of values the way a world of w ranks would:
// groups dealt to ranks in the order perm gives (unevenly when w does not
// divide them), each rank accumulating its groups in fixed point, the
// ranks' split words added in a random order, joined and converted back.
func sumAnyWay(groups [][]float32, scale Scale, w int, rng *rand.Rand) []float32 {
	n := len(groups[0])
	perm := rng.Perm(len(groups))
	words := make([][]float32, w)
	for r := range w {
		acc := make([]int64, n)
		for _, g := range perm[r*len(groups)/w : (r+1)*len(groups)/w] {
			scale.Accumulate(acc, groups[g])
		}
		words[r] = make([]float32, 2*n)
		Split(words[r], acc)
	}
	order := rng.Perm(w)
	total := append([]float32(nil), words[order[0]]...)
	for _, r := range order[1:] {
		collective.AddUint32(total, words[r])
	}
	acc := make([]int64, n)
	Join(acc, total)
	out := make([]float32, n)
	for i, v := range acc {
		out[i] = scale.Value(v)
	}
	return out
}

// randomGroups makes g groups of n values whose magnitudes span many
// orders (where float sums depend most on their order), with zeros.
func randomGroups(g, n int, seed uint64) ([][]float32, float32) {
	rng := rand.New(rand.NewPCG(seed, 1))
	var maxAbs float32
	groups := make([][]float32, g)
	for i := range groups {
		groups[i] = make([]float32, n)
		for j := range groups[i] {
			if rng.IntN(10) == 0 {
				continue
			}
			v := float32(math.Ldexp(rng.Float64()*2-1, rng.IntN(30)-20))
			groups[i][j] = v
			maxAbs = max(maxAbs, float32(math.Abs(float64(v))))
		}
	}
	return groups, maxAbs
}

// TestGroupingDoesNotMatter: the same groups summed by 1 to 8 ranks, each
// dealt the groups in another order and the ranks added in another order,
// give the same bits; and the result is within the documented error of
// the exact sum.
func TestGroupingDoesNotMatter(t *testing.T) {
	for _, tc := range []struct{ groups, n int }{{1, 5}, {7, 33}, {64, 257}} {
		groups, maxAbs := randomGroups(tc.groups, tc.n, uint64(tc.groups))
		scale, err := ScaleFor(maxAbs, tc.groups)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(uint64(tc.n), 2))
		want := sumAnyWay(groups, scale, 1, rng)
		for w := 1; w <= 8; w++ {
			for try := range 3 {
				got := sumAnyWay(groups, scale, w, rng)
				for i := range got {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("%d groups, world %d, try %d: [%d] = %v, want %v (world 1)", tc.groups, w, try, i, got[i], want[i])
					}
				}
			}
		}
		// Each addend is off by at most half a unit of 2^-e; the result then
		// rounds once to float32.
		unit := math.Ldexp(1, -scale.Exp)
		for i := range want {
			exact := new(big.Float).SetPrec(200)
			for _, g := range groups {
				exact.Add(exact, big.NewFloat(float64(g[i])))
			}
			e, _ := exact.Float64()
			bound := float64(tc.groups)*unit/2 + math.Abs(e)*0x1p-24
			if diff := math.Abs(float64(want[i]) - e); diff > bound {
				t.Fatalf("%d groups: [%d] = %v, exact %v: off by %g, bound %g", tc.groups, i, want[i], e, diff, bound)
			}
			if unit > float64(maxAbs)*0x1p-30 {
				t.Fatalf("%d groups: the scale keeps too little: unit %g for a largest magnitude %g", tc.groups, unit, maxAbs)
			}
		}
	}
}

// TestFloatSumsDependOnGrouping is the problem this package solves, shown
// on the same data: float32 sums over 1 and 3 ranks differ.
func TestFloatSumsDependOnGrouping(t *testing.T) {
	groups, _ := randomGroups(64, 257, 64)
	sum := func(w int) []float32 {
		parts := make([][]float32, w)
		for r := range w {
			parts[r] = make([]float32, 257)
			for _, g := range groups[r*64/w : (r+1)*64/w] {
				collective.AddFloat32(parts[r], g)
			}
		}
		for r := 1; r < w; r++ {
			collective.AddFloat32(parts[0], parts[r])
		}
		return parts[0]
	}
	a, b := sum(1), sum(3)
	differ := 0
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			differ++
		}
	}
	if differ == 0 {
		t.Fatal("float32 sums over 1 and 3 ranks agree everywhere: the test data shows nothing")
	}
	t.Logf("float32: %d of %d sums differ between 1 and 3 ranks", differ, len(a))
}

func TestScaleFor(t *testing.T) {
	for _, tc := range []struct {
		maxAbs  float32
		addends int
		bad     bool
	}{
		{1, 1, false}, {1, 1000, false}, {3e38, 1 << 20, false}, {1e-40, 3, false}, {0.75, 6, false},
		{0, 5, false},
		{float32(math.NaN()), 1, true}, {float32(math.Inf(1)), 1, true}, {-1, 1, true}, {1, 0, true},
	} {
		t.Run(fmt.Sprint(tc.maxAbs, "x", tc.addends), func(t *testing.T) {
			s, err := ScaleFor(tc.maxAbs, tc.addends)
			if tc.bad {
				if err == nil {
					t.Fatalf("accepted: scale 2^%d", s.Exp)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.maxAbs == 0 {
				return
			}
			bound := math.Ldexp(float64(tc.addends)*float64(tc.maxAbs), s.Exp)
			if bound >= math.Ldexp(1, TotalBits) || 2*bound < math.Ldexp(1, TotalBits) {
				t.Fatalf("scale 2^%d: bound·scale = %g, want in [2^%d, 2^%d)", s.Exp, bound, TotalBits-1, TotalBits)
			}
		})
	}
}

// TestSplitJoinAtTheLimits: the largest totals, of either sign, over
// MaxRanks ranks, survive Split, a modular word sum and Join exactly.
func TestSplitJoinAtTheLimits(t *testing.T) {
	const top = 1<<TotalBits - 1
	per := int64(top / MaxRanks)
	for _, v := range []int64{per, -per, 1, -1, 0, 1<<LimbBits - 1, -(1 << LimbBits)} {
		total := make([]float32, 2)
		words := make([]float32, 2)
		for range MaxRanks {
			Split(words, []int64{v})
			collective.AddUint32(total, words)
		}
		got := make([]int64, 1)
		Join(got, total)
		if got[0] != v*MaxRanks {
			t.Errorf("%d × %d ranks: joined %d, want %d", v, MaxRanks, got[0], v*MaxRanks)
		}
	}
}
