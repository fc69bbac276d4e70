// Package decode owns turning a sample's fields into model inputs: png and
// jpeg images become float32 CHW tensors (shorter side resized, centre
// crop), and captions become checked, trimmed strings.
//
// Errors name the format or field but not the shard and key, which this
// package never sees; callers wrap them with that context.
package decode

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"strings"
	"unicode/utf8"
)

// MaxPixels bounds decoding work: an image whose header declares more than
// width*height = 64 megapixels is rejected before any pixel is decoded.
const MaxPixels = 64_000_000

// Image decodes a png or jpeg (chosen by field name: "png", "jpg", "jpeg";
// webp is not supported), resizes it with plain bilinear sampling so the
// shorter side is size, centre-crops it to size×size, and returns float32
// values in [0,1] in CHW order: out[c*size*size + row*size + col], channels
// R, G, B. Grey images are replicated to three channels; alpha is dropped
// (colours are taken un-premultiplied). At the same size the values are
// exactly byte/255. Errors name the format.
func Image(data []byte, field string, size int) ([]float32, error) {
	format := strings.ToLower(field)
	var decodeConfig func(io.Reader) (image.Config, error)
	var decode func(io.Reader) (image.Image, error)
	switch format {
	case "png":
		decodeConfig, decode = png.DecodeConfig, png.Decode
	case "jpg", "jpeg":
		decodeConfig, decode = jpeg.DecodeConfig, jpeg.Decode
	case "webp":
		return nil, errors.New("decode: webp images are not supported (only png, jpg and jpeg)")
	default:
		return nil, fmt.Errorf("decode: field %q is not a supported image format (want png, jpg or jpeg)", field)
	}
	if size <= 0 {
		return nil, fmt.Errorf("decode: %s: output size %d must be positive", format, size)
	}

	// Read only the header first, so a hostile size is refused cheaply.
	cfg, err := decodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decode: %s header: %w", format, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, fmt.Errorf("decode: %s: empty image (%dx%d)", format, cfg.Width, cfg.Height)
	}
	if pixels := int64(cfg.Width) * int64(cfg.Height); pixels > MaxPixels {
		return nil, fmt.Errorf("decode: %s: %dx%d is %d pixels, over the %d-pixel limit", format, cfg.Width, cfg.Height, pixels, MaxPixels)
	}

	img, err := decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decode: %s: %w", format, err)
	}
	rgb, w, h := toRGB(img)
	return resizeCrop(rgb, w, h, size), nil
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
