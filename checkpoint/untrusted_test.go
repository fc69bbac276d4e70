package checkpoint

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The tests here feed the parsers damaged and hostile bytes: each must be
// refused with an error that names the field and the problem, never a
// panic or an allocation sized by the bad value.

// stateBuilder writes the shim's state layouts field by field, so a test
// can put any value in any field and still seal the result with the
// right checksum.
type stateBuilder struct{ bytes.Buffer }

func (b *stateBuilder) u8(v uint8)   { b.WriteByte(v) }
func (b *stateBuilder) u32(v uint32) { b.Write(binary.LittleEndian.AppendUint32(nil, v)) }
func (b *stateBuilder) u64(v uint64) { b.Write(binary.LittleEndian.AppendUint64(nil, v)) }
func (b *stateBuilder) f32s(vs []float32) {
	for _, v := range vs {
		b.u32(math.Float32bits(v))
	}
}

// flatState is a format-1 state whose tensor count, names, numels and
// values are given as is (numels[i] need not be len(values[i])), sealed
// with its FNV-1a checksum.
func flatState(count uint32, names []string, numels []uint64, values [][]float32) []byte {
	var b stateBuilder
	b.WriteString("LAVITST1")
	b.u32(StateFormat)
	b.u32(1)
	b.u64(7)
	b.u64(6)
	b.u8(1)
	b.u8(0)
	b.u32(count)
	for i, name := range names {
		b.u32(uint32(len(name)))
		b.WriteString(name)
		b.u64(numels[i])
		b.f32s(values[i])
	}
	return binary.LittleEndian.AppendUint32(b.Bytes(), fnv1a(b.Bytes()))
}

// blockedHeader is a blocked state's header with the given sizes and
// codebook values, sealed with its CRC-32C.
func blockedHeader(stage uint32, P, block uint64, blocks uint32, cb uint64, codebook []float32) []byte {
	var b stateBuilder
	b.WriteString("LAVITST1")
	b.u32(StateFormatBlocked)
	b.u32(stage)
	b.u64(7)
	b.u64(6)
	b.u8(1)
	b.u8(0)
	b.u64(P)
	b.u64(block)
	b.u32(blocks)
	b.u64(cb)
	b.f32s(codebook)
	return binary.LittleEndian.AppendUint32(b.Bytes(), crc32.Checksum(b.Bytes(), castagnoli))
}

// appendBlock appends block idx, claiming n values, with the given
// params, exp_avg and exp_avg_sq values, sealed with its CRC-32C.
func appendBlock(state []byte, idx uint32, n uint64, vals ...[]float32) []byte {
	var b stateBuilder
	b.u32(idx)
	b.u64(n)
	for _, v := range vals {
		b.f32s(v)
	}
	return append(state, binary.LittleEndian.AppendUint32(b.Bytes(), crc32.Checksum(b.Bytes(), castagnoli))...)
}

// fakeBlocked is a well-formed blocked state of params cut into blocks of
// block values (the moments are params/2 and params/4), with codebook
// (stage 1) or without (stage 2, codebook nil).
func fakeBlocked(params []float32, block int, codebook []float32) []byte {
	stage := uint32(2)
	if codebook != nil {
		stage = 1
	}
	blocks := max((len(params)+block-1)/block, 1)
	b := blockedHeader(stage, uint64(len(params)), uint64(block), uint32(blocks), uint64(len(codebook)), codebook)
	for i := range blocks {
		lo, hi := min(i*block, len(params)), min((i+1)*block, len(params))
		p := params[lo:hi]
		m, v := make([]float32, len(p)), make([]float32, len(p))
		for k := range p {
			m[k], v[k] = p[k]/2, p[k]/4
		}
		b = appendBlock(b, uint32(i), uint64(len(p)), p, m, v)
	}
	return b
}

func TestFakeBlockedParses(t *testing.T) {
	params := []float32{1, 2, 3, 4, 5, 6, 7}
	for _, block := range []int{1, 3, 7, 10} {
		st, err := ParseState(fakeBlocked(params, block, []float32{9, 8}), StateFormat)
		if err != nil {
			t.Fatalf("block %d: %v", block, err)
		}
		if len(st.Values["params"]) != 7 || st.Values["exp_avg"][6] != 3.5 || len(st.Values["codebook"]) != 2 {
			t.Fatalf("block %d: %+v", block, st)
		}
	}
}

