// Package checkpoint stores a run's training state as W parts (one per
// rank, uploaded in parallel and in the background) plus a manifest written
// last, create-only, by the coordinator leader, which then commits it
// through raft. Only a committed checkpoint exists for anyone; restore
// fetches every part, verifies each checksum and the whole, and works at
// any world size. Pure Go: lavit-coord lists, verifies and exports with it.
package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/lavit-org/lavit/internal/objstore"
)

// Errors a restore can return: the checkpoint is unusable and the caller
// falls back to an older one.
var (
	ErrMissing = errors.New("checkpoint part missing")
	ErrCorrupt = errors.New("checkpoint corrupt")
	ErrExists  = errors.New("checkpoint manifest already exists")
	// ErrNotCommitted: the manifest in the store is not the one raft
	// committed for that step (an older checkpoint copied over it, an
	// edited manifest). Such a checkpoint is never restored, verified or
	// exported.
	ErrNotCommitted = errors.New("checkpoint manifest is not the committed one")
)

// ManifestName is the manifest's object name inside a checkpoint directory.
const ManifestName = "manifest.json"

// Manifest describes one checkpoint. The data cursor is Step: the global
// step training continues from (the sample stream is a function of it).
type Manifest struct {
	Format      int         `json:"format"`
	Run         string      `json:"run"`
	Generation  uint64      `json:"generation"`
	Step        int64       `json:"step"`
	World       int         `json:"world"`
	StateBytes  int64       `json:"state_bytes"`
	StateSHA256 string      `json:"state_sha256"`
	Parts       []Part      `json:"parts"`
	ConfigHash  string      `json:"config_hash"`  // sha256 of the model config JSON
	SpecHash    string      `json:"spec_hash"`    // sha256 of the run spec JSON
	CodeVersion string      `json:"code_version"` // the worker build that wrote it
	Params      []ParamInfo `json:"params"`       // where each weight sits in the state's "params" tensor
	Created     time.Time   `json:"created"`
}

// FormatVersion is the manifest format this build writes; it reads
// every format from 1. Format 1: StateSHA256 is the sha256 of the whole
// state (every rank held it). Format 2: each rank writes only its part
// (a blocked state, StateFormatBlocked), so no one hashes the whole:
// StateSHA256 is PartsDigest of the parts, each part's own sha256 being
// checked as before.
const FormatVersion = 2

