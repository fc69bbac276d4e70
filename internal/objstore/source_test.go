package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/testutil"
)

// s3Config builds a source configuration for a test server (or a proxy
// in front of it).
func s3Config(srv *testutil.S3Server, endpoint string) S3Config {
	return S3Config{
		Endpoint:   endpoint,
		Region:     srv.Region,
		AccessKey:  srv.AccessKey,
		SecretKey:  srv.SecretKey,
		PathStyle:  true,
		MaxRetries: 3,
		RetryBase:  time.Millisecond,
	}
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9E3779B97F4A7C15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func readAll(t *testing.T, src Source, name string, off, length int64) []byte {
	t.Helper()
	rc, err := src.Open(context.Background(), name, off, length)
	if err != nil {
		t.Fatalf("Open(%q, %d, %d): %v", name, off, length, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading %q [%d,+%d): %v", name, off, length, err)
	}
	return b
}

// testObjects are what the contract test writes.
var testObjects = map[string][]byte{
	"train-000001.tar":      randomBytes(1, 300_000),
	"train-000000.tar":      randomBytes(2, 70_001),
	"sub/val-000000.tar":    randomBytes(3, 4096),
	"sub/deeper/manifest":   []byte(`{"version":1}`),
	"empty":                 {},
	"sub/name with space.x": []byte("spaces are fine"),
}

func TestSourceContract(t *testing.T) {
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "data")
	backends := []struct {
		name string
		open func(t *testing.T) Source
	}{
		{"file", func(t *testing.T) Source {
			src, err := NewFileSource(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return src
		}},
		{"s3", func(t *testing.T) Source {
			src, err := NewS3Source("data", "sets/one", s3Config(srv, srv.Endpoint))
			if err != nil {
				t.Fatal(err)
			}
			return src
		}},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			testContract(t, b.open(t))
		})
	}
}

