package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/lavit-org/lavit/internal/retry"
)

// ErrAccessDenied means S3 refused the request's credentials (AccessDenied,
// InvalidAccessKeyId, SignatureDoesNotMatch, expired tokens, any 403).
// Such errors are never retried.
var ErrAccessDenied = errors.New("S3 refused the credentials")

const (
	defaultS3Endpoint   = "s3.amazonaws.com"
	defaultS3Region     = "us-east-1"
	defaultS3MaxRetries = 5
	defaultS3RetryBase  = 100 * time.Millisecond
	maxS3Backoff        = 20 * time.Second
	// putRetryBuffer is the largest body of unknown seekability Put keeps
	// in memory so that it can retry; larger ones get a single attempt.
	putRetryBuffer = 32 << 20
)

// S3Config says how to reach S3. The zero value of each field means its
// default; S3ConfigFromEnv fills it from the usual AWS settings.
// Printing an S3Config with %v, %+v or %#v redacts the secrets.
type S3Config struct {
	// Endpoint is host[:port] ("" means s3.amazonaws.com). A URL with an
	// http:// or https:// scheme is accepted too and then decides Secure.
	Endpoint string
	// Region defaults to us-east-1.
	Region string
	// AccessKey and SecretKey empty means anonymous requests.
	AccessKey, SecretKey, SessionToken string
	// Secure selects https.
	Secure bool
	// PathStyle addresses buckets as endpoint/bucket rather than
	// bucket.endpoint (needed by most S3-compatible servers).
	PathStyle bool
	// MaxRetries bounds the retries of a transient failure (connection
	// reset or refused, timeouts, 5xx, SlowDown): 0 means 5, negative
	// means none. For a read it bounds consecutive failed resumes without
	// progress.
	MaxRetries int
	// RetryBase is the first backoff step (0 means 100 ms); step k waits a
	// uniformly random time in [0, RetryBase·2^k], at most 20 s (full jitter).
	RetryBase time.Duration
}

// String describes the configuration without its secrets.
func (c S3Config) String() string {
	redact := func(s string) string {
		if s == "" {
			return `""`
		}
		return "<redacted>"
	}
	return fmt.Sprintf("S3Config{Endpoint:%q Region:%q AccessKey:%s SecretKey:%s SessionToken:%s Secure:%t PathStyle:%t MaxRetries:%d RetryBase:%s}",
		c.Endpoint, c.Region, redact(c.AccessKey), redact(c.SecretKey), redact(c.SessionToken), c.Secure, c.PathStyle, c.MaxRetries, c.RetryBase)
}

// GoString is String, so that %#v does not print the secrets either.
func (c S3Config) GoString() string { return c.String() }

