package objstore

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Open returns the Source a URL names:
//
//	file:///abs/dir        a local directory (the path must be absolute)
//	s3://bucket[/prefix]   an S3 prefix, configured by S3ConfigFromEnv
//
// Opening does not contact S3; the first List/Stat/Open/Put does.
func Open(ctx context.Context, rawURL string) (Source, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if rawURL == "" {
		return nil, fmt.Errorf("objstore: empty store URL (want file:///abs/dir or s3://bucket/prefix)")
	}
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, fmt.Errorf("objstore: store %q is not a URL (want file:///abs/dir or s3://bucket/prefix)", rawURL)
	}
	switch strings.ToLower(scheme) {
	case "file":
		p, err := fileURLPath(rawURL, rest)
		if err != nil {
			return nil, err
		}
		return NewFileSource(p)
	case "s3":
		bucket, prefix, _ := strings.Cut(rest, "/")
		if bucket == "" {
			return nil, fmt.Errorf("objstore: S3 URL %q has no bucket (want s3://bucket/prefix)", rawURL)
		}
		if strings.ContainsAny(rest, "?#") {
			return nil, fmt.Errorf("objstore: S3 URL %q: query strings and fragments are not supported", rawURL)
		}
		cfg, err := S3ConfigFromEnv()
		if err != nil {
			return nil, err
		}
		return NewS3Source(bucket, prefix, cfg)
	default:
		return nil, fmt.Errorf("objstore: unsupported store scheme %q in %q (want file:///abs/dir or s3://bucket/prefix)", scheme, rawURL)
	}
}

// fileURLPath is the local path a file URL names; rest is the URL after
// "file://": /abs/dir, or localhost/abs/dir, percent-decoded.
func fileURLPath(rawURL, rest string) (string, error) {
	if strings.HasPrefix(rest, "localhost/") {
		rest = strings.TrimPrefix(rest, "localhost")
	}
	if !strings.HasPrefix(rest, "/") {
		return "", fmt.Errorf("objstore: file URL %q must name an absolute path, as in file:///abs/dir (three slashes)", rawURL)
	}
	p, err := url.PathUnescape(rest)
	if err != nil {
		return "", fmt.Errorf("objstore: file URL %q: %v", rawURL, err)
	}
	if strings.ContainsAny(p, "?#") {
		return "", fmt.Errorf("objstore: file URL %q: query strings and fragments are not supported", rawURL)
	}
	return filepath.FromSlash(p), nil
}

// checkName refuses object names that are empty, absolute, not clean, or
// that would escape the source's root ("..").
func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("objstore: empty object name")
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("objstore: object name %q contains a NUL byte", name)
	case strings.HasPrefix(name, "/") || filepath.IsAbs(name):
		return fmt.Errorf("objstore: object name %q is absolute; names are relative to the source", name)
	case strings.Contains(name, `\`):
		return fmt.Errorf("objstore: object name %q contains a backslash; use '/'", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return fmt.Errorf("objstore: object name %q escapes the source root", name)
		}
	}
	if path.Clean(name) != name {
		return fmt.Errorf("objstore: object name %q is not clean (empty, '.' or trailing '/' elements)", name)
	}
	return nil
}

// OpenForWrite is Open for a destination: a file:// directory is created
// if missing (an S3 prefix needs nothing).
func OpenForWrite(ctx context.Context, rawURL string) (Source, error) {
	if scheme, rest, ok := strings.Cut(rawURL, "://"); ok && strings.EqualFold(scheme, "file") {
		if dir, err := fileURLPath(rawURL, rest); err == nil { // Open reports a bad URL
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("objstore: create %s: %w", dir, err)
			}
		}
	}
	return Open(ctx, rawURL)
}
