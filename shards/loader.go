package shards

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/shards/decode"
	"github.com/lavit-org/lavit/shards/stream"
	"github.com/lavit-org/lavit/shards/wds"
)

// MaxGets bounds the shard GETs a Loader has in flight at once, however
// far ahead it is asked to prefetch: prefetches queue behind them, so a
// deep prefetch keeps this many GETs busy without flooding the store.
const MaxGets = 4

// readBuffer is the read-ahead for streaming a shard.
const readBuffer = 64 << 10

// Loader turns a rank's stream refs into samples: it fetches whole shards
// (each verified against the manifest), keeps the most recent ones, and
// prefetches the shards the next steps need, so reading overlaps compute.
//
// A Loader has one consumer. The samples a Samples call returns point into
// the shard's buffer and are valid until the next Samples call: buffers of
// shards evicted from the cache are reused then, so a steady stream of
// shards does not fault in fresh memory for every one (that cost a quarter
// of the read throughput).
type Loader struct {
	src     objstore.Source
	m       *Manifest
	lim     wds.Limits
	keep    int
	mu      sync.Mutex
	cache   map[int]*shardData
	order   []int         // shard indices, least recently used first
	retired []*shardData  // evicted; buffers reusable at the next Samples call
	free    [][]byte      // shard buffers ready for reuse
	reused  int           // fetches that reused a buffer
	gets    chan struct{} // one slot per shard GET in flight (see MaxGets)
}

type shardData struct {
	ready   chan struct{}
	samples []wds.Sample
	err     error
	buf     []byte // the shard's bytes (samples point into it); nil if streamed
}

// NewLoader reads the manifest's shards from src, keeping up to keepShards
// (default 8) decoded shards in memory.
func NewLoader(src objstore.Source, m *Manifest, keepShards int) *Loader {
	if keepShards <= 0 {
		keepShards = 8
	}
	return &Loader{src: src, m: m, lim: wds.DefaultLimits(), keep: keepShards, cache: map[int]*shardData{}, gets: make(chan struct{}, MaxGets)}
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
		l.retired = append(l.retired, l.cache[l.order[0]])
		delete(l.cache, l.order[0])
		l.order = l.order[1:]
	}
	go l.fetch(context.WithoutCancel(ctx), i, d)
	return d
}

// touch marks shard i most recently used (moves it to the end of order).
func (l *Loader) touch(i int) {
	for k, v := range l.order {
		if v == i {
			copy(l.order[k:], l.order[k+1:])
			l.order[len(l.order)-1] = i
			return
		}
	}
}

// wholeShardLimit: shards up to this size are read whole into one buffer
// and parsed in place (samples are subslices of it: one copy from the
// network, no per-member copies); larger ones stream through a bounded
// buffer instead.
const wholeShardLimit = 1 << 30

func (l *Loader) fetch(ctx context.Context, i int, d *shardData) {
	defer close(d.ready)
	e := l.m.Shards[i]
	if e.Bytes < 0 || e.Samples < 0 {
		// A manifest from ParseManifest never has these; one built in
		// code might, and make would panic on a negative size.
		d.err = fmt.Errorf("shard %s: manifest entry has %d bytes, %d samples", e.Name, e.Bytes, e.Samples)
		return
	}
	l.gets <- struct{}{} // a GET slot (see MaxGets), held until the shard is in
	defer func() { <-l.gets }()
	rc, err := l.src.Open(ctx, e.Name, 0, -1)
	if err != nil {
		d.err = fmt.Errorf("shard %s: %w", e.Name, err)
		return
	}
	defer rc.Close()
	// Room for the manifest's count (every sample takes at least a
	// 512-byte header, which bounds a count no shard could hold).
	d.samples = make([]wds.Sample, 0, max(0, min(e.Samples, int(e.Bytes/512))))
	collect := func(s wds.Sample) error {
		d.samples = append(d.samples, s)
		return nil
	}
	if e.Bytes <= wholeShardLimit {
		// Parse as the bytes arrive (while they are in the CPU's cache),
		// into one buffer the samples then point into.
		buf := l.takeBuffer(e.Bytes)[:e.Bytes]
		vr := NewVerifiedReader(rc, e)
		_, err = wds.ScanInPlace(vr, buf, e.Name, l.lim, collect)
		// Read on to the end (the tar's trailing padding, or whatever a
		// failed parse left): the verifier checks size and checksum there,
		// and a shard that changed is reported as that, whatever the parse
		// made of it.
		if _, verr := io.Copy(io.Discard, vr); verr != nil {
			err = verifyError(e, verr)
		}
		if err != nil {
			d.samples = nil
			l.giveBuffer(buf) // nothing points into it
		} else {
			d.buf = buf
		}
	} else {
		// Tar reads 512-byte headers; buffer so they are not one syscall
		// or one network read each.
		vr := NewVerifiedReader(bufio.NewReaderSize(rc, readBuffer), e)
		if _, err = wds.Scan(vr, e.Name, l.lim, collect); err == nil {
			_, err = io.Copy(io.Discard, vr) // hash the tail too
		}
	}
	if err != nil {
		d.err = err
		return
	}
	if len(d.samples) != e.Samples {
		d.err = fmt.Errorf("shard %s: %d samples, manifest says %d: %w", e.Name, len(d.samples), e.Samples, ErrShardChanged)
	}
}

