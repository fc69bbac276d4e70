package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lavit-org/lavit/configs"
	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
)

// heldOutModel writes a built-in model config with eval "heldout".
func heldOutModel(t *testing.T, name string) string {
	t.Helper()
	b, err := configs.Model(name)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["eval"] = "heldout"
	out, _ := json.Marshal(cfg)
	path := filepath.Join(t.TempDir(), name+"-heldout.json")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeShard writes samples as one indexed shard under dir.
func writeShard(t *testing.T, dir string, samples map[string]map[string][]byte) string {
	t.Helper()
	ctx := context.Background()
	u := "file://" + dir
	src, err := objstore.OpenForWrite(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := wds.NewWriter(&buf)
	for _, k := range slices.Sorted(maps.Keys(samples)) {
		if err := w.WriteSample(k, samples[k]); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	if err := src.Put(ctx, "heldout-000000.tar", bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
		t.Fatal(err)
	}
	indexData(t, src)
	return u
}

// photo is a jpg of a few coloured bands, not the synthetic set's look.
func photo(t *testing.T, seed int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 48+seed, 40))
	for y := 0; y < 40; y++ {
		for x := 0; x < 48+seed; x++ {
			img.Set(x, y, color.RGBA{uint8(x*5 + seed*20), uint8(y * 6), uint8((x + y + seed) * 3), 255})
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checkValue finds a check by name prefix and returns its value.
func checkValue(t *testing.T, info wire.RunInfo, prefix string) string {
	t.Helper()
	for _, c := range info.Eval {
		if strings.HasPrefix(c.Name, prefix) {
			if !c.Pass {
				t.Errorf("check %q did not pass: %s", c.Name, c.Value)
			}
			return c.Value
		}
	}
	t.Fatalf("run %s: no check %q among %+v", info.ID, prefix, info.Eval)
	return ""
}

func logChecks(t *testing.T, info wire.RunInfo) {
	for _, c := range info.Eval {
		t.Logf("run %s: %s: %s", info.ID, c.Name, c.Value)
	}
}

// number parses the first field of a check's value.
func number(t *testing.T, v string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
	if err != nil {
		t.Fatalf("value %q: %v", v, err)
	}
	return f
}

// TestHeldOutEvaluation: with eval "heldout" a run measures its model on
// any data set when it completes. Stage 1 on a LAION-style set (jpg
// photos with English captions, a text-only sample and a corrupt image,
// both skipped): reconstruction loss, keep ratio and code use. Stage 2 on
// the synthetic eval set with a text-only sample (scored): loss and
// perplexity.
func TestHeldOutEvaluation(t *testing.T) {
	lib := loadLib(t)
	f := startFleet(t)
	f.startTrainers(lib, "w", 1)
	dir := t.TempDir()
	data := synthData(t, filepath.Join(dir, "train"), synth.Train, 120, 60)

	laion := map[string]map[string][]byte{
		"text-only": {"txt": []byte("A sentence without a picture.")},
		"corrupt":   {"jpg": []byte("\xff\xd8\xff not a jpeg"), "txt": []byte("broken")},
	}
	for i, caption := range []string{"A red bus parked by the river.", "Two cats asleep on a sofa.", "Sunset over the hills, 1998.", "Fresh bread on a wooden table!"} {
		laion[fmt.Sprintf("photo%d", i)] = map[string][]byte{"jpg": photo(t, i), "txt": []byte(caption)}
	}
	laionURL := writeShard(t, filepath.Join(dir, "laion"), laion)
	common := []string{"data.url=" + data, "checkpoint.url=file://" + filepath.Join(dir, "ckpt"), "checkpoint.every_steps=0", "global_batch=6"}

	run1 := f.submit("tiny-stage1", append(common, "model="+heldOutModel(t, "tiny-stage1"), "data.eval_url="+laionURL,
		"steps=12", "stage1.phase_a_steps=6", "stage1.kmeans_batches=2")...)
	info := f.waitDone(run1, 3*time.Minute)
	if info.State != wire.RunCompleted {
		t.Fatalf("stage 1: run %s is %s: %s", run1, info.State, info.Reason)
	}
	logChecks(t, info)
	if n := number(t, checkValue(t, info, "held-out images")); n != 4 {
		t.Errorf("stage 1 measured %v images, want the 4 photos", n)
	}
	if n := number(t, checkValue(t, info, "held-out samples skipped")); n != 2 {
		t.Errorf("stage 1 skipped %v samples, want 2 (text-only, corrupt)", n)
	}
	if l := number(t, checkValue(t, info, "held-out reconstruction loss")); !(l >= 0 && l <= 2) {
		t.Errorf("reconstruction loss %v outside [0, 2]", l)
	}
	if k := number(t, checkValue(t, info, "held-out keep ratio")); !(k > 0 && k <= 1) {
		t.Errorf("keep ratio %v outside (0, 1]", k)
	}
	if u := number(t, checkValue(t, info, "held-out codebook use")); u < 1 {
		t.Errorf("codebook use %v: no codes", u)
	}

	eval := synthData(t, filepath.Join(dir, "eval"), synth.Eval, 12, 12)
	withText := filepath.Join(dir, "eval-text")
	writeShard(t, withText, map[string]map[string][]byte{"zz-text-only": {"txt": []byte("red circle")}})
	// Two data sets cannot share a URL: copy the text-only shard beside the
	// synthetic one and index them together.
	copyShard(t, strings.TrimPrefix(eval, "file://"), filepath.Join(withText, "heldout-000000.tar"))

	run2 := f.submit("tiny-stage2", append(common, "model="+heldOutModel(t, "tiny-stage2"), "data.eval_url="+eval,
		"tokenizer.from="+run1, "steps=6")...)
	info = f.waitDone(run2, 3*time.Minute)
	if info.State != wire.RunCompleted {
		t.Fatalf("stage 2: run %s is %s: %s", run2, info.State, info.Reason)
	}
	logChecks(t, info)
	if rows := checkValue(t, info, "held-out rows"); !strings.HasPrefix(rows, "13 rows") {
		t.Errorf("stage 2 scored %q, want 13 rows (12 synthetic, 1 text-only)", rows)
	}
	loss := number(t, checkValue(t, info, "held-out loss"))
	ppl := number(t, checkValue(t, info, "held-out perplexity"))
	if !(loss > 0 && loss < 10) || ppl < 1 {
		t.Errorf("held-out loss %v, perplexity %v", loss, ppl)
	}
}

// copyShard adds a shard file to the data set in dir and re-indexes it.
func copyShard(t *testing.T, dir, shard string) {
	t.Helper()
	b, err := os.ReadFile(shard)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "zz-"+filepath.Base(shard)), b, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	src, err := objstore.OpenForWrite(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	indexData(t, src)
}
