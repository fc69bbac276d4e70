package stream

import "github.com/lavit-org/lavit/internal/splitmix"

// Keyed bijections and a small PRNG: everything the stream shuffles with,
// written out so another implementation can reproduce it.

// mix is one SplitMix64 step, used to derive keys.
func mix(z uint64) uint64 { return splitmix.Mix(z) }

// rng is a SplitMix64 stream.
type rng struct{ state uint64 }

func newRNG(seed uint64) *rng { return &rng{state: seed} }

func (r *rng) next() uint64 { return splitmix.Next(&r.state) }

// below returns a uniform value in [0, n) (rejection sampling, no bias).
func (r *rng) below(n uint64) uint64 {
	limit := ^uint64(0) - (^uint64(0) % n)
	for {
		if v := r.next(); v < limit {
			return v % n
		}
	}
}

// permute maps i in [0, n) to a unique value in [0, n), keyed: a four-round
// Feistel network on the smallest even number of bits covering n, with
// cycle-walking to stay inside [0, n). O(1) memory, so an epoch of a
// hundred million samples needs no table.
func permute(i, n int64, key uint64) int64 {
	if n <= 1 {
		return 0
	}
	bits := 2
	for int64(1)<<bits < n {
		bits += 2
	}
	half := uint(bits / 2)
	mask := uint64(1)<<half - 1
	x := uint64(i)
	for {
		l, r := x>>half, x&mask
		for round := uint64(0); round < 4; round++ {
			l, r = r, l^(mix(key^(round<<56)^r)&mask)
		}
		x = l<<half | r
		if int64(x) < n {
			return int64(x)
		}
	}
}
