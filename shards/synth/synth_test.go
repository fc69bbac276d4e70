package synth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// pixelHash returns the sha256 hex digest of a sample's pixel bytes.
func pixelHash(pixels []uint8) string {
	sum := sha256.Sum256(pixels)
	return hex.EncodeToString(sum[:])
}

// TestSplitMix64KnownAnswers checks the PRNG against the published outputs of
// the standard SplitMix64 generator seeded with 1234567, so that other
// implementations can rely on "SplitMix64" meaning the usual algorithm.
func TestSplitMix64KnownAnswers(t *testing.T) {
	want := []uint64{
		6457827717110365317,
		3203168211198807973,
		9817491932198370423,
		4593380528125082431,
		16408922859458223821,
	}
	g := rng{state: 1234567}
	for k, w := range want {
		if got := g.next(); got != w {
			t.Fatalf("output %d: got %d, want %d", k, got, w)
		}
	}
}

func TestSplitString(t *testing.T) {
	tests := []struct {
		split Split
		want  string
	}{
		{Train, "train"},
		{Eval, "eval"},
		{Split(7), "Split(7)"},
	}
	for _, tt := range tests {
		if got := tt.split.String(); got != tt.want {
			t.Errorf("Split(%d).String() = %q, want %q", int(tt.split), got, tt.want)
		}
	}
}

func TestSampleKey(t *testing.T) {
	tests := []struct {
		split Split
		index int
		want  string
	}{
		{Train, 0, "train-00000000"},
		{Train, 42, "train-00000042"},
		{Eval, 255, "eval-00000255"},
		{Eval, 123456789, "eval-123456789"},
	}
	for _, tt := range tests {
		if got := SampleKey(tt.split, tt.index); got != tt.want {
			t.Errorf("SampleKey(%v, %d) = %q, want %q", tt.split, tt.index, got, tt.want)
		}
		s := Generate(3, tt.split, tt.index)
		if s.Key != tt.want || s.Split != tt.split || s.Index != tt.index {
			t.Errorf("Generate(3, %v, %d): Key=%q Split=%v Index=%d", tt.split, tt.index, s.Key, s.Split, s.Index)
		}
	}
}

func TestGeneratePanicsOnBadArguments(t *testing.T) {
	tests := []struct {
		name  string
		split Split
		index int
	}{
		{"invalid split", Split(2), 0},
		{"negative split", Split(-1), 0},
		{"negative index", Train, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("Generate(1, %d, %d) did not panic", int(tt.split), tt.index)
				}
			}()
			Generate(1, tt.split, tt.index)
		})
	}
}

func TestGenerateIsDeterministic(t *testing.T) {
	tests := []struct {
		seed  uint64
		split Split
		index int
	}{
		{0, Train, 0},
		{1, Train, 7},
		{1, Eval, 7},
		{math.MaxUint64, Eval, 255},
		{42, Train, 1 << 30},
	}
	for _, tt := range tests {
		a := Generate(tt.seed, tt.split, tt.index)
		b := Generate(tt.seed, tt.split, tt.index)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("Generate(%d, %v, %d) differs between two calls", tt.seed, tt.split, tt.index)
		}
	}
}

func TestDifferentArgumentsGiveDifferentPixels(t *testing.T) {
	seen := make(map[string]string) // pixel hash -> sample description
	for _, seed := range []uint64{1, 2} {
		for _, split := range []Split{Train, Eval} {
			for i := 0; i < 50; i++ {
				s := Generate(seed, split, i)
				desc := fmt.Sprintf("seed %d %s", seed, s.Key)
				h := pixelHash(s.Pixels)
				if prev, dup := seen[h]; dup {
					t.Fatalf("%s has the same pixels as %s", desc, prev)
				}
				seen[h] = desc
			}
		}
	}
}

