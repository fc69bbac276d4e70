package nccl

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/collective"
)

// bf16Words makes n ranks' buffers of words packed bfloat16 pairs (element
// 2j in the low half of word j): sines of mixed magnitudes, so partial
// sums lose low bits to bfloat16 rounding.
func bf16Words(n, words, seed int) [][]float32 {
	bufs := make([][]float32, n)
	for r := range n {
		bufs[r] = make([]float32, words)
		for j := range bufs[r] {
			var w uint32
			for e := range 2 {
				x := float64(2*j + e)
				v := math.Sin(x*float64(r+3)+float64(seed)) * math.Ldexp(1, int(x)%17-8)
				w |= uint32(collective.BF16FromFloat32(float32(v))) << (16 * e)
			}
			bufs[r][j] = math.Float32frombits(w)
		}
	}
	return bufs
}

// onDevice runs f on a device copy of buf and copies the result back.
func onDevice(c *Collective, buf []float32, f func(dev uintptr) error) error {
	lib := c.comm.lib
	dev, err := lib.DeviceAlloc(0, 4*len(buf))
	if err != nil {
		return err
	}
	defer lib.DeviceFree(0, dev)
	if err := lib.CopyToDevice(0, dev, floatBytes(buf)); err != nil {
		return err
	}
	if err := f(dev); err != nil {
		return err
	}
	return lib.CopyFromDevice(0, floatBytes(buf), dev)
}

// TestFakeMatchesRingBF16: SumBF16 AllReduce and ReduceScatter over the
// fake NCCL (ncclBfloat16, ncclSum, 2·len elements) give, bit for bit,
// what the ring gives (each partial sum rounded to bfloat16, in the
// ring's order) at worlds 2 and 3: host and device paths, one-word blocks,
// ragged sizes whose segments the fake must cut in whole words, and
// buffers of several of the fake's 1 MiB chunks.
func TestFakeMatchesRingBF16(t *testing.T) {
	lib := loadFake(t)
	bf16 := collective.SumBF16
	var calls []blockCall
	for _, size := range []int{1, 5, 1001, 300_001} {
		calls = append(calls, blockCall{name: "allreduce sum-bf16", size: size,
			run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
				return c.AllReduce(ctx, buf, bf16)
			}})
	}
	for _, per := range []int{1, 333, 100_001} {
		calls = append(calls, blockCall{name: "reducescatter sum-bf16", per: per, block: true,
			run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
				return c.ReduceScatter(ctx, buf, bf16)
			}})
	}
	// The device paths over the fake, the host calls over the ring.
	calls = append(calls, blockCall{name: "allreduce sum-bf16 (device)", size: 1001,
		run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
			if f, ok := c.(*Collective); ok {
				return onDevice(f, buf, func(dev uintptr) error { return f.AllReduceDevice(ctx, dev, len(buf), bf16) })
			}
			return c.AllReduce(ctx, buf, bf16)
		}})
	calls = append(calls, blockCall{name: "reducescatter sum-bf16 + allgather (device)", per: 333,
		run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
			if f, ok := c.(*Collective); ok {
				return onDevice(f, buf, func(dev uintptr) error {
					if err := f.ReduceScatterDevice(ctx, dev, len(buf), bf16); err != nil {
						return err
					}
					return f.AllGatherDevice(ctx, dev, len(buf))
				})
			}
			if err := c.ReduceScatter(ctx, buf, bf16); err != nil {
				return err
			}
			return c.AllGather(ctx, buf)
		}})
	for _, n := range []int{2, 3} {
		fakes := joinWorld(t, lib, n)
		rings := ringWorld(t, n)
		for i, bc := range calls {
			size := bc.size
			if bc.per > 0 {
				size = n * bc.per
			}
			matchRing(t, fakes, rings, bc, bf16Words(n, size, i))
		}
	}
}

