package wds

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// fuzzShards are seed shards: written by Writer, and raw tars in every
// format the reader understands, some hostile.
func fuzzShards(tb testing.TB) [][]byte {
	var out [][]byte
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for i, s := range []struct {
		key    string
		fields map[string][]byte
	}{
		{"000000", map[string][]byte{"png": []byte("\x89PNG fake"), "txt": []byte("a red square"), "json": []byte(`{"i":0}`)}},
		{"dir/000001", map[string][]byte{"jpg": bytes.Repeat([]byte{0xff}, 700), "txt": []byte("two")}},
		{strings.Repeat("k", 120), map[string][]byte{"txt": nil}}, // a PAX path record
	} {
		if err := w.WriteSample(s.key, s.fields); err != nil {
			tb.Fatalf("seed %d: %v", i, err)
		}
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	out = append(out, bytes.Clone(buf.Bytes()))

	raw := func(format tar.Format, members ...[3]string) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, m := range members {
			typ := byte(tar.TypeReg)
			if m[2] != "" {
				typ = m[2][0]
			}
			hdr := &tar.Header{Name: m[0], Mode: 0o644, Typeflag: typ, Format: format}
			if typ == tar.TypeReg {
				hdr.Size = int64(len(m[1]))
			}
			if typ == tar.TypeSymlink {
				hdr.Linkname = "x"
			}
			if err := tw.WriteHeader(hdr); err != nil {
				tb.Fatalf("seed member %q: %v", m[0], err)
			}
			if hdr.Size > 0 {
				tw.Write([]byte(m[1]))
			}
		}
		tw.Close()
		return b.Bytes()
	}
	long := strings.Repeat("d/", 60) + "s.txt"
	out = append(out,
		raw(tar.FormatGNU, [3]string{long, "gnu long name"}, [3]string{"b.txt", "b"}),
		raw(tar.FormatUSTAR, [3]string{strings.Repeat("p", 120) + "/k.txt", "ustar prefix"}),
		raw(tar.FormatPAX, [3]string{"a.txt", "a"}, [3]string{"../evil.txt", "e"}, [3]string{"/abs.txt", "x"}, [3]string{"a.txt", "dup"}),
		raw(tar.FormatUnknown, [3]string{"dir/", "", string(rune(tar.TypeDir))}, [3]string{"l.txt", "", string(rune(tar.TypeSymlink))},
			[3]string{"__meta__.json", "{}"}, [3]string{".hidden.txt", "h"}, [3]string{"nofield", "n"}, [3]string{"s.A.TXT", "upper"}),
	)
	first := out[0]
	out = append(out,
		first[:len(first)/2],                 // truncated inside a member
		first[:512],                          // a header alone
		append(bytes.Clone(first[:1024]), 1), // garbage after a member
		nil,                                  // empty shard
		make([]byte, 1024),                   // only the end marker
	)
	smashed := bytes.Clone(first)
	smashed[148] ^= 1 // the first header's checksum
	out = append(out, smashed)
	return out
}