// S3ConfigFromEnv reads the usual AWS settings:
//
//   - AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (http://host:port or
//     https://host): a custom endpoint, addressed path-style; without
//     one, https://s3.amazonaws.com with virtual-host addressing.
//   - AWS_REGION or AWS_DEFAULT_REGION (default us-east-1).
//   - AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; else the
//     shared credentials file (AWS_SHARED_CREDENTIALS_FILE or
//     ~/.aws/credentials) at profile AWS_PROFILE (or "default"); else
//     anonymous requests.
func S3ConfigFromEnv() (S3Config, error) {
	cfg := S3Config{Endpoint: defaultS3Endpoint, Secure: true, Region: defaultS3Region}
	endpointVar := "AWS_ENDPOINT_URL_S3"
	raw := os.Getenv(endpointVar)
	if raw == "" {
		endpointVar = "AWS_ENDPOINT_URL"
		raw = os.Getenv(endpointVar)
	}
	if raw != "" {
		host, secure, err := parseEndpoint(raw)
		if err != nil {
			return S3Config{}, fmt.Errorf("objstore: %s: %w", endpointVar, err)
		}
		cfg.Endpoint, cfg.Secure, cfg.PathStyle = host, secure, true
	}
	if r := os.Getenv("AWS_REGION"); r != "" {
		cfg.Region = r
	} else if r := os.Getenv("AWS_DEFAULT_REGION"); r != "" {
		cfg.Region = r
	}

	id, secret := os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
	if (id == "") != (secret == "") {
		if id == "" {
			return S3Config{}, errors.New("objstore: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not")
		}
		return S3Config{}, errors.New("objstore: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
	}
	providers := []credentials.Provider{&credentials.EnvAWS{}}
	credFile := os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	if credFile == "" {
		if home, err := os.UserHomeDir(); err == nil {
			credFile = filepath.Join(home, ".aws", "credentials")
		}
	}
	if credFile != "" {
		providers = append(providers, &credentials.FileAWSCredentials{Filename: credFile, Profile: os.Getenv("AWS_PROFILE")})
	}
	v, err := credentials.NewChainCredentials(providers).Get()
	if err != nil {
		// The chain falls back to anonymous; an error here is unexpected.
		// Its text comes from the provider and carries no secret values.
		return S3Config{}, fmt.Errorf("objstore: reading AWS credentials: %w", err)
	}
	cfg.AccessKey, cfg.SecretKey, cfg.SessionToken = v.AccessKeyID, v.SecretAccessKey, v.SessionToken
	return cfg, nil
}

// parseEndpoint turns http://host:port or https://host into host[:port]
// and whether it is https.
func parseEndpoint(raw string) (host string, secure bool, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", false, fmt.Errorf("endpoint %q is not a URL", raw)
	}
	switch u.Scheme {
	case "http":
	case "https":
		secure = true
	default:
		return "", false, fmt.Errorf("endpoint %q must start with http:// or https://", raw)
	}
	if u.Host == "" {
		return "", false, fmt.Errorf("endpoint %q has no host", raw)
	}
	if u.User != nil {
		return "", false, errors.New("endpoint URL must not carry credentials")
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", false, fmt.Errorf("endpoint %q must be scheme://host[:port] with no path", raw)
	}
	return u.Host, secure, nil
}

// s3Source is a Source over an S3 prefix.
type s3Source struct {
	core       minio.Core
	bucket     string
	prefix     string // "" or ends in '/'
	url        string
	maxRetries int
	// backoff is the waits between tries of one request: RetryBase
	// doubling up to maxS3Backoff, full jitter, maxRetries+1 tries.
	backoff retry.Backoff
}

// NewS3Source returns a Source over s3://bucket/prefix. It does not
// contact S3; the first call does.
func NewS3Source(bucket, prefix string, cfg S3Config) (Source, error) {
	if bucket == "" {
		return nil, errors.New("objstore: S3 source needs a bucket")
	}
	if strings.ContainsAny(bucket, "/?#") {
		return nil, fmt.Errorf("objstore: invalid S3 bucket name %q", bucket)
	}
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		if err := checkName(prefix); err != nil {
			return nil, fmt.Errorf("objstore: S3 prefix %q: %w", prefix, err)
		}
	}
	src := &s3Source{bucket: bucket, url: "s3://" + bucket, maxRetries: cfg.MaxRetries}
	if prefix != "" {
		src.prefix = prefix + "/"
		src.url += "/" + prefix
	}
	switch {
	case src.maxRetries == 0:
		src.maxRetries = defaultS3MaxRetries
	case src.maxRetries < 0:
		src.maxRetries = 0
	}
	retryBase := cfg.RetryBase
	if retryBase <= 0 {
		retryBase = defaultS3RetryBase
	}
	src.backoff = retry.Backoff{Initial: retryBase, Max: maxS3Backoff, Multiplier: 2, Jitter: 1, MaxTries: src.maxRetries + 1}

	endpoint, secure := cfg.Endpoint, cfg.Secure
	if endpoint == "" {
		endpoint, secure = defaultS3Endpoint, true
	} else if strings.Contains(endpoint, "://") {
		var err error
		if endpoint, secure, err = parseEndpoint(endpoint); err != nil {
			return nil, fmt.Errorf("objstore: S3 endpoint: %w", err)
		}
	}
	region := cfg.Region
	if region == "" {
		region = defaultS3Region
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("objstore: S3 transport: %w", err)
	}
	client, err := minio.New(endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, cfg.SessionToken),
		Secure:       secure,
		Region:       region,
		BucketLookup: lookup,
		Transport:    tr,
		MaxRetries:   1, // lavit retries itself, with its own policy and errors
	})
	if err != nil {
		// minio-go's errors here name the endpoint, never the keys.
		return nil, fmt.Errorf("objstore: S3 client for %s: %w", endpoint, err)
	}
	src.core = minio.Core{Client: client}
	return src, nil
}