// takeBuffer returns a reused buffer of at least n bytes, or a new one.
func (l *Loader) takeBuffer(n int64) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, b := range l.free {
		if int64(cap(b)) >= n {
			l.free = append(l.free[:k], l.free[k+1:]...)
			l.reused++
			return b
		}
	}
	return make([]byte, n)
}

// giveBuffer offers a buffer for reuse (the free list holds at most keep).
func (l *Loader) giveBuffer(b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.giveBufferLocked(b)
}

func (l *Loader) giveBufferLocked(b []byte) {
	if b != nil && len(l.free) < l.keep {
		l.free = append(l.free, b[:cap(b)])
	}
}

// recycle moves the buffers of evicted shards whose fetch has finished to
// the free list. Called when a Samples call starts: by the Loader's
// contract, samples from earlier calls are no longer in use.
func (l *Loader) recycle() {
	l.mu.Lock()
	defer l.mu.Unlock()
	kept := l.retired[:0]
	for _, d := range l.retired {
		select {
		case <-d.ready:
			l.giveBufferLocked(d.buf)
			d.buf, d.samples = nil, nil
		default:
			kept = append(kept, d) // still fetching: recycle later
		}
	}
	clear(l.retired[len(kept):])
	l.retired = kept
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
// or no longer matches the manifest is an error. The samples' bytes are valid
// until the next Samples call (see Loader).
func (l *Loader) Samples(ctx context.Context, refs []stream.Ref) ([]wds.Sample, error) {
	l.recycle()
	out := make([]wds.Sample, len(refs))
	var d *shardData
	for k, r := range refs {
		if k == 0 || r.Shard != refs[k-1].Shard { // refs come in runs per shard
			var err error
			if d, err = l.ready(ctx, r.Shard); err != nil {
				return nil, err
			}
		}
		if r.Index >= len(d.samples) {
			return nil, fmt.Errorf("shard %s has no sample %d", l.m.Shards[r.Shard].Name, r.Index)
		}
		out[k] = d.samples[r.Index]
	}
	return out, nil
}

// ready waits for shard i to be fetched and returns it, or its error (and
// forgets the failed fetch so that a later call tries again).
func (l *Loader) ready(ctx context.Context, i int) (*shardData, error) {
	d := l.shard(ctx, i)
	select {
	case <-d.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if d.err != nil {
		l.mu.Lock()
		if l.cache[i] == d {
			delete(l.cache, i)
		}
		l.mu.Unlock()
		return nil, d.err
	}
	return d, nil
}

// Decoded is a batch turned into model inputs.
type Decoded struct {
	Images   []float32 // n × 3 × size × size
	Captions []string
	Valid    []bool // false: bad sample, masked (zeros in Images)
	// TextOnly marks valid samples without an image (zeros in Images):
	// stage 2 trains on their captions, stage 1 cannot use them
	// (MaskTextOnly).
	TextOnly []bool
	Errors   []error
}

// ErrNoImage masks a text-only sample where images are needed.
var ErrNoImage = errors.New("no image (a text-only sample: only stage 2 trains on those)")

// MaskTextOnly marks the text-only samples invalid, with ErrNoImage, for
// a stage that needs images.
func (d *Decoded) MaskTextOnly() {
	for i, t := range d.TextOnly {
		if t {
			d.Valid[i], d.TextOnly[i], d.Errors[i] = false, false, ErrNoImage
		}
	}
}

// DecodeBatch decodes samples in parallel (workers ≤ 0: one per core)
// with the tiny configs' preprocessing at size×size. Bad samples are
// masked, not dropped, so positions never shift.
func DecodeBatch(samples []wds.Sample, size, workers int) Decoded {
	return DecodeBatchWith(samples, decode.Tiny(size), workers)
}

// DecodeBatchWith is DecodeBatch with the preprocessing p.
func DecodeBatchWith(samples []wds.Sample, p decode.Preprocess, workers int) Decoded {
	size := p.Size
	n, per := len(samples), 3*size*size
	d := Decoded{Images: make([]float32, n*per), Captions: make([]string, n), Valid: make([]bool, n), TextOnly: make([]bool, n), Errors: make([]error, n)}
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
				d.TextOnly[i], d.Errors[i] = decodeOne(samples[i], p, d.Images[i*per:(i+1)*per], &d.Captions[i])
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

// decodeOne decodes one sample into dst and caption, and reports whether
// it has no image.
func decodeOne(s wds.Sample, p decode.Preprocess, dst []float32, caption *string) (textOnly bool, err error) {
	img, c, err := decodeSample(s, p)
	if err != nil {
		return false, err
	}
	copy(dst, img)
	*caption = c
	return img == nil, nil
}
