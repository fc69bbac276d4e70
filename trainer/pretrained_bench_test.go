package trainer

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lavit-org/lavit/checkpoint/hf"
	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/testutil"
)

// BenchmarkLoadPretrained loads a Llama-shaped checkpoint of about 1.3 GB
// (float32; d 2048, 4 layers, MLP 5504, 32000 text rows of a 32768-row
// vocabulary; two shards and an index, written here) into a CPU model,
// from file:// and from loopback S3 (the real test server), and reports:
// the raw read of the same objects (sequential, warm page cache for
// file://), the reader alone (hf.Checkpoint.Stream: ranged reads and
// conversion to float32), the whole load (InitFromURL: the reader, the
// per-block temporary file and the shim's copy), each in GB of checkpoint
// per second, and the peak Go heap and the growth of the process's peak
// resident set while loading. Run with -benchtime 1x:
//
//	go test -run '^$' -bench LoadPretrained -benchtime 1x ./trainer
func BenchmarkLoadPretrained(b *testing.B) {
	lib := loadLib(b)
	if err := lib.SetThreads(runtime.NumCPU()); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	cfg := Config{
		Stage: 2,
		LM:    &LMConfig{Arch: "llama", Vocab: 32768, DModel: 2048, Layers: 4, Heads: 16, MLP: 5504, MaxLen: 64, RopeTheta: 10000, NormEps: 1e-5},
		Optim: &OptimConfig{LR: 1e-4, MinLRRatio: 1, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Clip: 1.0},
	}
	m, err := lib.NewModel(cfg, "cpu", 1)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	dir := b.TempDir()
	size := writeBenchCheckpoint(b, m, dir, 32000)

	srv := testutil.StartS3(b)
	srv.MakeBucket(b, "bench")
	for _, kv := range [][2]string{{"AWS_ENDPOINT_URL", srv.Endpoint}, {"AWS_ACCESS_KEY_ID", srv.AccessKey}, {"AWS_SECRET_ACCESS_KEY", srv.SecretKey}, {"AWS_REGION", srv.Region}} {
		b.Setenv(kv[0], kv[1])
	}
	dst, err := objstore.OpenForWrite(ctx, "s3://bench/llama")
	if err != nil {
		b.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			b.Fatal(err)
		}
		info, _ := f.Stat()
		if err := dst.Put(ctx, e.Name(), f, info.Size()); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}

	gb := float64(size) / 1e9
	fmt.Printf("checkpoint: %.2f GB float32 in 2 shards, %d parameters\n", gb, m.Info().ParamCount)
	fmt.Printf("%-6s %12s %12s %12s %14s %14s\n", "store", "raw GB/s", "stream GB/s", "load GB/s", "peak heap MB", "peak RSS +MB")
	for _, store := range []string{"file", "s3"} {
		url := "file://" + dir
		if store == "s3" {
			url = "s3://bench/llama"
		}
		b.Run(store, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				raw := timeIt(b, func() error { return rawRead(ctx, url) })
				stream := timeIt(b, func() error {
					ck, err := hf.Open(ctx, url)
					if err != nil {
						return err
					}
					return ck.Stream(ctx, ck.Tensors(), func(hf.TensorInfo, []float32) error { return nil })
				})
				runtime.GC()
				rss0 := peakRSS()
				var peak atomic.Uint64
				stop := watchHeap(&peak)
				load := timeIt(b, func() error { return m.InitFromURL(ctx, "lm", url) })
				stop()
				fmt.Printf("%-6s %12.2f %12.2f %12.2f %14.0f %14.0f\n", store, gb/raw.Seconds(), gb/stream.Seconds(), gb/load.Seconds(),
					float64(peak.Load())/1e6, float64(peakRSS()-rss0)/1e6)
				b.ReportMetric(gb/load.Seconds(), "load_GB/s")
			}
		})
	}
}

// timeIt runs fn once and returns how long it took.
func timeIt(b *testing.B, fn func() error) time.Duration {
	b.Helper()
	began := time.Now()
	if err := fn(); err != nil {
		b.Fatal(err)
	}
	return time.Since(began)
}

// rawRead reads every object of the checkpoint at url sequentially.
func rawRead(ctx context.Context, url string) error {
	src, err := objstore.Open(ctx, url)
	if err != nil {
		return err
	}
	objs, err := src.List(ctx)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for _, o := range objs {
		rc, err := src.Open(ctx, o.Name, 0, -1)
		if err != nil {
			return err
		}
		_, err = io.CopyBuffer(io.Discard, rc, buf)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// watchHeap samples the Go heap every few milliseconds into peak until
// the returned stop is called.
func watchHeap(peak *atomic.Uint64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// peakRSS is the process's peak resident set (VmHWM) in bytes, 0 if unknown.
func peakRSS() uint64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// writeBenchCheckpoint writes a float32 Llama-2 checkpoint for m (its
// embedding and head textRows rows) in two shards and an index, one tensor
// at a time, and returns its data bytes.
func writeBenchCheckpoint(b *testing.B, m *Model, dir string, textRows int64) int64 {
	type entry struct {
		name  string
		shape []int64
	}
	var es []entry
	for _, p := range m.Info().Params {
		shape := p.Shape
		if p.Name == "tok.weight" || p.Name == "head.weight" {
			shape = []int64{textRows, p.Shape[1]}
		}
		es = append(es, entry{llamaName(p.Name), shape})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].name < es[j].name })
	weightMap := map[string]string{}
	var total int64
	for k, part := range [][]entry{es[:len(es)/2], es[len(es)/2:]} {
		name := fmt.Sprintf("model-%05d-of-00002.safetensors", k+1)
		header := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
		var off int64
		for _, e := range part {
			n := int64(4)
			for _, d := range e.shape {
				n *= d
			}
			header[e.name] = map[string]any{"dtype": "F32", "shape": e.shape, "data_offsets": []int64{off, off + n}}
			off += n
			weightMap[e.name] = name
		}
		total += off
		h, _ := json.Marshal(header)
		for len(h)%8 != 0 {
			h = append(h, ' ')
		}
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		w := bufio.NewWriterSize(f, 1<<20)
		binary.Write(w, binary.LittleEndian, uint64(len(h)))
		w.Write(h)
		var word [4]byte
		x := uint32(k + 1)
		for _, e := range part {
			n := int64(1)
			for _, d := range e.shape {
				n *= d
			}
			for i := int64(0); i < n; i++ {
				x ^= x << 13
				x ^= x >> 17
				x ^= x << 5
				binary.LittleEndian.PutUint32(word[:], math.Float32bits(float32(int32(x))*(0.05/(1<<31))))
				w.Write(word[:])
			}
		}
		if err := w.Flush(); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap})
	if err := os.WriteFile(filepath.Join(dir, hf.IndexFile), idx, 0o644); err != nil {
		b.Fatal(err)
	}
	return total
}