// TestParseStateRefusesBadSizes: every size in a state is checked against
// the bytes that follow before it allocates anything. The states are
// sealed with valid checksums (a checksum is no defence against a state
// made to be hostile).
func TestParseStateRefusesBadSizes(t *testing.T) {
	good := flatState(1, []string{"params"}, []uint64{2}, [][]float32{{1, 2}})
	blocked := fakeBlocked([]float32{1, 2, 3, 4, 5}, 2, []float32{1})
	neg := func(v int64) uint64 { return uint64(v) }
	cases := []struct {
		name  string
		state []byte
		want  string
	}{
		{"negative numel", flatState(1, []string{"x"}, []uint64{neg(-3)}, [][]float32{{1}}),
			`state tensor "x": numel -3 is negative`},
		{"numel×4 overflows to 0", flatState(1, []string{"x"}, []uint64{1 << 62}, [][]float32{nil}),
			`state tensor "x": numel 4611686018427387904 exceeds what the 0 bytes left can hold`},
		{"numel×4 overflows to 4", flatState(1, []string{"x"}, []uint64{1<<62 + 1}, [][]float32{{1}}),
			`numel 4611686018427387905 exceeds`},
		{"largest numel", flatState(1, []string{"x"}, []uint64{math.MaxInt64}, [][]float32{{1}}),
			`numel 9223372036854775807 exceeds`},
		{"numel past the end (truncated)", flatState(1, []string{"params"}, []uint64{3}, [][]float32{{1, 2}}),
			`state tensor "params": numel 3 exceeds what the 8 bytes left can hold`},
		{"huge tensor count", flatState(math.MaxUint32, []string{"params"}, []uint64{2}, [][]float32{{1, 2}}),
			"state tensor count 4294967295 exceeds"},
		{"count past the tensors", flatState(2, []string{"params"}, []uint64{2}, [][]float32{{1, 2}}),
			"state tensor 1: state is truncated"},
		{"duplicate tensor", flatState(2, []string{"a", "a"}, []uint64{0, 0}, [][]float32{nil, nil}),
			`state tensor "a" appears twice`},
		{"trailing bytes", flatState(0, []string{"x"}, []uint64{0}, [][]float32{nil}),
			"state has 13 trailing bytes"},
		{"cut, checksum missing", good[:len(good)-4], "checksum mismatch"},
		{"cut mid-header", good[:14], "state is truncated"},
		{"blocked: negative parameter count", blockedHeader(2, neg(-1), 2, 1, 0, nil),
			"blocked state header: parameter count -1 is negative"},
		{"blocked: zero block", blockedHeader(2, 4, 0, 1, 0, nil), "block size 0 is not positive"},
		{"blocked: zero blocks", blockedHeader(2, 4, 2, 0, 0, nil), "block count 0 is not positive"},
		{"blocked: negative codebook", blockedHeader(1, 0, 1, 1, neg(-2), nil), "codebook numel -2 is negative"},
		{"blocked: huge codebook", appendBlock(blockedHeader(1, 0, 1, 1, 1<<62, nil), 0, 0), "codebook numel 4611686018427387904 exceeds"},
		{"blocked: huge block count", blockedHeader(2, 0, 1, math.MaxUint32, 0, nil), "block count 4294967295 exceeds"},
		{"blocked: block×blocks overflows", appendBlock(appendBlock(appendBlock(appendBlock(blockedHeader(2, 0, 1<<62, 4, 0, nil), 0, 0), 1, 0), 2, 0), 3, 0),
			"4 blocks of 4611686018427387904 values overflow"},
		{"blocked: huge parameter count", appendBlock(blockedHeader(2, 1<<40, 1<<40, 1, 0, nil), 0, 0),
			"parameter count 1099511627776 exceeds"},
		{"blocked: blocks do not hold P", appendBlock(blockedHeader(2, 5, 2, 1, 0, nil), 0, 2, []float32{1, 2, 3, 4, 5, 6}),
			"1 blocks of 2 do not hold 5 parameters"},
		{"blocked: a block claims more", appendBlock(blockedHeader(2, 1, 1, 1, 0, nil), 0, 1<<62, []float32{1, 2, 3}),
			"block 0 is out of place or has a wrong length (index 0, 4611686018427387904 values)"},
		{"blocked: truncated", blocked[:len(blocked)-5], "blocked state: block 2: state is truncated"},
		{"blocked: header only", blocked[:blockedHeaderFixed+4], "blocked state header: block count 3 exceeds what the 8 bytes left can hold"},
		{"blocked: trailing bytes", append(append([]byte(nil), blocked...), 0, 0), "blocked state has 2 trailing bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := append([]byte(nil), tc.state...)
			st, err := ParseState(tc.state, StateFormat)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v (%+v), want an error containing %q", err, st, tc.want)
			}
			if !bytes.Equal(before, tc.state) {
				t.Fatal("ParseState changed its input")
			}
			if cerr := CheckState(tc.state, StateFormat); cerr == nil || cerr.Error() != err.Error() {
				t.Fatalf("CheckState: %v, want ParseState's error %q", cerr, err)
			}
		})
	}
	for _, ok := range [][]byte{good, blocked} {
		if err := CheckState(ok, StateFormat); err != nil {
			t.Errorf("CheckState of a good state: %v", err)
		}
	}
}

