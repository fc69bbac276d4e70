package worker

import (
	"errors"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/shards"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/trainer"
)

func shim(t *testing.T) *trainer.Lib {
	t.Helper()
	lib, err := trainer.Load("")
	if err != nil {
		t.Fatalf("%v (run `make torch`, or set LAVIT_TORCH_LIB)", err)
	}
	return lib
}

func model(t *testing.T, lib *trainer.Lib, cfg trainer.Config) *trainer.Model {
	t.Helper()
	m, err := lib.NewModel(cfg, "cpu", 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// decoded is synthetic train samples [0, n) as the loader decodes them.
func decoded(n int) (shards.Decoded, []int64) {
	d := shards.Decoded{Valid: make([]bool, n), Errors: make([]error, n)}
	positions := make([]int64, n)
	for i := range n {
		s := synth.Generate(1, synth.Train, i)
		d.Images = append(d.Images, s.Float32CHW()...)
		d.Captions = append(d.Captions, s.Caption)
		d.Valid[i], positions[i] = true, int64(i)
	}
	return d, positions
}

// TestStage2Batch: captions go through the model config's caption
// tokenizer into the rows; a caption it cannot encode fails the step
// naming the sample; a masked sample's caption is never read.
func TestStage2Batch(t *testing.T) {
	lib := shim(t)
	lm := model(t, lib, trainer.TinyStage2())
	tok := model(t, lib, trainer.TinyStage1())
	d, positions := decoded(4)
	if err := tok.EnableVQ(d.Images, positions, 0); err != nil { // a tokenizer makes codes once VQ is on
		t.Fatal(err)
	}
	st, err := newStage2(lm, tok, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close() // closes the tokenizer (Close is safe twice)
	if st.builder.SeqLen != 55 || st.builder.Vocab.Size() != 278 || st.imageSize() != 32 {
		t.Fatalf("stage 2: seq %d, vocab %d, image %d", st.builder.SeqLen, st.builder.Vocab.Size(), st.imageSize())
	}

	b, err := st.batch(0, 8, positions, d, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Tokens) != 4*55 || len(b.Targets) != 4*55 {
		t.Fatalf("%d tokens, %d targets; want 4 rows of 55", len(b.Tokens), len(b.Targets))
	}
	for i := range 4 {
		words, _ := synth.Encode(d.Captions[i])
		if !containsRun(b.Tokens[i*55:(i+1)*55], words) {
			t.Errorf("row %d does not hold its caption's ids %v", i, words)
		}
	}

	d.Captions[2] = "a purple elephant"
	if _, err := st.batch(0, 8, positions, d, nil); err == nil || !strings.Contains(err.Error(), "position 2") || !strings.Contains(err.Error(), "caption") {
		t.Fatalf("an unencodable caption: %v; want an error naming position 2's caption", err)
	}
	valid := []bool{true, true, false, true}
	b, err = st.batch(0, 8, positions, d, valid)
	if err != nil {
		t.Fatalf("a masked sample's caption was read: %v", err)
	}
	for k, tgt := range b.Targets[2*55 : 3*55] {
		if tgt != -1 {
			t.Fatalf("masked row has target %d at %d; want none", tgt, k)
		}
	}
}

func containsRun(row []int64, ids []int) bool {
	for i := 0; i+len(ids) <= len(row); i++ {
		match := true
		for k, id := range ids {
			match = match && row[i+k] == int64(id)
		}
		if match {
			return true
		}
	}
	return false
}

// TestNewStage2Refuses: a stage-2 model config must name a caption
// tokenizer whose vocabulary, with the visual ids, is the LM's.
func TestNewStage2Refuses(t *testing.T) {
	lib := shim(t)
	tok := model(t, lib, trainer.TinyStage1())
	noText := trainer.TinyStage2()
	noText.Text, noText.Eval = nil, ""
	bigger := trainer.TinyStage2()
	lm := *bigger.LM
	lm.Vocab = 300
	bigger.LM = &lm
	for name, tc := range map[string]struct {
		cfg  trainer.Config
		want string
	}{
		"no text tokenizer": {noText, `needs "text"`},
		"vocab mismatch":    {bigger, "lm.vocab is 300"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := newStage2(model(t, lib, tc.cfg), tok, 1); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestStage1: batches pass the images through; the phase switch is where
// the spec puts it, and it switches VQ on.
func TestStage1(t *testing.T) {
	lib := shim(t)
	m := model(t, lib, trainer.TinyStage1())
	st := newStage1(m, 300, 2)
	if at, n := st.phaseSwitch(); at != 300 || n != 2 {
		t.Fatalf("phase switch at %d from %d batches, want 300 from 2", at, n)
	}
	d, positions := decoded(8)
	b, err := st.batch(5, 8, positions, d, nil)
	if err != nil || b.Step != 5 || b.GlobalBatch != 8 || len(b.Images) != len(d.Images) {
		t.Fatalf("stage-1 batch %+v, %v", b, err)
	}
	if m.Info().VQOn {
		t.Fatal("VQ is on before the switch")
	}
	if err := st.switchPhase(300, &phaseInput{images: d.Images, positions: positions}); err != nil {
		t.Fatal(err)
	}
	if !m.Info().VQOn {
		t.Fatal("the phase switch did not switch VQ on")
	}
}

// TestCheckFinalState: a tokenizer run's final state is loaded only if it
// is the state raft committed for that run: same size and sha256.
func TestCheckFinalState(t *testing.T) {
	state := []byte("a final model state")
	good := &wire.Artifact{URL: "file:///x/final", Bytes: int64(len(state)), SHA256: checkpoint.SHA256(state)}
	for _, tc := range []struct {
		name      string
		state     []byte
		committed *wire.Artifact
		ok        bool
	}{
		{"the committed state", state, good, true},
		{"no record (a state URL given directly)", state, nil, true},
		{"replaced by another", []byte("another final model st"), good, false},
		{"truncated", state[:5], good, false},
	} {
		err := checkFinalState(tc.state, tc.committed)
		if tc.ok != (err == nil) {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, checkpoint.ErrNotCommitted) || !strings.Contains(err.Error(), good.SHA256)) {
			t.Errorf("%s: %v, want ErrNotCommitted naming the committed sha256", tc.name, err)
		}
	}
}
