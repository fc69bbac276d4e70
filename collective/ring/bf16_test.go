package ring

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/lavit-org/lavit/collective"
)

// bf16Inputs makes n ranks' buffers of words packed bfloat16 pairs:
// random values of mixed sign and magnitude (2^-12 to 2^12), so that
// partial sums lose low bits to bfloat16's 8-bit mantissa.
func bf16Inputs(n, words int, seed uint64) [][]float32 {
	bufs := make([][]float32, n)
	for r := range n {
		rng := rand.New(rand.NewPCG(seed, uint64(r)))
		bufs[r] = make([]float32, words)
		for i := range bufs[r] {
			var w uint32
			for half := range 2 {
				v := (rng.Float32()*2 - 1) * float32(math.Ldexp(1, rng.IntN(25)-12))
				w |= uint32(collective.BF16FromFloat32(v)) << (16 * half)
			}
			bufs[r][i] = math.Float32frombits(w)
		}
	}
	return bufs
}

// bf16Elem is element e (0 or 1) of the pair packed in word w.
func bf16Elem(w float32, e int) uint16 { return uint16(math.Float32bits(w) >> (16 * e)) }

// bf16RingSum is the reference for a SumBF16 reduction of bufs, in the
// ring's order: segment k of the words (the first len mod n one longer)
// starts at rank k+1 and travels the ring to rank k, each rank adding
// its own value to what it received, rounded to bfloat16 after every add.
// once is the same sum done in float32 and rounded once at the end: what
// a backend that did not round each partial sum would give.
func bf16RingSum(bufs [][]float32) (ring, once []uint16) {
	n, words := len(bufs), len(bufs[0])
	ring = make([]uint16, 2*words)
	once = make([]uint16, 2*words)
	for k := range n {
		s := segment(words, n, k)
		for i := s.off; i < s.off+s.n; i++ {
			for e := range 2 {
				acc := bf16Elem(bufs[(k+1)%n][i], e)
				f := collective.Float32FromBF16(acc)
				for j := 2; j <= n; j++ {
					own := collective.Float32FromBF16(bf16Elem(bufs[(k+j)%n][i], e))
					acc = collective.BF16FromFloat32(own + collective.Float32FromBF16(acc))
					f += own
				}
				ring[2*i+e] = acc
				once[2*i+e] = collective.BF16FromFloat32(f)
			}
		}
	}
	return ring, once
}

// checkBF16 runs, on the same random bfloat16 inputs of words words, a
// SumBF16 AllReduce, a SumBF16 ReduceScatter and an AllGather of its
// result (block calls only when n divides words), and compares every
// rank's bits with bf16RingSum. It returns how many elements differ from
// the round-once sum.
func checkBF16(t *testing.T, comms []*Comm, words int, seed uint64) int {
	t.Helper()
	n := len(comms)
	where := fmt.Sprintf("world %d, %d words", n, words)
	inputs := bf16Inputs(n, words, seed)
	want, once := bf16RingSum(inputs)
	differ := 0
	for i := range want {
		if want[i] != once[i] {
			differ++
		}
	}
	check := func(call string, r int, buf []float32, lo, hi int) {
		t.Helper()
		for i := lo; i < hi; i++ {
			for e := range 2 {
				if got := bf16Elem(buf[i], e); got != want[2*i+e] {
					t.Fatalf("%s: %s rank %d: element %d = %#04x (%v), want %#04x (%v); summed in float32 and rounded once: %#04x",
						where, call, r, 2*i+e, got, collective.Float32FromBF16(got), want[2*i+e], collective.Float32FromBF16(want[2*i+e]), once[2*i+e])
				}
			}
		}
	}
	ctx, cancel := callCtx()
	defer cancel()
	bufs := make([][]float32, n)
	for r := range n {
		bufs[r] = slices.Clone(inputs[r])
	}
	for r, err := range onAll(comms, func(r int, c *Comm) error { return c.AllReduce(ctx, bufs[r], collective.SumBF16) }) {
		if err != nil {
			t.Fatalf("%s: allreduce rank %d: %v", where, r, err)
		}
		check("allreduce", r, bufs[r], 0, words)
	}
	if words%n != 0 {
		return differ
	}
	per := words / n
	for r := range n {
		bufs[r] = slices.Clone(inputs[r])
	}
	for r, err := range onAll(comms, func(r int, c *Comm) error { return c.ReduceScatter(ctx, bufs[r], collective.SumBF16) }) {
		if err != nil {
			t.Fatalf("%s: reducescatter rank %d: %v", where, r, err)
		}
		check("reducescatter", r, bufs[r], r*per, (r+1)*per)
	}
	for r, err := range onAll(comms, func(r int, c *Comm) error { return c.AllGather(ctx, bufs[r]) }) {
		if err != nil {
			t.Fatalf("%s: allgather rank %d: %v", where, r, err)
		}
		check("reducescatter+allgather", r, bufs[r], 0, words)
	}
	return differ
}

// TestSumBF16: SumBF16 AllReduce and ReduceScatter at worlds 1 to 4 give,
// bit for bit, the bfloat16 sum in the ring's order with every partial
// sum rounded, for one word, ragged sizes and multi-chunk segments. At
// worlds of 3 or more (two adds or more) that sum differs from summing in
// float32 and rounding once, so the test tells the two apart.
func TestSumBF16(t *testing.T) {
	// 3·(1<<14)+6 words: segments of several 16Ki-word chunks, ragged.
	sizes := []int{1, 2, 12, 1001, 3*(1<<14) + 6}
	for n := 1; n <= 4; n++ {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			comms := world(t, n, nil)
			differ := 0
			for i, words := range sizes {
				differ += checkBF16(t, comms, words, uint64(100*n+i))
			}
			if n >= 3 && differ == 0 {
				t.Fatalf("world %d: the rounded-per-add sum never differs from the round-once sum: the inputs cannot tell them apart", n)
			}
			checkAllReduce(t, comms, 1001, collective.Sum, uint64(n)) // float32 after bfloat16: still in step
		})
	}
}

// TestSumBF16LargeCallsAddAsync: the adder goroutine (calls of asyncAddMin
// words or more) adds bfloat16 too.
func TestSumBF16LargeCallsAddAsync(t *testing.T) {
	if testing.Short() {
		t.Skip("large calls skipped in -short mode")
	}
	comms := world(t, 2, nil)
	checkBF16(t, comms, asyncAddMin+10, 7)
}
