package nccl

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/lavit-org/lavit/collective"
)

// exactWords makes n ranks' buffers of size words for op. SumUint32: random
// bits (most columns wrap past 2^32), with 0, 1, 0x80000000 and
// 0xffffffff mixed in. Max: each column is one of ±0 only (ties of signed
// zeros), numbers with specials (NaNs quiet and signalling, of either sign
// and with different payloads, ±0, ±Inf, equal values), plain numbers, or
// numbers and NaNs whose payloads differ by rank (the NaN that survives
// tells the order of the reduction).
func exactWords(n, size int, op collective.Op, seed uint64) [][]float32 {
	rng := rand.New(rand.NewPCG(seed, uint64(op)))
	bits := math.Float32frombits
	negZero := float32(math.Copysign(0, -1))
	special := []float32{float32(math.NaN()), bits(0x7fc00123), bits(0xffc00042), bits(0x7f800001),
		negZero, 0, float32(math.Inf(1)), float32(math.Inf(-1)), 1.5, -1.5}
	wraps := []uint32{0, 1, 0x80000000, 0xffffffff}
	bufs := make([][]float32, n)
	for r := range bufs {
		bufs[r] = make([]float32, size)
	}
	for j := range size {
		mode := rng.IntN(4)
		for r := range n {
			var v float32
			switch {
			case op == collective.SumUint32 && rng.IntN(8) == 0:
				v = bits(wraps[rng.IntN(len(wraps))])
			case op == collective.SumUint32:
				v = bits(rng.Uint32())
			case mode == 0:
				v = []float32{0, negZero}[rng.IntN(2)]
			case mode == 1 && rng.IntN(2) == 0:
				v = special[rng.IntN(len(special))]
			case mode == 3 && rng.IntN(2) == 0:
				v = bits(0x7fc00000 | uint32(r+1) | uint32(rng.IntN(2))<<31)
			default:
				v = rng.Float32()*2 - 1
			}
			bufs[r][j] = v
		}
	}
	return bufs
}

// exactReference is the plain reduction of column j by op: the sum of the
// words as uint32 modulo 2^32, or the largest value (+0 over -0). For Max
// with a NaN in the column, nan is true and any NaN is right.
func exactReference(inputs [][]float32, j int, op collective.Op) (want uint32, nan bool) {
	if op == collective.SumUint32 {
		var s uint32
		for _, in := range inputs {
			s += math.Float32bits(in[j])
		}
		return s, false
	}
	best := float32(math.Inf(-1))
	for _, in := range inputs {
		switch v := in[j]; {
		case v != v:
			nan = true
		case v > best || (v == best && !math.Signbit(float64(v))):
			best = v
		}
	}
	return math.Float32bits(best), nan
}

// TestFakeMatchesRingExact: SumUint32 (ncclUint32, ncclSum) and Max
// (ncclFloat32, ncclMax) AllReduce and ReduceScatter over the fake NCCL
// give, bit for bit, what the ring gives at worlds 2 to 4 (NaN payloads
// included: the fake reduces in the ring's order), and what a plain
// reduction gives: the exact sum modulo 2^32 (words that wrap past 2^32)
// and the maximum (NaN wins, +0 over -0). Host and device paths,
// one-word blocks, ragged sizes and buffers of several of the fake's
// 1 MiB chunks.
func TestFakeMatchesRingExact(t *testing.T) {
	lib := loadFake(t)
	type exactCall struct {
		blockCall
		op collective.Op
	}
	var calls []exactCall
	for _, op := range []collective.Op{collective.SumUint32, collective.Max} {
		add := func(bc blockCall) { calls = append(calls, exactCall{bc, op}) }
		for _, size := range []int{1, 1001, 300_001} {
			add(blockCall{name: "allreduce " + op.String(), size: size,
				run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
					return c.AllReduce(ctx, buf, op)
				}})
		}
		for _, per := range []int{1, 333, 100_001} {
			add(blockCall{name: "reducescatter " + op.String(), per: per, block: true,
				run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
					return c.ReduceScatter(ctx, buf, op)
				}})
		}
		// The device paths over the fake, the host calls over the ring.
		add(blockCall{name: "allreduce " + op.String() + " (device)", size: 1001,
			run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
				if f, ok := c.(*Collective); ok {
					return onDevice(f, buf, func(dev uintptr) error { return f.AllReduceDevice(ctx, dev, len(buf), op) })
				}
				return c.AllReduce(ctx, buf, op)
			}})
		add(blockCall{name: "reducescatter " + op.String() + " + allgather (device)", per: 333,
			run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
				if f, ok := c.(*Collective); ok {
					return onDevice(f, buf, func(dev uintptr) error {
						if err := f.ReduceScatterDevice(ctx, dev, len(buf), op); err != nil {
							return err
						}
						return f.AllGatherDevice(ctx, dev, len(buf))
					})
				}
				if err := c.ReduceScatter(ctx, buf, op); err != nil {
					return err
				}
				return c.AllGather(ctx, buf)
			}})
	}
	var wrapped, nans, zeroTies int // the inputs reach the cases they are for
	for n := 2; n <= 4; n++ {
		fakes := joinWorld(t, lib, n)
		rings := ringWorld(t, n)
		for i, ec := range calls {
			bc, op := ec.blockCall, ec.op
			size := bc.size
			if bc.per > 0 {
				size = n * bc.per
			}
			inputs := exactWords(n, size, op, uint64(n*100+i))
			got := matchRing(t, fakes, rings, bc, inputs)
			where := fmt.Sprintf("world %d, %s of %d", n, bc.name, size)
			for r := range n {
				lo, hi := 0, size
				if bc.block {
					lo, hi = r*bc.per, (r+1)*bc.per
				}
				for j := lo; j < hi; j++ {
					want, nan := exactReference(inputs, j, op)
					g := got[r][j]
					switch {
					case nan && g == g:
						t.Fatalf("%s: rank %d [%d] = %v (%#08x), want NaN", where, r, j, g, math.Float32bits(g))
					case !nan && math.Float32bits(g) != want:
						t.Fatalf("%s: rank %d [%d] = %#08x, want %#08x", where, r, j, math.Float32bits(g), want)
					}
				}
			}
			for j := range size {
				var sum uint64
				zeros, negZeros := 0, 0
				for r := range n {
					v := inputs[r][j]
					sum += uint64(math.Float32bits(v))
					if v == 0 {
						zeros++
						if math.Signbit(float64(v)) {
							negZeros++
						}
					}
				}
				_, nan := exactReference(inputs, j, op)
				switch {
				case op == collective.SumUint32 && sum > math.MaxUint32:
					wrapped++
				case op == collective.Max && nan:
					nans++
				case op == collective.Max && zeros == n && negZeros > 0 && negZeros < n:
					zeroTies++
				}
			}
		}
	}
	if wrapped == 0 || nans == 0 || zeroTies == 0 {
		t.Fatalf("inputs: %d sums wrapped, %d maxima of a NaN, %d of +0 and -0: want some of each", wrapped, nans, zeroTies)
	}
}
