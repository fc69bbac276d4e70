package nccl

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/lavit-org/lavit/collective"
)

func TestLoadMissingLibrary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "libnccl.so.2")
	_, err := Load(path)
	if !errors.Is(err, ErrNotAvailable) {
		t.Fatalf("got %v, want ErrNotAvailable", err)
	}
	for _, want := range []string{path, "ring backend works without GPUs"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q should mention %q", err, want)
		}
	}
}

func TestLoadDefaultNameWithoutNCCL(t *testing.T) {
	if os.Getenv("LAVIT_TEST_NCCL") == "1" {
		t.Skip("NCCL is expected to be installed here")
	}
	if _, err := Load(""); err != nil && !strings.Contains(err.Error(), DefaultLibrary) {
		t.Fatalf("%q should name %s", err, DefaultLibrary)
	}
}

func TestLoadNotNCCL(t *testing.T) {
	const libm = "/lib/x86_64-linux-gnu/libm.so.6"
	if _, err := os.Stat(libm); err != nil {
		t.Skipf("no %s here", libm)
	}
	_, err := Load(libm)
	if !errors.Is(err, ErrNotAvailable) || !strings.Contains(err.Error(), "ncclGetVersion") || !strings.Contains(err.Error(), libm) {
		t.Fatalf("got %v; want ErrNotAvailable naming %s and the missing symbol ncclGetVersion", err, libm)
	}
}

func TestVersionString(t *testing.T) {
	for code, want := range map[int]string{2804: "2.8.4", 21400: "2.14.0", 22105: "2.21.5", 23007: "2.30.7"} {
		if got := VersionString(code); got != want {
			t.Errorf("VersionString(%d) = %q, want %q", code, got, want)
		}
	}
}

func TestCudartCandidatesFollowWheelLayout(t *testing.T) {
	t.Setenv("LAVIT_CUDART_LIB", "")
	got := cudartCandidates("/venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2")
	if got[0] != "/venv/lib/python3.12/site-packages/nvidia/cuda_runtime/lib/libcudart.so" {
		t.Errorf("first candidate %q", got[0])
	}
	if got[len(got)-1] != "libcudart.so.11.0" {
		t.Errorf("last candidate %q", got[len(got)-1])
	}
	t.Setenv("LAVIT_CUDART_LIB", "/x/libcudart.so.12")
	if got := cudartCandidates("libnccl.so.2"); len(got) != 1 || got[0] != "/x/libcudart.so.12" {
		t.Errorf("LAVIT_CUDART_LIB ignored: %v", got)
	}
}

func floatBytes(f []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
}

// TestGPUWorld1AllReduceBroadcast (all-reduce, broadcast, reduce-scatter,
// all-gather at world 1; all-reduce and reduce-scatter of ncclBfloat16 with
// SumBF16, of ncclUint32 with SumUint32 and of ncclFloat32 with Max) needs
// a GPU and NCCL:
// LAVIT_TEST_NCCL=1 [LAVIT_NCCL_LIB=/path/libnccl.so.2] go test ./collective/nccl/
func TestGPUWorld1AllReduceBroadcast(t *testing.T) {
	if os.Getenv("LAVIT_TEST_NCCL") != "1" {
		t.Skip("set LAVIT_TEST_NCCL=1 on a machine with a GPU and NCCL")
	}
	lib, err := Load(os.Getenv("LAVIT_NCCL_LIB"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NCCL %s from %s, CUDA runtime %s", VersionString(lib.Version()), lib.Path(), lib.cudartPath)
	id, err := lib.UniqueID()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	comm, err := NewComm(ctx, lib, 0, 0, 1, id)
	if err != nil {
		t.Fatal(err)
	}
	defer comm.Close()

	const n = 1000
	host := make([]float32, n)
	for i := range host {
		host[i] = float32(i) * 0.5
	}
	dev, err := lib.DeviceAlloc(0, 4*n)
	if err != nil {
		t.Fatal(err)
	}
	defer lib.DeviceFree(0, dev)
	check := func(what string) {
		t.Helper()
		got := make([]float32, n)
		if err := lib.CopyFromDevice(0, floatBytes(got), dev); err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if got[i] != host[i] { // a world of one: every call is the identity
				t.Fatalf("%s: [%d] = %v, want %v", what, i, got[i], host[i])
			}
		}
	}
	if err := lib.CopyToDevice(0, dev, floatBytes(host)); err != nil {
		t.Fatal(err)
	}
	for _, op := range []collective.Op{collective.Sum, collective.Avg} {
		if err := comm.AllReduce(ctx, dev, n, Float32, op); err != nil {
			t.Fatalf("allreduce %v: %v", op, err)
		}
		check("allreduce " + op.String())
	}
	if err := comm.Broadcast(ctx, dev, n, Float32, 0); err != nil {
		t.Fatalf("broadcast: %v", err)
	}
	check("broadcast")
	// The block calls in place (one block at world 1): the trampolines'
	// pointer arithmetic against the real ncclReduceScatter/ncclAllGather.
	for _, op := range []collective.Op{collective.Sum, collective.Avg} {
		if err := comm.ReduceScatter(ctx, dev, n, Float32, op); err != nil {
			t.Fatalf("reducescatter %v: %v", op, err)
		}
		check("reducescatter " + op.String())
	}
	if err := comm.AllGather(ctx, dev, n, Float32); err != nil {
		t.Fatalf("allgather: %v", err)
	}
	check("allgather")
	// SumBF16: the same bytes as 2n bfloat16s (ncclBfloat16, ncclSum).
	if err := comm.AllReduce(ctx, dev, 2*n, BFloat16, collective.SumBF16); err != nil {
		t.Fatalf("allreduce sum-bf16: %v", err)
	}
	check("allreduce sum-bf16")
	if err := comm.ReduceScatter(ctx, dev, 2*n, BFloat16, collective.SumBF16); err != nil {
		t.Fatalf("reducescatter sum-bf16: %v", err)
	}
	check("reducescatter sum-bf16")
	// SumUint32: the same bytes as n uint32s (ncclUint32, ncclSum); Max on
	// float32 (ncclMax).
	for _, tc := range []struct {
		op    collective.Op
		dtype DataType
	}{{collective.SumUint32, Uint32}, {collective.Max, Float32}} {
		if err := comm.AllReduce(ctx, dev, n, tc.dtype, tc.op); err != nil {
			t.Fatalf("allreduce %v: %v", tc.op, err)
		}
		check("allreduce " + tc.op.String())
		if err := comm.ReduceScatter(ctx, dev, n, tc.dtype, tc.op); err != nil {
			t.Fatalf("reducescatter %v: %v", tc.op, err)
		}
		check("reducescatter " + tc.op.String())
	}

	cause := errors.New("test abort")
	comm.Abort(cause)
	if err := comm.AllReduce(ctx, dev, n, Float32, collective.Sum); !errors.Is(err, collective.ErrAborted) || !errors.Is(err, cause) {
		t.Fatalf("after Abort: %v, want ErrAborted wrapping the cause", err)
	}
}
