package checkpoint

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Fuzz targets for every parser here that reads outside bytes: states
// (ParseState), manifests (JSON, Validate) and the export a manifest's
// parameter table drives. `go test` runs their seeds; `go test -fuzz
// FuzzParseState ./checkpoint` searches for more.

// stateSeeds are well-formed states (format 1 and blocked) and a few
// malformed ones.
func stateSeeds() [][]byte {
	blocked := fakeBlocked([]float32{1, 2, 3, 4, 5}, 2, []float32{0.5, -1})
	return [][]byte{
		fakeState([]float32{1, 2, 3}, nil),
		fakeState([]float32{1, 2, 3, 4}, map[string][]float32{"exp_avg": {0.5, 0.25, 0, 1}}),
		blocked,
		fakeBlocked([]float32{1, 2, 3}, 8, nil),
		fakeBlocked(nil, 1, nil),
		flatState(1, []string{"x"}, []uint64{1 << 63}, [][]float32{{1}}),
		flatState(1, []string{"x"}, []uint64{1 << 62}, [][]float32{nil}),
		appendBlock(blockedHeader(2, 0, 1<<62, 4, 0, nil), 0, 0),
		blocked[:len(blocked)-7],
		[]byte("LAVITST1"),
		nil,
	}
}

// reseal recomputes every checksum of a state-shaped b (the FNV-1a
// trailer of format 1; the header's and each block's CRC-32C of a blocked
// state, as far as its sizes lead), so the fuzzer reaches the checks
// behind the checksums. It never fails: what it cannot follow it leaves.
func reseal(b []byte) []byte {
	b = append([]byte(nil), b...)
	if len(b) < 16 || string(b[:8]) != "LAVITST1" {
		return b
	}
	if binary.LittleEndian.Uint32(b[8:12]) != StateFormatBlocked {
		binary.LittleEndian.PutUint32(b[len(b)-4:], fnv1a(b[:len(b)-4]))
		return b
	}
	if len(b) < blockedHeaderFixed-4 {
		return b
	}
	blocks := uint64(binary.LittleEndian.Uint32(b[50:54]))
	cb := binary.LittleEndian.Uint64(b[54:62])
	off := uint64(62)
	if cb > uint64(len(b)) || off+4*cb+4 > uint64(len(b)) {
		return b
	}
	off += 4 * cb
	binary.LittleEndian.PutUint32(b[off:], crc32.Checksum(b[:off], castagnoli))
	off += 4
	for range blocks {
		if off+12 > uint64(len(b)) {
			return b
		}
		at := off
		n := binary.LittleEndian.Uint64(b[off+4:])
		if n > uint64(len(b)) || off+12+12*n+4 > uint64(len(b)) {
			return b
		}
		off += 12 + 12*n
		binary.LittleEndian.PutUint32(b[off:], crc32.Checksum(b[at:off], castagnoli))
		off += 4
	}
	return b
}

// TestReseal: reseal leaves well-formed states as they are and makes a
// state with an edited size reach the size checks behind the checksums.
func TestReseal(t *testing.T) {
	for i, s := range stateSeeds()[:5] {
		if got := reseal(s); string(got) != string(s) {
			t.Errorf("seed %d: reseal changed a well-formed state", i)
		}
	}
	flat := fakeState([]float32{1, 2}, nil)
	binary.LittleEndian.PutUint64(flat[8+4+4+8+8+2+4+4+6:], 1<<63) // params' numel
	blocked := fakeBlocked([]float32{1, 2, 3}, 2, nil)
	binary.LittleEndian.PutUint64(blocked[34:], 4) // P
	for _, b := range [][]byte{flat, blocked} {
		if _, err := ParseState(reseal(b), StateFormat); err == nil || strings.Contains(err.Error(), "checksum") {
			t.Errorf("resealed: %v, want a size error", err)
		}
	}
}

// FuzzParseState: any bytes, as they are and resealed, parse or are
// refused; a parsed state never holds more values than its bytes do, and
// CheckState accepts exactly what ParseState does.
func FuzzParseState(f *testing.F) {
	for _, s := range stateSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, in := range [][]byte{b, reseal(b)} {
			st, err := ParseState(in, StateFormat)
			if cerr := CheckState(in, StateFormat); (cerr == nil) != (err == nil) {
				t.Fatalf("CheckState says %v, ParseState %v", cerr, err)
			}
			if err != nil {
				continue
			}
			total := 0
			for _, name := range st.Tensors {
				total += len(st.Values[name])
			}
			if 4*total > len(in) {
				t.Fatalf("%d values parsed from %d bytes", total, len(in))
			}
		}
	})
}

