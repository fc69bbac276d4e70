package shards

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

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
func WriteSynth(ctx context.Context, src Source, seed uint64, split synth.Split, n, perShard int, progress func(done, total int)) ([]string, error) {
	if n <= 0 || perShard <= 0 {
		return nil, fmt.Errorf("synth: samples (%d) and samples per shard (%d) must be positive", n, perShard)
	}
	total := (n + perShard - 1) / perShard
	var names []string
	for sh := 0; sh < total; sh++ {
		var buf bytes.Buffer
		w := wds.NewWriter(&buf)
		for i := sh * perShard; i < min(n, (sh+1)*perShard); i++ {
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
			progress(sh+1, total)
		}
	}
	return names, nil
}