func (s *s3Source) URL() string { return s.url }

func (s *s3Source) key(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	return s.prefix + name, nil
}

func (s *s3Source) objURL(key string) string { return "s3://" + s.bucket + "/" + key }

// do runs fn, retrying transient failures as b says; it returns the
// attempts made, for the error message.
func do(ctx context.Context, b retry.Backoff, fn func() error) (int, error) {
	attempts := 0
	err := retry.Do(ctx, b, func(attempt int) error {
		attempts = attempt
		err := fn()
		if err != nil && !isTransient(err) {
			return retry.Permanent(err)
		}
		return err
	}, nil)
	return attempts, err
}

// credError is S3 refusing the credentials.
type credError struct {
	bucket, code string
}

func (e *credError) Error() string {
	return fmt.Sprintf("objstore: S3 refused the credentials for bucket %s (%s); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN or the shared credentials file and AWS_PROFILE", e.bucket, e.code)
}

func (e *credError) Is(target error) bool { return target == ErrAccessDenied }

// wrapErr turns a minio-go error into lavit's: ErrNotFound, ErrAccessDenied
// or a message naming the operation and object.
func (s *s3Source) wrapErr(ctx context.Context, op, key string, attempts int, err error) error {
	where := s.objURL(key)
	if key == "" {
		where = s.url
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("objstore: S3 %s %s: %w", op, where, cerr)
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		switch er.Code {
		case "NoSuchBucket":
			return fmt.Errorf("objstore: S3 %s %s: bucket %q does not exist: %w", op, where, s.bucket, ErrNotFound)
		case "NoSuchKey", "NotFound":
			return fmt.Errorf("objstore: S3 %s %s: %w", op, where, ErrNotFound)
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
			"InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
			"XAdminUserNotFound": // versitygw's answer (404) to an unknown access key
			return &credError{bucket: s.bucket, code: er.Code}
		}
		if er.StatusCode == 403 {
			return &credError{bucket: s.bucket, code: "403 Forbidden"}
		}
		if er.StatusCode == 404 {
			return fmt.Errorf("objstore: S3 %s %s: %w", op, where, ErrNotFound)
		}
		err = fmt.Errorf("%s: %w", er.Code, err)
	}
	if attempts > 1 {
		return fmt.Errorf("objstore: S3 %s %s failed after %d attempts: %w", op, where, attempts, err)
	}
	return fmt.Errorf("objstore: S3 %s %s: %w", op, where, err)
}

// isTransient says whether a failure is worth retrying.
func isTransient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errShortBody) {
		return false
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		switch er.Code {
		case "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
			"XMinioServerNotInitialized", "OperationAborted":
			return true
		}
		return er.StatusCode >= 500 || er.StatusCode == 429 || er.StatusCode == 408
	}
	for _, e := range []error{io.ErrUnexpectedEOF, io.EOF, syscall.ECONNRESET, syscall.ECONNREFUSED,
		syscall.ECONNABORTED, syscall.EPIPE, syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH} {
		if errors.Is(err, e) {
			return true
		}
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.IsTemporary || dns.IsTimeout
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"connection reset", "broken pipe", "server closed idle connection", "GOAWAY", "unexpected EOF"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func (s *s3Source) List(ctx context.Context) ([]ObjectInfo, error) {
	var out []ObjectInfo
	startAfter := "" // resume point after a failure part-way
	attempts, err := do(ctx, s.backoff, func() error {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel() // stops minio-go's listing goroutine on early return
		opts := minio.ListObjectsOptions{Prefix: s.prefix, Recursive: true, StartAfter: startAfter}
		for obj := range s.core.Client.ListObjects(lctx, s.bucket, opts) {
			if obj.Err != nil {
				return obj.Err
			}
			startAfter = obj.Key
			if strings.HasSuffix(obj.Key, "/") || !strings.HasPrefix(obj.Key, s.prefix) {
				continue // directory markers
			}
			out = append(out, ObjectInfo{Name: strings.TrimPrefix(obj.Key, s.prefix), Size: obj.Size, ETag: obj.ETag})
		}
		return nil
	})
	if err != nil {
		return nil, s.wrapErr(ctx, "list", "", attempts, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *s3Source) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	key, err := s.key(name)
	if err != nil {
		return ObjectInfo{}, err
	}
	var info minio.ObjectInfo
	attempts, err := do(ctx, s.backoff, func() error {
		var err error
		info, err = s.core.Client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
		return err
	})
	if err != nil {
		return ObjectInfo{}, s.wrapErr(ctx, "stat", key, attempts, err)
	}
	return ObjectInfo{Name: name, Size: info.Size, ETag: info.ETag}, nil
}

func (s *s3Source) Delete(ctx context.Context, name string) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	attempts, err := do(ctx, s.backoff, func() error {
		return s.core.Client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{})
	})
	if err != nil {
		return s.wrapErr(ctx, "delete", key, attempts, err)
	}
	return nil
}