// writeRawManifest writes manifest JSON as is (WriteManifest would refuse
// it) with parts holding state, and returns the checkpoint's URL.
func writeRawManifest(t *testing.T, state []byte, manifest string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "step")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, PartName(0, 1)), state, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, ManifestName), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	return "file://" + root
}

// TestReadManifestRefusesBadSizes: a manifest's sizes are checked before
// anything is fetched or allocated from them.
func TestReadManifestRefusesBadSizes(t *testing.T) {
	state := fakeState([]float32{1, 2, 3, 4, 5, 6}, nil)
	n := len(state)
	sha := SHA256(state)
	part := func(bytes int64) string {
		return `{"name":"part-0000-of-0001","offset":0,"bytes":` + jsonInt(bytes) + `,"sha256":"` + sha + `"}`
	}
	manifest := func(stateBytes int64, parts, params string) string {
		return `{"format":1,"run":"r","step":3,"world":1,"state_bytes":` + jsonInt(stateBytes) +
			`,"state_sha256":"` + sha + `","parts":[` + parts + `],"params":[` + params + `]}`
	}
	good := manifest(int64(n), part(int64(n)), `{"name":"w","shape":[2,3],"offset":0,"numel":6}`)
	if _, err := ReadManifest(context.Background(), writeRawManifest(t, state, good)); err != nil {
		t.Fatalf("a good manifest: %v", err)
	}
	cases := []struct {
		name, manifest, want string
	}{
		{"huge state_bytes", manifest(math.MaxInt64, part(math.MaxInt64), ""),
			"checkpoint manifest: state_bytes 9223372036854775807 exceeds the limit of 1099511627776"},
		{"negative state_bytes", manifest(-8, part(-8), ""), "state_bytes -8 is negative"},
		{"negative part bytes", manifest(0, part(-8), ""), "part 0: bytes -8 is negative"},
		{"part past state_bytes", manifest(10, part(1<<40), ""), "part 0: 1099511627776 bytes at 0 run past state_bytes 10"},
		{"overflowing parts", `{"format":1,"world":2,"state_bytes":10,"parts":[` +
			`{"name":"part-0000-of-0002","offset":0,"bytes":9223372036854775807,"sha256":"` + sha + `"},` +
			`{"name":"part-0001-of-0002","offset":9223372036854775807,"bytes":9223372036854775807,"sha256":"` + sha + `"}]}`,
			"part 0: 9223372036854775807 bytes at 0 run past state_bytes 10"},
		{"negative numel", manifest(int64(n), part(int64(n)), `{"name":"x","shape":[3],"offset":0,"numel":-3}`),
			`parameter "x": numel -3 is negative`},
		{"negative offset", manifest(int64(n), part(int64(n)), `{"name":"x","shape":[1],"offset":-1,"numel":1}`),
			`parameter "x": offset -1 is negative`},
		{"offset+numel overflows", manifest(int64(n), part(int64(n)), `{"name":"x","shape":[9223372036854775807],"offset":1,"numel":9223372036854775807}`),
			`parameter "x": [1, +9223372036854775807) lies outside`},
		{"numel past the state", manifest(int64(n), part(int64(n)), `{"name":"x","shape":[100],"offset":0,"numel":100}`),
			`parameter "x": [0, +100) lies outside the 21 params`},
		{"shape product overflows", manifest(int64(n), part(int64(n)), `{"name":"x","shape":[4294967296,4294967296],"offset":0,"numel":0}`),
			`parameter "x": shape [4294967296 4294967296] overflows int64`},
		{"negative dimension", manifest(int64(n), part(int64(n)), `{"name":"x","shape":[-2,-3],"offset":0,"numel":6}`),
			`parameter "x": shape [-2 -3] has a negative dimension`},
		{"shape is not numel", manifest(int64(n), part(int64(n)), `{"name":"x","shape":[2,2],"offset":0,"numel":6}`),
			`parameter "x": shape [2 2] holds 4 values, numel is 6`},
		{"negative step", strings.Replace(good, `"step":3`, `"step":-3`, 1), "step -3 is negative"},
		{"not JSON", "{", "checkpoint corrupt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeRawManifest(t, state, tc.manifest)
			m, err := ReadManifest(context.Background(), dir)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrCorrupt containing %q", err, tc.want)
			}
			if m != nil {
				t.Fatal("a refused manifest came back")
			}
			// Fetch validates a manifest it is handed too.
			var raw Manifest
			if json.Unmarshal([]byte(tc.manifest), &raw) == nil {
				if _, err := Fetch(context.Background(), dir, &raw); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Fetch of the unvalidated manifest: %v, want ErrCorrupt", err)
				}
			}
		})
	}
}

