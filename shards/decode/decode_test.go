package decode

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"runtime"
	"strings"
	"testing"
)

// gradient fills an image of the given kind with a smooth, varied pattern
// and returns it with the straight RGB bytes each pixel should decode to.
func gradient(kind string, w, h int) (image.Image, func(x, y int) [3]uint8) {
	rgbAt := func(x, y int) [3]uint8 {
		return [3]uint8{uint8(x * 255 / max(w-1, 1)), uint8(y * 255 / max(h-1, 1)), uint8((x + y) * 127 / max(w+h-2, 1))}
	}
	switch kind {
	case "gray":
		img := image.NewGray(image.Rect(0, 0, w, h))
		grey := func(x, y int) [3]uint8 { v := rgbAt(x, y)[0]; return [3]uint8{v, v, v} }
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				img.SetGray(x, y, color.Gray{Y: grey(x, y)[0]})
			}
		}
		return img, grey
	case "alpha":
		img := image.NewNRGBA(image.Rect(0, 0, w, h))
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				c := rgbAt(x, y)
				img.SetNRGBA(x, y, color.NRGBA{R: c[0], G: c[1], B: c[2], A: uint8(64 + x%128)})
			}
		}
		return img, rgbAt
	case "paletted":
		pal := color.Palette{color.NRGBA{10, 20, 30, 255}, color.NRGBA{200, 100, 0, 255}, color.NRGBA{0, 255, 128, 255}}
		img := image.NewPaletted(image.Rect(0, 0, w, h), pal)
		at := func(x, y int) [3]uint8 {
			c := pal[(x+2*y)%3].(color.NRGBA)
			return [3]uint8{c.R, c.G, c.B}
		}
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				img.SetColorIndex(x, y, uint8((x+2*y)%3))
			}
		}
		return img, at
	default: // opaque RGB
		img := image.NewRGBA(image.Rect(0, 0, w, h))
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				c := rgbAt(x, y)
				img.SetRGBA(x, y, color.RGBA{R: c[0], G: c[1], B: c[2], A: 255})
			}
		}
		return img, rgbAt
	}
}

func encode(t testing.TB, img image.Image, format string) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	if format == "png" {
		err = png.Encode(&buf, img)
	} else {
		err = jpeg.Encode(&buf, img, &jpeg.Options{Quality: 95})
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestImageRoundTrip(t *testing.T) {
	const size = 24
	tests := []struct {
		name    string
		kind    string
		field   string
		maxDiff float64 // largest allowed |got-want|; 0 means exact
		meanMax float64 // largest allowed mean |got-want|
	}{
		{"png rgb", "rgb", "png", 0, 0},
		{"png grey", "gray", "png", 0, 0},
		{"png alpha", "alpha", "png", 0, 0},
		{"png palette", "paletted", "PNG", 0, 0},
		{"jpeg rgb", "rgb", "jpg", 0.12, 0.02},
		{"jpeg grey", "gray", "jpeg", 0.05, 0.01},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, want := gradient(tc.kind, size, size)
			format := strings.ToLower(tc.field)
			if format == "jpg" {
				format = "jpeg"
			}
			out, err := Image(encode(t, img, format), tc.field, size)
			if err != nil {
				t.Fatal(err)
			}
			if len(out) != 3*size*size {
				t.Fatalf("got %d values, want 3×%d×%d", len(out), size, size)
			}
			var worst, sum float64
			for c := 0; c < 3; c++ {
				for y := 0; y < size; y++ {
					for x := 0; x < size; x++ {
						got := out[c*size*size+y*size+x]
						exp := float32(want(x, y)[c]) / 255
						if tc.maxDiff == 0 && got != exp {
							t.Fatalf("c=%d y=%d x=%d: got %v, want exactly %v", c, y, x, got, exp)
						}
						d := math.Abs(float64(got - exp))
						worst = max(worst, d)
						sum += d
					}
				}
			}
			if mean := sum / float64(len(out)); worst > tc.maxDiff || mean > tc.meanMax {
				t.Errorf("max diff %.4f (limit %.4f), mean %.4f (limit %.4f)", worst, tc.maxDiff, mean, tc.meanMax)
			}
		})
	}
}

// bands paints an image in four equal colour bands along its long axis:
// red, green, white, blue. A centred square crop keeps exactly the green
// and white bands, half and half.
func bands(w, h int) image.Image {
	colours := []color.RGBA{{255, 0, 0, 255}, {0, 255, 0, 255}, {255, 255, 255, 255}, {0, 0, 255, 255}}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	long := max(w, h)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			pos := x
			if h > w {
				pos = y
			}
			img.SetRGBA(x, y, colours[pos*4/long])
		}
	}
	return img
}