func (s *s3Source) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	// A retry must resend the body from its start: seek back when we can,
	// keep small bodies in memory otherwise, else try once.
	var rewind func() error
	if seeker, ok := r.(io.Seeker); ok {
		start, err := seeker.Seek(0, io.SeekCurrent)
		if err == nil {
			rewind = func() error { _, err := seeker.Seek(start, io.SeekStart); return err }
		}
	}
	if rewind == nil && size >= 0 && size <= putRetryBuffer {
		buf := make([]byte, size)
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("objstore: S3 put %s: reading the body (%d bytes expected): %w", s.objURL(key), size, err)
		}
		br := bytes.NewReader(buf)
		r = br
		rewind = func() error { _, err := br.Seek(0, io.SeekStart); return err }
	}
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream"}
	if size < 0 {
		opts.PartSize = 64 << 20
	}
	first := true
	tries := s.backoff
	if rewind == nil {
		tries.MaxTries = 1
	}
	attempts, err := do(ctx, tries, func() error {
		if !first {
			if err := rewind(); err != nil {
				return fmt.Errorf("rewinding the body for a retry: %w", err)
			}
		}
		first = false
		body := &sizeGuard{r: r, size: size}
		_, err := s.core.Client.PutObject(ctx, s.bucket, key, body, size, opts)
		if body.short != nil {
			return body.short // the caller's reader is short: retrying cannot help
		}
		return err
	})
	if err != nil {
		return s.wrapErr(ctx, "put", key, attempts, err)
	}
	return nil
}

// errShortBody marks a Put whose reader ended before the announced size.
var errShortBody = errors.New("the reader ended before the announced size")

// sizeGuard reports a short body distinctly from a network failure. It
// also hides io.ReaderAt and io.Seeker: minio-go would read a ReaderAt from
// offset 0 whatever the reader's position.
type sizeGuard struct {
	r     io.Reader
	size  int64
	n     int64
	short error
}

func (g *sizeGuard) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	g.n += int64(n)
	if err == io.EOF && g.size >= 0 && g.n < g.size {
		g.short = fmt.Errorf("%w (%d of %d bytes)", errShortBody, g.n, g.size)
		return n, g.short
	}
	return n, err
}

