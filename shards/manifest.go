package shards

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"path"
	"strings"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/shards/decode"
	"github.com/lavit-org/lavit/shards/stream"
	"github.com/lavit-org/lavit/shards/wds"
)

// ManifestName is the manifest's object name next to the shards.
const ManifestName = "manifest.json"

// manifestVersion versions the manifest format.
const manifestVersion = 1

// MaxManifestBytes bounds a manifest read from a store.
const MaxManifestBytes = 64 << 20

// Bounds on a manifest's entries (ParseManifest checks them): a manifest
// comes from a store anyone with write access can change, and its numbers
// size the loader's buffers and the stream's positions.
const (
	// MaxShardBytes bounds one shard (1 TiB).
	MaxShardBytes = 1 << 40
	// MaxSamples bounds a data set's total sample count: an epoch's
	// positions, and epochs × samples for a run of up to 2^20 epochs,
	// stay far inside int64.
	MaxSamples = 1 << 40
	// MaxShardNameLen bounds a shard's object name.
	MaxShardNameLen = 1024
	// minSampleBytes is the least a sample takes in a tar: one 512-byte
	// member header. A shard of n bytes holds at most n/512 samples.
	minSampleBytes = 512
)

// ShardEntry is one shard of a data set.
type ShardEntry struct {
	Name    string `json:"name"`
	Samples int    `json:"samples"`
	Bad     int    `json:"bad"`
	Bytes   int64  `json:"bytes"`
	SHA256  string `json:"sha256"`
	// CRC32C is a fast checksum of the same bytes: readers verify every
	// shard they stream with it (hardware CRC, many GB/s); `shards verify`
	// checks the sha256.
	CRC32C string `json:"crc32c"`
}

// Manifest freezes a data set: the ordered shard list with sample counts,
// sizes and content hashes.
type Manifest struct {
	Version int          `json:"version"`
	Shards  []ShardEntry `json:"shards"`
}

// Samples is the total sample count.
func (m *Manifest) Samples() int64 {
	var n int64
	for _, s := range m.Shards {
		n += int64(s.Samples)
	}
	return n
}