// manifestSeeds are manifests as WriteManifest writes them, and a few
// malformed ones.
func manifestSeeds(f *testing.F) [][]byte {
	ctx := context.Background()
	state := fakeState([]float32{1, 2, 3, 4, 5, 6}, nil)
	root := filepath.Join(f.TempDir(), "step")
	m := &Manifest{Format: FormatVersion, Run: "r", Step: 10, World: 2, StateBytes: int64(len(state)),
		Params: []ParamInfo{{Name: "w", Shape: []int64{2, 2}, Offset: 0, Numel: 4}, {Name: "b", Shape: []int64{2}, Offset: 4, Numel: 2}}}
	for r := range 2 {
		p, err := WritePart(ctx, "file://"+root, state, r, 2)
		if err != nil {
			f.Fatal(err)
		}
		m.Parts = append(m.Parts, p)
	}
	m.StateSHA256 = PartsDigest(m.Parts)
	if err := WriteManifest(ctx, "file://"+root, m); err != nil {
		f.Fatal(err)
	}
	written, err := os.ReadFile(filepath.Join(root, ManifestName))
	if err != nil {
		f.Fatal(err)
	}
	return [][]byte{
		written,
		[]byte(`{"format":1,"world":1,"state_bytes":9223372036854775807,"parts":[{"name":"part-0000-of-0001","offset":0,"bytes":9223372036854775807,"sha256":"` + SHA256(nil) + `"}]}`),
		[]byte(`{"format":1,"world":1,"state_bytes":8,"parts":[{"name":"part-0000-of-0001","offset":0,"bytes":8,"sha256":"` + SHA256(nil) + `"}],"params":[{"name":"x","shape":[3],"offset":0,"numel":-3}]}`),
		[]byte(`{"format":2,"world":0}`),
		[]byte(`{`),
	}
}

// FuzzManifest: any manifest JSON is refused by Validate or describes
// sizes that are safe to use: the parts tile state_bytes within
// MaxStateBytes, and exporting its parameter table from a params tensor of
// the size it allows cannot panic.
func FuzzManifest(f *testing.F) {
	for _, s := range manifestSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Manifest
		if json.Unmarshal(b, &m) != nil || m.Validate() != nil {
			return
		}
		if m.StateBytes < 0 || m.StateBytes > MaxStateBytes {
			t.Fatalf("state_bytes %d accepted", m.StateBytes)
		}
		var sum int64
		for _, p := range m.Parts {
			if p.Bytes < 0 || p.Offset != sum {
				t.Fatalf("part %+v accepted", p)
			}
			sum += p.Bytes
		}
		if sum != m.StateBytes {
			t.Fatalf("parts hold %d bytes, state_bytes %d", sum, m.StateBytes)
		}
		var end int64
		for _, p := range m.Params {
			end = max(end, p.Offset+p.Numel)
		}
		if end > m.StateBytes/4 {
			t.Fatalf("parameters reach %d, past the %d params a %d-byte state holds", end, m.StateBytes/4, m.StateBytes)
		}
		if end <= 1<<16 {
			// It may refuse (duplicate names are the writer's to find).
			WriteParams(io.Discard, make([]float32, end), m.Params)
		}
	})
}

// FuzzExport: a state and a parameter table, neither validated, export
// or are refused; never a panic (lavit-coord ckpt export's path).
func FuzzExport(f *testing.F) {
	state := fakeState([]float32{1, 2, 3, 4, 5, 6}, nil)
	f.Add(state, []byte(`[{"name":"w","shape":[2,2],"offset":0,"numel":4},{"name":"b","shape":[2],"offset":4,"numel":2}]`))
	f.Add(state, []byte(`[{"name":"x","shape":[3],"offset":2,"numel":-3}]`))
	f.Add(state, []byte(`[{"name":"x","shape":[9223372036854775807],"offset":1,"numel":9223372036854775807}]`))
	f.Add(fakeBlocked([]float32{1, 2, 3}, 2, nil), []byte(`[{"name":"w","shape":[3],"offset":0,"numel":3}]`))
	f.Fuzz(func(t *testing.T, state, table []byte) {
		var params []ParamInfo
		if json.Unmarshal(table, &params) != nil {
			return
		}
		for _, in := range [][]byte{state, reseal(state)} {
			ExportSafetensors(io.Discard, in, StateFormat, params)
		}
	})
}
