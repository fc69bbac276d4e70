// Package decode owns turning a sample's fields into model inputs: png,
// jpeg and webp images become float32 CHW tensors (the tiny configs' shorter
// side resized and centre-cropped, or LaVIT's bicubic square resize with
// CLIP's normalisation), and captions become checked, trimmed strings.
//
// Errors name the format or field but not the shard and key, which this
// package never sees; callers wrap them with that context.
package decode

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"strings"
	"unicode/utf8"

	"golang.org/x/image/webp"
)

// MaxPixels bounds decoding work: an image whose header declares more than
// width*height = 64 megapixels is rejected before any pixel is decoded.
const MaxPixels = 64_000_000

// MaxSize bounds the output side of a preprocessing.
const MaxSize = 4096

// Resize is how an image is brought to the model's size.
type Resize string

const (
	// CropBilinear resizes bilinearly so the shorter side is the size and
	// takes the centred square (the tiny configs; the default).
	CropBilinear Resize = "crop-bilinear"
	// SquareBicubic resizes the whole image to size×size, aspect ratio not
	// kept and nothing cropped, with Pillow's bicubic filter (antialiased
	// when shrinking, 8-bit between the passes, as Pillow computes it):
	// LaVIT's transform (torchvision Resize((224, 224), BICUBIC) on a PIL
	// image, then ToTensor and Normalize with CLIP's mean and std).
	SquareBicubic Resize = "square-bicubic"
)

// CLIP's per-channel mean and standard deviation (R, G, B), which LaVIT's
// EVA-CLIP encoder expects its inputs normalised with.
var (
	CLIPMean = [3]float32{0.48145466, 0.4578275, 0.40821073}
	CLIPStd  = [3]float32{0.26862954, 0.26130258, 0.27577711}
)

// Preprocess says how an image becomes the model's input.
type Preprocess struct {
	Size   int    // output side: the model takes Size×Size
	Resize Resize // "" is CropBilinear
	// Normalize maps each value v in [0,1] to (v - CLIPMean[c]) / CLIPStd[c];
	// without it values stay in [0,1].
	Normalize bool
}

// Tiny is the tiny configs' preprocessing: bilinear, centre crop, [0,1].
func Tiny(size int) Preprocess { return Preprocess{Size: size, Resize: CropBilinear} }

// LaVIT is the full-size configs' preprocessing: bicubic to size×size, no
// crop, CLIP normalisation.
func LaVIT(size int) Preprocess {
	return Preprocess{Size: size, Resize: SquareBicubic, Normalize: true}
}

// Validate checks the size and the resize mode.
func (p Preprocess) Validate() error {
	if p.Size <= 0 || p.Size > MaxSize {
		return fmt.Errorf("output size %d must be in [1, %d]", p.Size, MaxSize)
	}
	switch p.Resize {
	case "", CropBilinear, SquareBicubic:
		return nil
	}
	return fmt.Errorf("resize %q: want %q or %q", p.Resize, CropBilinear, SquareBicubic)
}

// imageCodecs maps a sample's image field to its decoder.
var imageCodecs = map[string]struct {
	config func(io.Reader) (image.Config, error)
	decode func(io.Reader) (image.Image, error)
}{
	"png":  {png.DecodeConfig, png.Decode},
	"jpg":  {jpeg.DecodeConfig, jpeg.Decode},
	"jpeg": {jpeg.DecodeConfig, jpeg.Decode},
	"webp": {webp.DecodeConfig, webp.Decode},
}

// ImageFields are the sample fields that hold an image, in the order a
// sample's image is looked for.
var ImageFields = []string{"png", "jpg", "jpeg", "webp"}

// Image decodes a png, jpeg or webp (chosen by field name: "png", "jpg",
// "jpeg", "webp") with the tiny configs' preprocessing: resized with
// plain bilinear sampling so the shorter side is size, centre-cropped to
// size×size, float32 values in [0,1] in CHW order: out[c*size*size +
// row*size + col], channels R, G, B. Grey images are replicated to three
// channels; alpha is dropped (colours are taken un-premultiplied). At the
// same size the values are exactly byte/255. Errors name the format.
func Image(data []byte, field string, size int) ([]float32, error) {
	if size <= 0 {
		return nil, fmt.Errorf("decode: %s: output size %d must be positive", strings.ToLower(field), size)
	}
	return ImageWith(data, field, Tiny(size))
}