func (s *s3Source) Open(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	key, err := s.key(name)
	if err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("objstore: S3 open %s: negative offset %d", s.objURL(key), off)
	}
	if length == 0 {
		info, err := s.Stat(ctx, name)
		if err != nil {
			return nil, err
		}
		if off > info.Size {
			return nil, fmt.Errorf("objstore: S3 open %s: offset %d is past the end (%d bytes)", s.objURL(key), off, info.Size)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	r := &s3Reader{s: s, ctx: ctx, name: name, key: key, pos: off, end: -1}
	if length > 0 && off <= (1<<63-1)-length {
		r.end = off + length - 1
	}
	if err := r.connect(); err != nil {
		return nil, err
	}
	return r, nil
}

// s3Reader streams an object range and, when the connection drops
// part-way, resumes from the byte reached with a new ranged GET (pinned to
// the first response's ETag so that a replaced object is not spliced).
type s3Reader struct {
	s    *s3Source
	ctx  context.Context
	name string
	key  string
	etag string

	pos    int64 // absolute offset of the next byte
	end    int64 // inclusive last offset wanted; -1: to the object's end
	body   io.ReadCloser
	expect int64        // bytes the current response announced (-1 unknown)
	got    int64        // bytes read from the current response
	fails  int          // consecutive failures without progress
	waits  *retry.Waits // the waits since the last progress (nil: none yet)
	eof    bool
	err    error // sticky
	closed bool
}

// connect issues the ranged GET from r.pos, retrying transient failures.
func (r *s3Reader) connect() error {
	for {
		if r.fails > 0 {
			if r.waits == nil {
				r.waits = r.s.backoff.Waits()
			}
			if err := retry.Sleep(r.ctx, r.waits.Next()); err != nil {
				return r.s.wrapErr(r.ctx, "read", r.key, 1, err)
			}
		}
		err := r.get()
		if err == nil {
			return nil
		}
		var er minio.ErrorResponse
		if errors.As(err, &er) {
			if er.Code == "InvalidRange" || er.StatusCode == 416 {
				return r.atEnd()
			}
			if er.Code == "PreconditionFailed" || er.StatusCode == 412 {
				return fmt.Errorf("objstore: S3 read %s: the object changed while it was being read (ETag is no longer %q)", r.s.objURL(r.key), r.etag)
			}
		}
		if r.ctx.Err() != nil || !isTransient(err) {
			return r.s.wrapErr(r.ctx, "read", r.key, r.fails+1, err)
		}
		r.fails++
		if r.fails > r.s.maxRetries {
			if r.etag != "" { // a resume: the first response came
				return fmt.Errorf("objstore: S3 read %s: connection lost at byte %d, could not resume after %d attempts: %w", r.s.objURL(r.key), r.pos, r.fails, err)
			}
			return fmt.Errorf("objstore: S3 read %s: could not reach S3 after %d attempts: %w", r.s.objURL(r.key), r.fails, err)
		}
	}
}

func (r *s3Reader) get() error {
	var opts minio.GetObjectOptions
	if r.etag != "" {
		if err := opts.SetMatchETag(r.etag); err != nil {
			return err
		}
	}
	var err error
	switch {
	case r.end >= 0:
		err = opts.SetRange(r.pos, r.end)
	case r.pos > 0:
		err = opts.SetRange(r.pos, 0)
	}
	if err != nil {
		return err
	}
	body, info, _, err := r.s.core.GetObject(r.ctx, r.s.bucket, r.key, opts)
	if err != nil {
		return err
	}
	r.body, r.expect, r.got = body, info.Size, 0
	if r.etag == "" {
		r.etag = info.ETag
	}
	return nil
}

// atEnd handles a range S3 refused: fine when r.pos is exactly the end.
func (r *s3Reader) atEnd() error {
	info, err := r.s.Stat(r.ctx, r.name)
	if err != nil {
		return err
	}
	if r.pos == info.Size {
		r.eof = true
		return nil
	}
	return fmt.Errorf("objstore: S3 open %s: offset %d is past the end (%d bytes)", r.s.objURL(r.key), r.pos, info.Size)
}

var errReaderClosed = errors.New("objstore: read from a closed S3 object reader")

func (r *s3Reader) Read(p []byte) (int, error) {
	switch {
	case r.closed:
		return 0, errReaderClosed
	case r.err != nil:
		return 0, r.err
	case r.eof:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	for {
		if r.body == nil {
			if err := r.connect(); err != nil {
				r.err = err
				return 0, err
			}
			if r.eof {
				return 0, io.EOF
			}
		}
		n, err := r.body.Read(p)
		r.pos += int64(n)
		r.got += int64(n)
		if n > 0 {
			r.fails, r.waits = 0, nil // progress: the next failure starts the backoff afresh
		}
		if err == nil {
			return n, nil
		}
		if err == io.EOF && (r.expect < 0 || r.got >= r.expect) {
			r.body.Close()
			r.body = nil
			r.eof = true
			return n, io.EOF
		}
		// The response ended early: the connection dropped mid-object.
		r.body.Close()
		r.body = nil
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if r.ctx.Err() != nil || !isTransient(err) {
			r.err = r.s.wrapErr(r.ctx, "read", r.key, 1, err)
			return n, r.err
		}
		r.fails++
		if r.fails > r.s.maxRetries {
			r.err = fmt.Errorf("objstore: S3 read %s: connection lost at byte %d, gave up after %d attempts: %w", r.s.objURL(r.key), r.pos, r.fails, err)
			return n, r.err
		}
		if n > 0 {
			return n, nil // resume on the next call
		}
	}
}

func (r *s3Reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.body != nil {
		err := r.body.Close()
		r.body = nil
		return err
	}
	return nil
}