func TestRandomAccess(t *testing.T) {
	const seed = 11
	want := Generate(seed, Train, 7)

	// Forward sequence 0..7: the 8th call gives sample 7.
	var forward []Sample
	for i := 0; i <= 7; i++ {
		forward = append(forward, Generate(seed, Train, i))
	}
	if !reflect.DeepEqual(forward[7], want) {
		t.Errorf("8th sample of a forward sequence differs from direct Generate(%d, Train, 7)", seed)
	}

	// Reverse order, interleaved with other splits and seeds.
	for i := 7; i >= 0; i-- {
		Generate(seed+1, Eval, i)
		got := Generate(seed, Train, i)
		if !reflect.DeepEqual(got, forward[i]) {
			t.Errorf("sample %d differs when generated in reverse order", i)
		}
	}

	// Concurrently, in no particular order.
	got := make([]Sample, 8)
	var wg sync.WaitGroup
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = Generate(seed, Train, i)
		}()
	}
	wg.Wait()
	if !reflect.DeepEqual(got, forward) {
		t.Errorf("concurrently generated samples differ from the forward sequence")
	}
}

// quadrantOf returns the raster-order quadrant index (0..3) of an object.
func quadrantOf(t *testing.T, o Object) int {
	t.Helper()
	q := 0
	switch o.Vertical {
	case "top":
	case "bottom":
		q += 2
	default:
		t.Fatalf("bad vertical %q", o.Vertical)
	}
	switch o.Horizontal {
	case "left":
	case "right":
		q++
	default:
		t.Fatalf("bad horizontal %q", o.Horizontal)
	}
	return q
}

// rgbOf returns the expected bytes of a colour name.
func rgbOf(t *testing.T, colour string) [3]uint8 {
	t.Helper()
	tab := map[string][3]uint8{
		"red": {255, 0, 0}, "green": {0, 255, 0}, "blue": {0, 0, 255},
		"yellow": {255, 255, 0}, "magenta": {255, 0, 255}, "cyan": {0, 255, 255},
	}
	rgb, ok := tab[colour]
	if !ok {
		t.Fatalf("unknown colour %q", colour)
	}
	return rgb
}

