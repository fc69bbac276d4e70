// Package synth owns the procedural synthetic image-caption data set used to
// train and evaluate the tiny LaVIT model.
//
// Each sample is a 32×32 RGB image of one or two coloured shapes on a noisy
// background, together with an English caption such as
// "big red circle top left and small blue cross bottom right" and the list of
// objects it describes. Samples are pure functions of (seed, split, index):
// Generate can produce any sample directly, in any order, on any platform,
// and always gets the same bytes. Pixel values are 8-bit exact, so a PNG
// round trip is lossless.
//
// The package also owns the data set's tiny word vocabulary (see vocab.go).
//
// # Generation algorithm
//
// Random numbers come from the SplitMix64 stream described in prng.go,
// seeded by a key derived from (seed, split, index). Draws happen in exactly
// this order (qx, qy is the chosen quadrant's centre):
//
//	count = 1 + below(2)                       // 1 or 2 objects
//	q1 = below(4)                              // first quadrant
//	if count == 2 {
//	    q2 = below(3); if q2 >= q1 { q2++ }    // a different quadrant
//	}
//	sort the chosen quadrants ascending        // raster order: 0 top-left,
//	                                           // 1 top-right, 2 bottom-left,
//	                                           // 3 bottom-right
//	for each chosen quadrant, ascending:
//	    size   = below(2)                      // index into Sizes
//	    colour = below(6)                      // index into Colours
//	    shape  = below(4)                      // index into Shapes
//	    cx = qx + (-1.5 + 3*float01())         // jitter in [-1.5, 1.5)
//	    cy = qy + (-1.5 + 3*float01())
//	for row j = 0..31, column i = 0..31, channel c = 0..2:
//	    v = 0.2*float01()                      // background noise
//	    byte = round(v*255)                    // half away from zero
//	paint the objects in raster order (no draws): every pixel whose
//	centre (i+0.5, j+0.5) is inside the shape gets the object's colour
//	(each channel 0 or 255)
//
// Quadrant centres are (8,8), (24,8), (8,24), (24,24); radii are 3.5 (small)
// and 6.5 (big). Floating-point expressions are written so that the Go
// compiler cannot fuse multiply-adds, which keeps results identical on every
// architecture.
package synth

import (
	"fmt"
	"math"
	"strings"
)

// Canvas geometry.
const (
	// Size is the width and height of every image, in pixels.
	Size = 32
	// Channels is the number of colour channels (R, G, B).
	Channels = 3
	// NumPixels is the length of Sample.Pixels: Size*Size*Channels.
	NumPixels = Size * Size * Channels
	// EvalSize is the conventional number of samples in the eval split.
	EvalSize = 256
)

// Radii of the two object sizes, in pixels.
const (
	SmallRadius = 3.5
	BigRadius   = 6.5
)

// Split selects which half of the data set a sample belongs to. Train and
// Eval use independent random streams for the same seed.
type Split int

// The two splits. Their numeric values enter the PRNG key; do not change them.
const (
	Train Split = 0
	Eval  Split = 1
)

// String returns "train" or "eval" (or "Split(n)" for an invalid value).
func (s Split) String() string {
	switch s {
	case Train:
		return "train"
	case Eval:
		return "eval"
	default:
		return fmt.Sprintf("Split(%d)", int(s))
	}
}

// Attribute values, in the order used by the generator's draws. Callers must
// not modify these slices; Generate uses its own private copies.
var (
	// Sizes lists the size words: index 0 is small (r=3.5), 1 is big (r=6.5).
	Sizes = []string{"small", "big"}
	// Colours lists the colour words.
	Colours = []string{"red", "green", "blue", "yellow", "magenta", "cyan"}
	// Shapes lists the shape words.
	Shapes = []string{"square", "circle", "triangle", "cross"}
	// Verticals lists the vertical position words.
	Verticals = []string{"top", "bottom"}
	// Horizontals lists the horizontal position words.
	Horizontals = []string{"left", "right"}
)

