// Package splitmix is SplitMix64 (Steele, Lea and Flood), the one small
// keyed generator lavit's data code derives every random choice from: the
// synthetic data set, the sample stream's shuffles, the direction coin.
// These results are part of data sets and checkpoints, so the functions
// here must never change.
package splitmix

// Golden is the SplitMix64 increment, 2^64 divided by the golden ratio.
const Golden = 0x9E3779B97F4A7C15

// Finalize is the SplitMix64 output function.
func Finalize(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// Mix is one SplitMix64 step applied to z (add the increment, finalize):
// a good 64-bit hash for deriving keys.
func Mix(z uint64) uint64 { return Finalize(z + Golden) }

// Next advances a SplitMix64 state and returns the next 64 random bits.
func Next(state *uint64) uint64 {
	*state += Golden
	return Finalize(*state)
}
