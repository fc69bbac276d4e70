package checkpoint

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeState builds a state blob in the shim's format.
func fakeState(params []float32, extra map[string][]float32) []byte {
	var b bytes.Buffer
	b.WriteString("LAVITST1")
	le := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	le(uint32(StateFormat))
	le(uint32(1))
	le(uint64(7))
	le(uint64(6))
	b.Write([]byte{1, 0})
	names := []string{"params"}
	vals := map[string][]float32{"params": params}
	for k, v := range extra {
		names, vals[k] = append(names, k), v
	}
	le(uint32(len(names)))
	for _, n := range names {
		le(uint32(len(n)))
		b.WriteString(n)
		le(uint64(len(vals[n])))
		for _, v := range vals[n] {
			le(math.Float32bits(v))
		}
	}
	body := b.Bytes()
	out := append([]byte(nil), body...)
	return binary.LittleEndian.AppendUint32(out, fnv1a(body))
}

func TestSliceTilesTheState(t *testing.T) {
	for _, n := range []int64{0, 1, 7, 1000, 1 << 20} {
		for world := 1; world <= 9; world++ {
			var next int64
			for r := 0; r < world; r++ {
				lo, hi := Slice(n, world, r)
				if lo != next || hi < lo {
					t.Fatalf("n %d world %d rank %d: [%d,%d), want to start at %d", n, world, r, lo, hi, next)
				}
				next = hi
			}
			if next != n {
				t.Fatalf("n %d world %d: slices end at %d", n, world, next)
			}
		}
	}
}

// save writes a checkpoint of state at world size world into dir.
func save(t *testing.T, dir string, state []byte, world int) *Manifest {
	t.Helper()
	ctx := context.Background()
	m := &Manifest{Format: 1, Run: "r", Step: 10, World: world, StateBytes: int64(len(state)), StateSHA256: SHA256(state)}
	for r := 0; r < world; r++ {
		p, err := WritePart(ctx, dir, state, r, world)
		if err != nil {
			t.Fatal(err)
		}
		m.Parts = append(m.Parts, p)
	}
	if err := WriteManifest(ctx, dir, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSaveFetchAtEveryWorldSize(t *testing.T) {
	state := fakeState([]float32{1, 2, 3, 4, 5, 6, 7}, map[string][]float32{"exp_avg": {0.5, 0.25}})
	for world := 1; world <= 5; world++ {
		dir := "file://" + filepath.Join(t.TempDir(), "step")
		save(t, dir, state, world)
		m, err := ReadManifest(context.Background(), dir)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Fetch(context.Background(), dir, m)
		if err != nil || !bytes.Equal(got, state) {
			t.Fatalf("world %d: fetched %d bytes, %v; want the state back", world, len(got), err)
		}
		if _, err := ParseState(got, StateFormat); err != nil {
			t.Fatalf("world %d: %v", world, err)
		}
	}
}

func TestFetchRefusesDamage(t *testing.T) {
	state := fakeState(make([]float32, 1000), nil)
	cases := []struct {
		name   string
		damage func(root string)
		want   error
		names  string
	}{
		{"flipped byte", func(root string) {
			p := filepath.Join(root, PartName(1, 3))
			b, _ := os.ReadFile(p)
			b[3] ^= 1
			os.WriteFile(p, b, 0o644)
		}, ErrCorrupt, PartName(1, 3)},
		{"truncated part", func(root string) {
			p := filepath.Join(root, PartName(2, 3))
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)-1], 0o644)
		}, ErrCorrupt, PartName(2, 3)},
		{"missing part", func(root string) { os.Remove(filepath.Join(root, PartName(0, 3))) }, ErrMissing, PartName(0, 3)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "step")
			m := save(t, "file://"+root, state, 3)
			tc.damage(root)
			_, err := Fetch(context.Background(), "file://"+root, m)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.names) {
				t.Fatalf("got %v, want %v naming %s", err, tc.want, tc.names)
			}
		})
	}
	t.Run("no manifest", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "step")
		os.MkdirAll(root, 0o755)
		if _, err := ReadManifest(context.Background(), "file://"+root); !errors.Is(err, ErrMissing) {
			t.Fatalf("got %v, want ErrMissing", err)
		}
	})
}

func TestManifestIsCreateOnly(t *testing.T) {
	dir := "file://" + filepath.Join(t.TempDir(), "step")
	m := save(t, dir, fakeState([]float32{1}, nil), 1)
	if err := WriteManifest(context.Background(), dir, m); !errors.Is(err, ErrExists) {
		t.Fatalf("second manifest: %v, want ErrExists", err)
	}
}

