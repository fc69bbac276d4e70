package synth

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
)

// Float32CHW returns the image as float32 in CHW order (3×32×32):
// out[c*Size*Size + row*Size + col] = float32(byte)/255. Because the float
// image is defined from the bytes, it is identical after a PNG round trip.
func (s Sample) Float32CHW() []float32 {
	return PixelsToCHW(s.Pixels)
}

// PixelsToCHW converts HWC bytes (as in Sample.Pixels or from DecodePNG) to
// CHW float32 values byte/255. It panics if len(pixels) != NumPixels.
func PixelsToCHW(pixels []uint8) []float32 {
	if len(pixels) != NumPixels {
		panic(fmt.Sprintf("synth.PixelsToCHW: got %d bytes, want %d", len(pixels), NumPixels))
	}
	out := make([]float32, NumPixels)
	for j := 0; j < Size; j++ {
		for i := 0; i < Size; i++ {
			p := (j*Size + i) * Channels
			for c := 0; c < Channels; c++ {
				out[c*Size*Size+j*Size+i] = float32(pixels[p+c]) / 255
			}
		}
	}
	return out
}

// PNG encodes the sample's image as an opaque 8-bit RGB PNG.
func (s Sample) PNG() ([]byte, error) {
	if len(s.Pixels) != NumPixels {
		return nil, fmt.Errorf("synth: encode %s: got %d pixel bytes, want %d", s.Key, len(s.Pixels), NumPixels)
	}
	img := image.NewRGBA(image.Rect(0, 0, Size, Size))
	for p := 0; p < Size*Size; p++ {
		img.Pix[4*p+0] = s.Pixels[3*p+0]
		img.Pix[4*p+1] = s.Pixels[3*p+1]
		img.Pix[4*p+2] = s.Pixels[3*p+2]
		img.Pix[4*p+3] = 255
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("synth: encode %s as PNG: %w", s.Key, err)
	}
	return buf.Bytes(), nil
}

// DecodePNG decodes a PNG image into HWC RGB bytes (the layout of
// Sample.Pixels). It returns an error if data is not a PNG or the image is
// not 32×32. Any alpha channel is dropped (colours are un-premultiplied).
func DecodePNG(data []byte) ([]uint8, error) {
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("synth: decode PNG: %w", err)
	}
	b := img.Bounds()
	if b.Dx() != Size || b.Dy() != Size {
		return nil, fmt.Errorf("synth: decode PNG: image is %d×%d, want %d×%d", b.Dx(), b.Dy(), Size, Size)
	}
	pixels := make([]uint8, NumPixels)
	for j := 0; j < Size; j++ {
		for i := 0; i < Size; i++ {
			c := color.NRGBAModel.Convert(img.At(b.Min.X+i, b.Min.Y+j)).(color.NRGBA)
			p := (j*Size + i) * Channels
			pixels[p+0] = c.R
			pixels[p+1] = c.G
			pixels[p+2] = c.B
		}
	}
	return pixels, nil
}
