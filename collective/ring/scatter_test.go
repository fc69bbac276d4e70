package ring

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lavit-org/lavit/collective"
)

// checkScatterGather runs, on the same random inputs of per elements a
// block, an AllReduce, a ReduceScatter, and an AllGather of the
// ReduceScatter's result. Block r of rank r's ReduceScatter must match a
// float64 reference to rounding and be bitwise what AllReduce left there;
// after the AllGather every rank's buffer must be bitwise the AllReduce's.
func checkScatterGather(t *testing.T, comms []*Comm, per int, op collective.Op, seed uint64) {
	t.Helper()
	n := len(comms)
	size := n * per
	where := fmt.Sprintf("world %d, %d floats, %v", n, size, op)
	bufs, want, mag := randomInputs(n, size, op, seed)
	reduced := make([][]float32, n)
	for r := range n {
		reduced[r] = slices.Clone(bufs[r])
	}
	ctx, cancel := callCtx()
	defer cancel()
	for r, err := range onAll(comms, func(r int, c *Comm) error { return c.AllReduce(ctx, reduced[r], op) }) {
		if err != nil {
			t.Fatalf("%s: allreduce rank %d: %v", where, r, err)
		}
	}
	for r, err := range onAll(comms, func(r int, c *Comm) error { return c.ReduceScatter(ctx, bufs[r], op) }) {
		if err != nil {
			t.Fatalf("%s: reducescatter rank %d: %v", where, r, err)
		}
	}
	for r := range n {
		for i := r * per; i < (r+1)*per; i++ {
			got := bufs[r][i]
			if !closeTo(got, want[i], mag[i]) {
				t.Fatalf("%s: reducescatter rank %d [%d] = %v, want %v", where, r, i, got, want[i])
			}
			if math.Float32bits(got) != math.Float32bits(reduced[r][i]) {
				t.Fatalf("%s: reducescatter rank %d [%d] = %v, allreduce %v: want the same bits", where, r, i, got, reduced[r][i])
			}
		}
	}
	for r, err := range onAll(comms, func(r int, c *Comm) error { return c.AllGather(ctx, bufs[r]) }) {
		if err != nil {
			t.Fatalf("%s: allgather rank %d: %v", where, r, err)
		}
	}
	for r := range n {
		for i, got := range bufs[r] {
			if math.Float32bits(got) != math.Float32bits(reduced[r][i]) {
				t.Fatalf("%s: reducescatter+allgather rank %d [%d] = %v, allreduce %v: want the same bits", where, r, i, got, reduced[r][i])
			}
		}
	}
}

// TestReduceScatterAllGather: worlds 1 to 8, blocks from one element to
// ragged multi-chunk sizes, sum and average, repeated on one communicator.
func TestReduceScatterAllGather(t *testing.T) {
	// 1<<14+3 elements a block: several chunks with a ragged end.
	pers := []int{1, 2, 7, 1000, 1<<14 + 3}
	for n := 1; n <= 8; n++ {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			comms := world(t, n, nil)
			seed := uint64(1000 * n)
			for _, per := range pers {
				for _, op := range []collective.Op{collective.Sum, collective.Avg} {
					seed++
					checkScatterGather(t, comms, per, op, seed)
				}
			}
			checkAllReduce(t, comms, 1001, collective.Sum, seed+1) // still in step
		})
	}
}

// TestReduceScatterLargeCallsAddAsync covers the adder goroutine (calls of
// asyncAddMin elements or more) in ReduceScatter and AllGather.
func TestReduceScatterLargeCallsAddAsync(t *testing.T) {
	if testing.Short() {
		t.Skip("large calls skipped in -short mode")
	}
	for _, n := range []int{2, 3, 8} {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			comms := world(t, n, nil)
			per := (asyncAddMin+12345)/n + 1
			for i, op := range []collective.Op{collective.Sum, collective.Avg} {
				checkScatterGather(t, comms, per, op, uint64(10*n+i))
			}
		})
	}
}

// TestAllGatherCopiesEveryBlock: only block Rank() matters on entry (the
// others hold NaN here), and every rank ends with every rank's block.
func TestAllGatherCopiesEveryBlock(t *testing.T) {
	const per = 1003
	for _, n := range []int{1, 2, 5} {
		comms := world(t, n, nil)
		bufs := make([][]float32, n)
		for r := range n {
			bufs[r] = make([]float32, n*per)
			for i := range bufs[r] {
				bufs[r][i] = float32(math.NaN())
				if i/per == r {
					bufs[r][i] = float32(r*per + i)
				}
			}
		}
		ctx, cancel := callCtx()
		errs := onAll(comms, func(r int, c *Comm) error { return c.AllGather(ctx, bufs[r]) })
		cancel()
		for r := range n {
			if errs[r] != nil {
				t.Fatalf("world %d: rank %d: %v", n, r, errs[r])
			}
			for i, got := range bufs[r] {
				if q := i / per; got != float32(q*per+i) {
					t.Fatalf("world %d: rank %d [%d] = %v, want rank %d's %v", n, r, i, got, q, float32(q*per+i))
				}
			}
		}
	}
}