// TestSampleProperties checks the data-set invariants over many samples.
func TestSampleProperties(t *testing.T) {
	const perSplit = 250
	centres := [4][2]float64{{8, 8}, {24, 8}, {8, 24}, {24, 24}}
	maxBackground := uint8(math.Round(0.2 * 255)) // 51
	counts := map[string]int{}

	for _, split := range []Split{Train, Eval} {
		for idx := 0; idx < perSplit; idx++ {
			s := Generate(5, split, idx)
			name := s.Key
			if len(s.Pixels) != NumPixels {
				t.Fatalf("%s: %d pixel bytes, want %d", name, len(s.Pixels), NumPixels)
			}
			n := len(s.Objects)
			if n != 1 && n != 2 {
				t.Fatalf("%s: %d objects, want 1 or 2", name, n)
			}
			counts[fmt.Sprintf("count=%d", n)]++

			// Quadrants are distinct and in raster order; geometry is in range.
			prevQ := -1
			for _, o := range s.Objects {
				q := quadrantOf(t, o)
				if q <= prevQ {
					t.Fatalf("%s: quadrants not distinct and ascending: %+v", name, s.Objects)
				}
				prevQ = q
				counts["quadrant="+o.Vertical+"-"+o.Horizontal]++
				counts["size="+o.Size]++
				counts["colour="+o.Colour]++
				counts["shape="+o.Shape]++
				if dx := o.CX - centres[q][0]; dx < -1.5 || dx > 1.5 {
					t.Fatalf("%s: cx=%v too far from quadrant centre", name, o.CX)
				}
				if dy := o.CY - centres[q][1]; dy < -1.5 || dy > 1.5 {
					t.Fatalf("%s: cy=%v too far from quadrant centre", name, o.CY)
				}
				wantR := map[string]float64{"small": 3.5, "big": 6.5}[o.Size]
				if o.R != wantR {
					t.Fatalf("%s: size %s has r=%v, want %v", name, o.Size, o.R, wantR)
				}
			}

			// The caption parses back to exactly the object list.
			phrases := strings.Split(s.Caption, " and ")
			if len(phrases) != n {
				t.Fatalf("%s: caption %q has %d phrases, want %d", name, s.Caption, len(phrases), n)
			}
			for k, ph := range phrases {
				o := s.Objects[k]
				want := []string{o.Size, o.Colour, o.Shape, o.Vertical, o.Horizontal}
				if got := strings.Split(ph, " "); !reflect.DeepEqual(got, want) {
					t.Fatalf("%s: phrase %d is %q, want %q", name, k, ph, strings.Join(want, " "))
				}
			}
			ids, err := Encode(s.Caption)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if back, err := Decode(ids); err != nil || back != s.Caption {
				t.Fatalf("%s: Decode(Encode(%q)) = %q, %v", name, s.Caption, back, err)
			}

			// The pixel at each object centre has exactly the object's colour.
			for _, o := range s.Objects {
				i, j := int(math.Floor(o.CX)), int(math.Floor(o.CY))
				p := (j*Size + i) * Channels
				rgb := rgbOf(t, o.Colour)
				if got := [3]uint8{s.Pixels[p], s.Pixels[p+1], s.Pixels[p+2]}; got != rgb {
					t.Fatalf("%s: centre pixel (%d,%d) of %s is %v, want %v", name, i, j, o.Phrase(), got, rgb)
				}
			}

			// Pixels outside every object's bounding square (with a margin)
			// are background. Every shape lies inside |dx|,|dy| <= r.
			for j := 0; j < Size; j++ {
				for i := 0; i < Size; i++ {
					near := false
					for _, o := range s.Objects {
						dx := math.Abs(float64(i) + 0.5 - o.CX)
						dy := math.Abs(float64(j) + 0.5 - o.CY)
						if math.Max(dx, dy) <= o.R+1 {
							near = true
						}
					}
					if near {
						continue
					}
					counts["background pixels"]++
					p := (j*Size + i) * Channels
					for c := 0; c < Channels; c++ {
						if s.Pixels[p+c] > maxBackground {
							t.Fatalf("%s: background pixel (%d,%d) channel %d = %d > %d", name, i, j, c, s.Pixels[p+c], maxBackground)
						}
					}
				}
			}
		}
	}

	var want []string
	want = append(want, "count=1", "count=2")
	for _, v := range []string{"top", "bottom"} {
		for _, h := range []string{"left", "right"} {
			want = append(want, "quadrant="+v+"-"+h)
		}
	}
	for _, w := range Sizes {
		want = append(want, "size="+w)
	}
	for _, w := range Colours {
		want = append(want, "colour="+w)
	}
	for _, w := range Shapes {
		want = append(want, "shape="+w)
	}
	want = append(want, "background pixels")
	for _, k := range want {
		if counts[k] == 0 {
			t.Errorf("%s never occurred in %d samples", k, 2*perSplit)
		}
	}
}