// Hash is the sha256 of the manifest's canonical JSON: how runs and the
// coordinator's state refer to a data set.
func (m *Manifest) Hash() string {
	b, _ := json.Marshal(m)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Stream is the manifest's deterministic sample stream.
func (m *Manifest) Stream(seed uint64, blockShards int) (*stream.Stream, error) {
	shards := make([]stream.Shard, len(m.Shards))
	for i, s := range m.Shards {
		shards[i] = stream.Shard{Name: s.Name, Samples: s.Samples}
	}
	return stream.New(shards, seed, blockShards)
}

// ShardNames lists the .tar objects of a source in name order.
func ShardNames(ctx context.Context, src objstore.Source) ([]string, error) {
	objs, err := src.List(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, o := range objs {
		if strings.HasSuffix(o.Name, ".tar") {
			names = append(names, o.Name)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s: no .tar shards", src.URL())
	}
	return names, nil
}

// IndexShard reads one shard once: sample counts, size, sha256.
func IndexShard(ctx context.Context, src objstore.Source, name string, lim wds.Limits) (ShardEntry, error) {
	rc, err := src.Open(ctx, name, 0, -1)
	if err != nil {
		return ShardEntry{}, fmt.Errorf("index %s: %w", name, err)
	}
	defer rc.Close()
	h, c := sha256.New(), crc32.New(castagnoli)
	cr := &countingReader{r: io.TeeReader(bufio.NewReaderSize(rc, readBuffer), io.MultiWriter(h, c))}
	st, err := wds.Scan(cr, name, lim, nil)
	if err != nil {
		return ShardEntry{}, fmt.Errorf("index %s: %w", name, err)
	}
	io.Copy(io.Discard, cr) // hash any trailing bytes (tar padding)
	return ShardEntry{Name: name, Samples: st.Samples + st.BadSamples, Bad: st.BadSamples, Bytes: cr.n,
		SHA256: hex.EncodeToString(h.Sum(nil)), CRC32C: hex.EncodeToString(c.Sum(nil))}, nil
}

// Index scans the shards of a source (all .tar objects, or the given
// names) and builds the manifest. progress, if set, is called after each shard.
func Index(ctx context.Context, src objstore.Source, names []string, lim wds.Limits, progress func(done, total int, e ShardEntry)) (*Manifest, error) {
	var err error
	if len(names) == 0 {
		if names, err = ShardNames(ctx, src); err != nil {
			return nil, err
		}
	}
	m := &Manifest{Version: manifestVersion}
	for i, name := range names {
		e, err := IndexShard(ctx, src, name, lim)
		if err != nil {
			return nil, err
		}
		m.Shards = append(m.Shards, e)
		if progress != nil {
			progress(i+1, len(names), e)
		}
	}
	return m, nil
}

// WriteManifest stores the manifest next to the shards.
func WriteManifest(ctx context.Context, src objstore.Source, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	return src.Put(ctx, ManifestName, bytes.NewReader(b), int64(len(b)))
}

// LoadManifest reads and checks the manifest of a source.
func LoadManifest(ctx context.Context, src objstore.Source) (*Manifest, error) {
	rc, err := src.Open(ctx, ManifestName, 0, -1)
	if err != nil {
		if errors.Is(err, objstore.ErrNotFound) {
			return nil, fmt.Errorf("%s has no %s: run `lavit-coord shards index %s` first: %w", src.URL(), ManifestName, src.URL(), err)
		}
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, MaxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ManifestName, err)
	}
	if len(b) > MaxManifestBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", ManifestName, MaxManifestBytes)
	}
	return ParseManifest(b)
}

// ParseManifest decodes a manifest strictly (unknown fields and trailing
// data are errors) and checks it (see Manifest.Validate).
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestBytes {
		return nil, fmt.Errorf("%s is %d bytes; the limit is %d", ManifestName, len(b), MaxManifestBytes)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("parse %s: %w", ManifestName, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("parse %s: trailing data after the JSON object", ManifestName)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate checks a manifest: this format version, at least one shard,
// and every entry sane: a plain relative object name (no "..", no control
// characters), listed once; counts and sizes within bounds (0 ≤ bad ≤
// samples, samples ≤ bytes/512, bytes ≤ MaxShardBytes, the total ≤
// MaxSamples); a sha256 and, when present, a CRC-32C in lower-case hex.
// The first problem is returned, naming the shard.
func (m *Manifest) Validate() error {
	if m.Version != manifestVersion {
		return fmt.Errorf("%s: format version %d, want %d", ManifestName, m.Version, manifestVersion)
	}
	if len(m.Shards) == 0 {
		return fmt.Errorf("%s lists no shards", ManifestName)
	}
	seen := make(map[string]int, len(m.Shards))
	var total int64
	for i, e := range m.Shards {
		if err := checkShardName(e.Name); err != nil {
			return fmt.Errorf("%s: shard %d: %w", ManifestName, i, err)
		}
		if j, dup := seen[e.Name]; dup {
			return fmt.Errorf("%s: shard %d: %q is listed twice (first as shard %d)", ManifestName, i, e.Name, j)
		}
		seen[e.Name] = i
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%s: shard %s: %s", ManifestName, e.Name, fmt.Sprintf(format, args...))
		}
		switch {
		case e.Bytes < 0 || e.Bytes > MaxShardBytes:
			return bad("bytes %d is outside [0, %d]", e.Bytes, int64(MaxShardBytes))
		case e.Samples < 0 || int64(e.Samples) > e.Bytes/minSampleBytes:
			return bad("%d samples cannot fit in %d bytes (each takes at least %d)", e.Samples, e.Bytes, minSampleBytes)
		case e.Bad < 0 || e.Bad > e.Samples:
			return bad("bad %d is outside [0, samples %d]", e.Bad, e.Samples)
		case !isHex(e.SHA256, sha256.Size*2):
			return bad("sha256 %q is not %d lower-case hex digits", e.SHA256, sha256.Size*2)
		case e.CRC32C != "" && !isHex(e.CRC32C, crc32.Size*2):
			return bad("crc32c %q is not %d lower-case hex digits", e.CRC32C, crc32.Size*2)
		}
		if total += int64(e.Samples); total > MaxSamples {
			return fmt.Errorf("%s: more than %d samples", ManifestName, int64(MaxSamples))
		}
	}
	return nil
}

// checkShardName accepts a plain relative object name: not empty, at most
// MaxShardNameLen bytes, no control characters or backslashes, not
// absolute, clean, and never climbing out with "..".
func checkShardName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > MaxShardNameLen:
		return fmt.Errorf("name is %d bytes; the limit is %d", len(name), MaxShardNameLen)
	case strings.ContainsFunc(name, func(r rune) bool { return r < ' ' || r == 0x7f || r == '\\' }):
		return fmt.Errorf("name %q has control characters or a backslash", name)
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("name %q is absolute", name)
	case path.Clean(name) != name:
		return fmt.Errorf("name %q is not clean", name)
	case name == ".." || strings.HasPrefix(name, "../"):
		return fmt.Errorf("name %q escapes the data set", name)
	}
	return nil
}