// ImageWith is Image with the preprocessing p.
func ImageWith(data []byte, field string, p Preprocess) ([]float32, error) {
	format := strings.ToLower(field)
	codec, ok := imageCodecs[format]
	if !ok {
		return nil, fmt.Errorf("decode: field %q is not a supported image format (want png, jpg, jpeg or webp)", field)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("decode: %s: %w", format, err)
	}

	// Read only the header first, so a hostile size is refused cheaply.
	cfg, err := codec.config(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decode: %s header: %w", format, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, fmt.Errorf("decode: %s: empty image (%dx%d)", format, cfg.Width, cfg.Height)
	}
	if pixels := int64(cfg.Width) * int64(cfg.Height); pixels > MaxPixels {
		return nil, fmt.Errorf("decode: %s: %dx%d is %d pixels, over the %d-pixel limit", format, cfg.Width, cfg.Height, pixels, MaxPixels)
	}

	img, err := codec.decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decode: %s: %w", format, err)
	}
	if b := img.Bounds(); b.Dx() != cfg.Width || b.Dy() != cfg.Height {
		return nil, fmt.Errorf("decode: %s: decoded %dx%d, header says %dx%d", format, b.Dx(), b.Dy(), cfg.Width, cfg.Height)
	}
	var rgb []uint8
	var w, h int
	if m := lossyWebp(img); format == "webp" && m != nil {
		rgb, w, h = vp8ToRGB(m)
	} else {
		rgb, w, h = toRGB(img)
	}
	if p.Resize == SquareBicubic {
		return toCHW(resizeBicubic(rgb, w, h, p.Size, p.Size), p.Size, p.Normalize), nil
	}
	out := resizeCrop(rgb, w, h, p.Size)
	if p.Normalize {
		normalize(out, p.Size)
	}
	return out, nil
}

// toRGB copies an image into packed 8-bit RGB (3 bytes per pixel, rows top
// to bottom) and returns it with the width and height. Common decoder
// outputs take a fast path; anything else goes through color.NRGBAModel.
func toRGB(img image.Image) (rgb []uint8, w, h int) {
	b := img.Bounds()
	w, h = b.Dx(), b.Dy()
	rgb = make([]uint8, w*h*3)
	i := 0
	put := func(r, g, bl uint8) {
		rgb[i], rgb[i+1], rgb[i+2] = r, g, bl
		i += 3
	}
	switch m := img.(type) {
	case *image.YCbCr: // jpeg colour
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				ci := m.COffset(x, y)
				put(color.YCbCrToRGB(m.Y[m.YOffset(x, y)], m.Cb[ci], m.Cr[ci]))
			}
		}
	case *image.Gray: // jpeg and png grey
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				v := m.Pix[m.PixOffset(x, y)]
				put(v, v, v)
			}
		}
	case *image.NRGBA: // png with alpha: colours are already un-premultiplied
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				p := m.Pix[m.PixOffset(x, y):]
				put(p[0], p[1], p[2])
			}
		}
	case *image.RGBA: // opaque png; un-premultiply in case alpha is not 255
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				p := m.Pix[m.PixOffset(x, y):]
				put(unpremultiply(p[0], p[3]), unpremultiply(p[1], p[3]), unpremultiply(p[2], p[3]))
			}
		}
	case *image.Paletted: // png palette
		palette := make([]color.NRGBA, len(m.Palette))
		for j, c := range m.Palette {
			palette[j] = color.NRGBAModel.Convert(c).(color.NRGBA)
		}
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				var c color.NRGBA // an index past the palette reads as black
				if k := int(m.Pix[m.PixOffset(x, y)]); k < len(palette) {
					c = palette[k]
				}
				put(c.R, c.G, c.B)
			}
		}
	default: // 16-bit png, CMYK jpeg, ...
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
				put(c.R, c.G, c.B)
			}
		}
	}
	return rgb, w, h
}

// lossyWebp is the YUV picture of a lossy webp (alpha, if any, dropped),
// or nil.
func lossyWebp(img image.Image) *image.YCbCr {
	switch m := img.(type) {
	case *image.YCbCr:
		if m.SubsampleRatio == image.YCbCrSubsampleRatio420 {
			return m
		}
	case *image.NYCbCrA:
		if m.SubsampleRatio == image.YCbCrSubsampleRatio420 {
			return &m.YCbCr
		}
	}
	return nil
}