// TestFakeOpTypeRefused: a reduction whose op and NCCL data type do not
// go together (bfloat16 other than by sum, sum-bf16 on another type;
// uint32 other than by sum-uint32, sum-uint32 on another type; avg or max
// on anything but float32), an unknown op, or a block split inside a
// bfloat16 pair breaks the communicator with an invalid-argument error
// that says why, before anything reaches NCCL; the error is sticky.
func TestFakeOpTypeRefused(t *testing.T) {
	lib := loadFake(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		call func(c *Collective) error
		want string
	}{
		{"avg on bfloat16", func(c *Collective) error { return c.comm.AllReduce(ctx, 0, 4, BFloat16, collective.Avg) },
			"invalid argument: op avg on bfloat16: bfloat16 buffers reduce by sum only (sum-bf16)"},
		{"reducescatter avg on bfloat16", func(c *Collective) error { return c.comm.ReduceScatter(ctx, 0, 4, BFloat16, collective.Avg) },
			"invalid argument: op avg on bfloat16"},
		{"sum-bf16 on float32", func(c *Collective) error { return c.comm.AllReduce(ctx, 0, 4, Float32, collective.SumBF16) },
			"invalid argument: op sum-bf16 needs data type BFloat16 (9), got 7"},
		{"max on bfloat16", func(c *Collective) error { return c.comm.AllReduce(ctx, 0, 4, BFloat16, collective.Max) },
			"invalid argument: op max on bfloat16: bfloat16 buffers reduce by sum only (sum-bf16)"},
		{"sum-uint32 on float32", func(c *Collective) error { return c.comm.AllReduce(ctx, 0, 4, Float32, collective.SumUint32) },
			"invalid argument: op sum-uint32 needs data type Uint32 (3), got 7"},
		{"reducescatter sum-uint32 on bfloat16", func(c *Collective) error {
			return c.comm.ReduceScatter(ctx, 0, 4, BFloat16, collective.SumUint32)
		}, "invalid argument: op sum-uint32 needs data type Uint32 (3), got 9"},
		{"sum on uint32", func(c *Collective) error { return c.comm.AllReduce(ctx, 0, 4, Uint32, collective.Sum) },
			"invalid argument: op sum on uint32: uint32 buffers reduce by sum-uint32 only"},
		{"max on uint32", func(c *Collective) error { return c.comm.AllReduce(ctx, 0, 4, Uint32, collective.Max) },
			"invalid argument: op max on uint32: uint32 buffers reduce by sum-uint32 only"},
		{"reducescatter avg on uint32", func(c *Collective) error { return c.comm.ReduceScatter(ctx, 0, 4, Uint32, collective.Avg) },
			"invalid argument: op avg on uint32: uint32 buffers reduce by sum-uint32 only"},
		{"sum-bf16 on uint32", func(c *Collective) error { return c.comm.AllReduce(ctx, 0, 4, Uint32, collective.SumBF16) },
			"invalid argument: op sum-bf16 needs data type BFloat16 (9), got 3"},
		{"max on int32", func(c *Collective) error { return c.comm.AllReduce(ctx, 0, 4, Int32, collective.Max) },
			"invalid argument: op max needs data type Float32 (7), got 2"},
		{"reducescatter max on float16", func(c *Collective) error { return c.comm.ReduceScatter(ctx, 0, 4, Float16, collective.Max) },
			"invalid argument: op max needs data type Float32 (7), got 6"},
		{"avg on float64", func(c *Collective) error { return c.comm.AllReduce(ctx, 0, 4, Float64, collective.Avg) },
			"invalid argument: op avg needs data type Float32 (7), got 8"},
		{"an unknown op", func(c *Collective) error { return c.AllReduce(ctx, make([]float32, 2), collective.Op(99)) },
			"invalid argument: unknown op Op(99)"},
		// 7 words are 14 bfloat16s, which 2 ranks could split; blocks are
		// whole words.
		{"reducescatter sum-bf16 of an odd number of words", func(c *Collective) error {
			return c.ReduceScatter(ctx, make([]float32, 7), collective.SumBF16)
		}, "invalid argument: buffer of 7 elements is not a multiple of the world size 2"},
		{"reducescatter device sum-bf16 of an odd number of words", func(c *Collective) error {
			return c.ReduceScatterDevice(ctx, 0, 7, collective.SumBF16)
		}, "invalid argument: buffer of 7 elements is not a multiple of the world size 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := fakeLog(t)
			comms := joinWorld(t, lib, 2)
			err := tc.call(comms[1])
			if !errors.Is(err, collective.ErrAborted) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrAborted saying %q", err, tc.want)
			}
			if again := comms[1].AllReduce(ctx, make([]float32, 2), collective.SumBF16); again != err {
				t.Fatalf("next call: %v, want the sticky %v", again, err)
			}
			if strings.Contains(log(), "op") {
				t.Fatalf("lifecycle %q: an invalid call reached the fake", log())
			}
		})
	}
}
