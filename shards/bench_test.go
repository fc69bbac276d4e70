package shards

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/shards/stream"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
)

// jpegSet writes n 224×224 jpeg samples (synthetic scenes scaled up, with
// fine noise so they compress like photos rather than flat art).
func jpegSet(b *testing.B, src objstore.Source, n, perShard int) {
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
	fileSrc, err := objstore.NewFileSource(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	s3Src, err := objstore.NewS3Source("bench", "sets", objstore.S3Config{Endpoint: srv.Endpoint, Region: srv.Region, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true})
	if err != nil {
		b.Fatal(err)
	}
	sets := []struct {
		name   string
		prefix string // of the set's shard names
		write  func(objstore.Source)
		size   int
	}{
		{"png32", "train", func(s objstore.Source) { WriteSynth(ctx, s, 0, synth.Train, 4000, 1000, nil) }, 32},
		{"jpeg224", "jpeg", func(s objstore.Source) { jpegSet(b, s, 400, 100) }, 224},
	}
	for _, set := range sets {
		for _, st := range []struct {
			name string
			src  objstore.Source
		}{{"file", fileSrc}, {"s3", s3Src}} {
			b.Run(set.name+"/"+st.name, func(b *testing.B) {
				b.StopTimer()
				set.write(st.src)
				replicate(b, st.src, set.prefix, benchSetBytes)
				m, err := Index(ctx, st.src, nil, wds.DefaultLimits(), nil)
				if err != nil {
					b.Fatal(err)
				}
				m = onlyPrefix(m, set.prefix)
				var rawBytes, lavitBytes int64
				var rawTime, lavitTime, decodeTime time.Duration
				var decoded int
				// One loader for every pass, as a worker keeps one for
				// its run (a fresh one per pass would time page faults
				// of its first buffers instead of reading).
				l := NewLoader(st.src, m, 0)
				for i := 0; i < b.N; i++ {
					// Raw: plain GETs of every shard, benchInFlight at a
					// time.
					start := time.Now()
					sem := make(chan struct{}, benchInFlight)
					var wg sync.WaitGroup
					var mu sync.Mutex
					for _, e := range m.Shards {
						wg.Add(1)
						sem <- struct{}{}
						go func() {
							defer func() { <-sem; wg.Done() }()
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
					// lavit: a worker's loop: the loader keeps its default
					// cache, is asked for shards 2·benchInFlight ahead,
					// fetches MaxGets (= benchInFlight) at once, and hands
					// over each shard's samples verified and parsed.
					start = time.Now()
					var sample []wds.Sample
					for si, e := range m.Shards {
						for ahead := si; ahead < min(si+2*benchInFlight, len(m.Shards)); ahead++ {
							l.Prefetch(ctx, refsOf(ahead, 1))
						}
						got, err := l.Samples(ctx, refsOf(si, e.Samples))
						if err != nil {
							b.Fatal(err)
						}
						for _, smp := range got[:min(len(got), 400-len(sample))] {
							sample = append(sample, copySample(smp)) // valid until the next call
						}
						lavitBytes += e.Bytes
					}
					lavitTime += time.Since(start)
					// Decode on one core (400 samples: decode speed does
					// not depend on the set's size).
					start = time.Now()
					d := DecodeBatch(sample, set.size, 1)
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

// benchSetBytes is how much each set holds: enough that the throughput is
// not dominated by the first request's latency.
const benchSetBytes = 128 << 20

// benchInFlight is how many shards are read at once, raw and through the
// loader alike.
const benchInFlight = MaxGets

// replicate copies the set's shards under new names until the set holds
// at least total bytes.
func replicate(b *testing.B, src objstore.Source, prefix string, total int64) {
	ctx := context.Background()
	names, err := ShardNames(ctx, src)
	if err != nil {
		b.Fatal(err)
	}
	var orig [][]byte
	var have int64
	for _, n := range names {
		if !strings.HasPrefix(n, prefix) {
			continue
		}
		rc, err := src.Open(ctx, n, 0, -1)
		if err != nil {
			b.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			b.Fatal(err)
		}
		orig = append(orig, data)
		have += int64(len(data))
	}
	for copyNo := 1; have < total; copyNo++ {
		for i, data := range orig {
			name := fmt.Sprintf("%s-copy%03d-%03d.tar", prefix, copyNo, i)
			if err := src.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
				b.Fatal(err)
			}
			have += int64(len(data))
		}
	}
}

// onlyPrefix keeps the manifest's shards whose names start with prefix.
func onlyPrefix(m *Manifest, prefix string) *Manifest {
	out := *m
	out.Shards = nil
	for _, e := range m.Shards {
		if strings.HasPrefix(e.Name, prefix) {
			out.Shards = append(out.Shards, e)
		}
	}
	return &out
}

// copySample copies a sample's fields out of the loader's buffers.
func copySample(s wds.Sample) wds.Sample {
	fields := make([]wds.Field, len(s.Fields))
	for k, f := range s.Fields {
		fields[k] = wds.Field{Name: f.Name, Data: bytes.Clone(f.Data)}
	}
	s.Fields = fields
	return s
}

func refsOf(shard, n int) []stream.Ref {
	out := make([]stream.Ref, n)
	for i := range out {
		out[i] = stream.Ref{Shard: shard, Index: i}
	}
	return out
}
