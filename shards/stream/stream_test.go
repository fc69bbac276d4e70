package stream

import (
	"fmt"
	"sort"
	"testing"
)

func manifest(counts ...int) []Shard {
	var out []Shard
	for i, c := range counts {
		out = append(out, Shard{Name: fmt.Sprintf("train-%06d.tar", i), Samples: c})
	}
	return out
}

func key(r Ref) string { return fmt.Sprintf("%d/%d", r.Shard, r.Index) }

func TestPermuteIsABijection(t *testing.T) {
	for _, n := range []int64{1, 2, 3, 7, 16, 17, 100, 1000, 4097} {
		seen := make([]bool, n)
		for i := int64(0); i < n; i++ {
			j := permute(i, n, 42)
			if j < 0 || j >= n || seen[j] {
				t.Fatalf("n=%d: permute(%d) = %d repeats or is out of range", n, i, j)
			}
			seen[j] = true
		}
	}
	if permute(5, 1000, 1) == permute(5, 1000, 2) && permute(6, 1000, 1) == permute(6, 1000, 2) {
		t.Fatal("the key does not change the permutation")
	}
}

// TestSameBatchesForAnyWorldSize: the global batches are the same multiset
// for W = 1, 2, 3, 5, every sample appears exactly once per epoch, and the
// rank slices cover each batch exactly.
func TestSameBatchesForAnyWorldSize(t *testing.T) {
	s, err := New(manifest(37, 50, 12, 64, 33, 41, 8, 55), 7, 3)
	if err != nil {
		t.Fatal(err)
	}
	const B = 20
	spe := s.StepsPerEpoch(B)
	for epoch := 0; epoch < 2; epoch++ {
		seen := map[string]int{}
		for k := int64(0); k < spe; k++ {
			step := int64(epoch)*spe + k
			whole, err := s.Batch(step, B, 0, B)
			if err != nil {
				t.Fatal(err)
			}
			want := keys(whole)
			for _, r := range whole {
				seen[key(r)]++
				if r.Epoch != epoch {
					t.Fatalf("step %d: ref in epoch %d, want %d", step, r.Epoch, epoch)
				}
			}
			for _, w := range []int{1, 2, 3, 5} {
				var got []Ref
				for rank := 0; rank < w; rank++ {
					from, to := RankSlice(B, w, rank)
					part, err := s.Batch(step, B, from, to)
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, part...)
				}
				if fmt.Sprint(keys(got)) != fmt.Sprint(want) {
					t.Fatalf("step %d, W=%d: batch differs from W=1", step, w)
				}
			}
		}
		// Every sample once, except the dropped tail of the epoch.
		dupes, total := 0, 0
		for _, n := range seen {
			total++
			if n > 1 {
				dupes++
			}
		}
		if dupes > 0 || int64(total) != spe*B || s.Total()-int64(total) >= B {
			t.Fatalf("epoch %d: %d distinct samples (%d duplicated) of %d; want %d, none twice", epoch, total, dupes, s.Total(), spe*B)
		}
	}
}

func keys(rs []Ref) []string {
	var out []string
	for _, r := range rs {
		out = append(out, key(r))
	}
	sort.Strings(out)
	return out
}

// TestResumeFromAnyCursor: the stream is a pure function, so a fresh Stream
// resumed at any step continues with exactly the batches of the original.
func TestResumeFromAnyCursor(t *testing.T) {
	shards := manifest(30, 30, 30, 30, 30)
	a, _ := New(shards, 3, 2)
	const B = 16
	var all [][]Ref
	for step := int64(0); step < 25; step++ { // crosses epoch boundaries
		b, _ := a.Batch(step, B, 0, B)
		all = append(all, b)
	}
	for cut := int64(0); cut < 25; cut += 4 {
		b, _ := New(shards, 3, 2)
		for step := cut; step < 25; step++ {
			got, _ := b.Batch(step, B, 0, B)
			if fmt.Sprint(got) != fmt.Sprint(all[step]) {
				t.Fatalf("resumed at %d: step %d differs", cut, step)
			}
		}
	}
}

func TestEpochsAndSeedsReshuffle(t *testing.T) {
	shards := manifest(40, 40, 40, 40)
	a, _ := New(shards, 1, 2)
	b, _ := New(shards, 2, 2)
	e0, _ := a.Batch(0, 32, 0, 32)
	e1, _ := a.Batch(a.StepsPerEpoch(32), 32, 0, 32)
	s2, _ := b.Batch(0, 32, 0, 32)
	if fmt.Sprint(keys(e0)) == fmt.Sprint(keys(e1)) {
		t.Error("epoch 1 starts with the same samples as epoch 0")
	}
	if fmt.Sprint(keys(e0)) == fmt.Sprint(keys(s2)) {
		t.Error("another seed gives the same first batch")
	}
	if e1[0].Position < a.Total() {
		t.Errorf("epoch-1 position %d is not past epoch 0", e1[0].Position)
	}
}

// TestRanksReadFewShards: a rank's slice of a batch comes from a few shards
// (one or two shuffle blocks), so workers stream shards instead of seeking.
func TestRanksReadFewShards(t *testing.T) {
	var counts []int
	for i := 0; i < 64; i++ {
		counts = append(counts, 100)
	}
	s, _ := New(manifest(counts...), 9, 4)
	const B, W = 64, 4
	worst := 0
	for step := int64(0); step < s.StepsPerEpoch(B); step++ {
		for rank := 0; rank < W; rank++ {
			from, to := RankSlice(B, W, rank)
			refs, _ := s.Batch(step, B, from, to)
			shards := map[int]bool{}
			for _, r := range refs {
				shards[r.Shard] = true
			}
			worst = max(worst, len(shards))
		}
	}
	if worst > 8 { // at most two blocks of four shards
		t.Fatalf("a rank read %d shards for one step; want at most 8 of 64", worst)
	}
}

func TestStreamErrors(t *testing.T) {
	if _, err := New(nil, 1, 0); err == nil {
		t.Error("empty manifest accepted")
	}
	if _, err := New(manifest(0, 0), 1, 0); err == nil {
		t.Error("manifest without samples accepted")
	}
	s, _ := New(manifest(10), 1, 0)
	if _, err := s.Batch(0, 11, 0, 11); err == nil {
		t.Error("batch larger than the epoch accepted")
	}
	if _, err := s.Batch(0, 4, 3, 2); err == nil {
		t.Error("inverted slice accepted")
	}
	if _, err := s.At(0, 10); err == nil {
		t.Error("position past the epoch accepted")
	}
}

// TestGroupSlice: for every world the ranks' slices are whole groups,
// cover the batch once in order, and differ in size by at most a group.
func TestGroupSlice(t *testing.T) {
	for _, tc := range []struct{ batch, group int }{{8, 2}, {12, 3}, {10, 1}, {64, 16}} {
		groups := tc.batch / tc.group
		for world := 1; world <= groups; world++ {
			next, least, most := 0, tc.batch, 0
			for rank := range world {
				from, to := GroupSlice(tc.batch, tc.group, world, rank)
				if from != next || from%tc.group != 0 || to%tc.group != 0 || to < from {
					t.Fatalf("batch %d group %d world %d rank %d: [%d,%d) after %d", tc.batch, tc.group, world, rank, from, to, next)
				}
				next = to
				least, most = min(least, to-from), max(most, to-from)
			}
			if next != tc.batch || most-least > tc.group {
				t.Fatalf("batch %d group %d world %d: covers %d, sizes %d..%d", tc.batch, tc.group, world, next, least, most)
			}
		}
	}
}
