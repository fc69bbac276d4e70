package e2e

import (
	"image"
	"image/color"
	"image/jpeg"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// TestShardsCLI runs `lavit-coord shards synth|pack|index|verify` against a
// directory and against a real S3 server configured the usual AWS way.
func TestShardsCLI(t *testing.T) {
	bin := filepath.Join(testutil.Binaries(t), "lavit-coord")
	dir := t.TempDir()
	url := "file://" + dir + "/train"

	out, errOut, code := run(t, bin, nil, "shards", "synth", "--out", url, "--samples", "120", "--per-shard", "50")
	if code != 0 || !strings.Contains(out, "wrote 120 train samples in 3 shards") || !strings.Contains(out, "indexed 3 shards, 120 samples") {
		t.Fatalf("synth: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code = run(t, bin, nil, "shards", "verify", url); code != 0 || !strings.Contains(out, "0 bad samples, 0 problems") {
		t.Fatalf("verify of a good set: exit %d\n%s%s", code, out, errOut)
	}
	// Damage one shard: verify names it and exits 1.
	shard := filepath.Join(dir, "train", "train-000001.tar")
	b, _ := os.ReadFile(shard)
	copy(b[3000:], "garbage in the middle of a png")
	os.WriteFile(shard, b, 0o644)
	out, _, code = run(t, bin, nil, "shards", "verify", url)
	if code != 1 || !strings.Contains(out, "train-000001.tar") {
		t.Fatalf("verify of a damaged set: exit %d, want 1 naming the shard\n%s", code, out)
	}

	// pack: a directory of jpeg + caption pairs.
	raw := filepath.Join(dir, "raw")
	os.MkdirAll(filepath.Join(raw, "sub"), 0o755)
	for i, name := range []string{"a", "b", "sub/c"} {
		img := image.NewRGBA(image.Rect(0, 0, 40, 30))
		for x := 0; x < 40; x++ {
			img.Set(x, i*5, color.RGBA{200, 10, 10, 255})
		}
		f, _ := os.Create(filepath.Join(raw, name+".jpg"))
		jpeg.Encode(f, img, nil)
		f.Close()
		os.WriteFile(filepath.Join(raw, name+".txt"), []byte("a red line "+name), 0o644)
	}
	os.WriteFile(filepath.Join(raw, "lonely.png"), []byte("no caption"), 0o644)
	out, errOut, code = run(t, bin, nil, "shards", "pack", "--out", "file://"+dir+"/packed", "--per-shard", "2", raw)
	if code != 0 || !strings.Contains(out, "packed 3 samples (1 skipped) into 2 shards") || !strings.Contains(errOut, "lonely.png") {
		t.Fatalf("pack: exit %d\n%s%s", code, out, errOut)
	}
	if out, _, code = run(t, bin, nil, "shards", "verify", "file://"+dir+"/packed"); code != 0 {
		t.Fatalf("verify packed: exit %d\n%s", code, out)
	}

	// S3, configured through the usual environment variables.
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "lavit")
	env := []string{"AWS_ENDPOINT_URL=" + srv.Endpoint, "AWS_ACCESS_KEY_ID=" + srv.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + srv.SecretKey, "AWS_REGION=" + srv.Region}
	s3url := "s3://lavit/sets/train"
	if out, errOut, code = run(t, bin, env, "shards", "synth", "--out", s3url, "--samples", "60", "--per-shard", "25"); code != 0 {
		t.Fatalf("synth to S3: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code = run(t, bin, env, "shards", "verify", s3url); code != 0 || !strings.Contains(out, "60 samples") {
		t.Fatalf("verify on S3: exit %d\n%s%s", code, out, errOut)
	}
	bad := append([]string(nil), env...)
	bad = append(bad, "AWS_SECRET_ACCESS_KEY=wrong-secret")
	_, errOut, code = run(t, bin, bad, "shards", "verify", s3url)
	if code == 0 || strings.Contains(errOut, "wrong-secret") || strings.Contains(errOut, srv.SecretKey) {
		t.Fatalf("wrong secret: exit %d, stderr %q (must fail and never print a secret)", code, errOut)
	}
	if _, errOut, code = run(t, bin, env, "shards", "verify", "s3://no-such-bucket/x"); code == 0 {
		t.Fatalf("missing bucket: exit 0 (%s)", errOut)
	}
	if _, errOut, code = run(t, bin, nil, "shards", "verify", "ftp://x/y"); code != 2 || !strings.Contains(errOut, "ftp") {
		t.Fatalf("unknown scheme: exit %d, %q", code, errOut)
	}
}
