package stream

// Keyed bijections and a small PRNG: everything the stream shuffles with,
// written out so another implementation can reproduce it.

// mix is SplitMix64's finaliser.
func mix(z uint64) uint64 {
	z += 0x9E3779B97F4A7C15
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// rng is SplitMix64.
type rng struct{ state uint64 }

func newRNG(seed uint64) *rng { return &rng{state: seed} }

func (r *rng) next() uint64 {
	r.state += 0x9E3779B97F4A7C15
	z := r.state
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

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