// TestInside pins the shape tests on hand-checked offsets (r = 6.5 unless
// stated; y grows downwards, so negative dy is above the centre).
func TestInside(t *testing.T) {
	tests := []struct {
		shape  int
		dx, dy float64
		r      float64
		want   bool
	}{
		{shapeSquare, 0, 0, 6.5, true},
		{shapeSquare, 6.5, -6.5, 6.5, true},
		{shapeSquare, 6.6, 0, 6.5, false},
		{shapeCircle, 0, 0, 6.5, true},
		{shapeCircle, 0, 6.5, 6.5, true},
		{shapeCircle, 4.6, 4.6, 6.5, false}, // 42.32 > 42.25
		{shapeCircle, 4.5, 4.5, 6.5, true},  // 40.5 <= 42.25
		{shapeTriangle, 0, 0, 6.5, true},
		{shapeTriangle, 0, -6.5, 6.5, true},    // apex
		{shapeTriangle, 0.5, -6.5, 6.5, false}, // apex is a point
		{shapeTriangle, 6.5, 6.5, 6.5, true},   // bottom corner
		{shapeTriangle, 3.5, 0, 6.5, false},    // half-width at dy=0 is 3.25
		{shapeTriangle, 3.0, 0, 6.5, true},
		{shapeTriangle, 0, 6.6, 6.5, false}, // below the base
		{shapeCross, 0, 6.5, 6.5, true},
		{shapeCross, 6.5, 0, 6.5, true},
		{shapeCross, 2.1, 2.1, 6.5, true},  // arm half-width 6.5/3 = 2.1667
		{shapeCross, 2.2, 2.2, 6.5, false}, // corner between arms
		{shapeCross, 1, 1, 3.5, true},
		{shapeCross, 1.2, 2, 3.5, false}, // arm half-width 3.5/3 = 1.1667
	}
	for _, tt := range tests {
		if got := inside(tt.shape, tt.dx, tt.dy, tt.r); got != tt.want {
			t.Errorf("inside(%s, dx=%v, dy=%v, r=%v) = %v, want %v", shapeWords[tt.shape], tt.dx, tt.dy, tt.r, got, tt.want)
		}
	}
}

// TestGolden pins a few samples of the data set. Changing any of these
// values changes the data set itself: do it only on purpose, and say so,
// because trained models and recorded results depend on it.
func TestGolden(t *testing.T) {
	tests := []struct {
		seed    uint64
		split   Split
		index   int
		caption string
		sha256  string
	}{
		{0, Train, 0,
			"small blue cross top left",
			"cb0b8ca7c372c6941bbfbdb4734935d803b156ba4b3941d11461965069d66c09"},
		{0, Eval, 0,
			"big yellow circle top left and small green circle top right",
			"fbab8eda40c0ef5ccb19f345e8b906f145e8c2ddb715540df17b3c8b6d46755c"},
		{1, Train, 42,
			"big magenta square top right and big yellow circle bottom right",
			"00ffde44b87116ca53e313f2af5299bbcc6261466f1acfbe3f4fd2d959080f83"},
		{1, Eval, 255,
			"big yellow square bottom left and small magenta triangle bottom right",
			"81eb68635dc0c1f878cfa52f8ee3ba2750d01d8328459b9a49a17453f9f643b2"},
		{20240601, Train, 99999,
			"small red cross bottom left",
			"6b0274cdf4e9ae41109cf483cff5cd5312d0fac10e9a13c4be43b84fc4da598f"},
	}
	for _, tt := range tests {
		s := Generate(tt.seed, tt.split, tt.index)
		h := pixelHash(s.Pixels)
		if s.Caption != tt.caption || h != tt.sha256 {
			t.Errorf("Generate(%d, %v, %d):\n caption %q\n sha256  %s\nwant\n caption %q\n sha256  %s",
				tt.seed, tt.split, tt.index, s.Caption, h, tt.caption, tt.sha256)
		}
	}
}

func TestFloat32CHW(t *testing.T) {
	s := Generate(9, Train, 3)
	f := s.Float32CHW()
	if len(f) != NumPixels {
		t.Fatalf("len = %d, want %d", len(f), NumPixels)
	}
	for j := 0; j < Size; j++ {
		for i := 0; i < Size; i++ {
			for c := 0; c < Channels; c++ {
				b := s.Pixels[(j*Size+i)*Channels+c]
				got := f[c*Size*Size+j*Size+i]
				if want := float32(b) / 255; got != want {
					t.Fatalf("(%d,%d,%d): got %v, want %v", c, j, i, got, want)
				}
				if got < 0 || got > 1 {
					t.Fatalf("(%d,%d,%d): %v outside [0,1]", c, j, i, got)
				}
			}
		}
	}
}

