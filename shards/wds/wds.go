// Package wds owns lavit's view of a WebDataset shard: a POSIX tar whose
// members are grouped into samples. It provides a bounded, streaming Reader
// (the grouping rules, size limits and per-sample errors), a Writer that
// produces byte-for-byte deterministic shards, and Scan, the counting loop
// behind `shards verify` and `shards index`.
//
// Grouping rules (the WebDataset convention):
//
//   - A member "dir/000123.png" belongs to the sample with key "dir/000123"
//     (the path up to the first dot of the base name, directory included)
//     and is stored under the field "png" (everything after that first dot,
//     lower-cased). "a.b.txt" has key "a" and field "b.txt".
//   - Only adjacent members with the same key form one sample: the members
//     a.png a.txt b.png a.json give three samples a, b, a.
//   - Directories and other non-regular members (symlinks, devices, ...)
//     are skipped silently. Regular members whose base name starts with "__"
//     or ".", has no dot, or ends in a dot (no field) are skipped and
//     counted in Stats.SkippedMembers.
//
// Bad samples (an oversized member, a path that escapes the shard, a
// duplicate field, too many fields) are returned with Sample.Err set and
// keep their Index, so that positions in the data stream never shift; the
// caller masks them. Only a broken tar stream stops reading.
package wds

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// ErrCorrupt means the tar stream itself is broken (truncated, bad header,
// not a tar at all): nothing after the break can be read.
var ErrCorrupt = errors.New("corrupt shard")

// Limits bounds the memory a Reader uses. A zero or negative field means
// "use the default" (see DefaultLimits).
type Limits struct {
	MaxMemberBytes int64 // largest member read into memory; default 64 MiB
	MaxSampleBytes int64 // largest sum of a sample's members; default 256 MiB
	MaxFields      int   // most fields in one sample; default 32
}

// DefaultLimits returns the limits used for zero fields of Limits.
func DefaultLimits() Limits {
	return Limits{
		MaxMemberBytes: 64 << 20,
		MaxSampleBytes: 256 << 20,
		MaxFields:      32,
	}
}

// withDefaults fills zero or negative fields with their defaults.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxMemberBytes <= 0 {
		l.MaxMemberBytes = d.MaxMemberBytes
	}
	if l.MaxSampleBytes <= 0 {
		l.MaxSampleBytes = d.MaxSampleBytes
	}
	if l.MaxFields <= 0 {
		l.MaxFields = d.MaxFields
	}
	return l
}

// Sample is one group of adjacent members sharing a key.
type Sample struct {
	Key    string
	Fields []Field // in member order, names distinct; nil when Err is set
	Shard  string  // the shard name it came from
	Index  int     // position of the sample within the shard (0-based), counting bad samples too
	Err    error   // non-nil for a bad sample: it keeps its place (callers mask it), never a crash
}

// Field is one member of a sample: its field name (the extension) and its
// bytes. A slice of them rather than a map: samples hold a handful of
// fields, and a map per sample was a third of the time parsing small ones.
type Field struct {
	Name string
	Data []byte
}

// Field returns the bytes of the named field and whether the sample has it.
func (s Sample) Field(name string) ([]byte, bool) {
	if i := fieldIndex(s.Fields, name); i >= 0 {
		return s.Fields[i].Data, true
	}
	return nil, false
}

// fieldIndex is the index of the named field in fields, or -1.
func fieldIndex(fields []Field, name string) int {
	for i, f := range fields {
		if f.Name == name {
			return i
		}
	}
	return -1
}

// Bytes is the sum of the sample's field sizes.
func (s Sample) Bytes() int64 {
	var n int64
	for _, f := range s.Fields {
		n += int64(len(f.Data))
	}
	return n
}

// splitName splits a cleaned member path into its sample key and field
// following the WebDataset rules. ok is false for members that are not part
// of any sample: base names starting with "__" or ".", without a dot, or
// with nothing after the first dot.
func splitName(name string) (key, field string, ok bool) {
	dir, base := path.Split(name)
	if strings.HasPrefix(base, "__") {
		return "", "", false
	}
	dot := strings.IndexByte(base, '.')
	if dot <= 0 || dot == len(base)-1 {
		return "", "", false
	}
	return name[:len(dir)+dot], strings.ToLower(base[dot+1:]), true
}

// escapes reports whether a cleaned member path is absolute or climbs out
// of the shard with "..".
func escapes(cleaned string) bool {
	return path.IsAbs(cleaned) || cleaned == ".." || strings.HasPrefix(cleaned, "../")
}

// checkKey validates a key for the Writer: it must read back unchanged.
func checkKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	if path.IsAbs(key) {
		return errors.New("key starts with /")
	}
	for _, part := range strings.Split(key, "/") {
		if part == ".." {
			return errors.New(`key contains ".."`)
		}
	}
	if path.Clean(key) != key {
		return errors.New("key is not a clean path (no ./, //, or trailing /)")
	}
	base := path.Base(key)
	if strings.Contains(base, ".") {
		return errors.New("key's base name contains a dot")
	}
	if strings.HasPrefix(base, "__") {
		return errors.New(`key's base name starts with "__" (readers skip such members)`)
	}
	return nil
}

// checkField validates a field for the Writer: it must read back unchanged.
func checkField(field string) error {
	switch {
	case field == "":
		return errors.New("empty field")
	case strings.Contains(field, "/"):
		return errors.New("field contains /")
	case strings.ToLower(field) != field:
		return errors.New("field is not lower case (readers lower-case fields)")
	}
	return nil
}

// errorf builds an error naming the shard and the sample key.
func errorf(shard, key, format string, args ...any) error {
	return fmt.Errorf("wds: shard %q: sample %q: %s", shard, key, fmt.Sprintf(format, args...))
}