func testContract(t *testing.T, src Source) {
	ctx := context.Background()
	for name, data := range testObjects {
		if err := src.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatalf("Put(%q): %v", name, err)
		}
	}
	// Replacing an object, from a reader that is not seekable.
	replaced := randomBytes(9, 5000)
	if err := src.Put(ctx, "train-000000.tar", io.MultiReader(bytes.NewReader(replaced)), int64(len(replaced))); err != nil {
		t.Fatalf("Put (replace): %v", err)
	}
	want := map[string][]byte{}
	for k, v := range testObjects {
		want[k] = v
	}
	want["train-000000.tar"] = replaced

	list, err := src.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var gotNames, wantNames []string
	for _, o := range list {
		gotNames = append(gotNames, o.Name)
		if o.Size != int64(len(want[o.Name])) {
			t.Errorf("List: %s has size %d, want %d", o.Name, o.Size, len(want[o.Name]))
		}
	}
	for _, name := range []string{"empty", "sub/deeper/manifest", "sub/name with space.x", "sub/val-000000.tar", "train-000000.tar", "train-000001.tar"} {
		wantNames = append(wantNames, name)
	}
	if !reflect.DeepEqual(gotNames, wantNames) {
		t.Fatalf("List names = %q, want %q", gotNames, wantNames)
	}

	for name, data := range want {
		info, err := src.Stat(ctx, name)
		if err != nil {
			t.Fatalf("Stat(%q): %v", name, err)
		}
		if info.Name != name || info.Size != int64(len(data)) {
			t.Errorf("Stat(%q) = %+v, want size %d", name, info, len(data))
		}
		if got := readAll(t, src, name, 0, -1); !bytes.Equal(got, data) {
			t.Errorf("Open(%q) whole: got %d bytes, want %d (or content differs)", name, len(got), len(data))
		}
	}

	data := want["train-000001.tar"]
	size := int64(len(data))
	for _, r := range []struct{ off, length int64 }{
		{0, 1}, {0, 100}, {12345, 6789}, {size - 10, 10}, {size - 10, 1000}, {1, -1},
		{size - 1, -1}, {size, -1}, {size, 5}, {500, 0}, {size, 0},
	} {
		end := size
		if r.length >= 0 && r.off+r.length < end {
			end = r.off + r.length
		}
		if got := readAll(t, src, "train-000001.tar", r.off, r.length); !bytes.Equal(got, data[r.off:end]) {
			t.Errorf("Open(off=%d, length=%d): got %d bytes, want %d (or content differs)", r.off, r.length, len(got), end-r.off)
		}
	}
	if got := readAll(t, src, "empty", 0, -1); len(got) != 0 {
		t.Errorf("empty object read %d bytes", len(got))
	}
	if rc, err := src.Open(ctx, "train-000001.tar", size+1, -1); err == nil {
		rc.Close()
		t.Errorf("Open past the end: no error")
	}
	if _, err := src.Open(ctx, "train-000001.tar", -1, -1); err == nil {
		t.Errorf("Open at a negative offset: no error")
	}

	// Concurrent ranged readers (run with -race).
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			off := int64(i) * 30_000
			rc, err := src.Open(ctx, "train-000001.tar", off, 20_000)
			if err != nil {
				errs <- err
				return
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err == nil && !bytes.Equal(got, data[off:off+20_000]) {
				err = fmt.Errorf("reader %d: wrong bytes", i)
			}
			if err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Missing objects.
	for _, name := range []string{"nope.tar", "sub/nope", "sub"} {
		if _, err := src.Stat(ctx, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("Stat(%q) = %v, want ErrNotFound", name, err)
		}
		if rc, err := src.Open(ctx, name, 0, -1); !errors.Is(err, ErrNotFound) {
			if rc != nil {
				rc.Close()
			}
			t.Errorf("Open(%q) = %v, want ErrNotFound", name, err)
		}
		if rc, err := src.Open(ctx, name, 10, 10); !errors.Is(err, ErrNotFound) {
			if rc != nil {
				rc.Close()
			}
			t.Errorf("Open(%q, 10, 10) = %v, want ErrNotFound", name, err)
		}
	}

	// Names that escape the root, or are not clean, are refused.
	for _, name := range []string{"", "../escape", "sub/../../escape", "/etc/passwd", "a//b", "./a", "a/", `a\b`, ".."} {
		if err := src.Put(ctx, name, strings.NewReader("x"), 1); err == nil {
			t.Errorf("Put(%q) was accepted", name)
		}
		if _, err := src.Stat(ctx, name); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Stat(%q) = %v, want a refusal", name, err)
		}
		if _, err := src.Open(ctx, name, 0, -1); err == nil {
			t.Errorf("Open(%q) was accepted", name)
		}
	}

	// A reader that ends early fails the Put and leaves no object.
	if err := src.Put(ctx, "short.tar", strings.NewReader("abc"), 10); err == nil {
		t.Errorf("Put with a short reader succeeded")
	}
	if _, err := src.Stat(ctx, "short.tar"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after a failed Put, Stat = %v, want ErrNotFound", err)
	}
}

func TestFileSource(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := NewFileSource("relative/dir"); err == nil {
		t.Errorf("NewFileSource accepted a relative path")
	}
	if _, err := NewFileSource(filepath.Join(dir, "missing")); !errors.Is(err, ErrNotFound) {
		t.Errorf("NewFileSource(missing) = %v, want ErrNotFound", err)
	}
	src, err := NewFileSource(dir + "/")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := src.URL(), "file://"+dir; got != want {
		t.Errorf("URL() = %q, want %q", got, want)
	}
	if err := src.Put(ctx, "a/b.tar", strings.NewReader("hello"), 5); err != nil {
		t.Fatal(err)
	}
	// A stray temp file of an interrupted Put is not listed; names of that
	// form are reserved.
	if err := os.WriteFile(filepath.Join(dir, "a", tempPrefix+"123"), []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := src.Put(ctx, "a/"+tempPrefix+"x", strings.NewReader("x"), 1); err == nil {
		t.Errorf("Put of a temp-file name was accepted")
	}
	list, err := src.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "a/b.tar" || list[0].Size != 5 {
		t.Errorf("List = %+v, want just a/b.tar (5 bytes)", list)
	}
	// Missing files wrap both ErrNotFound and os.ErrNotExist.
	_, err = src.Stat(ctx, "a/b.tar/c")
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Stat(missing) = %v, want ErrNotFound and os.ErrNotExist", err)
	}
	// A symlink escaping through the name is refused before any file access.
	if _, err := src.Open(ctx, "../"+filepath.Base(dir)+"/a/b.tar", 0, -1); err == nil || !strings.Contains(err.Error(), "escapes") {
		t.Errorf("Open(../...) = %v, want an escape refusal", err)
	}
	// A cancelled Put writes nothing.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := src.Put(cctx, "cancelled", strings.NewReader("x"), 1); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Put = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cancelled")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cancelled Put left a file: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			t.Errorf("temp file %s left behind", e.Name())
		}
	}
}

