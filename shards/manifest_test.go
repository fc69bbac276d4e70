package shards

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
)

// TestSynthIndexStream: synth shards → index → manifest round trip →
// stream over the manifest reads back the right samples.
func TestSynthIndexStream(t *testing.T) {
	ctx := context.Background()
	src, err := objstore.NewFileSource(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	names, err := WriteSynth(ctx, src, 0, synth.Train, 50, 16, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 4 {
		t.Fatalf("%d shards for 50 samples at 16 per shard, want 4", len(names))
	}
	m, err := Index(ctx, src, nil, wds.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Samples() != 50 || m.Shards[3].Samples != 2 {
		t.Fatalf("manifest counts %d samples (last shard %d), want 50 (2)", m.Samples(), m.Shards[3].Samples)
	}
	if err := WriteManifest(ctx, src, m); err != nil {
		t.Fatal(err)
	}
	back, err := LoadManifest(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if back.Hash() != m.Hash() {
		t.Fatal("manifest hash changed across a write and read")
	}

	// Every ref of the stream resolves to the synthetic sample it names.
	st, err := back.Stream(1, 2)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := st.Batch(0, 48, 0, 48)
	if err != nil {
		t.Fatal(err)
	}
	byShard := map[string][]wds.Sample{}
	for _, e := range back.Shards {
		rc, err := src.Open(ctx, e.Name, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		_, err = wds.Scan(NewVerifiedReader(rc, e), e.Name, wds.DefaultLimits(), func(s wds.Sample) error {
			byShard[e.Name] = append(byShard[e.Name], s)
			return nil
		})
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range refs {
		s := byShard[back.Shards[r.Shard].Name][r.Index]
		want := synth.Generate(0, synth.Train, r.Shard*16+r.Index)
		if txt, _ := s.Field("txt"); s.Key != want.Key || string(txt) != want.Caption {
			t.Fatalf("ref %+v read %s %q, want %s %q", r, s.Key, txt, want.Key, want.Caption)
		}
	}
}

// TestChangedShardIsRefused: a shard rewritten after indexing is detected.
func TestChangedShardIsRefused(t *testing.T) {
	ctx := context.Background()
	src, _ := objstore.NewFileSource(t.TempDir())
	WriteSynth(ctx, src, 0, synth.Train, 20, 10, nil)
	m, err := Index(ctx, src, nil, wds.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Replace shard 1 with different (valid) content of another seed.
	other, _ := objstore.NewFileSource(t.TempDir())
	WriteSynth(ctx, other, 9, synth.Train, 20, 10, nil)
	rc, _ := other.Open(ctx, m.Shards[1].Name, 0, -1)
	b, _ := io.ReadAll(rc)
	rc.Close()
	src.Put(ctx, m.Shards[1].Name, bytes.NewReader(b), int64(len(b)))

	rc, _ = src.Open(ctx, m.Shards[1].Name, 0, -1)
	defer rc.Close()
	_, err = io.Copy(io.Discard, NewVerifiedReader(rc, m.Shards[1]))
	if !errors.Is(err, ErrShardChanged) || !strings.Contains(err.Error(), m.Shards[1].Name) {
		t.Fatalf("got %v, want ErrShardChanged naming the shard", err)
	}
	// A shard that vanished after indexing: a clear not-found error.
	if _, err := src.Open(ctx, "train-999999.tar", 0, -1); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("vanished shard: %v", err)
	}
}

func TestLoadManifestErrors(t *testing.T) {
	ctx := context.Background()
	src, _ := objstore.NewFileSource(t.TempDir())
	if _, err := LoadManifest(ctx, src); err == nil || !strings.Contains(err.Error(), "shards index") {
		t.Fatalf("no manifest: %v", err)
	}
	for name, body := range map[string]string{
		"garbage":       "not json",
		"unknown field": `{"version":1,"shards":[{"name":"a.tar","samples":1}],"extra":1}`,
		"bad version":   `{"version":7,"shards":[{"name":"a.tar","samples":1}]}`,
		"no shards":     `{"version":1,"shards":[]}`,
	} {
		src.Put(ctx, ManifestName, strings.NewReader(body), int64(len(body)))
		if _, err := LoadManifest(ctx, src); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSynthShardBytes(t *testing.T) {
	ctx := context.Background()
	src, _ := objstore.NewFileSource(t.TempDir())
	names, err := WriteSynthSized(ctx, src, 0, synth.Train, 100, 1000, 20000, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Index(ctx, src, names, wds.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) < 3 || m.Samples() != 100 {
		t.Fatalf("%d shards, %d samples; want several shards of ~20 kB holding all 100", len(names), m.Samples())
	}
	for _, e := range m.Shards[:len(m.Shards)-1] {
		if e.Bytes < 20000 || e.Bytes > 30000 {
			t.Errorf("shard %s is %d bytes; want just over the 20000-byte budget", e.Name, e.Bytes)
		}
	}
}
