// Package fixedpoint sums float32 values so that the result does not
// depend on how the values are grouped or in which order they are added:
// the basis of bitwise-reproducible training at any world size.
//
// A float sum depends on its order: (a+b)+c and a+(b+c) round
// differently, so the same gradients summed over 2 ranks and over 3 give
// different bits. Integers add associatively. So every addend x is
// rounded once to an integer at a power-of-two scale, round(x·2^e); the
// integers are summed exactly, in any grouping (int64 within a rank,
// SumUint32 limbs across ranks, see Split); and the total is converted
// back once, total·2^-e rounded to float32.
//
// The scale comes from a bound on the total that every rank agrees on:
// the largest magnitude of any addend (all-reduced with collective.Max,
// which is exact in any order) times the number of addends. ScaleFor
// picks the largest e for which that bound stays below 2^TotalBits, so the
// total can never overflow, and each addend keeps TotalBits − log2(addends)
// bits relative to the largest one: with 2^10 addends, 36 bits, an
// error of at most 2^-37 of the largest magnitude per addend, far below
// float32's own rounding (2^-24 relative).
//
// Across ranks the per-rank int64 sums travel as two uint32 words each
// (Split): the low LimbBits bits, and the rest, shifted. Each word is
// summed on its own modulo 2^32 (collective.SumUint32, the same on the
// ring and on NCCL), which is exact as long as the true sums fit: at most
// MaxRanks ranks. Join puts the words back together.
package fixedpoint

import (
	"fmt"
	"math"
)

const (
	// TotalBits bounds every total's magnitude: |Σ| < 2^TotalBits.
	TotalBits = 46
	// LimbBits is the width of the low word of a split value.
	LimbBits = 24
	// MaxRanks is the most ranks whose split words can be summed exactly:
	// the low words' sum, each below 2^LimbBits, must stay below 2^32.
	MaxRanks = 1<<(32-LimbBits) - 1
	// minExp and maxExp bound the scale exponent (2^e must be a normal
	// float64, and tiny magnitudes must not ask for absurd scales).
	minExp, maxExp = -1000, 1000
)

// Scale is a power of two, 2^Exp, that values are multiplied by before
// rounding to integers.
type Scale struct{ Exp int }

// ScaleFor is the scale of a sum of at most addends values, none of
// magnitude above maxAbs: the largest 2^e with addends·maxAbs·2^e <
// 2^TotalBits. maxAbs must be finite (a NaN or infinite gradient has no
// fixed-point sum: the step is bad). A zero maxAbs gives the largest
// scale (every value is zero anyway).
func ScaleFor(maxAbs float32, addends int) (Scale, error) {
	return ScaleFor64(float64(maxAbs), addends)
}

// ScaleFor64 is ScaleFor for float64 magnitudes (squares of float32
// values, which are exact in float64).
func ScaleFor64(m float64, addends int) (Scale, error) {
	switch {
	case math.IsNaN(m) || math.IsInf(m, 0):
		return Scale{}, fmt.Errorf("fixed point: the largest magnitude is %v: no finite scale", m)
	case m < 0:
		return Scale{}, fmt.Errorf("fixed point: the largest magnitude is negative (%v)", m)
	case addends < 1:
		return Scale{}, fmt.Errorf("fixed point: %d addends", addends)
	case m == 0:
		return Scale{Exp: maxExp}, nil
	}
	// bound = addends·m = f·2^k with f in [0.5, 1): e = TotalBits − k
	// gives bound·2^e = f·2^TotalBits, below 2^TotalBits, and e+1 would not.
	_, k := math.Frexp(float64(addends) * m)
	return Scale{Exp: min(max(TotalBits-k, minExp), maxExp)}, nil
}

// Accumulate adds round(x[i]·2^e) to acc[i], ties to even: one group's
// values into a rank's running sums. x·2^e is exact in float64 (a float32
// times a power of two within float64's range), so the rounding to an
// integer is the one rounding an addend gets; ScaleFor's bound keeps the
// result below 2^TotalBits. Any order of groups gives the same acc.
// (The hot loops here touch only their arguments: norace keeps them fast
// in the race-enabled test builds.)
//
//go:norace
func (s Scale) Accumulate(acc []int64, x []float32) {
	if len(acc) != len(x) {
		panic(fmt.Sprintf("fixedpoint.Accumulate: %d sums, %d values", len(acc), len(x)))
	}
	mul := math.Ldexp(1, s.Exp)
	x = x[:len(acc)]
	for i, v := range x {
		acc[i] += int64(math.RoundToEven(float64(v) * mul))
	}
}

// Value converts a total back to float32: total·2^-e, rounded once.
func (s Scale) Value(total int64) float32 {
	return float32(float64(total) * math.Ldexp(1, -s.Exp)) // exact in float64: |total| < 2^53
}

// Values is Value for every total: out[i] = Value(totals[i]).
//
//go:norace
func (s Scale) Values(out []float32, totals []int64) {
	if len(out) != len(totals) {
		panic(fmt.Sprintf("fixedpoint.Values: %d outputs, %d totals", len(out), len(totals)))
	}
	inv := math.Ldexp(1, -s.Exp)
	for i, t := range totals {
		out[i] = float32(float64(t) * inv)
	}
}

// Split writes each sum as two words for collective.SumUint32: words[2i]
// the low LimbBits bits of acc[i], words[2i+1] the rest (arithmetic
// shift, as a two's-complement uint32). Interleaved, so element blocks
// map to word blocks (a reduce-scatter of the words is one of the
// values). len(words) must be 2·len(acc).
//
//go:norace
func Split(words []float32, acc []int64) {
	if len(words) != 2*len(acc) {
		panic(fmt.Sprintf("fixedpoint.Split: %d words for %d sums", len(words), len(acc)))
	}
	const mask = 1<<LimbBits - 1
	for i, v := range acc {
		words[2*i] = math.Float32frombits(uint32(v & mask))
		words[2*i+1] = math.Float32frombits(uint32(int32(v >> LimbBits)))
	}
}

// Join is Split's inverse on the words' sums over at most MaxRanks ranks:
// acc[i] = high·2^LimbBits + low, with the low sum read as unsigned and
// the high sum as signed.
//
//go:norace
func Join(acc []int64, words []float32) {
	if len(words) != 2*len(acc) {
		panic(fmt.Sprintf("fixedpoint.Join: %d words for %d sums", len(words), len(acc)))
	}
	for i := range acc {
		lo := int64(math.Float32bits(words[2*i]))
		hi := int64(int32(math.Float32bits(words[2*i+1])))
		acc[i] = hi<<LimbBits + lo
	}
}