func TestManifestValidate(t *testing.T) {
	good := func() *Manifest {
		return &Manifest{Format: 1, World: 2, StateBytes: 10, Parts: []Part{
			{Name: PartName(0, 2), Offset: 0, Bytes: 5, SHA256: strings.Repeat("a", 64)},
			{Name: PartName(1, 2), Offset: 5, Bytes: 5, SHA256: strings.Repeat("b", 64)}}}
	}
	if err := good().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*Manifest){
		"newer format":  func(m *Manifest) { m.Format = FormatVersion + 1 },
		"no format":     func(m *Manifest) { m.Format = 0 },
		"missing part":  func(m *Manifest) { m.Parts = m.Parts[:1] },
		"gap":           func(m *Manifest) { m.Parts[1].Offset = 6 },
		"wrong total":   func(m *Manifest) { m.StateBytes = 11 },
		"renamed part":  func(m *Manifest) { m.Parts[1].Name = "x" },
		"short sha256":  func(m *Manifest) { m.Parts[0].SHA256 = "ab" },
		"zero world":    func(m *Manifest) { m.World = 0 },
		"parts swapped": func(m *Manifest) { m.Parts[0], m.Parts[1] = m.Parts[1], m.Parts[0] },
	} {
		m := good()
		edit(m)
		if err := m.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseStateRefusesDamage(t *testing.T) {
	state := fakeState([]float32{1, 2}, nil)
	if _, err := ParseState(state[:len(state)-3], StateFormat); err == nil {
		t.Error("truncated state accepted")
	}
	bad := append([]byte(nil), state...)
	bad[20] ^= 1
	if _, err := ParseState(bad, StateFormat); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("flipped byte: %v", err)
	}
	if _, err := ParseState(state, StateFormat+1); err == nil || !strings.Contains(err.Error(), "state format") {
		t.Errorf("another state format: %v", err)
	}
}

func TestExportSafetensors(t *testing.T) {
	state := fakeState([]float32{1, 2, 3, 4, 5, 6}, map[string][]float32{"exp_avg": {9, 9, 9, 9, 9, 9}})
	params := []ParamInfo{{Name: "b", Shape: []int64{2}, Offset: 4, Numel: 2}, {Name: "a.w", Shape: []int64{2, 2}, Offset: 0, Numel: 4}}
	var buf bytes.Buffer
	if err := ExportSafetensors(&buf, state, StateFormat, params); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	n := binary.LittleEndian.Uint64(b)
	var header map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &header); err != nil {
		t.Fatal(err)
	}
	var a SafetensorsEntry
	json.Unmarshal(header["a.w"], &a)
	data := b[8+n:]
	if a.DType != "F32" || len(a.Shape) != 2 || math.Float32frombits(binary.LittleEndian.Uint32(data[a.DataOffsets[0]+12:])) != 4 {
		t.Fatalf("a.w: %+v", a)
	}
	if len(data) != 6*4 {
		t.Fatalf("%d data bytes, want the 6 weights only (no optimizer state)", len(data))
	}
	if err := ExportSafetensors(&buf, state, StateFormat, []ParamInfo{{Name: "x", Offset: 5, Numel: 4}}); err == nil {
		t.Error("a parameter outside the params was exported")
	}
}

// TestFetchPartsOfUnequalSize: a format-2 checkpoint whose parts are what
// each rank held (unequal sizes, written with WritePartAt) fetches back
// whole; its state hash is the digest of the parts' sha256s, and a
// manifest whose digest does not match them is refused.
func TestFetchPartsOfUnequalSize(t *testing.T) {
	ctx := context.Background()
	state := []byte("header+block0|block1...|b2")
	cuts := []int64{0, 14, 24, int64(len(state))}
	dir := "file://" + filepath.Join(t.TempDir(), "step")
	m := &Manifest{Format: FormatVersion, Run: "r", Step: 3, World: 3, StateBytes: int64(len(state))}
	for r := range 3 {
		p, err := WritePartAt(ctx, dir, state[cuts[r]:cuts[r+1]], cuts[r], r, 3)
		if err != nil {
			t.Fatal(err)
		}
		if p.SHA256 != SHA256(state[cuts[r]:cuts[r+1]]) || p.Offset != cuts[r] {
			t.Fatalf("part %d: %+v", r, p)
		}
		m.Parts = append(m.Parts, p)
	}
	m.StateSHA256 = PartsDigest(m.Parts)
	if err := WriteManifest(ctx, dir, m); err != nil {
		t.Fatal(err)
	}
	got, err := Fetch(ctx, dir, m)
	if err != nil || !bytes.Equal(got, state) {
		t.Fatalf("fetched %q, %v; want the state back", got, err)
	}
	bad := *m
	bad.StateSHA256 = SHA256(state) // a format-1 hash in a format-2 manifest
	if _, err := Fetch(ctx, dir, &bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a wrong parts digest: %v, want ErrCorrupt", err)
	}
	if PartsDigest(m.Parts[:2]) == PartsDigest(m.Parts) || PartsDigest(m.Parts) == SHA256(state) {
		t.Fatal("the parts digest does not depend on every part")
	}
}