func TestPNGRoundTrip(t *testing.T) {
	for _, split := range []Split{Train, Eval} {
		for i := 0; i < 20; i++ {
			s := Generate(17, split, i)
			data, err := s.PNG()
			if err != nil {
				t.Fatalf("%s: %v", s.Key, err)
			}
			back, err := DecodePNG(data)
			if err != nil {
				t.Fatalf("%s: %v", s.Key, err)
			}
			if !bytes.Equal(back, s.Pixels) {
				t.Fatalf("%s: PNG round trip changed the pixels", s.Key)
			}
			if !reflect.DeepEqual(PixelsToCHW(back), s.Float32CHW()) {
				t.Fatalf("%s: float image differs after PNG round trip", s.Key)
			}
		}
	}
}

// encodePNG encodes a w×h opaque grey image, for the error tests.
func encodePNG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for p := range img.Pix {
		img.Pix[p] = 128
	}
	img.Set(0, 0, color.NRGBA{1, 2, 3, 255})
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodePNGErrors(t *testing.T) {
	good, err := Generate(1, Train, 0).PNG()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"empty", nil, "decode PNG"},
		{"garbage", []byte("definitely not a PNG file"), "decode PNG"},
		{"truncated", good[:len(good)/2], "decode PNG"},
		{"16x16", encodePNG(t, 16, 16), "16×16"},
		{"32x33", encodePNG(t, 32, 33), "32×33"},
		{"64x32", encodePNG(t, 64, 32), "64×32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodePNG(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("DecodePNG: err = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}

	// A valid 32×32 PNG of another colour model still decodes.
	pixels, err := DecodePNG(encodePNG(t, 32, 32))
	if err != nil {
		t.Fatal(err)
	}
	if got := pixels[:6]; !bytes.Equal(got, []byte{1, 2, 3, 128, 128, 128}) {
		t.Errorf("first two pixels = %v", got)
	}
}

func TestPNGRejectsWrongPixelCount(t *testing.T) {
	s := Sample{Key: "train-00000000", Pixels: make([]uint8, 10)}
	if _, err := s.PNG(); err == nil || !strings.Contains(err.Error(), "train-00000000") {
		t.Errorf("PNG() err = %v, want an error naming the sample", err)
	}
}

