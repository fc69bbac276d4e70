package shards

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/shards/decode"
	"github.com/lavit-org/lavit/shards/wds"
)

// smallImage encodes an 8×6 gradient as png or jpeg.
func smallImage(t *testing.T, format string) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 8, 6))
	for y := 0; y < 6; y++ {
		for x := 0; x < 8; x++ {
			img.Set(x, y, color.RGBA{uint8(x * 30), uint8(y * 40), 90, 255})
		}
	}
	var buf bytes.Buffer
	var err error
	if format == "png" {
		err = png.Encode(&buf, img)
	} else {
		err = jpeg.Encode(&buf, img, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestPackFolder packs a LAION-style folder (jpg, png and webp images with
// .txt captions, a .json beside one) and reads the shards back: every pair
// is a sample with its fields, the images that cannot be packed are
// reported with why, and the samples decode with LaVIT's preprocessing.
func TestPackFolder(t *testing.T) {
	dir := t.TempDir()
	files := map[string][]byte{
		"a.jpg": smallImage(t, "jpeg"), "a.txt": []byte("A red bus on a rainy street.\n"), "a.json": []byte(`{"url":"https://example.com/a.jpg"}`),
		"sub/c.png": smallImage(t, "png"), "sub/c.txt": []byte("Two dogs, one ball — and 3 cats!"),
		"d.webp": []byte("RIFF not decoded by pack"), "d.txt": []byte("webp"),
		"e.png":   smallImage(t, "png"), // no caption
		"f.x.png": smallImage(t, "png"), "f.x.txt": []byte("a dot in the name"),
		"g.jpg": smallImage(t, "jpeg"), "g.png": smallImage(t, "png"), "g.txt": []byte("two images, one caption"),
		"notes.md": []byte("not an image"),
	}
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pairs, skipped, err := FindPairs(dir)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, p := range pairs {
		keys = append(keys, p.Key+"."+p.Field)
	}
	if want := []string{"a.jpg", "d.webp", "g.jpg", "sub/c.png"}; !slices.Equal(keys, want) {
		t.Fatalf("pairs %v, want %v", keys, want)
	}
	wantSkipped := []string{"e.png: no caption", "f.x.png: a dot in its base name", "g.png: another image has the same name"}
	if len(skipped) != len(wantSkipped) {
		t.Fatalf("skipped %q, want %d", skipped, len(wantSkipped))
	}
	for i, w := range wantSkipped {
		if !strings.HasPrefix(skipped[i], w) {
			t.Errorf("skipped[%d] = %q, want it to start with %q", i, skipped[i], w)
		}
	}

	ctx := context.Background()
	out, err := objstore.NewFileSource(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	names, err := Pack(ctx, out, pairs, "laion", 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"laion-000000.tar", "laion-000001.tar"}) {
		t.Fatalf("shards %v", names)
	}
	m, err := Index(ctx, out, nil, wds.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	samples := readAllSamples(t, out, m)
	if len(samples) != 4 {
		t.Fatalf("%d samples, want 4", len(samples))
	}
	for _, s := range samples {
		key := s.Key
		var p PackedPair
		for _, q := range pairs {
			if q.Key == key {
				p = q
			}
		}
		img, _ := s.Field(p.Field)
		txt, _ := s.Field("txt")
		if !bytes.Equal(img, files[filepath.FromSlash(key)+"."+p.Field]) || !bytes.Equal(txt, files[filepath.FromSlash(key)+".txt"]) {
			t.Errorf("sample %s: fields differ from the files", key)
		}
		js, hasJSON := s.Field("json")
		if wantJSON, ok := files[key+".json"]; ok != hasJSON || !bytes.Equal(js, wantJSON) {
			t.Errorf("sample %s: json field %q (present %v), want %q", key, js, hasJSON, wantJSON)
		}
	}
	d := DecodeBatchWith(samples, decode.LaVIT(16), 1)
	for i, s := range samples {
		if wantValid := s.Key != "d"; d.Valid[i] != wantValid {
			t.Errorf("sample %s: valid %v (%v), want %v", s.Key, d.Valid[i], d.Errors[i], wantValid)
		}
	}
}
