// Package stream is the deterministic sample stream: a pure function of
// (manifest, seed, epoch) that maps each position of an epoch to one sample,
// the same for any number of workers. See ../DESIGN.md for the algorithm.
package stream

import (
	"errors"
	"fmt"
	"sort"
)

// Shard is one shard of the manifest: its name and sample count.
type Shard struct {
	Name    string
	Samples int
}

// Ref names one sample of the stream.
type Ref struct {
	Shard    int   // index into the manifest's shard list
	Index    int   // sample index within the shard
	Epoch    int   // the epoch this position belongs to
	Position int64 // global position: epoch·Total + position in the epoch; keys per-sample randomness
}

// DefaultBlockShards is how many shards one shuffle block spans.
const DefaultBlockShards = 4

// Stream maps positions to samples. It is immutable and safe to share.
type Stream struct {
	shards      []Shard
	seed        uint64
	blockShards int
	total       int64
	offsets     []int64 // offsets[i]: first position of shard i in manifest order
}

// New builds the stream of a manifest. blockShards ≤ 0 takes the default.
func New(shards []Shard, seed uint64, blockShards int) (*Stream, error) {
	if len(shards) == 0 {
		return nil, errors.New("stream: the manifest has no shards")
	}
	if blockShards <= 0 {
		blockShards = DefaultBlockShards
	}
	s := &Stream{shards: append([]Shard(nil), shards...), seed: seed, blockShards: blockShards}
	for i, sh := range shards {
		if sh.Samples < 0 {
			return nil, fmt.Errorf("stream: shard %d (%s) has %d samples", i, sh.Name, sh.Samples)
		}
		s.offsets = append(s.offsets, s.total)
		s.total += int64(sh.Samples)
	}
	if s.total == 0 {
		return nil, errors.New("stream: the manifest has no samples")
	}
	return s, nil
}

// Total is the number of samples in one epoch.
func (s *Stream) Total() int64 { return s.total }

// epochLayout is the shuffled shard order of one epoch cut into blocks.
type epochLayout struct {
	order      []int   // shard indices in this epoch's order
	blockStart []int64 // first position of each block
	blockFirst []int   // index into order of each block's first shard
}

// layout computes an epoch's shard order and blocks (O(shards)).
func (s *Stream) layout(epoch int) epochLayout {
	var l epochLayout
	l.order = make([]int, len(s.shards))
	for i := range l.order {
		l.order[i] = i
	}
	rng := newRNG(mix(mix(s.seed^0x5A4D) ^ uint64(epoch)))
	for i := len(l.order) - 1; i > 0; i-- { // Fisher-Yates
		j := int(rng.below(uint64(i + 1)))
		l.order[i], l.order[j] = l.order[j], l.order[i]
	}
	var pos int64
	for b := 0; b < len(l.order); b += s.blockShards {
		l.blockStart = append(l.blockStart, pos)
		l.blockFirst = append(l.blockFirst, b)
		for k := b; k < min(b+s.blockShards, len(l.order)); k++ {
			pos += int64(s.shards[l.order[k]].Samples)
		}
	}
	return l
}

// At returns the sample at position pos (0 ≤ pos < Total) of an epoch.
func (s *Stream) At(epoch int, pos int64) (Ref, error) {
	if pos < 0 || pos >= s.total {
		return Ref{}, fmt.Errorf("stream: position %d outside the epoch (0..%d)", pos, s.total-1)
	}
	return s.at(s.layout(epoch), epoch, pos), nil
}

func (s *Stream) at(l epochLayout, epoch int, pos int64) Ref {
	b := sort.Search(len(l.blockStart), func(i int) bool { return l.blockStart[i] > pos }) - 1
	start := l.blockStart[b]
	end := s.total
	if b+1 < len(l.blockStart) {
		end = l.blockStart[b+1]
	}
	// Samples inside a block are shuffled by a keyed bijection of [0, size).
	j := permute(pos-start, end-start, mix(mix(s.seed^0xB10C)^uint64(epoch))^uint64(b))
	for k := l.blockFirst[b]; ; k++ {
		n := int64(s.shards[l.order[k]].Samples)
		if j < n {
			return Ref{Shard: l.order[k], Index: int(j), Epoch: epoch, Position: int64(epoch)*s.total + pos}
		}
		j -= n
	}
}

// StepsPerEpoch is how many global batches of size batch one epoch holds.
// The last partial batch of an epoch is dropped; the next epoch reshuffles.
func (s *Stream) StepsPerEpoch(batch int) int64 { return s.total / int64(batch) }

// Batch returns global batch `step` (counting from the start of training):
// positions [k·B, (k+1)·B) of its epoch, where k is the step within the
// epoch. from/to select a rank's slice (see RankSlice); 0, batch is all.
func (s *Stream) Batch(step int64, batch, from, to int) ([]Ref, error) {
	if batch <= 0 || int64(batch) > s.total {
		return nil, fmt.Errorf("stream: global batch %d must be between 1 and the epoch size %d", batch, s.total)
	}
	if from < 0 || to > batch || from > to {
		return nil, fmt.Errorf("stream: slice [%d, %d) outside the batch of %d", from, to, batch)
	}
	spe := s.StepsPerEpoch(batch)
	epoch := int(step / spe)
	first := (step % spe) * int64(batch)
	l := s.layout(epoch)
	out := make([]Ref, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, s.at(l, epoch, first+int64(i)))
	}
	return out, nil
}

// RankSlice is rank r's share of a global batch of B samples over W ranks:
// contiguous, sizes differing by at most one, together exactly [0, B).
func RankSlice(batch, world, rank int) (from, to int) {
	return rank * batch / world, (rank + 1) * batch / world
}

// GroupSlice is rank r's share of a global batch of B samples cut into
// groups of g (g divides B) over W ranks: whole groups, ⌊G/W⌋ or ⌈G/W⌉
// of the G = B/g, in order (bitwise-reproducible runs: a group's samples
// share a forward/backward whatever the world size).
func GroupSlice(batch, group, world, rank int) (from, to int) {
	groups := batch / group
	return rank * groups / world * group, (rank + 1) * groups / world * group
}

// Cursor is all a checkpoint needs to resume the stream: the next global
// step (the epoch and position follow from it and the batch size).
type Cursor struct {
	Step int64 `json:"step"`
}

// Epoch of a cursor for a batch size.
func (s *Stream) Epoch(c Cursor, batch int) int { return int(c.Step / s.StepsPerEpoch(batch)) }
