// Package testutil has helpers shared by lavit's tests: polling with a
// deadline (never fixed sleeps), free loopback ports, building the
// binaries for process-level tests, and running the benchmarks' PyTorch
// reference (reference.go).
package testutil

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// WaitFor polls cond until it holds or timeout passes, then fails the
// test naming what it waited for. It polls every 5 ms at first and backs
// off to every 100 ms: many conditions start a CLI process, and at a
// steady 10 ms those took over a third of a 2-core machine from the
// processes under test.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for pause := 5 * time.Millisecond; ; pause = min(2*pause, 100*time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(pause)
	}
}

// FreePort returns a loopback port that was free a moment ago. Prefer
// port 0 where the code under test can report what it bound; process
// tests that must pass ports on a command line use this. The port is
// drawn at random below the kernel's ephemeral range (32768 and up on
// Linux), where no one else's port 0 can land on it before the process
// under test binds it (a port handed out by port 0 and released was taken
// again by a ring listener in one CI run), and checked free.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 200 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken: draw again
		}
		l.Close()
		return port
	}
	t.Fatal("free port: 200 random ports in 20000-31999 were all taken")
	return 0
}

// RepoRoot finds the module root from this file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries builds lavit-coord (with CGO_ENABLED=0, as shipped) and
// lavit-worker once per test process and returns the directory holding
// them. Set LAVIT_BIN_DIR to use binaries built elsewhere.
func Binaries(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("LAVIT_BIN_DIR"); dir != "" {
		return dir
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "lavit-bin-")
		if buildErr != nil {
			return
		}
		for _, b := range []struct{ name, cgo string }{{"lavit-coord", "0"}, {"lavit-worker", "1"}} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, b.name), "./cmd/"+b.name)
			cmd.Dir = RepoRoot()
			cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b.name, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// SyncBuffer collects a child process's output, safe for concurrent
// writes. With Limit > 0 it keeps only the first Limit bytes.
type SyncBuffer struct {
	Limit int
	mu    sync.Mutex
	buf   bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Limit > 0 && b.buf.Len() > b.Limit {
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// CheckDeps lists the packages the package in dir (relative to the repo
// root) links, with the extra environment (e.g. CGO_ENABLED=0), and fails
// t for each one that is forbidden or under a forbidden path (tailscale's
// deptest idea). It also fails when the list is too short to prove
// anything.
func CheckDeps(t testing.TB, dir string, env []string, forbidden []string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Dir = filepath.Join(RepoRoot(), dir)
	cmd.Env = append(os.Environ(), env...)
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", dir, err)
	}
	deps := strings.Fields(string(b))
	if len(deps) < 10 {
		t.Fatalf("go list returned only %d packages; the check would prove nothing", len(deps))
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("%s depends on %s", dir, d)
			}
		}
	}
	return deps
}

var (
	fakeNCCLOnce sync.Once
	fakeNCCLPath string
	fakeNCCLErr  error
)

// FakeNCCL returns the path of the fake NCCL (collective/nccl/fakenccl):
// $LAVIT_FAKE_NCCL when set (make test builds bin/fake-nccl), else a copy
// built once per test process. Its directory also holds the libcudart.so it
// plays, where the NCCL loader looks for the CUDA runtime.
func FakeNCCL(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("LAVIT_FAKE_NCCL"); p != "" {
		return p
	}
	fakeNCCLOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fake-nccl-")
		if err != nil {
			fakeNCCLErr = err
			return
		}
		so := filepath.Join(dir, "libnccl.so.2")
		src := filepath.Join(RepoRoot(), "collective", "nccl", "fakenccl", "fake_nccl.c")
		if out, err := exec.Command("gcc", "-shared", "-fPIC", "-O2", "-o", so, src, "-lpthread", "-lrt").CombinedOutput(); err != nil {
			fakeNCCLErr = fmt.Errorf("build the fake NCCL: %v\n%s", err, out)
			return
		}
		if err := os.Symlink("libnccl.so.2", filepath.Join(dir, "libcudart.so")); err != nil {
			fakeNCCLErr = err
			return
		}
		fakeNCCLPath = so
	})
	if fakeNCCLErr != nil {
		t.Fatal(fakeNCCLErr)
	}
	return fakeNCCLPath
}