func TestImageResizeCrop(t *testing.T) {
	tests := []struct {
		name       string
		w, h, size int
	}{
		{"landscape 64x32 to 16", 64, 32, 16},
		{"portrait 32x64 to 16", 32, 64, 16},
		{"landscape 128x64 to 16", 128, 64, 16},
		{"portrait 20x40 to 10", 20, 40, 10},
	}
	green := [3]float32{0, 1, 0}
	white := [3]float32{1, 1, 1}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Image(encode(t, bands(tc.w, tc.h), "png"), "png", tc.size)
			if err != nil {
				t.Fatal(err)
			}
			n := tc.size
			if len(out) != 3*n*n {
				t.Fatalf("got %d values, want %d", len(out), 3*n*n)
			}
			// Away from the green/white edge the colours are pure;
			// on it, bilinear blending may mix the two.
			for y := 0; y < n; y++ {
				for x := 0; x < n; x++ {
					pos := x
					if tc.h > tc.w {
						pos = y
					}
					var want [3]float32
					switch {
					case pos < n/2-1:
						want = green
					case pos > n/2:
						want = white
					default:
						continue
					}
					for c := 0; c < 3; c++ {
						if got := out[c*n*n+y*n+x]; got != want[c] {
							t.Fatalf("x=%d y=%d c=%d: got %v, want %v (crop not centred?)", x, y, c, got, want[c])
						}
					}
				}
			}
		})
	}
}

func TestImageErrors(t *testing.T) {
	img, _ := gradient("rgb", 16, 16)
	pngData := encode(t, img, "png")
	corrupt := bytes.Clone(pngData)
	for i := len(corrupt) / 2; i < len(corrupt)/2+20; i++ {
		corrupt[i] ^= 0xFF // scribble over the compressed pixels
	}
	tests := []struct {
		name  string
		data  []byte
		field string
		size  int
		want  []string // every string must appear in the error
	}{
		{"corrupt png", corrupt, "png", 16, []string{"png"}},
		{"truncated png", pngData[:len(pngData)/2], "png", 16, []string{"png"}},
		{"not an image", []byte("hello"), "png", 16, []string{"png"}},
		{"png bytes named jpg", pngData, "jpg", 16, []string{"jpg"}},
		{"truncated webp", []byte("RIFF....WEBPVP8 "), "webp", 16, []string{"webp"}},
		{"unknown field", pngData, "gif", 16, []string{`"gif"`, "not a supported"}},
		{"zero size", pngData, "png", 0, []string{"png", "size"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Image(tc.data, tc.field, tc.size)
			if err == nil {
				t.Fatal("want an error")
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

// hugePNG is a PNG header declaring w×h pixels with no pixel data at all.
func hugePNG(w, h uint32) []byte {
	var buf bytes.Buffer
	buf.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 2 // 8-bit truecolour
	chunk := append([]byte("IHDR"), ihdr...)
	binary.Write(&buf, binary.BigEndian, uint32(len(ihdr)))
	buf.Write(chunk)
	binary.Write(&buf, binary.BigEndian, crc32.ChecksumIEEE(chunk))
	return buf.Bytes()
}

// hugeJPEG is a small real jpeg whose frame header is patched to say w×h.
func hugeJPEG(t *testing.T, w, h uint16) []byte {
	img, _ := gradient("rgb", 16, 16)
	data := encode(t, img, "jpeg")
	sof := bytes.Index(data, []byte{0xFF, 0xC0}) // baseline frame header
	if sof < 0 {
		t.Fatal("no SOF0 marker")
	}
	// FF C0, length (2), precision (1), height (2), width (2)
	binary.BigEndian.PutUint16(data[sof+5:], h)
	binary.BigEndian.PutUint16(data[sof+7:], w)
	return data
}

func TestImageHugeDimensions(t *testing.T) {
	tests := []struct {
		name  string
		data  []byte
		field string
	}{
		{"png 100000x100000", hugePNG(100000, 100000), "png"},
		{"png 8001x8000", hugePNG(8001, 8000), "png"},
		{"jpeg 65535x65535", hugeJPEG(t, 65535, 65535), "jpeg"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := Image(tc.data, tc.field, 224)
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), "pixel limit") || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("got %v, want a pixel-limit error naming %s", err, tc.field)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Errorf("allocated %d bytes before refusing", grew)
			}
		})
	}
}

func TestCaption(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		max     int
		want    string
		wantErr string // "" means success
	}{
		{"plain", "a cat on a mat", 100, "a cat on a mat", ""},
		{"trimmed", " \t\na cat\r\n ", 100, "a cat", ""},
		{"unicode", "  un chat sur un tapis — 猫  ", 100, "un chat sur un tapis — 猫", ""},
		{"exactly at limit after trim", "  abcde  ", 5, "abcde", ""},
		{"empty", "   ", 5, "", ""},
		{"too long", "abcdef", 5, "", "over the 5-byte limit"},
		{"not utf-8", "caf\xe9 au lait", 100, "", "not valid UTF-8 (first bad byte at offset 3)"},
		{"truncated rune", "猫"[:2], 100, "", "not valid UTF-8"},
		{"bad limit", "a", 0, "", "must be positive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Caption([]byte(tc.data), tc.max)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// benchImage decodes data as field at size in a loop and reports samples/s.
func benchImage(b *testing.B, data []byte, field string, size int) {
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Image(data, field, size); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "samples/s")
}

func BenchmarkDecodeJPEG224(b *testing.B) {
	img, _ := gradient("rgb", 256, 256)
	benchImage(b, encode(b, img, "jpeg"), "jpg", 224)
}

func BenchmarkDecodePNG32(b *testing.B) {
	img, _ := gradient("rgb", 32, 32)
	benchImage(b, encode(b, img, "png"), "png", 32)
}