// isHex reports whether s is n lower-case hex digits.
func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ErrShardChanged means a shard's bytes no longer match the manifest.
var ErrShardChanged = errors.New("shard changed since it was indexed")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// VerifiedReader checks a shard while it streams and reports a mismatch
// with the manifest at the end (or as soon as more bytes arrive than were
// indexed): a changed shard is refused, never silently used.
type VerifiedReader struct {
	r      io.Reader
	entry  ShardEntry
	h      hash.Hash
	want   string
	method string
	n      int64
}

// NewVerifiedReader verifies with the manifest's CRC-32C (fast enough for
// every read) when it has one, else with the sha256.
func NewVerifiedReader(r io.Reader, e ShardEntry) *VerifiedReader {
	if e.CRC32C != "" {
		return &VerifiedReader{r: r, entry: e, h: crc32.New(castagnoli), want: e.CRC32C, method: "crc32c"}
	}
	return NewStrictVerifiedReader(r, e)
}

// NewStrictVerifiedReader always verifies the sha256 (`shards verify`).
func NewStrictVerifiedReader(r io.Reader, e ShardEntry) *VerifiedReader {
	return &VerifiedReader{r: r, entry: e, h: sha256.New(), want: e.SHA256, method: "sha256"}
}

func (v *VerifiedReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n > v.entry.Bytes {
		return n, fmt.Errorf("%s: %w (more than the %d bytes indexed)", v.entry.Name, ErrShardChanged, v.entry.Bytes)
	}
	if err == io.EOF {
		if v.n != v.entry.Bytes {
			return n, fmt.Errorf("%s: %w (%d bytes, indexed %d)", v.entry.Name, ErrShardChanged, v.n, v.entry.Bytes)
		}
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want {
			return n, fmt.Errorf("%s: %w (%s %s, indexed %s)", v.entry.Name, ErrShardChanged, v.method, short(got), short(v.want))
		}
	}
	return n, err
}

// verifyError names the shard in an error from reading it through its
// VerifiedReader: the verifier's own error already does, and a source
// that ends unexpectedly means the shard shrank.
func verifyError(e ShardEntry, err error) error {
	switch {
	case errors.Is(err, ErrShardChanged):
		return err
	case err == io.ErrUnexpectedEOF:
		return fmt.Errorf("%s: %w (shorter than the %d bytes indexed)", e.Name, ErrShardChanged, e.Bytes)
	}
	return fmt.Errorf("%s: %w", e.Name, err)
}

func short(s string) string { return s[:min(len(s), 12)] }

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// imageField is the sample's image field and its bytes ("" if none).
func imageField(s wds.Sample) (string, []byte) {
	for _, f := range decode.ImageFields {
		if data, ok := s.Field(f); ok {
			return f, data
		}
	}
	return "", nil
}

// CheckSampleFields checks a sample has what training needs, without
// decoding: no reader error and a caption (txt); an image field (png, jpg,
// jpeg or webp) is optional (a text-only sample, which stage 2 trains on).
func CheckSampleFields(s wds.Sample) error {
	if s.Err != nil {
		return s.Err
	}
	if _, ok := s.Field("txt"); !ok {
		if field, _ := imageField(s); field == "" {
			return fmt.Errorf("sample %s in %s: missing field: no txt caption and no png, jpg, jpeg or webp image", s.Key, s.Shard)
		}
		return fmt.Errorf("sample %s in %s: missing field: no txt caption", s.Key, s.Shard)
	}
	return nil
}

// CheckSample validates a sample the way training will use it: the fields
// are there, the image (if any) decodes and the caption is UTF-8.
func CheckSample(s wds.Sample) error {
	_, _, err := decodeSample(s, decode.Tiny(8))
	return err
}

// decodeSample turns a sample into model inputs: its image preprocessed
// by p (nil for a text-only sample) and its caption, or why it is bad
// (naming the sample and its shard).
func decodeSample(s wds.Sample, p decode.Preprocess) ([]float32, string, error) {
	if err := CheckSampleFields(s); err != nil {
		return nil, "", err
	}
	txt, _ := s.Field("txt")
	caption, err := decode.Caption(txt, MaxCaptionBytes)
	if err != nil {
		return nil, "", fmt.Errorf("sample %s in %s: %w", s.Key, s.Shard, err)
	}
	field, data := imageField(s)
	if field == "" {
		return nil, caption, nil
	}
	img, err := decode.ImageWith(data, field, p)
	if err != nil {
		return nil, "", fmt.Errorf("sample %s in %s: %w", s.Key, s.Shard, err)
	}
	return img, caption, nil
}

// MaxCaptionBytes bounds a caption.
const MaxCaptionBytes = 16 << 10
