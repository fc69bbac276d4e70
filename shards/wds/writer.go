package wds

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"
)

// Writer writes samples as a WebDataset shard. The bytes depend only on
// the samples written: members are KEY.FIELD in sorted field order, with
// mode 0644, zero mtime, uid and gid, empty user and group names, and the
// PAX format (extended records appear only when a name needs them).
// A Writer is not safe for concurrent use.
type Writer struct {
	tw     *tar.Writer
	closed bool
}

// NewWriter returns a Writer that writes the shard to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{tw: tar.NewWriter(w)}
}

// WriteSample writes one sample's fields in sorted field order as KEY.FIELD
// members. The key must be non-empty, a clean relative path (no "..", no
// leading "/"), with no dot in its base name and no "__" prefix; fields must
// be non-empty, lower case and free of "/"; at least one field is needed.
// Keys are not checked for adjacency: writing the same key twice in a row
// makes readers see one sample (with a duplicate-field error if fields repeat).
func (w *Writer) WriteSample(key string, fields map[string][]byte) error {
	if w.closed {
		return fmt.Errorf("wds: write sample %q: writer is closed", key)
	}
	if err := checkKey(key); err != nil {
		return fmt.Errorf("wds: write sample %q: %w", key, err)
	}
	if len(fields) == 0 {
		return fmt.Errorf("wds: write sample %q: no fields", key)
	}
	names := make([]string, 0, len(fields))
	for field := range fields {
		if err := checkField(field); err != nil {
			return fmt.Errorf("wds: write sample %q: field %q: %w", key, field, err)
		}
		names = append(names, field)
	}
	sort.Strings(names)

	for _, field := range names {
		data := fields[field]
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     key + "." + field,
			Mode:     0o644,
			Size:     int64(len(data)),
			ModTime:  time.Unix(0, 0),
			Format:   tar.FormatPAX,
		}
		if err := w.tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("wds: write sample %q: member %q: %w", key, hdr.Name, err)
		}
		if _, err := w.tw.Write(data); err != nil {
			return fmt.Errorf("wds: write sample %q: member %q: %w", key, hdr.Name, err)
		}
	}
	return nil
}

// Close writes the end-of-archive marker. It does not close the underlying
// io.Writer. Closing twice is an error.
func (w *Writer) Close() error {
	if w.closed {
		return errors.New("wds: writer already closed")
	}
	w.closed = true
	if err := w.tw.Close(); err != nil {
		return fmt.Errorf("wds: close shard: %w", err)
	}
	return nil
}
