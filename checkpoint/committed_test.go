package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// saveStep writes a one-part format-2 checkpoint of state at step into
// the step's directory under root (as the leader does) and returns what
// raft would commit for it.
func saveStep(t *testing.T, root string, step int64, state []byte) Committed {
	t.Helper()
	ctx := context.Background()
	dir := Dir("file://"+root, "r", step)
	p, err := WritePartAt(ctx, dir, state, 0, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{Format: FormatVersion, Run: "r", Step: step, World: 1, StateBytes: int64(len(state)), Parts: []Part{p}}
	m.StateSHA256 = PartsDigest(m.Parts)
	if err := WriteManifest(ctx, dir, m); err != nil {
		t.Fatal(err)
	}
	sum, err := ManifestSHA256(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, got, err := ReadManifestSHA256(ctx, dir); err != nil || got != sum {
		t.Fatalf("read back: sha256 %s, %v; ManifestSHA256 said %s", got, err, sum)
	}
	return Committed{Step: step, ManifestSHA256: sum, StateSHA256: m.StateSHA256}
}

// TestLoadCommittedRefusesAnotherCheckpoint: a checkpoint whose manifest
// is not the one raft committed at its step (an older step's checkpoint
// copied over it, a manifest edited in place) is refused with
// ErrNotCommitted, naming the step and both digests, before its parts
// are fetched; checkpoints committed before raft recorded the manifest's
// sha256 are checked by their step and state hash.
func TestLoadCommittedRefusesAnotherCheckpoint(t *testing.T) {
	old := fakeState([]float32{1, 2, 3}, nil)
	cur := fakeState([]float32{4, 5, 6}, nil)
	cases := []struct {
		name   string
		tamper func(t *testing.T, root string) // changes the store after both commits
		want   func(c10, c20 Committed) Committed
		errs   []string // nil: loads, and is step 20's state
	}{
		{"untouched", nil, func(_, c20 Committed) Committed { return c20 }, nil},
		{"untouched, committed without the manifest sha256", nil,
			func(_, c20 Committed) Committed { c20.ManifestSHA256 = ""; return c20 }, nil},
		{"step 10 copied over step 20", copyOver,
			func(_, c20 Committed) Committed { return c20 },
			[]string{"checkpoint at step 20", "its sha256 is", "raft committed", "it says step 10"}},
		{"step 10 copied over step 20, committed without the manifest sha256", copyOver,
			func(_, c20 Committed) Committed { c20.ManifestSHA256 = ""; return c20 },
			[]string{"checkpoint at step 20", "it is the manifest of step 10"}},
		{"step 20's manifest edited to point at step 10's parts", pointAtOldParts,
			func(_, c20 Committed) Committed { return c20 },
			[]string{"checkpoint at step 20", "its sha256 is", "raft committed", "it says step 20"}},
		{"the same edit, committed without the manifest sha256", pointAtOldParts,
			func(_, c20 Committed) Committed { c20.ManifestSHA256 = ""; return c20 },
			[]string{"checkpoint at step 20", "its state_sha256 is"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			c10 := saveStep(t, root, 10, old)
			c20 := saveStep(t, root, 20, cur)
			if tc.tamper != nil {
				tc.tamper(t, root)
			}
			want := tc.want(c10, c20)
			m, state, err := LoadCommitted(context.Background(), Dir("file://"+root, "r", 20), want)
			if tc.errs == nil {
				if err != nil || m.Step != 20 || !bytes.Equal(state, cur) {
					t.Fatalf("got step %v, %d bytes, %v; want step 20's state", m, len(state), err)
				}
				return
			}
			if !errors.Is(err, ErrNotCommitted) {
				t.Fatalf("got %v, want ErrNotCommitted", err)
			}
			for _, s := range tc.errs {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if want.ManifestSHA256 != "" && !strings.Contains(err.Error(), want.ManifestSHA256) {
				t.Errorf("error %q does not name the committed sha256 %s", err, want.ManifestSHA256)
			}
			if _, err := ReadCommittedManifest(context.Background(), Dir("file://"+root, "r", 20), want); !errors.Is(err, ErrNotCommitted) {
				t.Errorf("ReadCommittedManifest: %v, want ErrNotCommitted", err)
			}
		})
	}
}

// copyOver copies step 10's checkpoint (manifest and part) over step 20's.
func copyOver(t *testing.T, root string) {
	testutil.ReplaceDir(t, filepath.Join(root, "r", "step-00000010"), filepath.Join(root, "r", "step-00000020"))
}

// pointAtOldParts rewrites step 20's manifest, keeping its step, to
// describe step 10's part, which it copies in: a self-consistent
// checkpoint that is not the committed one.
func pointAtOldParts(t *testing.T, root string) {
	t.Helper()
	ctx := context.Background()
	d10, d20 := Dir("file://"+root, "r", 10), Dir("file://"+root, "r", 20)
	m10, err := ReadManifest(ctx, d10)
	if err != nil {
		t.Fatal(err)
	}
	testutil.ReplaceDir(t, strings.TrimPrefix(d10, "file://"), strings.TrimPrefix(d20, "file://"))
	if err := os.Remove(filepath.Join(strings.TrimPrefix(d20, "file://"), ManifestName)); err != nil {
		t.Fatal(err)
	}
	m10.Step = 20
	if err := WriteManifest(ctx, d20, m10); err != nil {
		t.Fatal(err)
	}
}