// vp8ToRGB converts a lossy webp's picture as libwebp does: chroma
// upsampled with its "fancy" filter (each pixel's chroma 9:3:3:1 from the
// four nearest chroma samples) and BT.601 limited-range YUV (libwebp's
// fixed-point constants). Go's image.YCbCr conversion assumes JPEG's full
// range and nearest chroma, which is up to tens of levels off for VP8.
func vp8ToRGB(m *image.YCbCr) (rgb []uint8, w, h int) {
	b := m.Bounds()
	w, h = b.Dx(), b.Dy()
	cw, ch := (w+1)/2, (h+1)/2
	chroma := func(plane []uint8, cx, cy int) int {
		cx, cy = min(max(cx, 0), cw-1), min(max(cy, 0), ch-1)
		return int(plane[cy*m.CStride+cx])
	}
	upsample := func(plane []uint8, x, y int) int {
		cx, cy := x/2, y/2
		nx, ny := cx+1, cy+1 // the neighbours on the pixel's side of the sample
		if x%2 == 0 {
			nx = cx - 1
		}
		if y%2 == 0 {
			ny = cy - 1
		}
		return (9*chroma(plane, cx, cy) + 3*chroma(plane, nx, cy) + 3*chroma(plane, cx, ny) + chroma(plane, nx, ny) + 8) >> 4
	}
	multHi := func(v, coeff int) int { return (v * coeff) >> 8 }
	clip := func(v int) uint8 { return uint8(min(max(v>>6, 0), 255)) }
	rgb = make([]uint8, w*h*3)
	i := 0
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			yy := int(m.Y[m.YOffset(b.Min.X+x, b.Min.Y+y)])
			u, v := upsample(m.Cb, x, y), upsample(m.Cr, x, y)
			rgb[i] = clip(multHi(yy, 19077) + multHi(v, 26149) - 14234)
			rgb[i+1] = clip(multHi(yy, 19077) - multHi(u, 6419) - multHi(v, 13320) + 8708)
			rgb[i+2] = clip(multHi(yy, 19077) + multHi(u, 33050) - 17685)
			i += 3
		}
	}
	return rgb, w, h
}

// unpremultiply turns a premultiplied 8-bit channel back into a straight one.
func unpremultiply(c, a uint8) uint8 {
	switch a {
	case 255:
		return c
	case 0:
		return 0
	}
	return uint8(min(uint32(c)*255/uint32(a), 255))
}

// tap is where one output column (or row) samples the source: between
// pixels lo and hi, with weight frac on hi.
type tap struct {
	lo, hi int
	frac   float32
}

// taps maps the out output pixels of a crop starting at offset, in an axis
// resized from src to resized pixels, onto the source axis. Pixel centres
// line up: output pixel i covers source coordinate (i+offset+0.5)*src/resized - 0.5.
func taps(src, resized, offset, out int) []tap {
	scale := float64(src) / float64(resized)
	ts := make([]tap, out)
	for i := range ts {
		s := (float64(i+offset)+0.5)*scale - 0.5
		s = math.Max(0, math.Min(s, float64(src-1))) // clamp at the edges
		lo := int(s)
		ts[i] = tap{lo: lo, hi: min(lo+1, src-1), frac: float32(s - float64(lo))}
	}
	return ts
}

// resizeCrop resizes packed RGB (w×h) bilinearly so the shorter side is
// size, takes the centred size×size crop, and returns CHW float32 in [0,1].
// Only the crop is computed: it samples the source directly.
func resizeCrop(rgb []uint8, w, h, size int) []float32 {
	rw, rh := size, size // the resized image's width and height
	if w < h {
		rh = int(math.Round(float64(h) * float64(size) / float64(w)))
	} else if h < w {
		rw = int(math.Round(float64(w) * float64(size) / float64(h)))
	}
	cols := taps(w, rw, (rw-size)/2, size)
	rows := taps(h, rh, (rh-size)/2, size)

	plane := size * size
	out := make([]float32, 3*plane)
	for oy, ry := range rows {
		top := rgb[ry.lo*w*3:]
		bot := rgb[ry.hi*w*3:]
		for ox, cx := range cols {
			for c := 0; c < 3; c++ {
				p00 := float32(top[cx.lo*3+c])
				p01 := float32(top[cx.hi*3+c])
				p10 := float32(bot[cx.lo*3+c])
				p11 := float32(bot[cx.hi*3+c])
				t := p00 + (p01-p00)*cx.frac
				u := p10 + (p11-p10)*cx.frac
				out[c*plane+oy*size+ox] = (t + (u-t)*ry.frac) / 255
			}
		}
	}
	return out
}

// normalize applies CLIP's mean and std in place to CHW values in [0,1],
// in float32 as torchvision's Normalize does.
func normalize(chw []float32, size int) {
	plane := size * size
	for c := 0; c < 3; c++ {
		for i, v := range chw[c*plane : (c+1)*plane] {
			chw[c*plane+i] = (v - CLIPMean[c]) / CLIPStd[c]
		}
	}
}

// toCHW turns packed 8-bit RGB (size×size) into CHW float32 byte/255,
// normalised with CLIP's mean and std when norm is set (the same float32
// operations as torchvision's ToTensor then Normalize).
func toCHW(rgb []uint8, size int, norm bool) []float32 {
	plane := size * size
	out := make([]float32, 3*plane)
	for i := 0; i < plane; i++ {
		for c := 0; c < 3; c++ {
			out[c*plane+i] = float32(rgb[i*3+c]) / 255
		}
	}
	if norm {
		normalize(out, size)
	}
	return out
}

