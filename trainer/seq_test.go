package trainer

import (
	"reflect"
	"testing"
)

func TestSequences(t *testing.T) {
	v := TinyVocab(256) // text 0..19, [IMG] 20, [/IMG] 21, visual 22..277
	caption := []int{5, 9}
	codes := []int64{0, 7}

	toks, tgts, fit, err := v.Sequence(TextToImage, caption, codes, 10)
	if err != nil || fit != (Fit{}) {
		t.Fatal(err, fit)
	}
	// BOS 5 9 [IMG] v0 v7 [/IMG] EOS
	if want := []int64{1, 5, 9, 20, 22, 29, 21, 0, 0, 0}; !reflect.DeepEqual(toks, want) {
		t.Errorf("t2i tokens %v, want %v", toks, want)
	}
	if want := []int64{5, 9, 20, 22, 29, 21, 2, -1, -1, -1}; !reflect.DeepEqual(tgts, want) {
		t.Errorf("t2i targets %v, want %v", tgts, want)
	}

	toks, tgts, _, err = v.Sequence(ImageToText, caption, codes, 10)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{1, 20, 22, 29, 21, 5, 9, 0, 0, 0}; !reflect.DeepEqual(toks, want) {
		t.Errorf("i2t tokens %v, want %v", toks, want)
	}
	if want := []int64{20, 22, 29, 21, 5, 9, 2, -1, -1, -1}; !reflect.DeepEqual(tgts, want) {
		t.Errorf("i2t targets %v, want %v", tgts, want)
	}

	// Too many visual ids for the sequence: dropped from the end, counted.
	_, _, fit, err = v.Sequence(ImageToText, caption, []int64{1, 2, 3, 4, 5, 6}, 8)
	if err != nil || fit != (Fit{DroppedCodes: 3}) {
		t.Errorf("fit %+v (%v), want 3 codes dropped", fit, err)
	}
	if _, _, _, err := v.Sequence(TextToImage, []int{99}, nil, 10); err == nil {
		t.Error("caption id out of range accepted")
	}
	if _, _, _, err := v.Sequence(TextToImage, nil, []int64{256}, 10); err == nil {
		t.Error("visual code out of range accepted")
	}

	// Continuous: BOS [IMG] slot slot [/IMG] 5 9 EOS; only the caption and EOS trained.
	toks, tgts, slots, _, err := v.SequenceContinuous(caption, 2, 10)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{1, 20, 0, 0, 21, 5, 9, 0, 0, 0}; !reflect.DeepEqual(toks, want) {
		t.Errorf("continuous tokens %v, want %v", toks, want)
	}
	if want := []int64{-1, -1, -1, -1, 5, 9, 2, -1, -1, -1}; !reflect.DeepEqual(tgts, want) {
		t.Errorf("continuous targets %v, want %v", tgts, want)
	}
	if want := []bool{false, false, true, true, false, false, false, false, false, false}; !reflect.DeepEqual(slots, want) {
		t.Errorf("continuous slots %v, want %v", slots, want)
	}
}

func TestDirectionCoinIsBalancedAndKeyed(t *testing.T) {
	i2t := 0
	for p := int64(0); p < 10000; p++ {
		if DirectionFor(0, p) == ImageToText {
			i2t++
		}
		if DirectionFor(0, p) != DirectionFor(0, p) {
			t.Fatal("coin not deterministic")
		}
	}
	if i2t < 4800 || i2t > 5200 {
		t.Fatalf("%d of 10000 image→text; want about half", i2t)
	}
}

// TestSequencesCut: rows that do not fit are cut, never refused: a long
// caption keeps what leaves the image its ids (up to half the row), the
// visual ids that still do not fit are dropped, and a text-only row is
// BOS caption EOS.
func TestSequencesCut(t *testing.T) {
	v := TinyVocab(256) // text 0..19, [IMG] 20, [/IMG] 21, visual 22..277
	long := []int{3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}
	for _, tc := range []struct {
		name    string
		dir     Direction
		caption []int
		codes   []int64
		seqLen  int
		want    []int64 // the whole sequence, padding left out
		fit     Fit
	}{
		// seqLen 10: room 7; the image's 2 ids are kept, the caption keeps 5.
		{"long caption, t2i", TextToImage, long, []int64{0, 1}, 10, []int64{1, 3, 4, 5, 6, 7, 20, 22, 23, 21, 2}, Fit{CutCaption: 7}},
		{"long caption, i2t", ImageToText, long, []int64{0, 1}, 10, []int64{1, 20, 22, 23, 21, 3, 4, 5, 6, 7, 2}, Fit{CutCaption: 7}},
		// A long image keeps half the room (3), the caption the rest (4).
		{"long caption and image", ImageToText, long, []int64{0, 1, 2, 3, 4, 5}, 10, []int64{1, 20, 22, 23, 24, 21, 3, 4, 5, 6, 2}, Fit{CutCaption: 8, DroppedCodes: 3}},
		{"text only", TextOnly, []int{5, 9}, nil, 6, []int64{1, 5, 9, 2}, Fit{}},
		{"long text only", TextOnly, long, nil, 6, []int64{1, 3, 4, 5, 6, 7, 2}, Fit{CutCaption: 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			toks, tgts, fit, err := v.Sequence(tc.dir, tc.caption, tc.codes, tc.seqLen)
			if err != nil {
				t.Fatal(err)
			}
			if fit != tc.fit {
				t.Errorf("fit %+v, want %+v", fit, tc.fit)
			}
			got := []int64{toks[0]} // the whole sequence: BOS, then every target
			for i, tg := range tgts {
				if tg < 0 {
					break
				}
				got = append(got, tg)
				if i+1 < len(toks) && tgts[i+1] >= 0 && toks[i+1] != tg {
					t.Fatalf("input %d is %d, the previous target %d", i+1, toks[i+1], tg)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("sequence %v, want %v", got, tc.want)
			}
		})
	}
	// Continuous input cuts the same way.
	_, _, slots, fit, err := v.SequenceContinuous(long, 2, 10)
	if err != nil || fit != (Fit{CutCaption: 7}) {
		t.Fatalf("continuous: fit %+v, %v", fit, err)
	}
	if n := countTrue(slots); n != 2 {
		t.Errorf("continuous: %d slots, want 2", n)
	}
	if _, _, _, err := v.Sequence(TextToImage, long, nil, 2); err == nil {
		t.Error("a sequence of 2 (no room for the fixed tokens) accepted")
	}
}

func countTrue(bs []bool) (n int) {
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}
