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
//	reduce-scatter, step g = 0…n−2: send s_{r−g}, receive s_{r−g−1} and add
//	all-gather,     step g = 0…n−2: send s_{r+1−g}, receive s_{r−g} in place
//
// (indices mod n). After reduce-scatter rank r holds the full sum of
// s_{r+1}. What is sent at step t+1 is what was received at step t, so the
// chunks stream around the ring without a pause between steps.
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

func allReducePlan(total, n, r, chunk int, scale bool) plan {
	mod := func(i int) int { return ((i % n) + n) % n }
	last := 2*n - 3 // the last step (global numbering: n−1 reduce-scatter steps, then all-gather)
	// sends[g]: the chunks sent at step g. What is received at step g is
	// what is sent at step g+1, so sends[last+1] is the final receive.
	sends := make([][]span, last+2)
	for g := range sends {
		seg := segment(total, n, mod(r-g)) // reduce-scatter
		if g >= n-1 {
			seg = segment(total, n, mod(r+1-(g-n+1))) // all-gather
		}
		sends[g] = chunks(seg, chunk)
	}
	// sentBefore[g]: how many chunks the sender writes before step g.
	sentBefore := make([]int, last+2)
	for g := 0; g <= last; g++ {
		sentBefore[g+1] = sentBefore[g] + len(sends[g])
	}
	p := plan{first: sends[0]}
	for g := 0; g <= last; g++ {
		rs := g < n-1
		for k, s := range sends[g+1] {
			it := recvItem{span: s, reduce: rs, scale: scale && g == n-2, forward: g < last}
			if !rs {
				// s_{r−t} was sent at reduce-scatter step t = g−n+1.
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
