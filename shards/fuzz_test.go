package shards

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
)

// FuzzParseManifest feeds ParseManifest arbitrary bytes. It must never
// panic; a manifest it accepts must validate, count at most MaxSamples,
// come back the same through WriteManifest's JSON, and, when it has
// samples, give a stream whose refs all name a real (shard, index).
func FuzzParseManifest(f *testing.F) {
	ctx := context.Background()
	src, err := objstore.NewFileSource(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	if _, err := WriteSynth(ctx, src, 0, synth.Train, 20, 8, nil); err != nil {
		f.Fatal(err)
	}
	m, err := Index(ctx, src, nil, wds.DefaultLimits(), nil)
	if err != nil {
		f.Fatal(err)
	}
	good, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, uint64(1), uint8(2))
	e := m.Shards[0]
	for _, edit := range []func(*ShardEntry){
		func(e *ShardEntry) { e.Bytes = -1 },
		func(e *ShardEntry) { e.Samples = 1 << 40 },
		func(e *ShardEntry) { e.Bad = e.Samples + 1 },
		func(e *ShardEntry) { e.Name = "../" + e.Name },
		func(e *ShardEntry) { e.SHA256 = strings.ToUpper(e.SHA256) },
		func(e *ShardEntry) { e.CRC32C = "" },
	} {
		bad := *m
		bad.Shards = append([]ShardEntry{}, m.Shards...)
		edit(&bad.Shards[0])
		b, _ := json.Marshal(&bad)
		f.Add(b, uint64(7), uint8(1))
	}
	one, _ := json.Marshal(&Manifest{Version: manifestVersion, Shards: []ShardEntry{e, e}})
	f.Add(one, uint64(0), uint8(0))
	for _, s := range []string{``, `null`, `{"version":1,"shards":[]}`, `{"version":1,"shards":[{}]}`, string(good) + `{}`, `{"version":1,"shards":[{"name":"a.tar","extra":1}]}`} {
		f.Add([]byte(s), uint64(0), uint8(4))
	}
	f.Fuzz(func(t *testing.T, data []byte, seed uint64, blockShards uint8) {
		m, err := ParseManifest(data)
		if err != nil {
			if m != nil || err.Error() == "" {
				t.Fatalf("error %q with manifest %v", err, m)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("ParseManifest accepted a manifest that does not validate: %v", err)
		}
		if n := m.Samples(); n < 0 || n > MaxSamples {
			t.Fatalf("accepted manifest has %d samples", n)
		}
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseManifest(b)
		if err != nil {
			t.Fatalf("the manifest written out does not parse: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(again, m) || again.Hash() != m.Hash() {
			t.Fatalf("round trip:\n got %+v\nwant %+v", again, m)
		}
		st, err := m.Stream(seed, int(blockShards))
		if m.Samples() == 0 {
			if err == nil {
				t.Fatal("a stream over no samples")
			}
			return
		}
		if err != nil {
			t.Fatalf("Stream: %v", err)
		}
		batch := int(min(m.Samples(), 64))
		for step := int64(0); step < 3; step++ {
			refs, err := st.Batch(step, batch, 0, batch)
			if err != nil {
				t.Fatalf("Batch(%d): %v", step, err)
			}
			seen := map[[2]int]bool{}
			for _, r := range refs {
				if r.Shard < 0 || r.Shard >= len(m.Shards) || r.Index < 0 || r.Index >= m.Shards[r.Shard].Samples {
					t.Fatalf("ref %+v names no sample of the manifest", r)
				}
				if k := [2]int{r.Shard, r.Index}; seen[k] {
					t.Fatalf("batch %d reads sample %v twice", step, k)
				} else {
					seen[k] = true
				}
			}
		}
	})
}