// TestFileAndS3SameBytes writes the same shards to a directory and to S3
// and reads them back through Open(url): the bytes must be identical.
func TestFileAndS3SameBytes(t *testing.T) {
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "shards")
	t.Setenv("AWS_ENDPOINT_URL", srv.Endpoint)
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_REGION", srv.Region)

	ctx := context.Background()
	dir := t.TempDir()
	fsrc, err := Open(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	ssrc, err := Open(ctx, "s3://shards/webdataset/v1")
	if err != nil {
		t.Fatal(err)
	}
	if got := ssrc.URL(); got != "s3://shards/webdataset/v1" {
		t.Errorf("S3 URL() = %q", got)
	}
	names := []string{"train-000.tar", "train-001.tar", "train-002.tar", "train-003.tar"}
	for i, name := range names {
		data := randomBytes(uint64(100+i), 200_000+i*77_777)
		for _, src := range []Source{fsrc, ssrc} {
			if err := src.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
				t.Fatalf("%s Put(%s): %v", src.URL(), name, err)
			}
		}
	}
	fl, err := fsrc.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sl, err := ssrc.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(fl) != len(names) || len(sl) != len(names) {
		t.Fatalf("lists: file %d, s3 %d objects, want %d", len(fl), len(sl), len(names))
	}
	for i := range fl {
		if fl[i].Name != sl[i].Name || fl[i].Size != sl[i].Size || fl[i].Name != names[i] {
			t.Errorf("list entry %d: file %+v, s3 %+v", i, fl[i], sl[i])
		}
		if sl[i].ETag == "" {
			t.Errorf("S3 list entry %s has no ETag", sl[i].Name)
		}
	}
	for _, o := range fl {
		for _, r := range [][2]int64{{0, -1}, {1000, 50_000}, {o.Size / 2, -1}} {
			a := readAll(t, fsrc, o.Name, r[0], r[1])
			b := readAll(t, ssrc, o.Name, r[0], r[1])
			if !bytes.Equal(a, b) {
				t.Errorf("%s [%d,+%d): file and S3 bytes differ (%d vs %d bytes)", o.Name, r[0], r[1], len(a), len(b))
			}
		}
	}
}

func TestS3BadCredentialsAndMissingBucket(t *testing.T) {
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "data")
	ctx := context.Background()

	proxy := testutil.StartProxy(t, srv.Addr)
	cfg := s3Config(srv, proxy.Endpoint)
	cfg.SecretKey = "wrong-secret-" + srv.SecretKey[:8]
	cfg.MaxRetries = 5
	cfg.RetryBase = time.Second // a retry loop would take seconds
	src, err := NewS3Source("data", "", cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = src.List(ctx)
	checkRefused(t, "List", err, cfg.SecretKey)
	_, err = src.Stat(ctx, "x.tar")
	checkRefused(t, "Stat", err, cfg.SecretKey)
	_, err = src.Open(ctx, "x.tar", 0, -1)
	checkRefused(t, "Open", err, cfg.SecretKey)
	err = src.Put(ctx, "x.tar", strings.NewReader("x"), 1)
	checkRefused(t, "Put", err, cfg.SecretKey)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("refused credentials took %s: they must not be retried", d)
	}
	if n := proxy.Accepted(); n > 4 {
		t.Errorf("%d connections for 4 refused calls: refused credentials were retried", n)
	}
	cfg.AccessKey = "NOSUCHKEY"
	src, _ = NewS3Source("data", "", cfg)
	_, err = src.List(ctx)
	checkRefused(t, "List (unknown key)", err, cfg.SecretKey)
	_, err = src.Open(ctx, "x.tar", 0, -1)
	checkRefused(t, "Open (unknown key)", err, cfg.SecretKey)

	// A missing bucket is ErrNotFound, naming the bucket.
	good, err := NewS3Source("no-such-bucket", "p", s3Config(srv, srv.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	_, err = good.List(ctx)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no-such-bucket") {
		t.Errorf("List(missing bucket) = %v, want ErrNotFound naming the bucket", err)
	}
	if _, err := good.Stat(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat(missing bucket) = %v, want ErrNotFound", err)
	}
	if _, err := good.Open(ctx, "a", 0, -1); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open(missing bucket) = %v, want ErrNotFound", err)
	}
}

