package checkpoint

import (
	"bytes"
	"context"

	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/testutil"
)

// BenchmarkCheckpoint1GiB: a synthetic 1 GiB state on the loopback S3
// server and on local disk. It reports the step loop's stall (the host
// copy into the save buffer), the save (one part: upload with its sha256,
// then the manifest), the raw PUT of the same bytes measured in the same
// run, the save's share of it, and the restore (download and verify).
// Run with -benchtime 1x.
func BenchmarkCheckpoint1GiB(b *testing.B) {
	const size = 1 << 30
	ctx := context.Background()
	srv := testutil.StartS3(b)
	srv.MakeBucket(b, "bench")
	for _, kv := range [][2]string{{"AWS_ENDPOINT_URL", srv.Endpoint}, {"AWS_ACCESS_KEY_ID", srv.AccessKey}, {"AWS_SECRET_ACCESS_KEY", srv.SecretKey}, {"AWS_REGION", srv.Region}} {
		b.Setenv(kv[0], kv[1])
	}
	live := make([]byte, size) // the model's state
	for i := 0; i < size; i += 4096 {
		live[i] = byte(i >> 12)
	}
	host := make([]byte, size) // the save buffer, reused checkpoint to checkpoint
	copy(host, live)           // fault its pages in once
	for _, store := range []struct{ name, url string }{{"s3", "s3://bench/ck"}, {"file", "file://" + b.TempDir()}} {
		b.Run(store.name, func(b *testing.B) {
			var stall, save, raw, restore time.Duration
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				copy(host, live)
				stall += time.Since(t0)

				dir := Dir(store.url, "bench", int64(i+1))
				t0 = time.Now()
				p, err := WritePart(ctx, dir, host, 0, 1)
				if err != nil {
					b.Fatal(err)
				}
				m := &Manifest{Format: 1, Run: "bench", Step: int64(i + 1), World: 1, StateBytes: size, StateSHA256: p.SHA256, Parts: []Part{p}}
				if err := WriteManifest(ctx, dir, m); err != nil {
					b.Fatal(err)
				}
				save += time.Since(t0)

				dst, err := objstore.OpenForWrite(ctx, dir)
				if err != nil {
					b.Fatal(err)
				}
				t0 = time.Now()
				if err := dst.Put(ctx, "raw", bytes.NewReader(host), size); err != nil {
					b.Fatal(err)
				}
				raw += time.Since(t0)

				t0 = time.Now()
				got, err := ReadManifest(ctx, dir)
				if err == nil {
					_, err = Fetch(ctx, dir, got)
				}
				if err != nil {
					b.Fatal(err)
				}
				restore += time.Since(t0)
				Delete(ctx, dir)
			}
			n := float64(b.N)
			mbps := func(d time.Duration) float64 { return size / 1e6 / (d.Seconds() / n) }
			b.ReportMetric(stall.Seconds()*1000/n, "stall_ms")
			b.ReportMetric(save.Seconds()*1000/n, "save_ms")
			b.ReportMetric(mbps(save), "save_MB/s")
			b.ReportMetric(mbps(raw), "raw_put_MB/s")
			b.ReportMetric(100*raw.Seconds()/save.Seconds(), "save_%_of_raw")
			b.ReportMetric(restore.Seconds()*1000/n, "restore_ms")
		})
	}
}