// PartsDigest is a format-2 manifest's StateSHA256: the sha256 of the
// parts' sha256s (hex, in part order, each followed by a newline).
func PartsDigest(parts []Part) string {
	h := sha256.New()
	for _, p := range parts {
		io.WriteString(h, p.SHA256+"\n")
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Part is one rank's slice [Offset, Offset+Bytes) of the state blob.
type Part struct {
	Name   string `json:"name"`
	Offset int64  `json:"offset"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// ParamInfo is one weight: its name, shape and place in the flat params.
type ParamInfo struct {
	Name   string  `json:"name"`
	Shape  []int64 `json:"shape"`
	Offset int64   `json:"offset"`
	Numel  int64   `json:"numel"`
}

// Dir is the URL of a run's checkpoint at step under base (the run's
// checkpoint.url).
func Dir(base, run string, step int64) string {
	return fmt.Sprintf("%s/%s/step-%08d", strings.TrimSuffix(base, "/"), run, step)
}

// PartName names rank's part of a world-size checkpoint.
func PartName(rank, world int) string { return fmt.Sprintf("part-%04d-of-%04d", rank, world) }

// Slice is rank's share [lo, hi) of n bytes over world ranks.
func Slice(n int64, world, rank int) (lo, hi int64) {
	return n * int64(rank) / int64(world), n * int64(rank+1) / int64(world)
}

// SHA256 is the hex sha256 of b.
func SHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// WritePart uploads rank's slice of state into dir and returns its entry.
func WritePart(ctx context.Context, dir string, state []byte, rank, world int) (Part, error) {
	lo, hi := Slice(int64(len(state)), world, rank)
	return WritePartAt(ctx, dir, state[lo:hi], lo, rank, world)
}

// WritePartAt uploads rank's part, the bytes at offset of the state (a
// blocked state's part: BlockedLayout), into dir and returns its entry.
func WritePartAt(ctx context.Context, dir string, data []byte, offset int64, rank, world int) (Part, error) {
	p := Part{Name: PartName(rank, world), Offset: offset, Bytes: int64(len(data))}
	dst, err := objstore.OpenForWrite(ctx, dir)
	if err != nil {
		return p, err
	}
	// The checksum is computed while the bytes upload (both read the same
	// memory), not before.
	sum := make(chan string, 1)
	go func() { sum <- SHA256(data) }()
	err = dst.Put(ctx, p.Name, bytes.NewReader(data), int64(len(data)))
	p.SHA256 = <-sum
	if err != nil {
		return p, fmt.Errorf("checkpoint part %s/%s: %w", dir, p.Name, err)
	}
	return p, nil
}

// WriteManifest writes m into dir, refusing to replace an existing one
// (ErrExists): a manifest is written once, after every part is durable.
func WriteManifest(ctx context.Context, dir string, m *Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	dst, err := objstore.OpenForWrite(ctx, dir)
	if err != nil {
		return err
	}
	if _, err := dst.Stat(ctx, ManifestName); err == nil {
		return fmt.Errorf("%s/%s: %w", dir, ManifestName, ErrExists)
	} else if !errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("%s/%s: %w", dir, ManifestName, err)
	}
	b, err := m.Encode()
	if err != nil {
		return err
	}
	return dst.Put(ctx, ManifestName, bytes.NewReader(b), int64(len(b)))
}

// Encode is the manifest object's bytes as WriteManifest writes them.
func (m *Manifest) Encode() ([]byte, error) {
	return json.MarshalIndent(m, "", "  ")
}

// ManifestSHA256 is the sha256 of the manifest object WriteManifest
// writes for m: what the leader commits through raft, and what
// LoadCommitted checks the manifest read back against.
func ManifestSHA256(m *Manifest) (string, error) {
	b, err := m.Encode()
	if err != nil {
		return "", err
	}
	return SHA256(b), nil
}

// Limits on what a manifest may describe: far above any real checkpoint
// (the 7B state is 82 GB, its manifest tens of kilobytes), they only keep
// a damaged or hostile manifest from sizing an allocation.
const (
	MaxStateBytes    = 1 << 40 // a state's size (1 TiB)
	MaxManifestBytes = 64 << 20
)

// Validate checks a manifest read from outside before anything trusts
// it: the sizes are non-negative and within MaxStateBytes, the parts tile
// the state exactly, and each parameter of the table lies inside the
// params the state can hold, its shape matching its numel.
func (m *Manifest) Validate() error {
	if m.Format < 1 || m.Format > FormatVersion {
		return fmt.Errorf("checkpoint manifest format %d, this build reads 1 to %d", m.Format, FormatVersion)
	}
	switch {
	case m.StateBytes < 0:
		return fmt.Errorf("checkpoint manifest: state_bytes %d is negative", m.StateBytes)
	case m.StateBytes > MaxStateBytes:
		return fmt.Errorf("checkpoint manifest: state_bytes %d exceeds the limit of %d", m.StateBytes, int64(MaxStateBytes))
	case m.Step < 0:
		return fmt.Errorf("checkpoint manifest: step %d is negative", m.Step)
	}
	if m.World < 1 || len(m.Parts) != m.World {
		return fmt.Errorf("checkpoint manifest: %d parts for world %d", len(m.Parts), m.World)
	}
	var next int64
	for i, p := range m.Parts {
		if p.Bytes < 0 {
			return fmt.Errorf("checkpoint manifest: part %d: bytes %d is negative", i, p.Bytes)
		}
		if p.Offset != next || p.Name != PartName(i, m.World) || len(p.SHA256) != 64 {
			return fmt.Errorf("checkpoint manifest: part %d (%s at %d, %d bytes) does not follow part %d", i, p.Name, p.Offset, p.Bytes, i-1)
		}
		if p.Bytes > m.StateBytes-next {
			return fmt.Errorf("checkpoint manifest: part %d: %d bytes at %d run past state_bytes %d", i, p.Bytes, p.Offset, m.StateBytes)
		}
		next += p.Bytes
	}
	if next != m.StateBytes {
		return fmt.Errorf("checkpoint manifest: parts hold %d bytes, the state %d", next, m.StateBytes)
	}
	// The params tensor is float32 inside the state: at most a quarter
	// of its bytes.
	for _, p := range m.Params {
		if err := p.check(m.StateBytes / 4); err != nil {
			return fmt.Errorf("checkpoint manifest: %w", err)
		}
	}
	return nil
}

// check checks that the parameter's values [Offset, Offset+Numel) lie
// inside n flat values and that its shape holds Numel values.
func (p ParamInfo) check(n int64) error {
	switch {
	case p.Numel < 0:
		return fmt.Errorf("parameter %q: numel %d is negative", p.Name, p.Numel)
	case p.Offset < 0:
		return fmt.Errorf("parameter %q: offset %d is negative", p.Name, p.Offset)
	case p.Offset > n || p.Numel > n-p.Offset:
		return fmt.Errorf("parameter %q: [%d, +%d) lies outside the %d params", p.Name, p.Offset, p.Numel, n)
	}
	count := int64(1)
	for _, d := range p.Shape {
		if d < 0 {
			return fmt.Errorf("parameter %q: shape %v has a negative dimension", p.Name, p.Shape)
		}
		if d != 0 && count > math.MaxInt64/d {
			return fmt.Errorf("parameter %q: shape %v overflows int64", p.Name, p.Shape)
		}
		count *= d
	}
	if count != p.Numel {
		return fmt.Errorf("parameter %q: shape %v holds %d values, numel is %d", p.Name, p.Shape, count, p.Numel)
	}
	return nil
}

// ReadManifest reads and validates the manifest in dir.
func ReadManifest(ctx context.Context, dir string) (*Manifest, error) {
	m, _, err := ReadManifestSHA256(ctx, dir)
	return m, err
}

// ReadManifestSHA256 reads and validates the manifest in dir and returns
// it with the sha256 of the object's bytes.
func ReadManifestSHA256(ctx context.Context, dir string) (*Manifest, string, error) {
	b, err := readManifestBytes(ctx, dir)
	if err != nil {
		return nil, "", err
	}
	m, err := decodeManifest(dir, b)
	if err != nil {
		return nil, "", err
	}
	return m, SHA256(b), nil
}

// readManifestBytes reads the manifest object in dir (at most
// MaxManifestBytes of it).
func readManifestBytes(ctx context.Context, dir string) ([]byte, error) {
	src, err := objstore.Open(ctx, dir)
	if err != nil {
		return nil, err
	}
	b, err := readManifestObject(ctx, src)
	if err != nil {
		if errors.Is(err, objstore.ErrNotFound) {
			return nil, fmt.Errorf("%s/%s: %w", dir, ManifestName, ErrMissing)
		}
		if errors.Is(err, ErrCorrupt) {
			return nil, fmt.Errorf("%s/%s: %w", dir, ManifestName, err)
		}
		return nil, err
	}
	return b, nil
}

// decodeManifest parses and validates the manifest bytes b read from dir.
func decodeManifest(dir string, b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s/%s: %w: %v", dir, ManifestName, ErrCorrupt, err)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", dir, ErrCorrupt, err)
	}
	return &m, nil
}

// readManifestObject reads the manifest object, refusing one over
// MaxManifestBytes (ErrCorrupt) without reading the rest of it.
func readManifestObject(ctx context.Context, src objstore.Source) ([]byte, error) {
	rc, err := src.Open(ctx, ManifestName, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, MaxManifestBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxManifestBytes {
		return nil, fmt.Errorf("%w: the manifest exceeds the limit of %d bytes", ErrCorrupt, MaxManifestBytes)
	}
	return b, nil
}

// Fetch downloads every part of the checkpoint in dir, verifies each
// part's sha256 and the whole state's, and returns the state. A missing
// part is ErrMissing, a wrong one ErrCorrupt; both name the part. The
// manifest is validated first, and every part's size in the store is
// checked against it before the state's buffer is allocated, so a
// manifest's sizes never allocate more than the parts hold.
func Fetch(ctx context.Context, dir string, m *Manifest) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", dir, ErrCorrupt, err)
	}
	src, err := objstore.Open(ctx, dir)
	if err != nil {
		return nil, err
	}
	for _, p := range m.Parts {
		info, err := src.Stat(ctx, p.Name)
		if err != nil {
			if errors.Is(err, objstore.ErrNotFound) {
				return nil, fmt.Errorf("%s/%s: %w", dir, p.Name, ErrMissing)
			}
			return nil, fmt.Errorf("%s/%s: %w", dir, p.Name, err)
		}
		if info.Size != p.Bytes {
			return nil, fmt.Errorf("%s/%s: %w: %d bytes, the manifest says %d", dir, p.Name, ErrCorrupt, info.Size, p.Bytes)
		}
	}
	// Every part is read straight into state's spare capacity.
	state := make([]byte, 0, m.StateBytes)
	for _, p := range m.Parts {
		start := len(state)
		state, err = appendObject(ctx, src, p.Name, state, p.Bytes+1)
		b := state[start:]
		if err != nil {
			if errors.Is(err, objstore.ErrNotFound) {
				return nil, fmt.Errorf("%s/%s: %w", dir, p.Name, ErrMissing)
			}
			return nil, fmt.Errorf("%s/%s: %w", dir, p.Name, err)
		}
		if int64(len(b)) != p.Bytes {
			return nil, fmt.Errorf("%s/%s: %w: %d bytes, the manifest says %d", dir, p.Name, ErrCorrupt, len(b), p.Bytes)
		}
		if sum := SHA256(b); sum != p.SHA256 {
			return nil, fmt.Errorf("%s/%s: %w: sha256 %.12s, the manifest says %.12s", dir, p.Name, ErrCorrupt, sum, p.SHA256)
		}
	}
	if err := m.checkStateHash(state); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", dir, ErrCorrupt, err)
	}
	return state, nil
}

// Load reads and validates the manifest in dir (ReadManifest), then
// fetches and verifies the state it describes (Fetch), with their errors.
func Load(ctx context.Context, dir string) (*Manifest, []byte, error) {
	m, err := ReadManifest(ctx, dir)
	return fetchRead(ctx, dir, m, err)
}

// fetchRead fetches the state of manifest m, read from dir with err.
func fetchRead(ctx context.Context, dir string, m *Manifest, err error) (*Manifest, []byte, error) {
	if err != nil {
		return nil, nil, err
	}
	state, err := Fetch(ctx, dir, m)
	if err != nil {
		return nil, nil, err
	}
	return m, state, nil
}

// Committed is what raft recorded when it committed a checkpoint: a
// manifest read back from the store must match it before anything uses
// the checkpoint, since the store is writable by others and raft is not.
type Committed struct {
	Step int64
	// ManifestSHA256 is the sha256 of the manifest object. Empty for a
	// checkpoint committed before raft recorded it: then the manifest's
	// step and state hash are checked against Step and StateSHA256.
	ManifestSHA256 string
	// StateSHA256 is the manifest's state_sha256 as committed ("": not
	// checked).
	StateSHA256 string
}

// LoadCommitted is Load for a checkpoint raft committed: the manifest in
// dir must be the committed one (its sha256 equal to
// want.ManifestSHA256, checked before the manifest is decoded; and its
// step and state hash equal to want's), or the error wraps
// ErrNotCommitted and names the step and both digests. The parts and the
// state are then verified against the manifest as Load does.
func LoadCommitted(ctx context.Context, dir string, want Committed) (*Manifest, []byte, error) {
	m, err := ReadCommittedManifest(ctx, dir, want)
	return fetchRead(ctx, dir, m, err)
}

// ReadCommittedManifest reads the manifest in dir and checks it against
// what raft committed (see LoadCommitted).
func ReadCommittedManifest(ctx context.Context, dir string, want Committed) (*Manifest, error) {
	b, err := readManifestBytes(ctx, dir)
	if err != nil {
		return nil, err
	}
	if want.ManifestSHA256 != "" {
		if got := SHA256(b); got != want.ManifestSHA256 {
			return nil, fmt.Errorf("checkpoint at step %d: %s/%s: %w: its sha256 is %s, raft committed %s%s",
				want.Step, dir, ManifestName, ErrNotCommitted, got, want.ManifestSHA256, manifestSays(b))
		}
	}
	m, err := decodeManifest(dir, b)
	if err != nil {
		return nil, err
	}
	switch {
	case m.Step != want.Step:
		return nil, fmt.Errorf("checkpoint at step %d: %s/%s: %w: it is the manifest of step %d", want.Step, dir, ManifestName, ErrNotCommitted, m.Step)
	case want.StateSHA256 != "" && m.StateSHA256 != want.StateSHA256:
		return nil, fmt.Errorf("checkpoint at step %d: %s/%s: %w: its state_sha256 is %s, raft committed %s",
			want.Step, dir, ManifestName, ErrNotCommitted, m.StateSHA256, want.StateSHA256)
	}
	return m, nil
}

// manifestSays describes what a refused manifest claims to be (its step
// and state hash), when it parses, for the error: a copy of another
// step's checkpoint shows as such.
func manifestSays(b []byte) string {
	var m struct {
		Step        *int64 `json:"step"`
		StateSHA256 string `json:"state_sha256"`
	}
	if json.Unmarshal(b, &m) != nil || m.Step == nil {
		return ""
	}
	return fmt.Sprintf(" (it says step %d, state_sha256 %.12s)", *m.Step, m.StateSHA256)
}

// appendObject appends the object name of src, at most limit bytes of
// it, to buf, reading into buf's spare capacity: no copy when the object
// fits.
func appendObject(ctx context.Context, src objstore.Source, name string, buf []byte, limit int64) ([]byte, error) {
	obj, err := src.Open(ctx, name, 0, -1)
	if err != nil {
		return buf, err
	}
	defer obj.Close()
	rc := io.LimitReader(obj, limit)
	var more [512]byte // reads past the spare capacity (to see EOF, or a longer object)
	for {
		var n int
		if len(buf) < cap(buf) {
			n, err = rc.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
		} else {
			n, err = rc.Read(more[:])
			buf = append(buf, more[:n]...)
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// Delete removes a checkpoint's objects (best effort: retention deletes
// after raft forgot the checkpoint, so leftovers are garbage, never used).
func Delete(ctx context.Context, dir string) error {
	src, err := objstore.Open(ctx, dir)
	if err != nil {
		return err
	}
	objs, err := src.List(ctx)
	if err != nil {
		return err
	}
	var first error
	for _, o := range objs {
		if err := src.Delete(ctx, o.Name); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// ExportSafetensors writes the model weights of a state (its "params"
// tensor cut by the manifest's parameter table) as safetensors: the names
// and shapes the model defines.
func ExportSafetensors(w io.Writer, state []byte, format uint32, params []ParamInfo) error {
	st, err := ParseState(state, format)
	if err != nil {
		return err
	}
	flat := st.Values["params"]
	if flat == nil {
		return errors.New("export: the state has no params tensor")
	}
	return WriteParams(w, flat, params)
}

// WriteParams writes the weights params cuts from the flat parameter
// buffer as a float32 safetensors file. Each parameter must lie inside
// flat and its shape hold its numel; otherwise nothing is written.
func WriteParams(w io.Writer, flat []float32, params []ParamInfo) error {
	for _, p := range params {
		if err := p.check(int64(len(flat))); err != nil {
			return fmt.Errorf("export: %w", err)
		}
	}
	var ts []Tensor
	for _, p := range params {
		ts = append(ts, F32Tensor(p.Name, p.Shape, flat[p.Offset:p.Offset+p.Numel]))
	}
	return WriteSafetensors(w, ts, map[string]string{"format": "pt", "producer": "lavit"})
}

// checkStateHash checks the assembled state against StateSHA256: its
// sha256 (format 1), or the digest of the parts' (format 2, whose parts
// were each checked already).
func (m *Manifest) checkStateHash(state []byte) error {
	if m.Format >= 2 {
		if PartsDigest(m.Parts) != m.StateSHA256 {
			return errors.New("the parts' digest differs from the manifest's state hash")
		}
		return nil
	}
	if SHA256(state) != m.StateSHA256 {
		return errors.New("the assembled state's sha256 differs from the manifest's")
	}
	return nil
}
