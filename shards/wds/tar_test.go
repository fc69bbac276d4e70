package wds

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestTarReaderMatchesArchiveTar reads archives written by archive/tar in
// each format (long names through the USTAR prefix, PAX records and GNU 'L'
// members; directories, links and PAX globals among the members) and
// checks that tarReader yields the same regular members, names and bytes.
func TestTarReaderMatchesArchiveTar(t *testing.T) {
	long := strings.Repeat("d", 90) + "/" + strings.Repeat("e", 60) + "/key.txt" // needs the prefix
	longer := strings.Repeat("x", 150) + ".txt"                                  // no prefix split fits
	type entry struct {
		hdr  tar.Header
		data string
	}
	entries := []entry{
		{tar.Header{Name: "a.txt", Typeflag: tar.TypeReg}, "short"},
		{tar.Header{Name: "dir/", Typeflag: tar.TypeDir}, ""},
		{tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "a.txt"}, ""},
		{tar.Header{Name: long, Typeflag: tar.TypeReg}, "in a deep directory"},
		{tar.Header{Name: "empty.bin", Typeflag: tar.TypeReg}, ""},
		{tar.Header{Name: "block.bin", Typeflag: tar.TypeReg}, strings.Repeat("b", 1024)},
		{tar.Header{Name: "odd.bin", Typeflag: tar.TypeReg}, strings.Repeat("o", 777)},
	}
	for _, format := range []tar.Format{tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU} {
		t.Run(format.String(), func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			all := entries
			if format != tar.FormatUSTAR {
				all = append(all, entry{tar.Header{Name: longer, Typeflag: tar.TypeReg}, "needs a long name"})
			}
			if format == tar.FormatPAX {
				all = append(all, entry{tar.Header{Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"comment": "global"}}, ""})
				all = append(all, entry{tar.Header{Name: "pax.txt", Typeflag: tar.TypeReg, PAXRecords: map[string]string{"comment": "x"}}, "with a PAX record"})
			}
			for _, e := range all {
				h := e.hdr
				if h.Typeflag != tar.TypeXGlobalHeader {
					h.Format, h.Mode = format, 0o644
				}
				h.Size = int64(len(e.data))
				if err := tw.WriteHeader(&h); err != nil {
					t.Fatalf("%s: %v", h.Name, err)
				}
				io.WriteString(tw, e.data)
			}
			tw.Close()

			want := map[string]string{}
			var wantOrder []string
			ar := tar.NewReader(bytes.NewReader(buf.Bytes()))
			for {
				h, err := ar.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if h.Typeflag == tar.TypeReg {
					b, _ := io.ReadAll(ar)
					want[h.Name] = string(b)
					wantOrder = append(wantOrder, h.Name)
				}
			}
			tr := newTarReader(bytes.NewReader(buf.Bytes()))
			var gotOrder []string
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if h.Typeflag != typeReg {
					continue
				}
				// Leave some members unread: Next must skip them.
				if h.Name == "odd.bin" {
					gotOrder = append(gotOrder, strings.Clone(h.Name)) // Name lasts until Next
					continue
				}
				b, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				if string(b) != want[h.Name] {
					t.Errorf("%s: got %q, want %q", h.Name, b, want[h.Name])
				}
				gotOrder = append(gotOrder, strings.Clone(h.Name)) // Name lasts until Next
			}
			if strings.Join(gotOrder, "|") != strings.Join(wantOrder, "|") {
				t.Errorf("members\n got %q\nwant %q", gotOrder, wantOrder)
			}
		})
	}
}

// TestTarReaderRejects: damaged headers are errors, never members.
func TestTarReaderRejects(t *testing.T) {
	good := rawTar(t, member{name: "a.txt", data: "aaaa"}, member{name: "b.txt", data: "bb"})
	cases := []struct {
		name    string
		damage  func([]byte) []byte
		wantErr error
	}{
		{"bad checksum", func(b []byte) []byte { b[0] = 'z'; return b }, errHeader},
		{"size not octal", func(b []byte) []byte { copy(b[124:], "12x"); return b }, errHeader},
		{"cut inside a header", func(b []byte) []byte { return b[:512+512+100] }, io.ErrUnexpectedEOF},
		{"cut inside data", func(b []byte) []byte { return b[:512+2] }, io.ErrUnexpectedEOF},
		{"data after a zero block", func(b []byte) []byte {
			return append(append(b[:1024], make([]byte, 512)...), good[:512]...)
		}, errHeader},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.damage(append([]byte(nil), good...))
			tr := newTarReader(bytes.NewReader(data))
			var err error
			for err == nil {
				if _, err = tr.Next(); err == nil {
					_, err = io.Copy(io.Discard, tr)
				}
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}
