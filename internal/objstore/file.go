package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// tempPrefix starts the names of the temporary files an in-progress Put
// writes next to its target; List skips them and Put refuses such names.
const tempPrefix = ".lavit-put-"

// fileSource is a Source over a local directory.
type fileSource struct {
	root string // absolute, cleaned
}

// NewFileSource returns a Source over the directory dir, which must be an
// absolute path to an existing directory.
func NewFileSource(dir string) (Source, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("objstore: file source directory %q is not an absolute path", dir)
	}
	root := filepath.Clean(dir)
	fi, err := os.Stat(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("objstore: file source directory %s: %w: %w", root, ErrNotFound, err)
		}
		return nil, fmt.Errorf("objstore: file source directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("objstore: file source %s is not a directory", root)
	}
	return &fileSource{root: root}, nil
}

func (s *fileSource) URL() string { return "file://" + filepath.ToSlash(s.root) }

// path maps an object name to its file, refusing names that escape the root.
func (s *fileSource) path(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	return filepath.Join(s.root, filepath.FromSlash(name)), nil
}

func (s *fileSource) notFound(name string, err error) error {
	return fmt.Errorf("objstore: %s/%s: %w: %w", s.URL(), name, ErrNotFound, err)
}

func (s *fileSource) List(ctx context.Context) ([]ObjectInfo, error) {
	var out []ObjectInfo
	err := filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), tempPrefix) {
			return nil
		}
		fi, err := os.Stat(p) // follows symlinks to shards kept elsewhere
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while listing, or a dangling link
			}
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		out = append(out, ObjectInfo{Name: filepath.ToSlash(rel), Size: fi.Size()})
		return nil
	})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, s.notFound("", err)
		}
		return nil, fmt.Errorf("objstore: listing %s: %w", s.URL(), err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *fileSource) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	p, err := s.path(name)
	if err != nil {
		return ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return ObjectInfo{}, s.notFound(name, fs.ErrNotExist)
		}
		return ObjectInfo{}, fmt.Errorf("objstore: stat %s/%s: %w", s.URL(), name, err)
	}
	if !fi.Mode().IsRegular() {
		return ObjectInfo{}, s.notFound(name, fs.ErrNotExist)
	}
	return ObjectInfo{Name: name, Size: fi.Size()}, nil
}

func (s *fileSource) Open(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	p, err := s.path(name)
	if err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("objstore: open %s/%s: negative offset %d", s.URL(), name, off)
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil, s.notFound(name, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("objstore: open %s/%s: %w", s.URL(), name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("objstore: open %s/%s: %w", s.URL(), name, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, s.notFound(name, fs.ErrNotExist)
	}
	if off > fi.Size() {
		f.Close()
		return nil, fmt.Errorf("objstore: open %s/%s: offset %d is past the end (%d bytes)", s.URL(), name, off, fi.Size())
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("objstore: open %s/%s: %w", s.URL(), name, err)
	}
	if length < 0 {
		return f, nil
	}
	return &limitedFile{Reader: io.LimitReader(f, length), f: f}, nil
}

type limitedFile struct {
	io.Reader
	f *os.File
}

func (l *limitedFile) Close() error { return l.f.Close() }

func (s *fileSource) Delete(ctx context.Context, name string) error {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("objstore: delete %s/%s: %w", s.URL(), name, err)
	}
	return nil
}

func (s *fileSource) Put(ctx context.Context, name string, r io.Reader, size int64) (err error) {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if strings.HasPrefix(filepath.Base(p), tempPrefix) {
		return fmt.Errorf("objstore: put %q: names starting with %q are reserved for temporary files", name, tempPrefix)
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("objstore: put %s/%s: %w", s.URL(), name, err)
	}
	tmp, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("objstore: put %s/%s: %w", s.URL(), name, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	src := &ctxReader{ctx: ctx, r: r}
	var n int64
	if size >= 0 {
		n, err = io.CopyN(tmp, src, size)
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("objstore: put %s/%s: the reader ended after %d of %d bytes", s.URL(), name, n, size)
			return err
		}
	} else {
		_, err = io.Copy(tmp, src)
	}
	if err != nil {
		return fmt.Errorf("objstore: put %s/%s: %w", s.URL(), name, err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("objstore: put %s/%s: %w", s.URL(), name, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("objstore: put %s/%s: %w", s.URL(), name, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("objstore: put %s/%s: %w", s.URL(), name, err)
	}
	if err = ctx.Err(); err != nil {
		return fmt.Errorf("objstore: put %s/%s: %w", s.URL(), name, err)
	}
	if err = os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("objstore: put %s/%s: %w", s.URL(), name, err)
	}
	return nil
}

// ctxReader stops a copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