// FuzzReader reads arbitrary bytes as a shard with every reader:
// streaming, in memory, in place (fed in halves, byte by byte, into an
// oversized buffer), and through Scan and ScanBytes. They must agree on
// every sample and on the final error, never panic, and stop; every sample
// must keep the Limits and the grouping rules, and a stream error must be
// ErrCorrupt.
func FuzzReader(f *testing.F) {
	for _, s := range fuzzShards(f) {
		f.Add(s, false, false)
		f.Add(s, true, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, small, fixSums bool) {
		if fixSums {
			// Let mutated headers past the checksum, to the parsing
			// behind it.
			data = bytes.Clone(data)
			fixChecksums(data)
		}
		lim := Limits{}
		if small {
			lim = Limits{MaxMemberBytes: 600, MaxSampleBytes: 1000, MaxFields: 3}
		}
		full := lim.withDefaults()
		streamed, err := readFuzz(t, NewReader(bytes.NewReader(data), "s", lim), len(data))
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("stream error %v does not wrap ErrCorrupt", err)
		}
		for i, s := range streamed {
			checkSample(t, s, i, full)
		}
		others := map[string]*Reader{
			"in-memory":            NewBytesReader(data, "s", lim),
			"in-place, halves":     NewInPlaceReader(iotest.HalfReader(bytes.NewReader(data)), make([]byte, len(data)), "s", lim),
			"in-place, bytewise":   NewInPlaceReader(iotest.OneByteReader(bytes.NewReader(data)), make([]byte, len(data)), "s", lim),
			"in-place, big buffer": NewInPlaceReader(bytes.NewReader(data), make([]byte, len(data)+4096), "s", lim),
		}
		for name, r := range others {
			got, gotErr := readFuzz(t, r, len(data))
			if fmt.Sprint(err) != fmt.Sprint(gotErr) {
				t.Fatalf("streaming reader error %v, %s reader error %v", err, name, gotErr)
			}
			if !reflect.DeepEqual(streamed, got) {
				t.Fatalf("streaming and %s readers disagree:\n%+v\n%+v", name, streamed, got)
			}
		}
		want := Stats{}
		for _, s := range streamed {
			want.Samples++
			if s.Err != nil {
				want.BadSamples++
			}
			want.Bytes += s.Bytes()
		}
		for name, scan := range map[string]func() (Stats, error){
			"Scan":      func() (Stats, error) { return Scan(bytes.NewReader(data), "s", lim, nil) },
			"ScanBytes": func() (Stats, error) { return ScanBytes(data, "s", lim, nil) },
		} {
			st, scanErr := scan()
			if fmt.Sprint(scanErr) != fmt.Sprint(err) {
				t.Fatalf("%s error %v, reader error %v", name, scanErr, err)
			}
			st.SkippedMembers = 0
			if st != want {
				t.Fatalf("%s stats %+v, the samples count %+v", name, st, want)
			}
		}
	})
}

// readFuzz reads every sample of r. A shard of n bytes has at most
// n/512 samples (each starts with a header), so more is a reader that
// does not stop.
func readFuzz(t *testing.T, r *Reader, n int) ([]Sample, error) {
	t.Helper()
	var out []Sample
	for len(out) <= n/blockSize {
		s, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			if _, again := r.Next(); again != err {
				t.Fatalf("error not sticky: %v, then %v", err, again)
			}
			return out, err
		}
		out = append(out, s)
	}
	t.Fatalf("more than %d samples from %d bytes: the reader does not stop", n/blockSize, n)
	return nil, nil
}

// checkSample holds one sample to the reader's promises.
func checkSample(t *testing.T, s Sample, i int, lim Limits) {
	t.Helper()
	if s.Index != i || s.Shard != "s" {
		t.Fatalf("sample %d has index %d, shard %q", i, s.Index, s.Shard)
	}
	if s.Err != nil {
		if s.Fields != nil {
			t.Fatalf("bad sample %q keeps its fields", s.Key)
		}
		if !strings.Contains(s.Err.Error(), `"s"`) {
			t.Fatalf("sample error %q does not name the shard", s.Err)
		}
		return
	}
	if s.Key == "" || escapes(s.Key) {
		t.Fatalf("good sample with key %q", s.Key)
	}
	if len(s.Fields) == 0 || len(s.Fields) > lim.MaxFields || s.Bytes() > lim.MaxSampleBytes {
		t.Fatalf("sample %q: %d fields, %d bytes, over the limits %+v", s.Key, len(s.Fields), s.Bytes(), lim)
	}
	for j, f := range s.Fields {
		if f.Name == "" || f.Name != strings.ToLower(f.Name) || f.Data == nil || int64(len(f.Data)) > lim.MaxMemberBytes || fieldIndex(s.Fields[:j], f.Name) >= 0 {
			t.Fatalf("sample %q: field %d %q (%d bytes) breaks the rules", s.Key, j, f.Name, len(f.Data))
		}
	}
}

// fixChecksums rewrites the checksum of every block-aligned header that
// carries the ustar magic, as a writer would have.
func fixChecksums(data []byte) {
	for off := 0; off+blockSize <= len(data); off += blockSize {
		b := data[off : off+blockSize]
		if string(b[257:262]) != "ustar" {
			continue
		}
		copy(b[148:156], fmt.Sprintf("%06o\x00 ", headerSum(b)))
	}
}