func TestObjectJSON(t *testing.T) {
	o := Object{Size: "big", Colour: "red", Shape: "circle", Vertical: "top", Horizontal: "left", CX: 8.25, CY: 7.5, R: 6.5}
	data, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"size":"big","colour":"red","shape":"circle","vertical":"top","horizontal":"left","cx":8.25,"cy":7.5,"r":6.5}`
	if string(data) != want {
		t.Errorf("json = %s\nwant   %s", data, want)
	}
	var back Object
	if err := json.Unmarshal(data, &back); err != nil || back != o {
		t.Errorf("round trip = %+v, %v", back, err)
	}
	if got := o.Phrase(); got != "big red circle top left" {
		t.Errorf("Phrase() = %q", got)
	}
}

// TestExportedListsMatchGenerator guards against the exported attribute
// lists drifting from the private tables Generate uses.
func TestExportedListsMatchGenerator(t *testing.T) {
	tests := []struct {
		name     string
		exported []string
		private  []string
	}{
		{"Sizes", Sizes, sizeWords[:]},
		{"Colours", Colours, colourWords[:]},
		{"Shapes", Shapes, shapeWords[:]},
		{"Verticals", Verticals, verticalWords[:]},
		{"Horizontals", Horizontals, horizontalWords[:]},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.exported, tt.private) {
			t.Errorf("%s = %q, generator uses %q", tt.name, tt.exported, tt.private)
		}
		for _, w := range tt.exported {
			if _, ok := TokenID(w); !ok {
				t.Errorf("%s word %q is not in the vocabulary", tt.name, w)
			}
		}
	}
}

func TestVocab(t *testing.T) {
	want := []string{
		"[PAD]", "[BOS]", "[EOS]",
		"small", "big", "red", "green", "blue", "yellow", "magenta", "cyan",
		"square", "circle", "triangle", "cross", "top", "bottom", "left", "right", "and",
	}
	words := Words()
	if len(words) != VocabSize || VocabSize != 20 {
		t.Fatalf("len(Words()) = %d, VocabSize = %d, want 20", len(words), VocabSize)
	}
	if !reflect.DeepEqual(words, want) {
		t.Fatalf("Words() = %q\nwant %q", words, want)
	}
	for id, w := range want {
		if got, ok := TokenID(w); !ok || got != id {
			t.Errorf("TokenID(%q) = %d, %v, want %d", w, got, ok, id)
		}
	}
	if words[PadID] != "[PAD]" || words[BOSID] != "[BOS]" || words[EOSID] != "[EOS]" || words[FirstWordID] != "small" {
		t.Errorf("special ids do not match Words()")
	}
	if _, ok := TokenID("purple"); ok {
		t.Errorf("TokenID(purple) found")
	}
	words[0] = "changed"
	if Words()[0] != "[PAD]" {
		t.Errorf("Words() returned the internal slice")
	}
}

func TestEncodeDecode(t *testing.T) {
	tests := []struct {
		caption string
		ids     []int
	}{
		{"", []int{}},
		{"small", []int{3}},
		{"big red circle top left", []int{4, 5, 12, 15, 17}},
		{"big red circle top left and small blue cross bottom right", []int{4, 5, 12, 15, 17, 19, 3, 7, 14, 16, 18}},
		{"small cyan triangle bottom left", []int{3, 10, 13, 16, 17}},
	}
	for _, tt := range tests {
		ids, err := Encode(tt.caption)
		if err != nil || !reflect.DeepEqual(ids, tt.ids) {
			t.Errorf("Encode(%q) = %v, %v, want %v", tt.caption, ids, err, tt.ids)
			continue
		}
		back, err := Decode(ids)
		if err != nil || back != tt.caption {
			t.Errorf("Decode(%v) = %q, %v, want %q", ids, back, err, tt.caption)
		}
	}
}

func TestEncodeErrors(t *testing.T) {
	tests := []struct {
		caption string
		want    []string // substrings of the error
	}{
		{"big purple circle", []string{`"purple"`, "position 1"}},
		{"Big red circle", []string{`"Big"`, "position 0"}},
		{"big red circle top left and", []string{}}, // valid words: no error
		{"[BOS] big", []string{`"[BOS]"`, "position 0"}},
		{"small red square top left and big", []string{}},
		{"small red square top left, big", []string{`"left,"`, "position 4"}},
	}
	for _, tt := range tests {
		_, err := Encode(tt.caption)
		if len(tt.want) == 0 {
			if err != nil {
				t.Errorf("Encode(%q): unexpected error %v", tt.caption, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("Encode(%q): no error", tt.caption)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Encode(%q) error %q does not mention %s", tt.caption, err, w)
			}
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		ids  []int
		want string
	}{
		{[]int{PadID}, "id 0 at position 0"},
		{[]int{4, BOSID}, "id 1 at position 1"},
		{[]int{4, 5, EOSID}, "id 2 at position 2"},
		{[]int{20}, "id 20 at position 0"},
		{[]int{3, -1}, "id -1 at position 1"},
	}
	for _, tt := range tests {
		_, err := Decode(tt.ids)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Decode(%v) err = %v, want one mentioning %q", tt.ids, err, tt.want)
		}
	}
}

// BenchmarkGenerate measures generation throughput (samples/s).
func BenchmarkGenerate(b *testing.B) {
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		Generate(1, Train, i)
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "samples/s")
}
