// Package objstore owns where lavit's bytes live: a local directory
// (file:///abs/dir) or an S3 prefix (s3://bucket/prefix), behind one Source
// interface. Data sets (package shards), checkpoints (package checkpoint)
// and final model states (package worker) are all stored through it; it
// knows nothing of what the objects hold.
package objstore

import (
	"context"
	"errors"
	"io"
)

// ErrNotFound means an object (or bucket) does not exist.
var ErrNotFound = errors.New("object not found")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Name string // relative to the source's root or prefix, with '/' separators
	Size int64
	ETag string // content tag when the store has one ("" for files)
}

// Source is a place objects live: a local directory (file:///abs/dir) or
// an S3 prefix (s3://bucket/prefix). Implementations are safe for
// concurrent use.
type Source interface {
	// URL is the source's canonical URL.
	URL() string
	// List returns the objects under the source, sorted by name.
	List(ctx context.Context) ([]ObjectInfo, error)
	// Stat describes one object; a missing one is an error wrapping ErrNotFound.
	Stat(ctx context.Context, name string) (ObjectInfo, error)
	// Open streams an object from byte offset off; length < 0 reads to the end.
	Open(ctx context.Context, name string, off, length int64) (io.ReadCloser, error)
	// Put writes an object (create or replace) of the given size from r.
	Put(ctx context.Context, name string, r io.Reader, size int64) error
	// Delete removes an object; a missing one is not an error.
	Delete(ctx context.Context, name string) error
}

// ReadObject reads a whole object of src into memory.
func ReadObject(ctx context.Context, src Source, name string) ([]byte, error) {
	rc, err := src.Open(ctx, name, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}