func jsonInt(v int64) string { b, _ := json.Marshal(v); return string(b) }

// TestReadManifestRefusesAHugeObject: a manifest object over
// MaxManifestBytes is refused without being read whole.
func TestReadManifestRefusesAHugeObject(t *testing.T) {
	root := filepath.Join(t.TempDir(), "step")
	os.MkdirAll(root, 0o755)
	f, err := os.Create(filepath.Join(root, ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 40); err != nil { // sparse: no disk used
		t.Skipf("no sparse files here: %v", err)
	}
	f.Close()
	_, err = ReadManifest(context.Background(), "file://"+root)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "exceeds the limit of 67108864 bytes") {
		t.Fatalf("got %v, want ErrCorrupt: the manifest exceeds the limit", err)
	}
}

// TestFetchChecksPartSizesBeforeAllocating: a valid manifest whose parts
// claim far more than the store holds (512 GiB here) is refused by the
// parts' sizes in the store, before a buffer of state_bytes is allocated.
func TestFetchChecksPartSizesBeforeAllocating(t *testing.T) {
	state := []byte("ten bytes!")
	const claimed = 1 << 39
	m := &Manifest{Format: 1, World: 1, StateBytes: claimed, StateSHA256: SHA256(state),
		Parts: []Part{{Name: PartName(0, 1), Offset: 0, Bytes: claimed, SHA256: SHA256(state)}}}
	b, _ := json.Marshal(m)
	dir := writeRawManifest(t, state, string(b))
	got, err := ReadManifest(context.Background(), dir)
	if err != nil {
		t.Fatalf("the manifest itself is valid: %v", err)
	}
	_, err = Fetch(context.Background(), dir, got)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "part-0000-of-0001: checkpoint corrupt: 10 bytes, the manifest says 549755813888") {
		t.Fatalf("got %v, want ErrCorrupt naming the part and both sizes", err)
	}
}

// TestExportRefusesBadParams: ExportSafetensors checks the whole parameter
// table before it writes a byte, whether or not a manifest was validated.
func TestExportRefusesBadParams(t *testing.T) {
	state := fakeState([]float32{1, 2, 3, 4}, nil)
	cases := []struct {
		name  string
		param ParamInfo
		want  string
	}{
		{"negative numel", ParamInfo{Name: "x", Shape: []int64{3}, Offset: 2, Numel: -3}, `parameter "x": numel -3 is negative`},
		{"overflowing numel", ParamInfo{Name: "x", Shape: []int64{math.MaxInt64}, Offset: 1, Numel: math.MaxInt64}, `parameter "x": [1, +9223372036854775807) lies outside the 4 params`},
		{"offset past the end", ParamInfo{Name: "x", Shape: []int64{0}, Offset: 5, Numel: 0}, `parameter "x": [5, +0) lies outside the 4 params`},
		{"wrong shape", ParamInfo{Name: "x", Shape: []int64{3}, Offset: 0, Numel: 2}, `parameter "x": shape [3] holds 3 values, numel is 2`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			ok := ParamInfo{Name: "a", Shape: []int64{2}, Offset: 0, Numel: 2}
			err := ExportSafetensors(&buf, state, StateFormat, []ParamInfo{ok, tc.param})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if buf.Len() != 0 {
				t.Fatalf("%d bytes written before the error", buf.Len())
			}
		})
	}
}
