package wds

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"reflect"
	"sort"
	"strings"
	"testing"
	"testing/iotest"
)

// member is one raw tar entry for building test shards by hand.
type member struct {
	name string
	data string
	typ  byte // 0 means a regular file
}

// rawTar builds a tar from members exactly as given (no WebDataset checks),
// so tests can make hostile shards.
func rawTar(t *testing.T, members ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		hdr := &tar.Header{Name: m.name, Mode: 0o644, Typeflag: m.typ}
		switch m.typ {
		case 0:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(m.data))
		case tar.TypeSymlink:
			hdr.Linkname = "elsewhere"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("header %q: %v", m.name, err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(m.data)); err != nil {
				t.Fatalf("write %q: %v", m.name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readAll reads every sample; err is the final error (nil at a clean end).
// It reads the shard streaming (NewReader), in memory (NewBytesReader) and
// in place from sources that deliver it in ragged pieces
// (NewInPlaceReader), and fails the test if they disagree.
func readAll(t *testing.T, data []byte, shard string, lim Limits) ([]Sample, error) {
	t.Helper()
	streamed, err := readAllFrom(t, NewReader(bytes.NewReader(data), shard, lim))
	others := map[string]*Reader{
		"in-memory":            NewBytesReader(data, shard, lim),
		"in-place, halves":     NewInPlaceReader(iotest.HalfReader(bytes.NewReader(data)), make([]byte, len(data)), shard, lim),
		"in-place, big buffer": NewInPlaceReader(bytes.NewReader(data), make([]byte, len(data)+4096), shard, lim),
	}
	if len(data) < 1<<16 {
		others["in-place, bytewise"] = NewInPlaceReader(iotest.OneByteReader(bytes.NewReader(data)), make([]byte, len(data)), shard, lim)
	}
	for name, r := range others {
		got, gotErr := readAllFrom(t, r)
		if fmt.Sprint(err) != fmt.Sprint(gotErr) {
			t.Errorf("streaming reader error %v, %s reader error %v", err, name, gotErr)
		}
		if !reflect.DeepEqual(streamed, got) {
			t.Errorf("streaming and %s readers disagree:\n%+v\n%+v", name, streamed, got)
		}
	}
	return streamed, err
}

func readAllFrom(t *testing.T, r *Reader) ([]Sample, error) {
	t.Helper()
	var out []Sample
	for i := 0; i < 1000; i++ {
		s, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			// The error must be sticky.
			if _, again := r.Next(); again != err {
				t.Errorf("second Next after error: got %v, want the same error %v", again, err)
			}
			return out, err
		}
		out = append(out, s)
	}
	t.Fatal("reader did not stop")
	return nil, nil
}

// fieldNames returns a sample's field names, sorted.
func fieldNames(s Sample) []string {
	var names []string
	for _, f := range s.Fields {
		names = append(names, f.Name)
	}
	sort.Strings(names)
	return names
}

// fieldMap returns a sample's fields as a map (nil when it has none).
func fieldMap(s Sample) map[string][]byte {
	if s.Fields == nil {
		return nil
	}
	m := map[string][]byte{}
	for _, f := range s.Fields {
		m[f.Name] = f.Data
	}
	return m
}

func TestRoundTrip(t *testing.T) {
	samples := []struct {
		key    string
		fields map[string][]byte
	}{
		{"000000", map[string][]byte{"png": {0x89, 'P', 'N', 'G'}, "txt": []byte("a cat"), "json": []byte(`{"w":1}`)}},
		{"000001", map[string][]byte{"txt": []byte("a dog"), "jpg": bytes.Repeat([]byte{7}, 3000)}},
		{"dir/sub/000002", map[string][]byte{"txt": {}, "cls": []byte("3")}},
		{"000003", map[string][]byte{"b.txt": []byte("dotted field")}},
		// More fields than a sample's carved room: they must not spill
		// into the next sample's fields.
		{"000004", map[string][]byte{"a": {1}, "b": {2}, "c": {3}, "d": {4}, "e": {5}, "f": {6}}},
		{"000005", map[string][]byte{"png": {9}, "txt": []byte("after six")}},
	}
	write := func() []byte {
		var buf bytes.Buffer
		w := NewWriter(&buf)
		for _, s := range samples {
			if err := w.WriteSample(s.key, s.fields); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	first, second := write(), write()
	if !bytes.Equal(first, second) {
		t.Fatal("writing the same samples twice gave different bytes")
	}

	got, err := readAll(t, first, "rt.tar", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(samples) {
		t.Fatalf("got %d samples, want %d", len(got), len(samples))
	}
	for i, want := range samples {
		s := got[i]
		if s.Err != nil || s.Key != want.key || s.Index != i || s.Shard != "rt.tar" {
			t.Errorf("sample %d: got key %q index %d shard %q err %v", i, s.Key, s.Index, s.Shard, s.Err)
		}
		if !reflect.DeepEqual(fieldMap(s), want.fields) {
			t.Errorf("sample %q: fields differ: got %v", want.key, fieldNames(s))
		}
	}

	// Members are in sorted field order with fixed metadata.
	tr := tar.NewReader(bytes.NewReader(first))
	var names []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		if hdr.Mode != 0o644 || hdr.ModTime.Unix() != 0 || hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" {
			t.Errorf("member %q: metadata not fixed: %+v", hdr.Name, hdr)
		}
	}
	wantNames := []string{
		"000000.json", "000000.png", "000000.txt",
		"000001.jpg", "000001.txt",
		"dir/sub/000002.cls", "dir/sub/000002.txt",
		"000003.b.txt",
		"000004.a", "000004.b", "000004.c", "000004.d", "000004.e", "000004.f",
		"000005.png", "000005.txt",
	}
	if !reflect.DeepEqual(names, wantNames) {
		t.Errorf("member order:\n got %v\nwant %v", names, wantNames)
	}
}

func TestWriterRejects(t *testing.T) {
	ok := map[string][]byte{"txt": []byte("x")}
	tests := []struct {
		name   string
		key    string
		fields map[string][]byte
	}{
		{"empty key", "", ok},
		{"parent dir", "../evil", ok},
		{"parent inside", "a/../../b", ok},
		{"absolute", "/abs", ok},
		{"dot in base name", "a.b", ok},
		{"not clean", "./a", ok},
		{"trailing slash", "a/", ok},
		{"double underscore", "__key__", ok},
		{"no fields", "a", nil},
		{"empty field", "a", map[string][]byte{"": nil}},
		{"upper-case field", "a", map[string][]byte{"PNG": nil}},
		{"slash in field", "a", map[string][]byte{"x/y": nil}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWriter(io.Discard)
			err := w.WriteSample(tc.key, tc.fields)
			if err == nil {
				t.Fatalf("WriteSample(%q) succeeded, want an error", tc.key)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.key)) {
				t.Errorf("error %q does not name the key", err)
			}
		})
	}
	w := NewWriter(io.Discard)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteSample("a", ok); err == nil {
		t.Error("WriteSample after Close succeeded")
	}
}

func TestGrouping(t *testing.T) {
	type want struct {
		key    string
		fields []string
	}
	tests := []struct {
		name    string
		members []member
		want    []want
		skipped int
	}{
		{
			name:    "adjacent only",
			members: []member{{name: "a.png"}, {name: "a.txt"}, {name: "b.png"}, {name: "a.json"}},
			want:    []want{{"a", []string{"png", "txt"}}, {"b", []string{"png"}}, {"a", []string{"json"}}},
		},
		{
			name: "dots and directories",
			members: []member{
				{name: "a.b.txt"}, {name: "a.jpg"},
				{name: "dir.v2/sub/000.PNG"}, {name: "dir.v2/sub/000.Seg.Png"},
				{name: "./000.txt"},
			},
			want: []want{
				{"a", []string{"b.txt", "jpg"}},
				{"dir.v2/sub/000", []string{"png", "seg.png"}},
				{"000", []string{"txt"}},
			},
		},
		{
			name: "skipped members",
			members: []member{
				{name: "dir/", typ: tar.TypeDir},
				{name: "__key__.txt", data: "x"},
				{name: "a.txt"},
				{name: "README", data: "no dot"},
				{name: "a.cls"}, // still adjacent: skipped members do not split samples
				{name: "link.txt", typ: tar.TypeSymlink},
				{name: "dir/.hidden", data: "dot first"},
				{name: "b.", data: "no field"},
				{name: "b.txt"},
			},
			want:    []want{{"a", []string{"cls", "txt"}}, {"b", []string{"txt"}}},
			skipped: 4,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			shard := rawTar(t, tc.members...)
			var got []want
			st, err := Scan(bytes.NewReader(shard), "g.tar", Limits{}, func(s Sample) error {
				if s.Err != nil {
					t.Errorf("sample %q: unexpected error %v", s.Key, s.Err)
				}
				if s.Index != len(got) {
					t.Errorf("sample %q: Index %d, want %d", s.Key, s.Index, len(got))
				}
				got = append(got, want{s.Key, fieldNames(s)})
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("samples:\n got %v\nwant %v", got, tc.want)
			}
			if st.Samples != len(tc.want) || st.BadSamples != 0 || st.SkippedMembers != tc.skipped {
				t.Errorf("stats %+v, want %d samples, %d skipped", st, len(tc.want), tc.skipped)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	// got is what one returned sample must look like.
	type got struct {
		key string
		bad bool
	}
	big := strings.Repeat("x", 1000)
	goodShard := func(t *testing.T) []byte {
		return rawTar(t,
			member{name: "s0.txt", data: "zero"},
			member{name: "s1.txt", data: "one"}, member{name: "s1.bin", data: big},
			member{name: "s2.bin", data: big}, member{name: "s2.txt", data: "two"},
		)
	}
	tests := []struct {
		name    string
		shard   func(t *testing.T) []byte
		lim     Limits
		want    []got
		corrupt bool   // the stream must end with ErrCorrupt
		errHas  string // text every error must contain besides shard and key
		lastKey string // for corrupt: the key the error names
	}{
		{
			name: "escaping parent path",
			shard: func(t *testing.T) []byte {
				return rawTar(t, member{name: "a.txt", data: "a"}, member{name: "../evil.txt", data: "evil"}, member{name: "b.txt", data: "b"})
			},
			want:   []got{{"a", false}, {"../evil", true}, {"b", false}},
			errHas: "escapes",
		},
		{
			name: "absolute path",
			shard: func(t *testing.T) []byte {
				return rawTar(t, member{name: "/abs.txt", data: "abs"}, member{name: "/abs.png", data: "abs"}, member{name: "b.txt", data: "b"})
			},
			want:   []got{{"/abs", true}, {"b", false}},
			errHas: "escapes",
		},
		{
			name: "oversized member",
			shard: func(t *testing.T) []byte {
				return rawTar(t, member{name: "a.txt", data: "small"}, member{name: "a.bin", data: big}, member{name: "a.cls", data: "1"}, member{name: "b.bin", data: "tiny"})
			},
			lim:    Limits{MaxMemberBytes: 100},
			want:   []got{{"a", true}, {"b", false}},
			errHas: "member limit",
		},
		{
			name: "oversized sample",
			shard: func(t *testing.T) []byte {
				return rawTar(t, member{name: "a.x", data: big}, member{name: "a.y", data: big}, member{name: "b.x", data: big})
			},
			lim:    Limits{MaxSampleBytes: 1500},
			want:   []got{{"a", true}, {"b", false}},
			errHas: "sample limit",
		},
		{
			name: "duplicate field",
			shard: func(t *testing.T) []byte {
				return rawTar(t, member{name: "a.txt", data: "one"}, member{name: "a.TXT", data: "two"}, member{name: "b.txt", data: "b"})
			},
			want:   []got{{"a", true}, {"b", false}},
			errHas: "duplicate field",
		},
		{
			name: "too many fields",
			shard: func(t *testing.T) []byte {
				return rawTar(t, member{name: "a.x"}, member{name: "a.y"}, member{name: "a.z"}, member{name: "b.x"})
			},
			lim:    Limits{MaxFields: 2},
			want:   []got{{"a", true}, {"b", false}},
			errHas: "fields",
		},
		{
			name: "truncated mid-member",
			shard: func(t *testing.T) []byte {
				data := goodShard(t)
				i := bytes.LastIndex(data, []byte(big)) // s2.bin's data
				return data[:i+len(big)/2]
			},
			want:    []got{{"s0", false}, {"s1", false}},
			corrupt: true,
			lastKey: "s1",
		},
		{
			name: "truncated mid-header",
			shard: func(t *testing.T) []byte {
				data := goodShard(t)
				i := bytes.Index(data, []byte("s1.txt")) // s1.txt's header
				return data[:i+100]
			},
			// s0 was still being assembled when the stream broke (more
			// s0 members might have followed), so it is dropped.
			want:    nil,
			corrupt: true,
			lastKey: "s0",
		},
		{
			name:  "empty: zero bytes",
			shard: func(t *testing.T) []byte { return nil },
		},
		{
			name:  "empty: valid empty tar",
			shard: func(t *testing.T) []byte { return rawTar(t) },
		},
		{
			name:    "garbage bytes",
			shard:   func(t *testing.T) []byte { return bytes.Repeat([]byte("not a tar "), 200) },
			corrupt: true,
			lastKey: "(none)",
		},
		{
			name:    "short garbage",
			shard:   func(t *testing.T) []byte { return []byte("hello") },
			corrupt: true,
			lastKey: "(none)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const shard = "bad-000007.tar"
			samples, err := readAll(t, tc.shard(t), shard, tc.lim)

			if tc.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("got error %v, want ErrCorrupt", err)
				}
				for _, part := range []string{fmt.Sprintf("%q", shard), fmt.Sprintf("%q", tc.lastKey)} {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("error %q does not contain %s", err, part)
					}
				}
			} else if err != nil {
				t.Fatalf("unexpected stream error %v", err)
			}

			if len(samples) != len(tc.want) {
				t.Fatalf("got %d samples, want %d", len(samples), len(tc.want))
			}
			for i, w := range tc.want {
				s := samples[i]
				if s.Key != w.key || s.Index != i || s.Shard != shard {
					t.Errorf("sample %d: key %q index %d shard %q, want key %q index %d", i, s.Key, s.Index, s.Shard, w.key, i)
				}
				if !w.bad {
					if s.Err != nil || len(s.Fields) == 0 {
						t.Errorf("sample %q: want good, got err %v, %d fields", s.Key, s.Err, len(s.Fields))
					}
					continue
				}
				if s.Err == nil {
					t.Errorf("sample %q: want an error", s.Key)
					continue
				}
				if s.Fields != nil {
					t.Errorf("sample %q: bad sample hands out fields", s.Key)
				}
				msg := s.Err.Error()
				for _, part := range []string{fmt.Sprintf("%q", shard), fmt.Sprintf("%q", s.Key), tc.errHas} {
					if !strings.Contains(msg, part) {
						t.Errorf("sample error %q does not contain %s", msg, part)
					}
				}
			}

			// Scan agrees with the Reader.
			st, scanErr := Scan(bytes.NewReader(tc.shard(t)), shard, tc.lim, nil)
			if (scanErr != nil) != tc.corrupt {
				t.Errorf("Scan error %v, corrupt=%v", scanErr, tc.corrupt)
			}
			bad := 0
			for _, w := range tc.want {
				if w.bad {
					bad++
				}
			}
			if st.Samples != len(tc.want) || st.BadSamples != bad {
				t.Errorf("Scan stats %+v, want %d samples, %d bad", st, len(tc.want), bad)
			}
		})
	}
}

func TestScanStopsOnCallbackError(t *testing.T) {
	shard := rawTar(t, member{name: "a.txt", data: "aa"}, member{name: "b.txt", data: "bbb"}, member{name: "c.txt"})
	stop := errors.New("stop here")
	st, err := Scan(bytes.NewReader(shard), "cb.tar", Limits{}, func(s Sample) error {
		if s.Key == "b" {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || !strings.Contains(err.Error(), `"cb.tar"`) || !strings.Contains(err.Error(), `"b"`) {
		t.Errorf("got %v, want the callback error naming shard and key", err)
	}
	if st.Samples != 2 || st.Bytes != 5 {
		t.Errorf("stats %+v, want 2 samples, 5 bytes", st)
	}
}

func TestIsCleanMatchesPathClean(t *testing.T) {
	for _, p := range []string{"", "/", "a", "/a", "a/b.png", "a//b", "a/./b", "./a", "a/..", "../a", "a/", "/..", ".", "..", "a.b/c.d", "...", "a/.../b", "//a", "a/b/", ".a", "a/.b"} {
		if isClean(p) && path.Clean(p) != p { // false only sends p through path.Clean
			t.Errorf("isClean(%q) = true, but path.Clean gives %q", p, path.Clean(p))
		}
		if got, want := cleanPath(p), path.Clean(p); got != want {
			t.Errorf("cleanPath(%q) = %q, want %q", p, got, want)
		}
	}
}

// TestInPlaceReaderSourceErrorsAndShortBuffer: an in-place reader passes
// its source's errors on (wrapped, so a caller can tell a network failure
// from a corrupt shard) and reads no further than its buffer.
func TestInPlaceReaderSourceErrorsAndShortBuffer(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for i := 0; i < 20; i++ {
		w.WriteSample(fmt.Sprintf("s%03d", i), map[string][]byte{"png": bytes.Repeat([]byte{byte(i)}, 1000), "txt": []byte("x")})
	}
	w.Close()
	data := buf.Bytes()

	lost := errors.New("connection reset")
	src := io.MultiReader(bytes.NewReader(data[:len(data)/2]), iotest.ErrReader(lost))
	r := NewInPlaceReader(src, make([]byte, len(data)), "s.tar", Limits{})
	n := 0
	var err error
	for ; ; n++ {
		if _, err = r.Next(); err != nil {
			break
		}
	}
	if !errors.Is(err, lost) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("after %d samples: %v, want the source's error", n, err)
	}
	if n == 0 || n >= 20 {
		t.Errorf("read %d samples before the error, want some but not all", n)
	}

	r = NewInPlaceReader(bytes.NewReader(data), make([]byte, len(data)/2), "s.tar", Limits{})
	for err = nil; err == nil; {
		_, err = r.Next()
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("shard larger than the buffer: %v, want a truncation", err)
	}
}
