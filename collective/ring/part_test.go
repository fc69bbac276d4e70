package ring

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/collective"
)

// The ring is a collective.PartReducer.
var _ collective.PartReducer = (*Comm)(nil)

// cuts splits total elements into parts at random points (some parts
// empty, some shorter than a segment, some across several), the same on
// every rank for a seed.
func cuts(total int, seed uint64) []span {
	rng := rand.New(rand.NewPCG(seed, 99))
	var out []span
	for off := 0; off < total; {
		n := min(rng.IntN(total/3+2), total-off)
		out = append(out, span{off, n})
		off += n
	}
	return append(out, span{total, 0}) // an empty part at the end
}

// TestPartsMatchWhole: reducing a buffer part by part (AllReducePart,
// ReduceScatterPart) leaves exactly the bits one call on the whole buffer
// leaves, for sums, averages and bf16 sums at worlds 2 to 4: each element
// is summed in the order of the whole call whatever the part it is in.
func TestPartsMatchWhole(t *testing.T) {
	for _, n := range []int{2, 3, 4} {
		comms := world(t, n, nil)
		for _, total := range []int{12, 1000, 4104} {
			for _, op := range []collective.Op{collective.Sum, collective.Avg, collective.SumBF16} {
				for _, scatter := range []bool{false, true} {
					name := fmt.Sprintf("world %d, %d elements, %v, scatter %v", n, total, op, scatter)
					if scatter && total%n != 0 {
						continue
					}
					var inputs [][]float32
					if op == collective.SumBF16 {
						inputs = bf16Inputs(n, total, uint64(total))
					} else {
						inputs, _, _ = randomInputs(n, total, op, uint64(total))
					}
					whole := make([][]float32, n)
					parts := make([][]float32, n)
					for r := range n {
						whole[r] = slices.Clone(inputs[r])
						parts[r] = slices.Clone(inputs[r])
					}
					ctx, cancel := callCtx()
					errs := onAll(comms, func(r int, c *Comm) error {
						if scatter {
							if err := c.ReduceScatter(ctx, whole[r], op); err != nil {
								return err
							}
						} else if err := c.AllReduce(ctx, whole[r], op); err != nil {
							return err
						}
						for _, p := range cuts(total, uint64(total)+uint64(n)) {
							buf := parts[r][p.off : p.off+p.n]
							var err error
							if scatter {
								err = c.ReduceScatterPart(ctx, buf, op, p.off, total)
							} else {
								err = c.AllReducePart(ctx, buf, op, p.off, total)
							}
							if err != nil {
								return fmt.Errorf("part %v: %w", p, err)
							}
						}
						return nil
					})
					cancel()
					for r, err := range errs {
						if err != nil {
							t.Fatalf("%s: rank %d: %v", name, r, err)
						}
					}
					for r := range n {
						check := span{0, total}
						if scatter {
							check = segment(total, n, r) // only block r is defined
						}
						for i := check.off; i < check.off+check.n; i++ {
							if math.Float32bits(parts[r][i]) != math.Float32bits(whole[r][i]) {
								t.Fatalf("%s: rank %d [%d] = %v part by part, %v in one call", name, r, i, parts[r][i], whole[r][i])
							}
						}
					}
				}
			}
		}
	}
}

// TestPartArguments: a part outside its buffer, or a part whose whole
// buffer cannot be cut into equal blocks, breaks the communicator with an
// invalid-argument error; ranks that disagree about a part's place fail
// with ErrMismatch naming both.
func TestPartArguments(t *testing.T) {
	for _, tc := range []struct {
		name    string
		call    func(ctx context.Context, r int, c *Comm) error
		kind    error
		message string
	}{
		{"part past the end", func(ctx context.Context, r int, c *Comm) error {
			return c.AllReducePart(ctx, make([]float32, 4), collective.Sum, 8, 10)
		}, collective.ErrAborted, "invalid argument: part of 4 elements at 8 does not lie in a buffer of 10"},
		{"negative offset", func(ctx context.Context, r int, c *Comm) error {
			return c.AllReducePart(ctx, make([]float32, 4), collective.Sum, -1, 10)
		}, collective.ErrAborted, "invalid argument: part of 4 elements at -1"},
		{"scatter of uneven blocks", func(ctx context.Context, r int, c *Comm) error {
			return c.ReduceScatterPart(ctx, make([]float32, 4), collective.Sum, 0, 7)
		}, collective.ErrAborted, "buffer of 7 elements is not a multiple of the world size 2"},
		{"offsets differ", func(ctx context.Context, r int, c *Comm) error {
			return c.AllReducePart(ctx, make([]float32, 4), collective.Sum, 2+r, 10)
		}, collective.ErrMismatch, "allreduce of 4 elements at 3 of 10"},
		{"part against whole", func(ctx context.Context, r int, c *Comm) error {
			if r == 0 {
				return c.AllReduce(ctx, make([]float32, 4), collective.Sum)
			}
			return c.AllReducePart(ctx, make([]float32, 4), collective.Sum, 0, 10)
		}, collective.ErrMismatch, "allreduce of 4 elements at 0 of 10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			comms := world(t, 2, nil)
			ctx, cancel := callCtx()
			defer cancel()
			errs := onAll(comms, func(r int, c *Comm) error { return tc.call(ctx, r, c) })
			both := ""
			for r, err := range errs {
				if !errors.Is(err, tc.kind) && !errors.Is(err, collective.ErrAborted) {
					t.Errorf("rank %d: %v, want %v", r, err, tc.kind)
				}
				if err != nil {
					both += err.Error() + " | "
				}
			}
			if !strings.Contains(both, tc.message) {
				t.Errorf("errors %q should say %q", both, tc.message)
			}
			if !slices.ContainsFunc(errs, func(err error) bool { return errors.Is(err, tc.kind) }) {
				t.Errorf("no rank reported %v: %v", tc.kind, errs)
			}
		})
	}
}