func checkRefused(t *testing.T, op string, err error, secret string) {
	t.Helper()
	if !errors.Is(err, ErrAccessDenied) || !strings.Contains(err.Error(), "S3 refused the credentials for bucket data") {
		t.Errorf("%s with bad credentials = %v, want the refused-credentials error", op, err)
		return
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("%s: the error shows the secret key: %v", op, err)
	}
}

// TestS3Retries covers transient failures: dropped connections before a
// response are retried, and a server that stays down gives a clear error.
func TestS3Retries(t *testing.T) {
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "data")
	ctx := context.Background()
	data := randomBytes(7, 10_000)
	direct, err := NewS3Source("data", "", s3Config(srv, srv.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Put(ctx, "a.tar", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}

	proxy := testutil.StartProxy(t, srv.Addr)
	src, err := NewS3Source("data", "", s3Config(srv, proxy.Endpoint)) // MaxRetries 3
	if err != nil {
		t.Fatal(err)
	}
	proxy.FailNext(2)
	if info, err := src.Stat(ctx, "a.tar"); err != nil || info.Size != int64(len(data)) {
		t.Fatalf("Stat after 2 dropped connections = %+v, %v", info, err)
	}
	proxy.FailNext(2)
	if list, err := src.List(ctx); err != nil || len(list) != 1 {
		t.Fatalf("List after 2 dropped connections = %+v, %v", list, err)
	}
	proxy.FailNext(2)
	if err := src.Put(ctx, "b.tar", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put after 2 dropped connections: %v", err)
	}
	proxy.FailNext(2)
	if got := readAll(t, src, "b.tar", 0, -1); !bytes.Equal(got, data) {
		t.Fatalf("Open after 2 dropped connections: wrong bytes")
	}

	proxy.SetDown(true)
	start := time.Now()
	_, err = src.Stat(ctx, "a.tar")
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "failed after 4 attempts") {
		t.Errorf("Stat with the server down = %v, want a failure after 4 attempts", err)
	}
	if _, err := src.Open(ctx, "a.tar", 0, -1); err == nil || !strings.Contains(err.Error(), "after 4 attempts") {
		t.Errorf("Open with the server down = %v, want a failure after 4 attempts", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("giving up took %s", d)
	}
}

// TestS3ResumeMidObject: S3 drops the connection part-way through an
// object; the reader resumes from the byte reached.
func TestS3ResumeMidObject(t *testing.T) {
	srv := testutil.StartS3(t)
	srv.MakeBucket(t, "data")
	ctx := context.Background()
	data := randomBytes(11, 1<<20+12345)
	direct, err := NewS3Source("data", "pre", s3Config(srv, srv.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Put(ctx, "big.tar", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}

	proxy := testutil.StartProxy(t, srv.Addr)
	src, err := NewS3Source("data", "pre", s3Config(srv, proxy.Endpoint)) // MaxRetries 3
	if err != nil {
		t.Fatal(err)
	}
	// Every connection is cut after 100 KiB: a whole read needs about ten
	// resumes, more than MaxRetries, each one making progress.
	proxy.CutAfter(100 << 10)
	if got := readAll(t, src, "big.tar", 0, -1); !bytes.Equal(got, data) {
		t.Fatalf("resumed read: got %d bytes, want %d (or content differs)", len(got), len(data))
	}
	if proxy.Cuts() < 5 {
		t.Fatalf("the proxy cut only %d connections; the test did not exercise resuming", proxy.Cuts())
	}
	off, length := int64(333_333), int64(456_789)
	if got := readAll(t, src, "big.tar", off, length); !bytes.Equal(got, data[off:off+length]) {
		t.Fatalf("resumed ranged read: got %d bytes, want %d (or content differs)", len(got), length)
	}

	// The server goes away for good after the first cut: the reader gives
	// up after MaxRetries attempts with a clear error, having returned
	// only correct bytes.
	proxy.CutAfter(64 << 10)
	rc, err := src.Open(ctx, "big.tar", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	proxy.SetDown(true)
	start := time.Now()
	got, err := io.ReadAll(rc)
	if err == nil {
		t.Fatalf("read with the server down succeeded (%d bytes)", len(got))
	}
	if !strings.Contains(err.Error(), "connection lost at byte") {
		t.Errorf("error = %v, want one saying the connection was lost", err)
	}
	if !strings.Contains(err.Error(), "s3://data/pre/big.tar") || !strings.Contains(err.Error(), "4 attempts") {
		t.Errorf("error = %v, want it to name the object and the 4 attempts", err)
	}
	if len(got) >= len(data) || !bytes.Equal(got, data[:len(got)]) {
		t.Errorf("read %d bytes before failing; they must be a prefix of the object", len(got))
	}
	if _, err2 := rc.Read(make([]byte, 10)); err2 == nil {
		t.Errorf("Read after the failure succeeded")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("giving up took %s", d)
	}
}

// TestS3Backoff pins the retry policy of S3 requests: RetryBase (default
// 100 ms) doubling up to 20 s, full jitter, MaxRetries+1 tries (default 6,
// negative: one).
func TestS3Backoff(t *testing.T) {
	for _, c := range []struct {
		maxRetries, tries int
		base, first       time.Duration
	}{
		{0, 6, 0, 100 * time.Millisecond},
		{3, 4, time.Millisecond, time.Millisecond},
		{-1, 1, 3 * time.Second, 3 * time.Second},
	} {
		src, err := NewS3Source("b", "", S3Config{Endpoint: "127.0.0.1:1", MaxRetries: c.maxRetries, RetryBase: c.base})
		if err != nil {
			t.Fatal(err)
		}
		b := src.(*s3Source).backoff
		if b.MaxTries != c.tries || b.Initial != c.first || b.Max != 20*time.Second || b.Jitter != 1 {
			t.Errorf("MaxRetries %d, RetryBase %s: backoff %+v, want %d tries from %s, at most 20s, full jitter", c.maxRetries, c.base, b, c.tries, c.first)
		}
		w := b.Waits()
		for k := 0; k < 12; k++ {
			limit := min(c.first<<k, 20*time.Second)
			if d := w.Next(); d < 0 || d > limit {
				t.Errorf("RetryBase %s: wait %d is %s, want within [0, %s]", c.first, k, d, limit)
			}
		}
	}
}

func TestS3ConfigFromEnv(t *testing.T) {
	clear := func() {
		for _, k := range []string{"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
			"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "AWS_SESSION_TOKEN",
			"AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"} {
			t.Setenv(k, "")
		}
		t.Setenv("HOME", t.TempDir())
	}

	clear()
	cfg, err := S3ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Endpoint != "s3.amazonaws.com" || !cfg.Secure || cfg.PathStyle || cfg.Region != "us-east-1" || cfg.AccessKey != "" {
		t.Errorf("defaults = %v", cfg)
	}

	t.Setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
	t.Setenv("AWS_DEFAULT_REGION", "eu-west-3")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
	t.Setenv("AWS_SESSION_TOKEN", "tok3n-value")
	cfg, err = S3ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	want := S3Config{Endpoint: "127.0.0.1:9000", Region: "eu-west-3", AccessKey: "AKIDEXAMPLE",
		SecretKey: "s3cr3t-value", SessionToken: "tok3n-value", PathStyle: true}
	if cfg != want {
		t.Errorf("from env = %v, want %v", cfg, want)
	}
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprintf("%v", &cfg)} {
		if strings.Contains(s, "s3cr3t") || strings.Contains(s, "tok3n") || strings.Contains(s, "AKIDEXAMPLE") {
			t.Errorf("printing the config shows credentials: %s", s)
		}
	}
	t.Setenv("AWS_REGION", "ap-south-1")
	t.Setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.com")
	cfg, _ = S3ConfigFromEnv()
	if cfg.Region != "ap-south-1" || cfg.Endpoint != "s3.example.com" || !cfg.Secure {
		t.Errorf("AWS_REGION / AWS_ENDPOINT_URL_S3 not honoured: %v", cfg)
	}
	for _, bad := range []string{"ftp://x", "127.0.0.1:9000", "http://", "http://h:1/path"} {
		t.Setenv("AWS_ENDPOINT_URL_S3", bad)
		if _, err := S3ConfigFromEnv(); err == nil {
			t.Errorf("endpoint %q accepted", bad)
		}
	}
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	if _, err := S3ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
		t.Errorf("half-set credentials: %v", err)
	}

	// The shared credentials file, with a profile.
	clear()
	file := filepath.Join(t.TempDir(), "credentials")
	os.WriteFile(file, []byte("[default]\naws_access_key_id = DEFAULTID\naws_secret_access_key = defaultsecret\n\n[train]\naws_access_key_id = TRAINID\naws_secret_access_key = trainsecret\n"), 0o600)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", file)
	cfg, _ = S3ConfigFromEnv()
	if cfg.AccessKey != "DEFAULTID" || cfg.SecretKey != "defaultsecret" {
		t.Errorf("default profile not read: %v", cfg.AccessKey)
	}
	t.Setenv("AWS_PROFILE", "train")
	cfg, _ = S3ConfigFromEnv()
	if cfg.AccessKey != "TRAINID" || cfg.SecretKey != "trainsecret" {
		t.Errorf("AWS_PROFILE=train not read: %v", cfg.AccessKey)
	}
	// ~/.aws/credentials when no file is named.
	clear()
	home := os.Getenv("HOME")
	os.MkdirAll(filepath.Join(home, ".aws"), 0o700)
	os.WriteFile(filepath.Join(home, ".aws", "credentials"), []byte("[default]\naws_access_key_id = HOMEID\naws_secret_access_key = homesecret\n"), 0o600)
	cfg, _ = S3ConfigFromEnv()
	if cfg.AccessKey != "HOMEID" {
		t.Errorf("~/.aws/credentials not read: %v", cfg.AccessKey)
	}
	// The environment wins over the file.
	t.Setenv("AWS_ACCESS_KEY_ID", "ENVID")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
	cfg, _ = S3ConfigFromEnv()
	if cfg.AccessKey != "ENVID" {
		t.Errorf("env credentials should win over the file: %v", cfg.AccessKey)
	}
}

func TestOpenURL(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src, err := Open(ctx, "file://"+dir)
	if err != nil {
		t.Fatalf("Open(file://%s): %v", dir, err)
	}
	if src.URL() != "file://"+dir {
		t.Errorf("URL() = %q", src.URL())
	}
	if _, err := Open(ctx, "file://localhost"+dir); err != nil {
		t.Errorf("file://localhost/abs: %v", err)
	}
	t.Setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
	t.Setenv("AWS_ACCESS_KEY_ID", "k")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s")
	for url, want := range map[string]string{
		"s3://bucket":             "s3://bucket",
		"s3://bucket/":            "s3://bucket",
		"s3://bucket/pre/fix/":    "s3://bucket/pre/fix",
		"s3://bucket/pre/fix/set": "s3://bucket/pre/fix/set",
	} {
		src, err := Open(ctx, url)
		if err != nil {
			t.Errorf("Open(%q): %v", url, err)
			continue
		}
		if src.URL() != want {
			t.Errorf("Open(%q).URL() = %q, want %q", url, src.URL(), want)
		}
	}
	for url, wantErr := range map[string]string{
		"":                        "empty",
		"data/shards":             "not a URL",
		"/abs/path":               "not a URL",
		"file://relative/dir":     "absolute path",
		"file://" + dir + "/nope": "not found",
		"gs://bucket/x":           `scheme "gs"`,
		"http://host/x":           `scheme "http"`,
		"s3:///prefix":            "no bucket",
		"s3://bucket/../x":        "escapes",
		"s3://bucket/x?versionId": "query",
	} {
		_, err := Open(ctx, url)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("Open(%q) = %v, want an error containing %q", url, err, wantErr)
		}
	}
}

// TestOpenForWriteCreatesTheNamedDirectory: OpenForWrite creates the
// directory the URL names, parsed as Open parses it: percent-decoded, with
// or without "localhost", any case of scheme.
func TestOpenForWriteCreatesTheNamedDirectory(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	for _, c := range []struct{ url, dir string }{
		{"file://" + base + "/plain", base + "/plain"},
		{"file://" + base + "/with%20space", base + "/with space"},
		{"file://localhost" + base + "/local", base + "/local"},
		{"FILE://" + base + "/upper", base + "/upper"},
	} {
		if _, err := OpenForWrite(ctx, c.url); err != nil {
			t.Fatalf("OpenForWrite(%s): %v", c.url, err)
		}
		if fi, err := os.Stat(c.dir); err != nil || !fi.IsDir() {
			t.Errorf("OpenForWrite(%s) did not create %s: %v", c.url, c.dir, err)
		}
	}
	if _, err := OpenForWrite(ctx, "file://relative/dir"); err == nil {
		t.Error("OpenForWrite of a relative file URL succeeded")
	}
}
