package shards

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
)

func readAllSamples(t *testing.T, src objstore.Source, m *Manifest) []wds.Sample {
	t.Helper()
	var out []wds.Sample
	for _, e := range m.Shards {
		rc, err := src.Open(context.Background(), e.Name, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		_, err = wds.Scan(NewVerifiedReader(rc, e), e.Name, wds.DefaultLimits(), func(s wds.Sample) error {
			out = append(out, s)
			return nil
		})
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestFileAndS3GiveIdenticalSamples writes the same synthetic data set to a
// directory and to a real S3 server (versitygw on loopback), indexes both,
// and reads every sample back through each.
func TestFileAndS3GiveIdenticalSamples(t *testing.T) {
	ctx := context.Background()
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "data")
	s3src, err := objstore.NewS3Source("data", "synth/train", s3Config(srv, srv.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	fsrc, _ := objstore.NewFileSource(t.TempDir())
	var manifests []*Manifest
	for _, src := range []objstore.Source{fsrc, s3src} {
		if _, err := WriteSynth(ctx, src, 3, synth.Train, 60, 25, nil); err != nil {
			t.Fatal(err)
		}
		m, err := Index(ctx, src, nil, wds.DefaultLimits(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteManifest(ctx, src, m); err != nil {
			t.Fatal(err)
		}
		if m, err = LoadManifest(ctx, src); err != nil {
			t.Fatal(err)
		}
		manifests = append(manifests, m)
	}
	if manifests[0].Hash() != manifests[1].Hash() {
		t.Fatal("the same data set has different manifests on file:// and S3")
	}
	a, b := readAllSamples(t, fsrc, manifests[0]), readAllSamples(t, s3src, manifests[1])
	if len(a) != 60 || len(a) != len(b) {
		t.Fatalf("%d samples from file, %d from S3, want 60", len(a), len(b))
	}
	for i := range a {
		if a[i].Key != b[i].Key || fmt.Sprint(a[i].Fields) != fmt.Sprint(b[i].Fields) {
			t.Fatalf("sample %d differs: %s vs %s", i, a[i].Key, b[i].Key)
		}
		if err := CheckSample(a[i]); err != nil {
			t.Fatalf("synthetic sample %s is bad: %v", a[i].Key, err)
		}
	}
}

// TestCheckSampleBadInput: each bad sample is reported with its shard and
// key; none crashes.
func TestCheckSampleBadInput(t *testing.T) {
	good := synth.Generate(0, synth.Train, 0)
	png, _ := good.PNG()
	tests := []struct {
		name   string
		fields map[string][]byte
		want   string
	}{
		{"corrupt png", map[string][]byte{"png": append(png[:40:40], []byte("garbage")...), "txt": []byte("x")}, "png"},
		{"caption not UTF-8", map[string][]byte{"png": png, "txt": {0xff, 0xfe, 'a'}}, "UTF-8"},
		{"missing caption", map[string][]byte{"png": png}, "missing field"},
		{"neither image nor caption", map[string][]byte{"json": []byte("{}")}, "no txt caption and no png"},
		{"text-only, caption not UTF-8", map[string][]byte{"txt": {'a', 0xff}}, "UTF-8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := wds.NewWriter(&buf)
			w.WriteSample("k000", tc.fields)
			w.WriteSample("k001", map[string][]byte{"png": png, "txt": []byte(good.Caption)})
			w.Close()
			var got []error
			_, err := wds.Scan(&buf, "bad.tar", wds.DefaultLimits(), func(s wds.Sample) error {
				got = append(got, CheckSample(s))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || got[0] == nil || got[1] != nil {
				t.Fatalf("checks %v: want the first sample bad, the second good", got)
			}
			if msg := got[0].Error(); !strings.Contains(msg, tc.want) || !strings.Contains(msg, "k000") || !strings.Contains(msg, "bad.tar") {
				t.Fatalf("error %q does not name the problem (%s), key and shard", msg, tc.want)
			}
		})
	}
}

// TestTruncatedShardKeepsPositions: a shard cut mid-member is a corrupt
// stream error naming the shard; the manifest's sample count, not the
// damaged bytes, keeps every other shard's positions where they were.
func TestTruncatedShardKeepsPositions(t *testing.T) {
	ctx := context.Background()
	src, _ := objstore.NewFileSource(t.TempDir())
	WriteSynth(ctx, src, 0, synth.Train, 30, 10, nil)
	m, _ := Index(ctx, src, nil, wds.DefaultLimits(), nil)
	before, _ := m.Stream(1, 1)
	rc, _ := src.Open(ctx, m.Shards[1].Name, 0, -1)
	b, _ := io.ReadAll(rc)
	rc.Close()
	cut := b[:len(b)/2]
	src.Put(ctx, m.Shards[1].Name, bytes.NewReader(cut), int64(len(cut)))
	rc, _ = src.Open(ctx, m.Shards[1].Name, 0, -1)
	defer rc.Close()
	_, err := wds.Scan(NewVerifiedReader(rc, m.Shards[1]), m.Shards[1].Name, wds.DefaultLimits(), nil)
	if err == nil || !strings.Contains(err.Error(), m.Shards[1].Name) {
		t.Fatalf("truncated shard: %v, want an error naming it", err)
	}
	after, _ := m.Stream(1, 1)
	x, _ := before.Batch(0, 30, 0, 30)
	y, _ := after.Batch(0, 30, 0, 30)
	if fmt.Sprint(x) != fmt.Sprint(y) {
		t.Fatal("a damaged shard shifted the stream")
	}
}

// TestTextOnlySamples: a sample with a caption and no image decodes as a
// valid text-only sample (zeros for its image), which a stage that needs
// images masks with ErrNoImage.
func TestTextOnlySamples(t *testing.T) {
	good := synth.Generate(0, synth.Train, 0)
	png, _ := good.PNG()
	samples := []wds.Sample{
		{Key: "img", Shard: "s.tar", Fields: []wds.Field{{Name: "png", Data: png}, {Name: "txt", Data: []byte(good.Caption)}}},
		{Key: "text", Shard: "s.tar", Fields: []wds.Field{{Name: "txt", Data: []byte("  Only words here.  ")}}},
	}
	d := DecodeBatch(samples, 8, 1)
	if !d.Valid[0] || !d.Valid[1] || d.TextOnly[0] || !d.TextOnly[1] {
		t.Fatalf("valid %v, text only %v (errors %v)", d.Valid, d.TextOnly, d.Errors)
	}
	if d.Captions[1] != "Only words here." {
		t.Errorf("caption %q", d.Captions[1])
	}
	for _, v := range d.Images[3*8*8:] {
		if v != 0 {
			t.Fatal("a text-only sample's image is not zeros")
		}
	}
	d.MaskTextOnly()
	if !d.Valid[0] || d.Valid[1] || d.TextOnly[1] || !errors.Is(d.Errors[1], ErrNoImage) {
		t.Fatalf("after MaskTextOnly: valid %v, text only %v, errors %v", d.Valid, d.TextOnly, d.Errors)
	}
}
