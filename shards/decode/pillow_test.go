package decode

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// pillowScript resizes each input as LaVIT's transform does (an RGB PIL
// image, Resize((size, size), BICUBIC)) and writes the raw bytes; it also
// re-encodes each input as lossless and lossy webp, with Pillow's decoding
// of the lossy one, for the webp tests.
const pillowScript = `
import sys
from PIL import Image
for line in open(sys.argv[1]):
    src, size = line.split()
    size = int(size)
    im = Image.open(src).convert("RGB")
    open(src + ".bicubic", "wb").write(im.resize((size, size), Image.BICUBIC).tobytes())
    im.save(src + ".lossless.webp", "WEBP", lossless=True)
    im.save(src + ".lossy.webp", "WEBP", quality=90)
    open(src + ".lossy.rgb", "wb").write(Image.open(src + ".lossy.webp").convert("RGB").tobytes())
`

// noisyImage is a w×h gradient with seeded noise of ±noise levels (which
// exercises the rounding of every tap).
func noisyImage(w, h, noise int, seed uint64) *image.NRGBA {
	r := rand.New(rand.NewPCG(seed, 1))
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			n := func(base int) uint8 { return uint8(min(max(base+r.IntN(2*noise+1)-noise, 0), 255)) }
			img.SetNRGBA(x, y, color.NRGBA{R: n(x * 255 / max(w, 1)), G: n(y * 255 / max(h, 1)), B: n(128), A: 255})
		}
	}
	return img
}

type pillowCase struct {
	w, h, size int
	path       string
	rgb        []uint8 // the source, packed
}

// runPillow writes each case's source png, runs the reference and returns
// the cases with their paths.
func runPillow(t *testing.T, noise int, shapes [][3]int) []pillowCase {
	t.Helper()
	py := testutil.PillowPython(t)
	dir := t.TempDir()
	var list bytes.Buffer
	cases := make([]pillowCase, len(shapes))
	for i, s := range shapes {
		img := noisyImage(s[0], s[1], noise, uint64(i))
		path := filepath.Join(dir, fmt.Sprintf("img%d.png", i))
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		rgb, _, _ := toRGB(img)
		cases[i] = pillowCase{w: s[0], h: s[1], size: s[2], path: path, rgb: rgb}
		fmt.Fprintf(&list, "%s %d\n", path, s[2])
	}
	listPath := filepath.Join(dir, "list")
	if err := os.WriteFile(listPath, list.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(py, "-c", pillowScript, listPath).CombinedOutput(); err != nil {
		t.Fatalf("pillow reference: %v: %s", err, out)
	}
	return cases
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBicubicMatchesPillow: LaVIT's resize gives Pillow's bytes exactly,
// shrinking (antialiased), enlarging, one axis only, extreme aspect
// ratios and the identity, and the float output is those bytes through
// ToTensor and CLIP's Normalize.
func TestBicubicMatchesPillow(t *testing.T) {
	shapes := [][3]int{
		{640, 480, 224}, {300, 200, 224}, {224, 224, 224}, {100, 60, 224}, {7, 500, 224},
		{1, 1, 224}, {224, 300, 224}, {1000, 3, 37}, {33, 33, 16}, {225, 223, 224},
	}
	for _, c := range runPillow(t, 40, shapes) {
		t.Run(fmt.Sprintf("%dx%d→%d", c.w, c.h, c.size), func(t *testing.T) {
			want := readFile(t, c.path+".bicubic")
			got := resizeBicubic(c.rgb, c.w, c.h, c.size, c.size)
			if !bytes.Equal(got, want) {
				diff, at := 0, -1
				for i := range got {
					if got[i] != want[i] {
						diff++
						if at < 0 {
							at = i
						}
					}
				}
				t.Fatalf("%d of %d bytes differ from Pillow's (first at %d: %d, Pillow %d)", diff, len(got), at, got[at], want[at])
			}
			out, err := ImageWith(readFile(t, c.path), "png", LaVIT(c.size))
			if err != nil {
				t.Fatal(err)
			}
			plane := c.size * c.size
			for i := 0; i < plane; i++ {
				for ch := 0; ch < 3; ch++ {
					v := float32(want[i*3+ch]) / 255
					if w := (v - CLIPMean[ch]) / CLIPStd[ch]; out[ch*plane+i] != w {
						t.Fatalf("pixel %d channel %d: %v, want %v", i, ch, out[ch*plane+i], w)
					}
				}
			}
		})
	}
}

// TestWebp: a lossless webp decodes to exactly the pixels it was made
// from and goes through the same preprocessing as png; a lossy one
// decodes to exactly libwebp's pixels (its fancy chroma upsampling and
// limited-range YUV, which Go's image.YCbCr conversion would miss by up
// to ~30 levels).
func TestWebp(t *testing.T) {
	for _, c := range runPillow(t, 40, [][3]int{{64, 48, 32}, {31, 17, 8}, {1, 1, 4}, {2, 3, 4}}) {
		t.Run(fmt.Sprintf("%dx%d", c.w, c.h), func(t *testing.T) {
			lossless := readFile(t, c.path+".lossless.webp")
			img, err := imageCodecs["webp"].decode(bytes.NewReader(lossless))
			if err != nil {
				t.Fatal(err)
			}
			if rgb, _, _ := toRGB(img); !bytes.Equal(rgb, c.rgb) {
				t.Fatal("lossless webp: pixels differ from the source")
			}
			fromWebp, err := ImageWith(lossless, "webp", LaVIT(c.size))
			if err != nil {
				t.Fatal(err)
			}
			fromPNG, err := ImageWith(readFile(t, c.path), "png", LaVIT(c.size))
			if err != nil {
				t.Fatal(err)
			}
			for i := range fromPNG {
				if fromWebp[i] != fromPNG[i] {
					t.Fatalf("value %d: webp %v, png %v", i, fromWebp[i], fromPNG[i])
				}
			}

			lossy, err := imageCodecs["webp"].decode(bytes.NewReader(readFile(t, c.path+".lossy.webp")))
			if err != nil {
				t.Fatal(err)
			}
			rgb, _, _ := vp8ToRGB(lossy.(*image.YCbCr))
			if want := readFile(t, c.path+".lossy.rgb"); !bytes.Equal(rgb, want) {
				diff := 0
				for i := range rgb {
					if rgb[i] != want[i] {
						diff++
					}
				}
				t.Fatalf("lossy webp: %d of %d bytes differ from libwebp's decoding", diff, len(rgb))
			}
			if _, err := ImageWith(readFile(t, c.path+".lossy.webp"), "webp", LaVIT(c.size)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPreprocessValidate names the bad size or mode.
func TestPreprocessValidate(t *testing.T) {
	img, _ := gradient("rgb", 8, 8)
	data := encode(t, img, "png")
	for _, tc := range []struct {
		p    Preprocess
		want string
	}{
		{Preprocess{Size: 0}, "output size 0"},
		{Preprocess{Size: MaxSize + 1}, "output size 4097"},
		{Preprocess{Size: 8, Resize: "lanczos"}, `resize "lanczos"`},
	} {
		if _, err := ImageWith(data, "png", tc.p); err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%+v: error %v, want it to mention %q", tc.p, err, tc.want)
		}
	}
}
