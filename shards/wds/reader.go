package wds

import (
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// Reader streams the samples of one shard. It holds at most one sample in
// memory, bounded by its Limits. A Reader is not safe for concurrent use.
type Reader struct {
	tr    *tarReader
	shard string
	lim   Limits

	cur     building // the sample being assembled, when cur.active
	index   int      // Index of the next sample to start
	lastKey string   // key of the last member read whole, for ErrCorrupt messages
	skipped int      // members skipped as not part of any sample
	err     error    // sticky: io.EOF or an ErrCorrupt error once reached
	chunk   []byte   // the rest of the current arena block (see carve)
	fields  []Field  // the rest of the current block of fields (see carveFields)

	fieldNames map[string]string // interned field names (see intern)
}

// building is a sample whose members are still being read.
type building struct {
	active bool
	key    string
	index  int
	fields []Field
	bytes  int64 // sum of the member sizes seen so far, including discarded ones
	err    error // first problem found; later members are discarded
}

// NewReader returns a Reader over the tar stream r. shard names the shard
// in samples and errors. Zero fields of lim take their defaults.
func NewReader(r io.Reader, shard string, lim Limits) *Reader {
	return &Reader{tr: newTarReader(r), shard: shard, lim: lim.withDefaults()}
}

// NewBytesReader returns a Reader over a shard held whole in memory. The
// samples' fields are subslices of data, not copies: data must not be
// modified while they are in use.
func NewBytesReader(data []byte, shard string, lim Limits) *Reader {
	return &Reader{tr: newMemTarReader(data), shard: shard, lim: lim.withDefaults()}
}

// NewInPlaceReader returns a Reader that reads the shard from r into buf
// as it parses, so each header is parsed while its bytes are fresh in the
// CPU's cache; the samples' fields are subslices of buf, as with
// NewBytesReader. The shard must fit in buf: bytes of r past len(buf) are
// not read (a caller that knows the shard's size checks the rest).
func NewInPlaceReader(r io.Reader, buf []byte, shard string, lim Limits) *Reader {
	return &Reader{tr: newInPlaceTarReader(r, buf), shard: shard, lim: lim.withDefaults()}
}

// SkippedMembers returns how many members so far were skipped as not part
// of any sample (names starting with "__" or ".", names without a field).
func (r *Reader) SkippedMembers() int { return r.skipped }

// Next returns the next sample. A problem confined to one sample (oversized
// member, path escaping with "../" or absolute, duplicate field, too many
// fields, sample too large) returns that sample with Err set and nil Fields,
// and reading continues. A broken stream (truncated tar, bad header) returns
// an error wrapping ErrCorrupt naming the shard and the last good key (the
// key of the last member read whole); the sample being assembled at the
// break is lost, and every later call returns the same error. Next returns
// io.EOF at the clean end.
//
// An empty shard (0 bytes, or a tar holding only the end-of-archive
// marker) has no samples: the first call returns io.EOF. A tar cut exactly
// at a member boundary also looks like a clean end; the manifest's size and
// hash are what catch that.
func (r *Reader) Next() (Sample, error) {
	for {
		if r.err != nil {
			return Sample{}, r.err
		}
		hdr, err := r.tr.Next()
		if err == io.EOF {
			r.err = io.EOF
			if r.cur.active {
				return r.finish(), nil
			}
			return Sample{}, io.EOF
		}
		if err != nil {
			return Sample{}, r.fail(err)
		}
		if hdr.Typeflag != typeReg {
			// Directories, links, devices...: not data. The tar reader
			// skips their contents (if any) on the next call.
			continue
		}
		name := cleanPath(hdr.Name)
		key, field, ok := splitName(name)
		if !ok {
			r.skipped++
			if err := r.discard(); err != nil {
				return Sample{}, r.fail(err)
			}
			continue
		}

		// A new key completes the previous sample. Read the new member
		// now (the tar reader is positioned on it), then return the
		// completed one.
		var done *Sample
		if r.cur.active && r.cur.key != key {
			s := r.finish()
			done = &s
		}
		if !r.cur.active {
			// hdr.Name is only valid until the next member: keep copies.
			r.cur = building{active: true, key: strings.Clone(key), index: r.index, fields: r.carveFields()}
			r.index++
		}
		if err := r.addMember(hdr, name, r.intern(field)); err != nil {
			err = r.fail(err)
			if done != nil {
				return *done, nil // the error is sticky: the next call returns it
			}
			return Sample{}, err
		}
		r.lastKey = r.cur.key
		if done != nil {
			return *done, nil
		}
	}
}

// cleanPath is path.Clean, with a fast path for the usual name that is
// clean already (path.Clean was a tenth of the time per member).
func cleanPath(p string) string {
	if isClean(p) {
		return p
	}
	return path.Clean(p)
}

// isClean reports that path.Clean(p) == p for an ordinary name: not
// empty, no trailing slash, no empty, "." or ".." element. It may say
// false for a name Clean leaves alone ("/", "."); cleanPath then cleans it.
func isClean(p string) bool {
	if p == "" || p[len(p)-1] == '/' {
		return false
	}
	start := 0
	if p[0] == '/' {
		start = 1
	}
	for start <= len(p) {
		end := strings.IndexByte(p[start:], '/')
		if end < 0 {
			end = len(p) - start
		}
		if elem := p[start : start+end]; elem == "" || elem == "." || elem == ".." {
			return false
		}
		start += end + 1
	}
	return true
}

// intern returns a lasting copy of a field name, shared by every sample
// that has the field.
func (r *Reader) intern(field string) string {
	if f, ok := r.fieldNames[field]; ok {
		return f
	}
	f := strings.Clone(field)
	if len(r.fieldNames) < 64 { // a hostile shard cannot grow it without bound
		if r.fieldNames == nil {
			r.fieldNames = map[string]string{}
		}
		r.fieldNames[f] = f
	}
	return f
}

// addMember reads the current member into r.cur, or records why the sample
// is bad and discards the member's bytes. It returns an error only when the
// stream itself is broken.
func (r *Reader) addMember(hdr tarHeader, name, field string) error {
	b := &r.cur
	b.bytes += hdr.Size
	if b.err == nil {
		switch {
		case escapes(name):
			b.err = errorf(r.shard, b.key, "member %q: path escapes the shard", hdr.Name)
		case hdr.Size > r.lim.MaxMemberBytes:
			b.err = errorf(r.shard, b.key, "member %q: %d bytes exceeds the %d-byte member limit", hdr.Name, hdr.Size, r.lim.MaxMemberBytes)
		case b.bytes > r.lim.MaxSampleBytes:
			b.err = errorf(r.shard, b.key, "member %q: sample reaches %d bytes, over the %d-byte sample limit", hdr.Name, b.bytes, r.lim.MaxSampleBytes)
		case fieldIndex(b.fields, field) >= 0:
			// A duplicate field makes the whole sample bad rather than
			// silently keeping the first or the last copy.
			b.err = errorf(r.shard, b.key, "member %q: duplicate field %q", hdr.Name, field)
		case len(b.fields) >= r.lim.MaxFields:
			b.err = errorf(r.shard, b.key, "member %q: more than %d fields", hdr.Name, r.lim.MaxFields)
		}
	}
	if b.err != nil {
		b.fields = nil // a bad sample's bytes are released, never handed out
		return r.discard()
	}

	// The header's size was checked against MaxMemberBytes above, and the
	// tar reader never yields more than it, so one exact allocation holds
	// the member.
	var data []byte
	var err error
	if r.tr.inPlace() {
		data, err = r.tr.slice(hdr.Size)
	} else {
		data = r.carve(hdr.Size)
		_, err = io.ReadFull(r.tr, data)
	}
	if err != nil {
		return err
	}
	if data == nil {
		data = []byte{} // an empty member is still a present field
	}
	b.fields = append(b.fields, Field{Name: field, Data: data})
	return nil
}

// discard skips the rest of the current member (in place: without
// copying it anywhere).
func (r *Reader) discard() error {
	if r.tr.inPlace() {
		_, err := r.tr.slice(r.tr.remain)
		return err
	}
	_, err := io.Copy(io.Discard, r.tr)
	return err
}

// finish turns r.cur into a Sample and clears it.
func (r *Reader) finish() Sample {
	b := r.cur
	r.cur = building{}
	s := Sample{Key: b.key, Shard: r.shard, Index: b.index, Err: b.err}
	if b.err == nil {
		s.Fields = b.fields
	}
	return s
}

// fail records a broken stream as the sticky error and returns it.
func (r *Reader) fail(cause error) error {
	if errors.Is(cause, io.EOF) {
		cause = io.ErrUnexpectedEOF // an EOF inside a member is a truncation
	}
	last := r.lastKey
	if last == "" {
		last = "(none)"
	}
	r.cur = building{}
	r.err = fmt.Errorf("wds: shard %q: %w after key %q: %w", r.shard, ErrCorrupt, last, cause)
	return r.err
}

// fieldsPerSample is the room carveFields gives a sample: more fields
// than that grow it by an ordinary append.
const fieldsPerSample = 4

// carveFields returns an empty field list with room for fieldsPerSample,
// carved from a block shared by many samples (one allocation per 256
// samples instead of one per sample).
func (r *Reader) carveFields() []Field {
	if len(r.fields) < fieldsPerSample {
		r.fields = make([]Field, 256*fieldsPerSample)
	}
	f := r.fields[:0:fieldsPerSample]
	r.fields = r.fields[fieldsPerSample:]
	return f
}

// chunkSize is the arena block small members are carved from: a shard of
// thousands of small members then costs a few large allocations instead of
// one per member (allocation and GC dominated reading small samples).
const chunkSize = 1 << 20

// carve returns n bytes for a member. Members up to a quarter chunk share
// arena blocks; a full slice expression keeps appends from spilling into a
// neighbour.
func (r *Reader) carve(n int64) []byte {
	if n > chunkSize/4 {
		return make([]byte, n)
	}
	if int64(len(r.chunk)) < n {
		r.chunk = make([]byte, chunkSize)
	}
	b := r.chunk[:n:n]
	r.chunk = r.chunk[n:]
	return b
}
