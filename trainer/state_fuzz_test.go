package trainer

import (
	"testing"
)

// microStage2 is the smallest LM the shim builds: its states are a few
// kilobytes, small enough to seed a fuzzer.
func microStage2() Config {
	c := TinyStage2()
	c.LM = &LMConfig{Vocab: 278, DModel: 8, Layers: 1, Heads: 1, MLP: 8, MaxLen: 8}
	return c
}

// FuzzParseState: states as the shim writes them (whole, and the blocked
// part of a world of one), damaged any way, parse or are refused by
// ParseState (checkpoint.ParseState with the shim's format); a parsed
// state never holds more values than its bytes. The checkpoint package's
// FuzzParseState also reseals the checksums.
func FuzzParseState(f *testing.F) {
	m, err := loadLib(f).NewModel(microStage2(), "cpu", 1)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(m.Close)
	whole, err := m.State()
	if err != nil {
		f.Fatal(err)
	}
	part, err := m.StatePart()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range [][]byte{whole, part} {
		if _, err := ParseState(s); err != nil {
			f.Fatalf("a state the shim wrote: %v", err)
		}
		f.Add(s)
		f.Add(s[:len(s)/2])
	}
	f.Add([]byte("LAVITST1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseState(b)
		if err != nil {
			return
		}
		total := 0
		for _, name := range st.Tensors {
			total += len(st.Values[name])
		}
		if 4*total > len(b) {
			t.Fatalf("%d values parsed from %d bytes", total, len(b))
		}
	})
}
