package wds

import (
	"bytes"
	"fmt"
	"testing"
)

// BenchmarkScan parses an in-memory shard of small samples (a 3 KB image,
// a caption and a little JSON, like the 32×32 png set) on one core: the
// ceiling of the tar path before any network or verification.
func BenchmarkScan(b *testing.B) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	img := bytes.Repeat([]byte{7}, 3000)
	for i := 0; i < 1000; i++ {
		w.WriteSample(fmt.Sprintf("s%06d", i), map[string][]byte{"png": img, "txt": []byte("a red circle above a blue square"), "json": []byte(`{"shape":"circle","colour":"red"}`)})
	}
	w.Close()
	data := buf.Bytes()
	dst := make([]byte, len(data))
	for _, mode := range []string{"stream", "bytes", "inplace"} {
		b.Run(mode, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				n := 0
				count := func(Sample) error { n++; return nil }
				var err error
				switch mode {
				case "stream":
					_, err = Scan(bytes.NewReader(data), "bench", DefaultLimits(), count)
				case "bytes":
					_, err = ScanBytes(data, "bench", DefaultLimits(), count)
				case "inplace": // copies into dst as it parses, as the loader reads
					_, err = ScanInPlace(bytes.NewReader(data), dst, "bench", DefaultLimits(), count)
				}
				if err != nil || n != 1000 {
					b.Fatal(n, err)
				}
			}
		})
	}
}
