package trainer

import (
	"reflect"
	"testing"
)

func TestSequences(t *testing.T) {
	v := TinyVocab(256) // text 0..19, [IMG] 20, [/IMG] 21, visual 22..277
	caption := []int{5, 9}
	codes := []int64{0, 7}

	toks, tgts, dropped, err := v.Sequence(TextToImage, caption, codes, 10)
	if err != nil || dropped != 0 {
		t.Fatal(err, dropped)
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
	_, _, dropped, err = v.Sequence(ImageToText, caption, []int64{1, 2, 3, 4, 5, 6}, 8)
	if err != nil || dropped != 3 {
		t.Errorf("dropped %d (%v), want 3", dropped, err)
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