// pilPrecisionBits is the fixed-point precision of Pillow's 8-bit resample.
const pilPrecisionBits = 32 - 8 - 2

// bicubic is Pillow's bicubic kernel (a = -0.5), support 2.
func bicubic(x float64) float64 {
	const a = -0.5
	x = math.Abs(x)
	switch {
	case x < 1:
		return ((a+2)*x-(a+3))*x*x + 1
	case x < 2:
		return (((x-5)*x+8)*x - 4) * a
	}
	return 0
}

// window is one output pixel's source pixels [start, start+len(k)) and
// their fixed-point weights.
type window struct {
	start int
	k     []int64
}

// bicubicWindows computes, as Pillow's precompute_coeffs and
// normalize_coeffs_8bpc do, the windows of an axis resized from in to out
// pixels: the kernel is widened by the scale when shrinking (antialiasing),
// weights are normalised to sum 1 and rounded to fixed point.
func bicubicWindows(in, out int) []window {
	scale := float64(in) / float64(out)
	filterScale := math.Max(scale, 1)
	support := 2 * filterScale
	ws := make([]window, out)
	weights := make([]float64, 0, int(math.Ceil(support))*2+1)
	for o := range ws {
		center := (float64(o) + 0.5) * scale
		lo := max(int(center-support+0.5), 0) // int() truncates as C's cast does
		hi := min(int(center+support+0.5), in)
		weights = weights[:0]
		sum := 0.0
		for x := lo; x < hi; x++ {
			w := bicubic((float64(x) - center + 0.5) / filterScale)
			weights = append(weights, w)
			sum += w
		}
		k := make([]int64, len(weights))
		for i, w := range weights {
			if sum != 0 {
				w /= sum
			}
			if w < 0 {
				k[i] = int64(-0.5 + w*(1<<pilPrecisionBits))
			} else {
				k[i] = int64(0.5 + w*(1<<pilPrecisionBits))
			}
		}
		ws[o] = window{start: lo, k: k}
	}
	return ws
}

// clip8 turns a fixed-point sum into a byte, as Pillow's clip8 does.
func clip8(v int64) uint8 {
	return uint8(min(max(v>>pilPrecisionBits, 0), 255))
}

// resizeBicubic resizes packed RGB (w×h) to ow×oh as Pillow's
// Image.resize(BICUBIC) does for an RGB image: a horizontal pass (when the
// width changes) into an 8-bit image, then a vertical pass (when the
// height changes). The result is bitwise Pillow's.
func resizeBicubic(rgb []uint8, w, h, ow, oh int) []uint8 {
	if ow != w {
		cols := bicubicWindows(w, ow)
		tmp := make([]uint8, ow*h*3)
		for y := 0; y < h; y++ {
			row := rgb[y*w*3 : (y+1)*w*3]
			for x, win := range cols {
				for c := 0; c < 3; c++ {
					acc := int64(1) << (pilPrecisionBits - 1)
					for i, k := range win.k {
						acc += int64(row[(win.start+i)*3+c]) * k
					}
					tmp[(y*ow+x)*3+c] = clip8(acc)
				}
			}
		}
		rgb, w = tmp, ow
	}
	if oh != h {
		rows := bicubicWindows(h, oh)
		tmp := make([]uint8, w*oh*3)
		for y, win := range rows {
			for x := 0; x < w*3; x++ {
				acc := int64(1) << (pilPrecisionBits - 1)
				for i, k := range win.k {
					acc += int64(rgb[(win.start+i)*w*3+x]) * k
				}
				tmp[y*w*3+x] = clip8(acc)
			}
		}
		rgb = tmp
	}
	return rgb
}

// Caption returns the text as a string. It must be valid UTF-8 (error
// otherwise), is trimmed of surrounding whitespace, and must then be at
// most maxBytes long (error otherwise); maxBytes must be positive.
func Caption(data []byte, maxBytes int) (string, error) {
	if maxBytes <= 0 {
		return "", fmt.Errorf("decode: caption: limit %d must be positive", maxBytes)
	}
	if !utf8.Valid(data) {
		return "", fmt.Errorf("decode: caption: not valid UTF-8 (first bad byte at offset %d)", firstInvalid(data))
	}
	text := strings.TrimSpace(string(data))
	if len(text) > maxBytes {
		return "", fmt.Errorf("decode: caption: %d bytes after trimming, over the %d-byte limit", len(text), maxBytes)
	}
	return text, nil
}

// firstInvalid returns the offset of the first byte that is not part of a
// valid UTF-8 sequence, or -1 if there is none.
func firstInvalid(data []byte) int {
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return -1
}
