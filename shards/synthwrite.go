package shards

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
)

// SynthShardName names shard i of a synthetic split.
func SynthShardName(split synth.Split, i int) string {
	return fmt.Sprintf("%s-%06d.tar", split, i)
}

// WriteSynth writes n samples of MODEL.md's procedural data set as
// WebDataset shards of perShard samples (KEY.png, KEY.txt, KEY.json) into
// src, and returns the shard names. progress, if set, is called per shard.
func WriteSynth(ctx context.Context, src objstore.Source, seed uint64, split synth.Split, n, perShard int, progress func(done, total int)) ([]string, error) {
	return WriteSynthSized(ctx, src, seed, split, n, perShard, 0, progress)
}

// WriteSynthSized is WriteSynth with an optional byte budget per shard: a
// shard also ends once it holds maxBytes (0 = no budget). The shard count is
// then known only at the end, so progress reports samples written.
func WriteSynthSized(ctx context.Context, src objstore.Source, seed uint64, split synth.Split, n, perShard int, maxBytes int64, progress func(done, total int)) ([]string, error) {
	if n <= 0 || perShard <= 0 || maxBytes < 0 {
		return nil, fmt.Errorf("synth: samples (%d), samples per shard (%d) must be positive and the shard byte budget (%d) not negative", n, perShard, maxBytes)
	}
	var names []string
	for i, sh := 0, 0; i < n; sh++ {
		var buf bytes.Buffer
		w := wds.NewWriter(&buf)
		for start := i; i < n && i-start < perShard && (maxBytes == 0 || int64(buf.Len()) < maxBytes); i++ {
			s := synth.Generate(seed, split, i)
			png, err := s.PNG()
			if err != nil {
				return nil, fmt.Errorf("synth sample %s: %w", s.Key, err)
			}
			objs, err := json.Marshal(s.Objects)
			if err != nil {
				return nil, err
			}
			if err := w.WriteSample(s.Key, map[string][]byte{"png": png, "txt": []byte(s.Caption), "json": objs}); err != nil {
				return nil, fmt.Errorf("synth sample %s: %w", s.Key, err)
			}
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		name := SynthShardName(split, sh)
		if err := src.Put(ctx, name, bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
		names = append(names, name)
		if progress != nil {
			progress(i, n)
		}
	}
	return names, nil
}
