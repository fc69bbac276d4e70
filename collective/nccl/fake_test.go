package nccl

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/internal/testutil"
)

// loadFake loads the fake NCCL (fakenccl/fake_nccl.c, built by
// testutil.FakeNCCL), which plays both libnccl.so.2 and libcudart.so.
func loadFake(t *testing.T) *Lib {
	t.Helper()
	lib, err := Load(testutil.FakeNCCL(t))
	if err != nil {
		t.Fatal(err)
	}
	return lib
}

// fakeLog makes the fake append its lifecycle calls to a file; the
// returned func reads them.
func fakeLog(t *testing.T) func() string {
	path := filepath.Join(t.TempDir(), "log")
	t.Setenv("FAKE_NCCL_LOG", path)
	return func() string {
		b, _ := os.ReadFile(path)
		return strings.Join(strings.Fields(string(b)), " ")
	}
}

func fakeComm(t *testing.T, lib *Lib) (*Comm, uintptr) {
	t.Helper()
	id, err := lib.UniqueID()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := NewComm(ctx, lib, 0, 0, 1, id)
	if err != nil {
		t.Fatal(err)
	}
	buf, err := lib.DeviceAlloc(0, 4*100)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lib.DeviceFree(0, buf) })
	return c, buf
}

func TestFakeWorld1(t *testing.T) {
	lib := loadFake(t)
	log := fakeLog(t)
	if lib.Version() != 22105 {
		t.Fatalf("version %d", lib.Version())
	}
	c, buf := fakeComm(t, lib)
	host := make([]float32, 100)
	for i := range host {
		host[i] = float32(i)
	}
	if err := lib.CopyToDevice(0, buf, floatBytes(host)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.AllReduce(ctx, buf, 100, Float32, collective.Avg); err != nil {
		t.Fatal(err)
	}
	if err := c.Broadcast(ctx, buf, 100, Float32, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, 100)
	if err := lib.CopyFromDevice(0, floatBytes(got), buf); err != nil {
		t.Fatal(err)
	}
	if got[99] != 99 {
		t.Fatalf("got[99] = %v", got[99])
	}
	if err := c.Broadcast(ctx, buf, 100, Float32, 1); err == nil {
		t.Fatal("broadcast from root 1 of 1: no error")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// A broken communicator is aborted, never finalized.
	if l := log(); l != "init op op abort" {
		t.Fatalf("lifecycle %q, want init op op abort", l)
	}
	if err := c.AllReduce(ctx, buf, 100, Float32, collective.Sum); !errors.Is(err, collective.ErrAborted) {
		t.Fatalf("after close: %v", err)
	}
}

func TestFakeCleanClose(t *testing.T) {
	lib := loadFake(t)
	log := fakeLog(t)
	c, buf := fakeComm(t, lib)
	if err := c.AllReduce(context.Background(), buf, 100, Float32, collective.Sum); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if l := log(); l != "init op finalize destroy" {
		t.Fatalf("lifecycle %q, want init op finalize destroy", l)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestFakeDeadlineAborts(t *testing.T) {
	lib := loadFake(t)
	log := fakeLog(t)
	c, buf := fakeComm(t, lib)
	defer c.Close()
	t.Setenv("FAKE_NCCL_OP_HANG", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.AllReduce(ctx, buf, 100, Float32, collective.Sum)
	// Generous: this tells an abort at the deadline from none, not a fast
	// machine from a loaded one.
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 30*time.Second {
		t.Fatalf("got %v after %s, want DeadlineExceeded soon after 200ms", err, time.Since(start))
	}
	if l := log(); l != "init op abort" {
		t.Fatalf("lifecycle %q, want the comm aborted", l)
	}
	if again := c.Broadcast(context.Background(), buf, 100, Float32, 0); again != err {
		t.Fatalf("sticky error: %v, want %v", again, err)
	}
}

func TestFakeAbortUnblocksCall(t *testing.T) {
	lib := loadFake(t)
	log := fakeLog(t)
	c, buf := fakeComm(t, lib)
	defer c.Close()
	t.Setenv("FAKE_NCCL_OP_HANG", "1")
	done := make(chan error, 1)
	go func() { done <- c.AllReduce(context.Background(), buf, 100, Float32, collective.Sum) }()
	testutil.WaitFor(t, 30*time.Second, "the call to reach the fake", func() bool { return strings.Contains(log(), "op") })
	cause := errors.New("peer rank 3 lost (coordinator)")
	c.Abort(cause)
	select {
	case err := <-done:
		if !errors.Is(err, collective.ErrAborted) || !errors.Is(err, cause) {
			t.Fatalf("got %v, want ErrAborted wrapping the cause", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Abort did not unblock the call")
	}
	testutil.WaitFor(t, 30*time.Second, "ncclCommAbort", func() bool { return strings.Contains(log(), "abort") })
	if l := log(); l != "init op abort" {
		t.Fatalf("lifecycle %q, want ncclCommAbort once", l)
	}
}

func TestFakeRemoteErrorIsPeerLost(t *testing.T) {
	lib := loadFake(t)
	fakeLog(t)
	c, buf := fakeComm(t, lib)
	defer c.Close()
	t.Setenv("FAKE_NCCL_REMOTE_ERROR", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.AllReduce(ctx, buf, 100, Float32, collective.Sum)
	if !errors.Is(err, collective.ErrPeerLost) || !strings.Contains(err.Error(), "remote process exited") {
		t.Fatalf("got %v, want ErrPeerLost from ncclRemoteError", err)
	}
}

func TestFakeInitTimeoutAborts(t *testing.T) {
	lib := loadFake(t)
	log := fakeLog(t)
	t.Setenv("FAKE_NCCL_INIT_HANG", "1")
	id, _ := lib.UniqueID()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := NewComm(ctx, lib, 0, 0, 1, id)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if l := log(); l != "init abort" {
		t.Fatalf("lifecycle %q, want init abort", l)
	}
}

func TestFakeBadDevice(t *testing.T) {
	lib := loadFake(t)
	id, _ := lib.UniqueID()
	_, err := NewComm(context.Background(), lib, 1, 0, 1, id)
	if err == nil || !strings.Contains(err.Error(), "cudaSetDevice") {
		t.Fatalf("got %v, want a cudaSetDevice error", err)
	}
}
