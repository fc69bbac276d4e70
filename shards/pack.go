package shards

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/shards/decode"
	"github.com/lavit-org/lavit/shards/wds"
)

// PackedPair is one image + caption pair found in a directory.
type PackedPair struct {
	Key     string // path relative to the directory, without extension
	Image   string // file path
	Field   string // png, jpg, jpeg or webp
	Caption string // file path of KEY.txt
	JSON    string // file path of KEY.json, packed as the json field; "" if none
}

// FindPairs walks dir for image files (png, jpg, jpeg, webp) that have a
// caption (same name, .txt), and an optional KEY.json of metadata, sorted
// by key. Images skipped are returned separately, each with why, so the
// caller can report them: no caption, a dot in the base name (it would
// change the WebDataset key), or a second image for the same key.
func FindPairs(dir string) (pairs []PackedPair, skipped []string, err error) {
	byKey := map[string]int{}
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ext := strings.ToLower(strings.TrimPrefix(filepath.Ext(path), "."))
		if !slices.Contains(decode.ImageFields, ext) {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		key := filepath.ToSlash(strings.TrimSuffix(rel, filepath.Ext(rel)))
		base := strings.TrimSuffix(path, filepath.Ext(path))
		switch {
		case strings.Contains(filepath.Base(key), "."):
			skipped = append(skipped, rel+": a dot in its base name")
			return nil
		case !isFile(base + ".txt"):
			skipped = append(skipped, rel+": no caption ("+filepath.Base(base)+".txt) beside it")
			return nil
		}
		if i, dup := byKey[key]; dup {
			skipped = append(skipped, rel+": another image has the same name ("+filepath.Base(pairs[i].Image)+", packed)")
			return nil
		}
		p := PackedPair{Key: key, Image: path, Field: ext, Caption: base + ".txt"}
		if isFile(base + ".json") {
			p.JSON = base + ".json"
		}
		byKey[key] = len(pairs)
		pairs = append(pairs, p)
		return nil
	})
	sort.Slice(pairs, func(i, j int) bool { return pairs[i].Key < pairs[j].Key })
	return pairs, skipped, err
}

// isFile reports whether path is a regular file (symlinks followed).
func isFile(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
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
			fields := map[string][]byte{p.Field: img, "txt": txt}
			if p.JSON != "" {
				if fields["json"], err = os.ReadFile(p.JSON); err != nil {
					return nil, fmt.Errorf("pack %s: %w", p.Key, err)
				}
			}
			if err := w.WriteSample(p.Key, fields); err != nil {
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
