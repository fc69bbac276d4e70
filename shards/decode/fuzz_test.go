package decode

import (
	"math"
	"testing"
)

// FuzzImage decodes arbitrary bytes as a png or jpeg sample field. It must
// never panic; an image it accepts gives exactly 3·size² values, each in
// [0,1].
func FuzzImage(f *testing.F) {
	for _, kind := range []string{"rgb", "gray", "alpha", "paletted"} {
		img, _ := gradient(kind, 20, 12)
		f.Add(encode(f, img, "png"), true, uint8(8))
		f.Add(encode(f, img, "jpeg"), false, uint8(16))
	}
	f.Add(hugePNG(100000, 100000), true, uint8(8))
	f.Add(hugePNG(0, 5), true, uint8(8))
	f.Add([]byte("\xff\xd8\xff"), false, uint8(4))
	f.Add([]byte{}, true, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, isPNG bool, size uint8) {
		field := "jpg"
		if isPNG {
			field = "png"
		}
		n := 1 + int(size%32)
		out, err := Image(data, field, n)
		if err != nil {
			if out != nil || err.Error() == "" {
				t.Fatalf("error %v with %d values", err, len(out))
			}
			return
		}
		if len(out) != 3*n*n {
			t.Fatalf("%d values for size %d, want %d", len(out), n, 3*n*n)
		}
		for i, v := range out {
			if !(v >= 0 && v <= 1) || math.IsNaN(float64(v)) {
				t.Fatalf("value %d is %v, outside [0,1]", i, v)
			}
		}
	})
}
