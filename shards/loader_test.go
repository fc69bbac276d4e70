package shards

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/shards/stream"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
)

// s3Config builds a source configuration for a test server (or a proxy
// in front of it): few, fast retries.
func s3Config(srv *testutil.S3Server, endpoint string) objstore.S3Config {
	return objstore.S3Config{
		Endpoint:   endpoint,
		Region:     srv.Region,
		AccessKey:  srv.AccessKey,
		SecretKey:  srv.SecretKey,
		PathStyle:  true,
		MaxRetries: 3,
		RetryBase:  time.Millisecond,
	}
}

func synthSet(t *testing.T, src objstore.Source, n, perShard int) *Manifest {
	t.Helper()
	ctx := context.Background()
	if _, err := WriteSynth(ctx, src, 0, synth.Train, n, perShard, nil); err != nil {
		t.Fatal(err)
	}
	m, err := Index(ctx, src, nil, wds.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// checkBatches reads a few global batches through the loader, split over
// W ranks, and compares every decoded image and caption with the generator.
func checkBatches(t *testing.T, src objstore.Source, m *Manifest, perShard int) {
	t.Helper()
	ctx := context.Background()
	st, err := m.Stream(5, 2)
	if err != nil {
		t.Fatal(err)
	}
	const B, W = 16, 3
	for step := int64(0); step < 4; step++ {
		for rank := 0; rank < W; rank++ {
			l := NewLoader(src, m, 4)
			from, to := rankSlice(B, W, rank)
			refs, _ := st.Batch(step, B, from, to)
			next, _ := st.Batch(step+1, B, from, to)
			l.Prefetch(ctx, next)
			samples, err := l.Samples(ctx, refs)
			if err != nil {
				t.Fatal(err)
			}
			d := DecodeBatch(samples, 32, 2)
			for k, r := range refs {
				want := synth.Generate(0, synth.Train, r.Shard*perShard+r.Index)
				if !d.Valid[k] || d.Captions[k] != want.Caption {
					t.Fatalf("step %d rank %d: sample %d is %q (valid %v), want %q", step, rank, k, d.Captions[k], d.Valid[k], want.Caption)
				}
				img := d.Images[k*3*32*32 : (k+1)*3*32*32]
				for i, v := range want.Float32CHW() {
					if math.Abs(float64(img[i]-v)) > 1e-6 {
						t.Fatalf("sample %s: pixel %d is %v, want %v", want.Key, i, img[i], v)
					}
				}
			}
		}
	}
}

func rankSlice(b, w, r int) (int, int) { return r * b / w, (r + 1) * b / w }

func TestLoaderFile(t *testing.T) {
	src, _ := objstore.NewFileSource(t.TempDir())
	m := synthSet(t, src, 100, 12)
	checkBatches(t, src, m, 12)
}

// TestLoaderS3DropsMidShard: the S3 server drops every connection after
// 20 KiB; the loader's reads resume and the samples are exactly right.
func TestLoaderS3DropsMidShard(t *testing.T) {
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "data")
	direct, err := objstore.NewS3Source("data", "set", s3Config(srv, srv.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	m := synthSet(t, direct, 60, 20)
	proxy := testutil.StartProxy(t, srv.Addr)
	proxy.CutAfter(20 << 10)
	flaky, err := objstore.NewS3Source("data", "set", s3Config(srv, proxy.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	checkBatches(t, flaky, m, 20)
	if proxy.Cuts() == 0 {
		t.Fatal("the proxy never cut a connection; the test proved nothing")
	}
}

// TestLoaderRefusesChangedShard: a shard changed after indexing is an
// error naming it, never silently different samples, however the change
// shows while parsing (the loader parses as the bytes arrive): other
// content, truncated, extended, a header smashed in the middle. The
// loader goes on serving the shards that did not change.
func TestLoaderRefusesChangedShard(t *testing.T) {
	ctx := context.Background()
	other, _ := objstore.NewFileSource(t.TempDir())
	WriteSynth(ctx, other, 7, synth.Train, 20, 10, nil)
	changes := []struct {
		name   string
		change func(orig []byte) []byte
	}{
		{"other content", func([]byte) []byte {
			rc, _ := other.Open(ctx, "train-000000.tar", 0, -1)
			defer rc.Close()
			b, _ := io.ReadAll(rc)
			return b
		}},
		{"truncated mid-member", func(b []byte) []byte { return b[:len(b)/2+100] }},
		{"extended", func(b []byte) []byte { return append(bytes.Clone(b), make([]byte, 1024)...) }},
		{"header smashed", func(b []byte) []byte {
			b = bytes.Clone(b)
			copy(b[len(b)/2/512*512:], bytes.Repeat([]byte{'z'}, 512))
			return b
		}},
	}
	for _, c := range changes {
		t.Run(c.name, func(t *testing.T) {
			src, _ := objstore.NewFileSource(t.TempDir())
			m := synthSet(t, src, 20, 10)
			name := m.Shards[0].Name
			rc, _ := src.Open(ctx, name, 0, -1)
			orig, _ := io.ReadAll(rc)
			rc.Close()
			changed := c.change(orig)
			src.Put(ctx, name, bytes.NewReader(changed), int64(len(changed)))
			st, _ := m.Stream(1, 1)
			refs, _ := st.Batch(0, 20, 0, 20)
			l := NewLoader(src, m, 2)
			var first, second []stream.Ref
			for _, r := range refs {
				if r.Shard == 0 {
					first = append(first, r)
				} else {
					second = append(second, r)
				}
			}
			_, err := l.Samples(ctx, first)
			if !errors.Is(err, ErrShardChanged) || !strings.Contains(err.Error(), name) {
				t.Fatalf("got %v, want ErrShardChanged naming %s", err, name)
			}
			if got, err := l.Samples(ctx, second); err != nil || len(got) != len(second) {
				t.Fatalf("the unchanged shard: %d samples, %v", len(got), err)
			}
		})
	}
}

// TestDecodeBatchMasksBadSamples: a bad sample keeps its slot, masked.
func TestDecodeBatchMasksBadSamples(t *testing.T) {
	good := synth.Generate(0, synth.Train, 1)
	png, _ := good.PNG()
	samples := []wds.Sample{
		{Key: "a", Shard: "s.tar", Fields: []wds.Field{{Name: "png", Data: png}, {Name: "txt", Data: []byte(good.Caption)}}},
		{Key: "b", Shard: "s.tar", Fields: []wds.Field{{Name: "png", Data: []byte("not a png")}, {Name: "txt", Data: []byte("x")}}},
		{Key: "c", Shard: "s.tar", Err: errors.New("oversized member")},
		{Key: "d", Shard: "s.tar", Fields: []wds.Field{{Name: "png", Data: png}, {Name: "txt", Data: []byte(good.Caption)}}},
	}
	d := DecodeBatch(samples, 32, 2)
	if want := []bool{true, false, false, true}; d.Valid[0] != want[0] || d.Valid[1] != want[1] || d.Valid[2] != want[2] || d.Valid[3] != want[3] {
		t.Fatalf("valid %v, want %v", d.Valid, want)
	}
	for _, v := range d.Images[3*32*32 : 2*3*32*32] {
		if v != 0 {
			t.Fatal("a masked sample's image is not zero")
		}
	}
}

// TestLoaderReusesBuffers: one loader with a small cache reads a long
// stream, prefetching the next step before taking each one (as a worker
// does), so evicted shards' buffers are reused again and again; every
// sample of every step must still be exactly the generator's.
func TestLoaderReusesBuffers(t *testing.T) {
	ctx := context.Background()
	src, _ := objstore.NewFileSource(t.TempDir())
	const perShard = 5
	m := synthSet(t, src, 60, perShard)
	st, err := m.Stream(9, 1)
	if err != nil {
		t.Fatal(err)
	}
	l := NewLoader(src, m, 2)
	const B = 8
	for step := int64(0); step < 30; step++ { // four passes over the shards
		refs, err := st.Batch(step, B, 0, B)
		if err != nil {
			t.Fatal(err)
		}
		next, _ := st.Batch(step+1, B, 0, B)
		l.Prefetch(ctx, next)
		samples, err := l.Samples(ctx, refs)
		if err != nil {
			t.Fatal(err)
		}
		for k, r := range refs {
			want := synth.Generate(0, synth.Train, r.Shard*perShard+r.Index)
			png, _ := want.PNG()
			txt, _ := samples[k].Field("txt")
			gotPNG, _ := samples[k].Field("png")
			if samples[k].Key != want.Key || string(txt) != want.Caption || !bytes.Equal(gotPNG, png) {
				t.Fatalf("step %d: sample %d is %q %q, want %q %q", step, k, samples[k].Key, txt, want.Key, want.Caption)
			}
		}
	}
	if l.reused == 0 {
		t.Error("no shard buffer was ever reused")
	}
}
