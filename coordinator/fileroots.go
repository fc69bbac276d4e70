package coordinator

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/lavit-org/lavit/internal/runspec"
)

// A run spec's file:// locations must lie under a root the operator
// allows (lavit-coord up --file-root, default the directory it starts
// in), so that whoever may submit a run cannot make workers read or write
// anywhere else on their hosts (the admin token's holder can still pick
// among the roots). Checked at submit, lexically and, where the path
// exists as the coordinator sees it (the same host, or a shared file
// system), after resolving symlinks: a link out of a root is refused.

// checkFileRoots returns why a spec's locations are refused ("" when
// allowed).
func checkFileRoots(spec *runspec.Spec, roots []string) string {
	for _, l := range spec.Locations() {
		path, ok := strings.CutPrefix(l.URL, "file://")
		if !ok {
			continue // s3:// and other stores: the store's own credentials bound them
		}
		if err := underRoots(path, roots); err != nil {
			return fmt.Sprintf("%s: %v", l.Key, err)
		}
	}
	return ""
}

// underRoots checks that path lies under one of roots (absolute, clean),
// before and after resolving the symlinks of its longest existing prefix.
func underRoots(path string, roots []string) error {
	if len(roots) == 0 {
		return fmt.Errorf("%s: this coordinator allows no file:// locations (start it with --file-root DIR)", path)
	}
	clean := filepath.Clean(path)
	if !filepath.IsAbs(clean) || !within(clean, roots) {
		return fmt.Errorf("%s lies outside the allowed file roots %s (lavit-coord up --file-root)", path, strings.Join(roots, ", "))
	}
	resolved, err := resolveExisting(clean)
	if err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	realRoots := make([]string, 0, len(roots))
	for _, r := range roots {
		if rr, err := filepath.EvalSymlinks(r); err == nil {
			realRoots = append(realRoots, rr)
		} else {
			realRoots = append(realRoots, r)
		}
	}
	if !within(resolved, realRoots) {
		return fmt.Errorf("%s resolves (through a symbolic link) to %s, outside the allowed file roots %s", path, resolved, strings.Join(roots, ", "))
	}
	return nil
}

// within reports whether clean path p is one of roots or below one.
func within(p string, roots []string) bool {
	for _, r := range roots {
		r = filepath.Clean(r)
		if p == r || strings.HasPrefix(p, strings.TrimSuffix(r, string(filepath.Separator))+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// resolveExisting resolves the symlinks of p's longest existing prefix
// and appends the rest (a checkpoint dir that does not exist yet).
func resolveExisting(p string) (string, error) {
	rest := ""
	for cur := p; ; {
		resolved, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(resolved, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return p, nil
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

// absRoots makes every root absolute and clean, refusing one that is not
// an existing directory.
func absRoots(roots []string) ([]string, error) {
	out := make([]string, 0, len(roots))
	for _, r := range roots {
		a, err := filepath.Abs(r)
		if err != nil {
			return nil, fmt.Errorf("--file-root %q: %w", r, err)
		}
		st, err := os.Stat(a)
		if err != nil {
			return nil, fmt.Errorf("--file-root %q: %w", r, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("--file-root %q is not a directory", r)
		}
		out = append(out, a)
	}
	return out, nil
}