// Private copies used by Generate, so that a caller mutating the exported
// slices cannot change the data set.
var (
	sizeWords   = [2]string{"small", "big"}
	sizeRadii   = [2]float64{SmallRadius, BigRadius}
	colourWords = [6]string{"red", "green", "blue", "yellow", "magenta", "cyan"}
	colourRGB   = [6][3]uint8{
		{255, 0, 0},   // red
		{0, 255, 0},   // green
		{0, 0, 255},   // blue
		{255, 255, 0}, // yellow
		{255, 0, 255}, // magenta
		{0, 255, 255}, // cyan
	}
	shapeWords      = [4]string{"square", "circle", "triangle", "cross"}
	verticalWords   = [2]string{"top", "bottom"}
	horizontalWords = [2]string{"left", "right"}
)

// Shape indices, matching shapeWords.
const (
	shapeSquare = iota
	shapeCircle
	shapeTriangle
	shapeCross
)

// quadrantCentres holds (x, y) of each quadrant centre in raster order:
// top-left, top-right, bottom-left, bottom-right.
var quadrantCentres = [4][2]float64{{8, 8}, {24, 8}, {8, 24}, {24, 24}}

// Object describes one shape drawn in a sample. It is JSON-serialisable for
// evaluation tooling.
type Object struct {
	Size       string  `json:"size"`       // "small" or "big"
	Colour     string  `json:"colour"`     // one of Colours
	Shape      string  `json:"shape"`      // one of Shapes
	Vertical   string  `json:"vertical"`   // "top" or "bottom"
	Horizontal string  `json:"horizontal"` // "left" or "right"
	CX         float64 `json:"cx"`         // centre x in pixels (grows rightwards)
	CY         float64 `json:"cy"`         // centre y in pixels (grows downwards)
	R          float64 `json:"r"`          // radius in pixels
}

// Phrase returns the object's caption phrase, e.g. "big red circle top left".
func (o Object) Phrase() string {
	return strings.Join([]string{o.Size, o.Colour, o.Shape, o.Vertical, o.Horizontal}, " ")
}

// Sample is one generated image with its caption and objects.
type Sample struct {
	// Key identifies the sample: split name, a dash and the index zero-padded
	// to 8 digits, e.g. "train-00000042" or "eval-00000007".
	Key   string
	Split Split
	Index int
	// Pixels is the image in HWC order: Pixels[(row*Size+col)*Channels+c].
	Pixels []uint8
	// Caption is the objects' phrases in raster order joined by " and ".
	Caption string
	// Objects lists the drawn objects in raster order of their quadrants.
	Objects []Object
}

// SampleKey returns the Key of sample index in split, e.g. "train-00000042".
func SampleKey(split Split, index int) string {
	return fmt.Sprintf("%s-%08d", split, index)
}

// drawn is an object as drawn: attribute indices plus geometry.
type drawn struct {
	quadrant, size, colour, shape int
	cx, cy                        float64
}

