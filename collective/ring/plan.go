package ring

// A plan is one rank's traffic for one call, as two ordered lists: what
// the sender writes without waiting (first), and what the receiver reads
// (recv). Every received chunk marked forward is handed to the sender,
// which writes it next; so after the first step the sender forwards
// exactly the chunks the receiver finished, in order.
//
// All-reduce of L elements over n ranks (rank r, segments s_0…s_{n−1} of
// L/n elements, the first L mod n one longer), 2(n−1) steps:
//
//	reduce-scatter, step g = 0…n−2: send s_{r−1−g}, receive s_{r−2−g} and add
//	all-gather,     step g = 0…n−2: send s_{r−g}, receive s_{r−1−g} in place
//
// (indices mod n). After reduce-scatter rank r holds the full sum of s_r,
// summed from rank r+1 around the ring: ((x_{r+1} + x_{r+2}) + …) + x_r.
// What is sent at step t+1 is what was received at step t, so the chunks
// stream around the ring without a pause between steps. ReduceScatter and
// AllGather are the two phases alone (L a multiple of n: the segments are
// the blocks), so a ReduceScatter leaves in block r exactly the bits an
// AllReduce leaves there.
type plan struct {
	first []span
	recv  []recvItem
	nfwd  int // how many recv items are forwarded
}

// span is a range of the caller's buffer, in elements.
type span struct{ off, n int }

type recvItem struct {
	span
	reduce  bool // read into scratch and add; else read into the buffer
	scale   bool // multiply by 1/n after the add (Avg, last reduce step)
	forward bool // hand to the sender afterwards
	// waitSent: the receiver waits until the sender has finished this
	// many writes, because this item overwrites a range sent earlier.
	waitSent int
}

// segment is the i-th of n near-equal parts of total elements.
func segment(total, n, i int) span {
	base, extra := total/n, total%n
	s := span{off: i*base + min(i, extra), n: base}
	if i < extra {
		s.n++
	}
	return s
}

// chunks splits s into pieces of at most chunk elements.
func chunks(s span, chunk int) []span {
	var out []span
	for o := 0; o < s.n; o += chunk {
		out = append(out, span{s.off + o, min(chunk, s.n-o)})
	}
	return out
}

// phases says which phases of the ring a call runs.
type phases int

const (
	reduceScatter phases = 1 << iota // reduce-scatter steps
	allGather                        // all-gather steps
	bothPhases    = reduceScatter | allGather
)

// part is the range of a whole buffer that one call reduces: elements
// [off, off+n) of total. A call on the whole buffer is {0, total, total}.
type part struct{ off, n, total int }

// whole is the part that is the whole buffer of n elements.
func whole(n int) part { return part{0, n, n} }

// segmentOf is the i-th segment of the whole buffer as it falls in the
// part, in the part's own offsets (empty where they do not meet). Every
// element therefore travels the ring, and is summed, exactly as in a call
// on the whole buffer: reducing a buffer part by part leaves its bits.
func (pt part) segmentOf(n, i int) span {
	s := segment(pt.total, n, i)
	lo, hi := max(s.off, pt.off), min(s.off+s.n, pt.off+pt.n)
	if hi <= lo {
		return span{}
	}
	return span{lo - pt.off, hi - lo}
}

// ringPlan is rank r's plan for the given phases of a ring all-reduce of
// the part pt of a buffer (see plan and part). scale: multiply by 1/n at
// the last reduce-scatter step (Avg).
func ringPlan(pt part, n, r, chunk int, ph phases, scale bool) plan {
	mod := func(i int) int { return ((i % n) + n) % n }
	// Global steps: 0…n−2 reduce-scatter, n−1…2n−3 all-gather. At every
	// step g rank r sends s_{r−1−g} (in the all-gather, s_{r−(g−n+1)}, the
	// same segment mod n).
	first, last := 0, 2*n-3
	if ph&reduceScatter == 0 {
		first = n - 1
	}
	if ph&allGather == 0 {
		last = n - 2
	}
	// sends[g-first]: the chunks sent at step g. What is received at step
	// g is what is sent at step g+1, so the entry after last is the final
	// receive.
	steps := last - first + 1
	sends := make([][]span, steps+1)
	for i := range sends {
		sends[i] = chunks(pt.segmentOf(n, mod(r-1-(first+i))), chunk)
	}
	// sentBefore[i]: how many chunks the sender writes before step first+i.
	sentBefore := make([]int, steps+1)
	for i := range steps {
		sentBefore[i+1] = sentBefore[i] + len(sends[i])
	}
	p := plan{first: sends[0]}
	for i := range steps {
		g := first + i
		rs := g < n-1
		for k, s := range sends[i+1] {
			it := recvItem{span: s, reduce: rs, scale: scale && g == n-2, forward: g < last}
			if !rs && first == 0 {
				// The all-gather overwrites s_{r−2−g}, which this rank
				// sent at reduce-scatter step g−n+1.
				it.waitSent = sentBefore[g-n+1] + k + 1
			}
			if it.forward {
				p.nfwd++
			}
			p.recv = append(p.recv, it)
		}
	}
	return p
}

// broadcastPlan: the root streams its buffer to the next rank; every other
// rank receives in place and forwards, except the one before the root.
func broadcastPlan(total, n, r, root, chunk int) plan {
	all := span{0, total}
	if r == root {
		return plan{first: chunks(all, chunk)}
	}
	var p plan
	forward := (r+1)%n != root
	for _, s := range chunks(all, chunk) {
		p.recv = append(p.recv, recvItem{span: s, forward: forward})
		if forward {
			p.nfwd++
		}
	}
	return p
}
