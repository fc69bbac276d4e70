package coordinator

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/runspec"
)

// TestUnderRoots: a path is allowed when it lies under a root, lexically
// and after resolving the symlinks of its existing part; "..", a link out
// of a root, a sibling with the root as a name prefix, and no roots at
// all are refused with the reason.
func TestUnderRoots(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(root, "data"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(outside, filepath.Join(root, "escape")))
	must(os.Symlink(filepath.Join(root, "data"), filepath.Join(root, "inside-link")))
	roots := []string{root}
	for _, tc := range []struct {
		name  string
		path  string
		roots []string
		want  string // "" allowed
	}{
		{"the root itself", root, roots, ""},
		{"below", filepath.Join(root, "data", "train"), roots, ""},
		{"not created yet", filepath.Join(root, "ckpt", "r-0001"), roots, ""},
		{"a link that stays inside", filepath.Join(root, "inside-link", "x"), roots, ""},
		{"outside", outside, roots, "outside the allowed file roots"},
		{"dot-dot out", root + "/data/../../outside", roots, "outside the allowed file roots"},
		{"a sibling sharing the prefix", root + "-evil/x", roots, "outside the allowed file roots"},
		{"a link out", filepath.Join(root, "escape", "secrets"), roots, "resolves (through a symbolic link)"},
		{"no roots", filepath.Join(root, "data"), nil, "allows no file:// locations"},
		{"a second root", outside, []string{root, outside}, ""},
	} {
		err := underRoots(tc.path, tc.roots)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want allowed", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want refused saying %q", tc.name, err, tc.want)
		}
	}
}

// TestCheckFileRoots: every location a spec names is checked (data,
// manifest, eval set, checkpoints, a tokenizer state), s3:// and run ids
// are not file locations, and the refusal names the spec key.
func TestCheckFileRoots(t *testing.T) {
	root := t.TempDir()
	ok := "file://" + root + "/x"
	bad := "file:///etc/lavit"
	for _, tc := range []struct {
		name string
		edit func(s *runspec.Spec)
		want string
	}{
		{"all inside", func(*runspec.Spec) {}, ""},
		{"data.url", func(s *runspec.Spec) { s.Data.URL = bad }, "data.url: /etc/lavit lies outside"},
		{"data.manifest", func(s *runspec.Spec) { s.Data.Manifest = bad }, "data.manifest:"},
		{"data.eval_url", func(s *runspec.Spec) { s.Data.EvalURL = bad }, "data.eval_url:"},
		{"checkpoint.url", func(s *runspec.Spec) { s.Checkpoint.URL = bad }, "checkpoint.url:"},
		{"tokenizer.from", func(s *runspec.Spec) { s.Tokenizer.From = bad }, "tokenizer.from:"},
		{"tokenizer run id", func(s *runspec.Spec) { s.Tokenizer.From = "r-0001" }, ""},
		{"s3", func(s *runspec.Spec) { s.Data.URL = "s3://bucket/data" }, ""},
	} {
		var s runspec.Spec
		s.Data.URL, s.Data.EvalURL, s.Checkpoint.URL = ok, ok, ok
		tc.edit(&s)
		got := checkFileRoots(&s, []string{root})
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