// Generate returns sample index of split for seed. The result depends only
// on its arguments. It panics if split is not Train or Eval or if index is
// negative, since both are programming errors.
func Generate(seed uint64, split Split, index int) Sample {
	if split != Train && split != Eval {
		panic(fmt.Sprintf("synth.Generate: invalid split %d", int(split)))
	}
	if index < 0 {
		panic(fmt.Sprintf("synth.Generate: negative index %d", index))
	}
	g := rng{state: sampleKey(seed, split, index)}

	// Steps 1 and 2: object count and distinct quadrants, sorted ascending.
	count := 1 + g.below(2)
	quadrants := []int{g.below(4)}
	if count == 2 {
		second := g.below(3)
		if second >= quadrants[0] {
			second++
		}
		if second < quadrants[0] {
			quadrants = []int{second, quadrants[0]}
		} else {
			quadrants = append(quadrants, second)
		}
	}

	// Step 3: attributes and jittered centre of each object.
	objs := make([]drawn, len(quadrants))
	for k, q := range quadrants {
		d := drawn{quadrant: q}
		d.size = g.below(len(sizeWords))
		d.colour = g.below(len(colourWords))
		d.shape = g.below(len(shapeWords))
		// float64(...) around the product forbids a fused multiply-add.
		d.cx = quadrantCentres[q][0] + (-1.5 + float64(3*g.float01()))
		d.cy = quadrantCentres[q][1] + (-1.5 + float64(3*g.float01()))
		objs[k] = d
	}

	// Step 4: background noise.
	pixels := make([]uint8, NumPixels)
	for p := range pixels {
		v := float64(0.2 * g.float01())
		pixels[p] = uint8(math.Round(float64(v * 255)))
	}

	// Step 5: paint objects in raster order.
	for _, d := range objs {
		paint(pixels, d)
	}

	s := Sample{
		Key:     SampleKey(split, index),
		Split:   split,
		Index:   index,
		Pixels:  pixels,
		Objects: make([]Object, len(objs)),
	}
	phrases := make([]string, len(objs))
	for k, d := range objs {
		s.Objects[k] = Object{
			Size:       sizeWords[d.size],
			Colour:     colourWords[d.colour],
			Shape:      shapeWords[d.shape],
			Vertical:   verticalWords[d.quadrant/2],
			Horizontal: horizontalWords[d.quadrant%2],
			CX:         d.cx,
			CY:         d.cy,
			R:          sizeRadii[d.size],
		}
		phrases[k] = s.Objects[k].Phrase()
	}
	s.Caption = strings.Join(phrases, " and ")
	return s
}

// paint overwrites with the object's colour every pixel whose centre lies
// inside the object's shape.
func paint(pixels []uint8, d drawn) {
	r := sizeRadii[d.size]
	rgb := colourRGB[d.colour]
	for j := 0; j < Size; j++ {
		dy := float64(j) + 0.5 - d.cy
		for i := 0; i < Size; i++ {
			dx := float64(i) + 0.5 - d.cx
			if !inside(d.shape, dx, dy, r) {
				continue
			}
			p := (j*Size + i) * Channels
			pixels[p+0] = rgb[0]
			pixels[p+1] = rgb[1]
			pixels[p+2] = rgb[2]
		}
	}
}

// inside reports whether offset (dx, dy) from an object's centre (y grows
// downwards) lies inside the given shape of radius r.
func inside(shape int, dx, dy, r float64) bool {
	switch shape {
	case shapeSquare:
		return math.Abs(dx) <= r && math.Abs(dy) <= r
	case shapeCircle:
		// float64(...) around each product forbids a fused multiply-add.
		return float64(dx*dx)+float64(dy*dy) <= float64(r*r)
	case shapeTriangle: // apex up: narrow at dy = -r, width 2r at dy = +r
		return -r <= dy && dy <= r && math.Abs(dx) <= (dy+r)/2
	case shapeCross:
		arm := r / 3
		return (math.Abs(dx) <= arm && math.Abs(dy) <= r) ||
			(math.Abs(dy) <= arm && math.Abs(dx) <= r)
	default:
		panic(fmt.Sprintf("synth: invalid shape index %d", shape))
	}
}

// Covers reports whether the pixel whose centre is (px, py) is painted by
// the object.
func (o Object) Covers(px, py float64) bool {
	for i, name := range shapeWords {
		if name == o.Shape {
			return inside(i, px-o.CX, py-o.CY, o.R)
		}
	}
	return false
}

// PatchMask reports, for each patch of a square patch grid (patch × patch
// pixels, raster order), whether any of its pixels belongs to an object.
func (s Sample) PatchMask(patch int) []bool {
	side := Size / patch
	mask := make([]bool, side*side)
	for j := 0; j < Size; j++ {
		for i := 0; i < Size; i++ {
			for _, o := range s.Objects {
				if o.Covers(float64(i)+0.5, float64(j)+0.5) {
					mask[(j/patch)*side+i/patch] = true
				}
			}
		}
	}
	return mask
}
