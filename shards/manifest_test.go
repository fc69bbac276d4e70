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
	"github.com/lavit-org/lavit/shards/stream"
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

// TestParseManifestErrors: every bad manifest is refused, naming the
// problem and the shard.
func TestParseManifestErrors(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	entry := func(fields string) string {
		return `{"version":1,"shards":[{"name":"a.tar","samples":2,"bad":0,"bytes":2048,"sha256":"` + sha + `","crc32c":"0a0b0c0d"` + fields + `}]}`
	}
	good := `{"version":1,"shards":[{"name":"a.tar","samples":2,"bad":1,"bytes":2048,"sha256":"` + sha + `","crc32c":"0a0b0c0d"},` +
		`{"name":"dir/b.tar","samples":0,"bad":0,"bytes":0,"sha256":"` + sha + `"}]}`
	if m, err := ParseManifest([]byte(good)); err != nil || m.Samples() != 2 {
		t.Fatalf("good manifest: %v", err)
	}
	for _, tc := range []struct{ name, json, want string }{
		{"trailing data", good + `{}`, "trailing data"},
		{"unknown field", entry(`,"extra":1`), `unknown field "extra"`},
		{"bad version", `{"version":2,"shards":[]}`, "format version 2, want 1"},
		{"no shards", `{"version":1}`, "lists no shards"},
		{"empty name", strings.Replace(entry(""), `"a.tar"`, `""`, 1), "shard 0: empty name"},
		{"absolute name", strings.Replace(entry(""), `"a.tar"`, `"/etc/a.tar"`, 1), `name "/etc/a.tar" is absolute`},
		{"escaping name", strings.Replace(entry(""), `"a.tar"`, `"../a.tar"`, 1), `name "../a.tar" escapes the data set`},
		{"unclean name", strings.Replace(entry(""), `"a.tar"`, `"d//a.tar"`, 1), `name "d//a.tar" is not clean`},
		{"control name", strings.Replace(entry(""), `"a.tar"`, `"a\n.tar"`, 1), "has control characters"},
		{"backslash name", strings.Replace(entry(""), `"a.tar"`, `"d\\a.tar"`, 1), "or a backslash"},
		{"long name", strings.Replace(entry(""), `"a.tar"`, `"`+strings.Repeat("n", MaxShardNameLen+1)+`"`, 1), "name is 1025 bytes; the limit is 1024"},
		{"listed twice", strings.Replace(good, `"dir/b.tar"`, `"a.tar"`, 1), `"a.tar" is listed twice (first as shard 0)`},
		{"negative bytes", strings.Replace(entry(""), `"bytes":2048`, `"bytes":-1`, 1), "shard a.tar: bytes -1 is outside [0, 1099511627776]"},
		{"huge bytes", strings.Replace(entry(""), `"bytes":2048`, `"bytes":1099511627777`, 1), "bytes 1099511627777 is outside"},
		{"negative samples", strings.Replace(entry(""), `"samples":2`, `"samples":-2`, 1), "-2 samples cannot fit in 2048 bytes"},
		{"samples beyond the bytes", strings.Replace(entry(""), `"samples":2`, `"samples":5`, 1), "5 samples cannot fit in 2048 bytes (each takes at least 512)"},
		{"negative bad", strings.Replace(entry(""), `"bad":0`, `"bad":-1`, 1), "bad -1 is outside [0, samples 2]"},
		{"bad beyond samples", strings.Replace(entry(""), `"bad":0`, `"bad":3`, 1), "bad 3 is outside [0, samples 2]"},
		{"short sha256", strings.Replace(entry(""), sha, "abc", 1), `sha256 "abc" is not 64 lower-case hex digits`},
		{"upper-case sha256", strings.Replace(entry(""), sha, strings.ToUpper(sha), 1), "is not 64 lower-case hex digits"},
		{"bad crc32c", strings.Replace(entry(""), "0a0b0c0d", "0a0b0c0z", 1), `crc32c "0a0b0c0z" is not 8 lower-case hex digits`},
		{"samples overflow an int64", `{"version":1,"shards":[{"name":"a.tar","samples":9223372036854775807,"bytes":1,"sha256":"` + sha + `"}]}`, "cannot fit in 1 bytes"},
		{"too big", `{"version":1,"shards":[]}` + strings.Repeat(" ", MaxManifestBytes), "the limit is 67108864"},
	} {
		m, err := ParseManifest([]byte(tc.json))
		if err == nil || m != nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, %v; want an error containing %q", tc.name, m, err, tc.want)
		}
	}
}

// TestManifestTotalBound: a manifest of many full shards is refused once
// its total passes MaxSamples, before any sum could overflow.
func TestManifestTotalBound(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	m := &Manifest{Version: manifestVersion}
	for i := 0; int64(i)*(MaxShardBytes/512) <= MaxSamples; i++ {
		m.Shards = append(m.Shards, ShardEntry{Name: fmt.Sprintf("s%d.tar", i), Samples: MaxShardBytes / 512, Bytes: MaxShardBytes, SHA256: sha})
	}
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "more than 1099511627776 samples") {
		t.Fatalf("Validate = %v, want the total refused", err)
	}
	m.Shards = m.Shards[:1]
	if err := m.Validate(); err != nil {
		t.Fatalf("one full shard: %v", err)
	}
}

// TestLoaderRefusesNegativeEntry: a manifest built in code with a negative
// size is an error from the loader, not a panic.
func TestLoaderRefusesNegativeEntry(t *testing.T) {
	src, _ := objstore.NewFileSource(t.TempDir())
	m := &Manifest{Version: manifestVersion, Shards: []ShardEntry{{Name: "a.tar", Samples: 1, Bytes: -5}}}
	l := NewLoader(src, m, 1)
	if _, err := l.Samples(context.Background(), []stream.Ref{{Shard: 0, Index: 0}}); err == nil || !strings.Contains(err.Error(), "-5 bytes") {
		t.Fatalf("Samples = %v, want the entry refused", err)
	}
}
