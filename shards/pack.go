package shards

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/shards/wds"
)

// PackedPair is one image + caption pair found in a directory.
type PackedPair struct {
	Key     string // path relative to the directory, without extension
	Image   string // file path
	Field   string // png, jpg or jpeg
	Caption string // file path of KEY.txt
}

// FindPairs walks dir for image files (png, jpg, jpeg) that have a caption
// (same name, .txt), sorted by key. Images without a caption are returned
// separately so the caller can report them.
func FindPairs(dir string) (pairs []PackedPair, orphans []string, err error) {
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ext := strings.ToLower(strings.TrimPrefix(filepath.Ext(path), "."))
		if ext != "png" && ext != "jpg" && ext != "jpeg" {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		key := filepath.ToSlash(strings.TrimSuffix(rel, filepath.Ext(rel)))
		caption := strings.TrimSuffix(path, filepath.Ext(path)) + ".txt"
		if _, err := os.Stat(caption); err != nil {
			orphans = append(orphans, rel)
			return nil
		}
		if strings.Contains(filepath.Base(key), ".") {
			orphans = append(orphans, rel) // a dot in the base name would change the WebDataset key
			return nil
		}
		pairs = append(pairs, PackedPair{Key: key, Image: path, Field: ext, Caption: caption})
		return nil
	})
	sort.Slice(pairs, func(i, j int) bool { return pairs[i].Key < pairs[j].Key })
	return pairs, orphans, err
}

// Pack writes pairs as shards of perShard samples named prefix-NNNNNN.tar.
func Pack(ctx context.Context, dst objstore.Source, pairs []PackedPair, prefix string, perShard int, progress func(done, total int)) ([]string, error) {
	if perShard <= 0 {
		return nil, fmt.Errorf("pack: samples per shard must be positive, got %d", perShard)
	}
	total := (len(pairs) + perShard - 1) / perShard
	var names []string
	for sh := 0; sh < total; sh++ {
		var buf bytes.Buffer
		w := wds.NewWriter(&buf)
		for _, p := range pairs[sh*perShard : min(len(pairs), (sh+1)*perShard)] {
			img, err := os.ReadFile(p.Image)
			if err != nil {
				return nil, fmt.Errorf("pack %s: %w", p.Key, err)
			}
			txt, err := os.ReadFile(p.Caption)
			if err != nil {
				return nil, fmt.Errorf("pack %s: %w", p.Key, err)
			}
			if err := w.WriteSample(p.Key, map[string][]byte{p.Field: img, "txt": txt}); err != nil {
				return nil, fmt.Errorf("pack %s: %w", p.Key, err)
			}
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		name := fmt.Sprintf("%s-%06d.tar", prefix, sh)
		if err := dst.Put(ctx, name, bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
		names = append(names, name)
		if progress != nil {
			progress(sh+1, total)
		}
	}
	return names, nil
}
