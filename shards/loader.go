package shards

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/lavit-org/lavit/shards/decode"
	"github.com/lavit-org/lavit/shards/stream"
	"github.com/lavit-org/lavit/shards/wds"
)

// readBuffer is the read-ahead for streaming a shard.
const readBuffer = 1 << 20

// Loader turns a rank's stream refs into samples: it fetches whole shards
// (each verified against the manifest), keeps the most recent ones, and
// prefetches the shards the next steps need, so reading overlaps compute.
type Loader struct {
	src   Source
	m     *Manifest
	lim   wds.Limits
	keep  int
	mu    sync.Mutex
	cache map[int]*shardData
	order []int // shard indices, least recently used first
}

type shardData struct {
	ready   chan struct{}
	samples []wds.Sample
	err     error
}

// NewLoader reads the manifest's shards from src, keeping up to keepShards
// (default 8) decoded shards in memory.
func NewLoader(src Source, m *Manifest, keepShards int) *Loader {
	if keepShards <= 0 {
		keepShards = 8
	}
	return &Loader{src: src, m: m, lim: wds.DefaultLimits(), keep: keepShards, cache: map[int]*shardData{}}
}

// shard returns the cache entry for a shard, starting its fetch if needed.
func (l *Loader) shard(ctx context.Context, i int) *shardData {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d, ok := l.cache[i]; ok {
		l.touch(i)
		return d
	}
	d := &shardData{ready: make(chan struct{})}
	l.cache[i] = d
	l.order = append(l.order, i)
	for len(l.order) > l.keep {
		delete(l.cache, l.order[0])
		l.order = l.order[1:]
	}
	go l.fetch(context.WithoutCancel(ctx), i, d)
	return d
}

func (l *Loader) touch(i int) {
	for k, v := range l.order {
		if v == i {
			l.order = append(append(l.order[:k:k], l.order[k+1:]...), i)
			return
		}
	}
}

func (l *Loader) fetch(ctx context.Context, i int, d *shardData) {
	defer close(d.ready)
	e := l.m.Shards[i]
	rc, err := l.src.Open(ctx, e.Name, 0, -1)
	if err != nil {
		d.err = fmt.Errorf("shard %s: %w", e.Name, err)
		return
	}
	defer rc.Close()
	// Tar reads 512-byte headers; buffer so they are not one syscall or
	// one network read each.
	vr := NewVerifiedReader(bufio.NewReaderSize(rc, readBuffer), e)
	_, err = wds.Scan(vr, e.Name, l.lim, func(s wds.Sample) error {
		d.samples = append(d.samples, s)
		return nil
	})
	if err == nil {
		_, err = io.Copy(io.Discard, vr) // hash the tail too
	}
	if err != nil {
		d.err = err
		return
	}
	if len(d.samples) != e.Samples {
		d.err = fmt.Errorf("shard %s: %d samples, manifest says %d: %w", e.Name, len(d.samples), e.Samples, ErrShardChanged)
	}
}

// Prefetch starts fetching the shards these refs need.
func (l *Loader) Prefetch(ctx context.Context, refs []stream.Ref) {
	seen := map[int]bool{}
	for _, r := range refs {
		if !seen[r.Shard] {
			seen[r.Shard] = true
			l.shard(ctx, r.Shard)
		}
	}
}

// Samples returns the samples of refs, in order. A sample that is bad keeps
// its place with Err set (the trainer masks it); a shard that cannot be read
// or no longer matches the manifest is an error.
func (l *Loader) Samples(ctx context.Context, refs []stream.Ref) ([]wds.Sample, error) {
	out := make([]wds.Sample, len(refs))
	for k, r := range refs {
		d := l.shard(ctx, r.Shard)
		select {
		case <-d.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if d.err != nil {
			l.mu.Lock()
			if l.cache[r.Shard] == d { // let a later call try again
				delete(l.cache, r.Shard)
			}
			l.mu.Unlock()
			return nil, d.err
		}
		if r.Index >= len(d.samples) {
			return nil, fmt.Errorf("shard %s has no sample %d", l.m.Shards[r.Shard].Name, r.Index)
		}
		out[k] = d.samples[r.Index]
	}
	return out, nil
}

// Decoded is a batch turned into model inputs.
type Decoded struct {
	Images   []float32 // n × 3 × size × size
	Captions []string
	Valid    []bool // false: bad sample, masked (zeros in Images)
	Errors   []error
}

// DecodeBatch decodes samples in parallel (workers ≤ 0: one per core).
// Bad samples are masked, not dropped, so positions never shift.
func DecodeBatch(samples []wds.Sample, size, workers int) Decoded {
	n, per := len(samples), 3*size*size
	d := Decoded{Images: make([]float32, n*per), Captions: make([]string, n), Valid: make([]bool, n), Errors: make([]error, n)}
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				d.Errors[i] = decodeOne(samples[i], size, d.Images[i*per:(i+1)*per], &d.Captions[i])
				d.Valid[i] = d.Errors[i] == nil
			}
		}()
	}
	for i := range samples {
		next <- i
	}
	close(next)
	wg.Wait()
	return d
}

func decodeOne(s wds.Sample, size int, dst []float32, caption *string) error {
	if err := CheckSampleFields(s); err != nil {
		return err
	}
	field := imageField(s)
	img, err := decode.Image(s.Fields[field], field, size)
	if err != nil {
		return fmt.Errorf("sample %s in %s: %w", s.Key, s.Shard, err)
	}
	c, err := decode.Caption(s.Fields["txt"], MaxCaptionBytes)
	if err != nil {
		return fmt.Errorf("sample %s in %s: %w", s.Key, s.Shard, err)
	}
	copy(dst, img)
	*caption = c
	return nil
}
