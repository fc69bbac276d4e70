package shards

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/shards/stream"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
)

// jpegSet writes n 224×224 jpeg samples (synthetic scenes scaled up, with
// fine noise so they compress like photos rather than flat art).
func jpegSet(b *testing.B, src Source, n, perShard int) {
	ctx := context.Background()
	for sh := 0; sh*perShard < n; sh++ {
		var buf bytes.Buffer
		w := wds.NewWriter(&buf)
		for i := sh * perShard; i < min(n, (sh+1)*perShard); i++ {
			s := synth.Generate(1, synth.Train, i)
			img := image.NewRGBA(image.Rect(0, 0, 224, 224))
			for y := 0; y < 224; y++ {
				for x := 0; x < 224; x++ {
					p := (y/7*32 + x/7) * 3
					noise := uint8((x*31 + y*17 + i*7) % 23)
					img.Set(x, y, color.RGBA{s.Pixels[p] ^ noise, s.Pixels[p+1] ^ noise, s.Pixels[p+2] ^ noise, 255})
				}
			}
			var jb bytes.Buffer
			jpeg.Encode(&jb, img, &jpeg.Options{Quality: 90})
			w.WriteSample(fmt.Sprintf("img%06d", i), map[string][]byte{"jpg": jb.Bytes(), "txt": []byte(s.Caption)})
		}
		w.Close()
		name := fmt.Sprintf("jpeg-%06d.tar", sh)
		if err := src.Put(ctx, name, bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRead: for 32×32 png and 224×224 jpeg samples, from file:// and
// from the loopback S3 server: the store's raw read throughput (plain GETs
// of every shard), lavit's (verified fetch + tar parsing through the
// Loader) as a share of it, and decode speed on one core. Run with
// -benchtime=1x.
func BenchmarkRead(b *testing.B) {
	ctx := context.Background()
	srv := testutil.StartS3(b)
	srv.MakeBucket(b, "bench")
	fileSrc, err := NewFileSource(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	s3Src, err := NewS3Source("bench", "sets", S3Config{Endpoint: srv.Endpoint, Region: srv.Region, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true})
	if err != nil {
		b.Fatal(err)
	}
	sets := []struct {
		name  string
		write func(Source)
		size  int
	}{
		{"png32", func(s Source) { WriteSynth(ctx, s, 0, synth.Train, 4000, 1000, nil) }, 32},
		{"jpeg224", func(s Source) { jpegSet(b, s, 400, 100) }, 224},
	}
	for _, set := range sets {
		for _, st := range []struct {
			name string
			src  Source
		}{{"file", fileSrc}, {"s3", s3Src}} {
			b.Run(set.name+"/"+st.name, func(b *testing.B) {
				b.StopTimer()
				set.write(st.src)
				m, err := Index(ctx, st.src, nil, wds.DefaultLimits(), nil)
				if err != nil {
					b.Fatal(err)
				}
				var rawBytes, lavitBytes int64
				var rawTime, lavitTime, decodeTime time.Duration
				var decoded int
				for i := 0; i < b.N; i++ {
					// Raw: plain reads of every shard, all at once (the
					// loader fetches shards concurrently too).
					start := time.Now()
					var wg sync.WaitGroup
					var mu sync.Mutex
					for _, e := range m.Shards {
						wg.Add(1)
						go func() {
							defer wg.Done()
							rc, err := st.src.Open(ctx, e.Name, 0, -1)
							if err != nil {
								b.Error(err)
								return
							}
							n, _ := io.Copy(io.Discard, rc)
							rc.Close()
							mu.Lock()
							rawBytes += n
							mu.Unlock()
						}()
					}
					wg.Wait()
					rawTime += time.Since(start)
					// lavit: the loader prefetches, verifies and parses every shard.
					start = time.Now()
					l := NewLoader(st.src, m, len(m.Shards))
					for si, e := range m.Shards {
						l.Prefetch(ctx, refsOf(si, e.Samples))
					}
					var all []wds.Sample
					for si, e := range m.Shards {
						refs := refsOf(si, e.Samples)
						got, err := l.Samples(ctx, refs)
						if err != nil {
							b.Fatal(err)
						}
						all = append(all, got...)
						lavitBytes += e.Bytes
					}
					lavitTime += time.Since(start)
					// Decode on one core.
					start = time.Now()
					d := DecodeBatch(all, set.size, 1)
					decodeTime += time.Since(start)
					for _, ok := range d.Valid {
						if ok {
							decoded++
						}
					}
				}
				raw := float64(rawBytes) / rawTime.Seconds() / 1e6
				lav := float64(lavitBytes) / lavitTime.Seconds() / 1e6
				b.ReportMetric(raw, "raw_MB/s")
				b.ReportMetric(lav, "lavit_MB/s")
				b.ReportMetric(100*lav/raw, "lavit_%_of_raw")
				b.ReportMetric(float64(decoded)/decodeTime.Seconds(), "decode_samples/s/core")
			})
		}
	}
}

func refsOf(shard, n int) []stream.Ref {
	out := make([]stream.Ref, n)
	for i := range out {
		out[i] = stream.Ref{Shard: shard, Index: i}
	}
	return out
}