// TestBlocksOfEmptyBuffer: an empty buffer is a multiple of any world size.
func TestBlocksOfEmptyBuffer(t *testing.T) {
	comms := world(t, 3, nil)
	ctx, cancel := callCtx()
	defer cancel()
	for _, bc := range bufferCalls {
		for r, err := range onAll(comms, func(_ int, c *Comm) error { return bc.call(ctx, c, nil) }) {
			if err != nil {
				t.Fatalf("%s: rank %d: %v", bc.name, r, err)
			}
		}
	}
	checkScatterGather(t, comms, 3, collective.Sum, 1) // still in step
}

// TestBlocksInvalidLength: a buffer that is not a multiple of the world
// size breaks the communicator with an invalid-argument error naming the
// problem, on the rank that passed it at once and on its peers through
// the notices (never by their deadline).
func TestBlocksInvalidLength(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(ctx context.Context, c *Comm, buf []float32) error
		bad  []int // ranks that pass 7 floats instead of 6
	}{
		{"reducescatter/every rank", bufferCalls[1].call, []int{0, 1, 2}},
		{"allgather/every rank", bufferCalls[2].call, []int{0, 1, 2}},
		{"reducescatter/one rank", bufferCalls[1].call, []int{1}},
		{"allgather/one rank", bufferCalls[2].call, []int{2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			comms := world(t, 3, nil)
			ctx, cancel := callCtx()
			defer cancel()
			errs := onAll(comms, func(r int, c *Comm) error {
				size := 6
				if slices.Contains(tc.bad, r) {
					size = 7
				}
				return tc.call(ctx, c, make([]float32, size))
			})
			for r, err := range errs {
				if !errors.Is(err, collective.ErrAborted) || !strings.Contains(err.Error(), "invalid argument: buffer of 7 elements is not a multiple of the world size 3") {
					t.Errorf("rank %d: %v, want ErrAborted naming the invalid length", r, err)
				}
			}
			for r, c := range comms {
				if again := c.AllReduce(ctx, make([]float32, 6), collective.Sum); again != errs[r] {
					t.Errorf("rank %d next call: %v, want the sticky %v", r, again, errs[r])
				}
			}
		})
	}
}

// callSpec is one rank's call in TestBlocksMismatch.
type callSpec struct {
	kind string // "allreduce", "reducescatter" or "allgather"
	size int
	op   collective.Op
}

func (cs callSpec) run(ctx context.Context, c *Comm) error {
	buf := make([]float32, cs.size)
	switch cs.kind {
	case "allreduce":
		return c.AllReduce(ctx, buf, cs.op)
	case "reducescatter":
		return c.ReduceScatter(ctx, buf, cs.op)
	}
	return c.AllGather(ctx, buf)
}

// TestBlocksMismatch: ranks in different calls, or with different sizes
// or ops, fail with ErrMismatch naming both calls instead of exchanging
// garbage.
func TestBlocksMismatch(t *testing.T) {
	sum, avg, bf16 := collective.Sum, collective.Avg, collective.SumBF16
	for _, tc := range []struct {
		name  string
		calls [2]callSpec
		want  []string // in one of the errors
	}{
		{"allgather against reducescatter", [2]callSpec{{"allgather", 10, sum}, {"reducescatter", 10, sum}},
			[]string{"allgather of 10 elements", "reducescatter of 10 elements"}},
		{"reducescatter against allreduce", [2]callSpec{{"reducescatter", 10, sum}, {"allreduce", 10, sum}},
			[]string{"reducescatter of 10 elements, op sum", "allreduce of 10 elements"}},
		{"reducescatter sizes", [2]callSpec{{"reducescatter", 10, sum}, {"reducescatter", 12, sum}},
			[]string{"reducescatter of 12 elements"}},
		{"reducescatter ops", [2]callSpec{{"reducescatter", 10, sum}, {"reducescatter", 10, avg}},
			[]string{"op avg", "op sum"}},
		{"allreduce sum against sum-bf16", [2]callSpec{{"allreduce", 10, sum}, {"allreduce", 10, bf16}},
			[]string{"allreduce of 10 elements, op sum-bf16", "allreduce of 10 elements, op sum"}},
		{"reducescatter sum-bf16 against sum", [2]callSpec{{"reducescatter", 10, bf16}, {"reducescatter", 10, sum}},
			[]string{"reducescatter of 10 elements, op sum-bf16", "reducescatter of 10 elements, op sum"}},
		{"allgather sizes", [2]callSpec{{"allgather", 2, sum}, {"allgather", 4, sum}},
			[]string{"allgather of 2 elements", "allgather of 4 elements"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			comms := world(t, 2, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			errs := onAll(comms, func(r int, c *Comm) error { return tc.calls[r].run(ctx, c) })
			mismatch := 0
			for r, err := range errs {
				if err == nil || errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("rank %d: %v, want the mismatch caught", r, err)
				}
				if errors.Is(err, collective.ErrMismatch) {
					mismatch++
				}
			}
			if mismatch == 0 {
				t.Fatalf("no rank reported ErrMismatch: %v", errs)
			}
			both := errs[0].Error() + " | " + errs[1].Error()
			for _, w := range tc.want {
				if !strings.Contains(both, w) {
					t.Errorf("errors %q should say %q", both, w)
				}
			}
		})
	}
}
