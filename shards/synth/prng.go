package synth

import "github.com/lavit-org/lavit/internal/splitmix"

// This file holds the package's own pseudo-random number generator. It is
// deliberately tiny and fully specified so that another implementation (in
// Python, say) can reproduce the data set bit for bit.
//
// Everything is built on the SplitMix64 mixing function (Steele, Lea and
// Flood, "Fast splittable pseudorandom number generators", 2014):
//
//	mix64(z):
//	    z = z + 0x9E3779B97F4A7C15            (mod 2^64)
//	    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
//	    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//	    return z ^ (z >> 31)
//
// Per-sample key, from (seed, split, index):
//
//	key = mix64(seed)
//	key = mix64(key ^ uint64(split))   // Train = 0, Eval = 1
//	key = mix64(key ^ uint64(index))
//
// Draws for one sample come from a SplitMix64 stream whose state starts at
// key; each draw advances the state by the golden-ratio constant and mixes it:
//
//	next():  state = state + 0x9E3779B97F4A7C15;  return mix64'(state)
//
// where mix64' is mix64 without its first addition (that is exactly
// the standard SplitMix64 "next" function). The derived draws are:
//
//	below(n)  = next() mod n                       (integer in [0, n))
//	float01() = (next() >> 11) * 2^-53             (float64 in [0, 1))
//
// below uses a plain modulo; its bias is at most n/2^64 and is ignored.

// mix64 is one SplitMix64 step applied to z (splitmix.Mix).
func mix64(z uint64) uint64 { return splitmix.Mix(z) }

// sampleKey derives the per-sample stream key from (seed, split, index).
// It depends on nothing else, which is what makes Generate random-access.
func sampleKey(seed uint64, split Split, index int) uint64 {
	key := mix64(seed)
	key = mix64(key ^ uint64(split))
	key = mix64(key ^ uint64(index))
	return key
}

// rng is a SplitMix64 stream. The zero value is a valid (key 0) stream.
type rng struct {
	state uint64
}

// next returns the next 64 random bits.
func (g *rng) next() uint64 {
	return splitmix.Next(&g.state)
}

// below returns an integer in [0, n). n must be positive.
func (g *rng) below(n int) int {
	return int(g.next() % uint64(n))
}

// float01 returns a float64 in [0, 1) with 53 random bits.
func (g *rng) float01() float64 {
	return float64(g.next()>>11) * (1.0 / (1 << 53))
}
