// Package nccl drives NVIDIA NCCL from Go for GPU training. It loads
// libnccl.so.2 and the CUDA runtime with dlopen at run time, with its own
// minimal declarations of the few types and functions it uses, so the
// binary builds with only gcc and runs on machines without GPUs (Load then
// fails with ErrNotAvailable and the ring backend is used instead).
//
// Communicators are non-blocking (ncclConfig_t.blocking = 0): init and
// every operation are polled under the caller's deadline, and a deadline,
// a cancelled ctx or Abort ends in ncclCommAbort. All CUDA and NCCL calls
// for one communicator run on one goroutine locked to its OS thread (CUDA's
// current device is per thread). Buffers are device pointers; Go memory is
// never handed to an asynchronous call.
//
// lavit's reductions reach NCCL as ncclFloat32 with ncclSum, ncclAvg or
// ncclMax (collective.Sum, Avg, Max), ncclUint32 with ncclSum
// (collective.SumUint32, on the float32 words' bits) and ncclBfloat16 with
// ncclSum (collective.SumBF16); other pairings are refused (see
// Comm.AllReduce). NCCL's float maximum is CUDA's fmaxf, which returns the
// number when one operand is a NaN, so on real NCCL Max need not give
// collective.MaxFloat32's NaN; the fake NCCL (fakenccl) follows the ring.
//
// Nothing in cmd/lavit-coord may import this package (it needs cgo).
package nccl

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "nccl_loader.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// DefaultLibrary is the NCCL soname that Load opens when given no path.
const DefaultLibrary = "libnccl.so.2"

// MinVersion is the oldest NCCL with non-blocking communicators (2.14).
const MinVersion = 21400

// ErrNotAvailable means NCCL or the CUDA runtime could not be loaded.
var ErrNotAvailable = errors.New("nccl not available")

// Result is an ncclResult_t.
type Result int

// NCCL results (nccl.h).
const (
	Success            Result = 0
	UnhandledCudaError Result = 1
	SystemError        Result = 2
	InternalError      Result = 3
	InvalidArgument    Result = 4
	InvalidUsage       Result = 5
	RemoteError        Result = 6
	InProgress         Result = 7
)

// DataType is an ncclDataType_t.
type DataType int

// Element types (nccl.h; BFloat16 needs NCCL ≥ 2.10).
const (
	Int8     DataType = 0
	Uint8    DataType = 1
	Int32    DataType = 2
	Uint32   DataType = 3
	Int64    DataType = 4
	Uint64   DataType = 5
	Float16  DataType = 6
	Float32  DataType = 7
	Float64  DataType = 8
	BFloat16 DataType = 9
)

// elemSize is the size of one element of type d in bytes.
func (d DataType) elemSize() (int, error) {
	switch d {
	case Int8, Uint8:
		return 1, nil
	case Float16, BFloat16:
		return 2, nil
	case Int32, Uint32, Float32:
		return 4, nil
	case Int64, Uint64, Float64:
		return 8, nil
	}
	return 0, fmt.Errorf("invalid argument: unknown data type %d", int(d))
}

// Error is a failed NCCL or CUDA call.
type Error struct {
	Func string // "ncclAllReduce", "cudaMalloc", …
	Code int
	Msg  string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: error %d: %s", e.Func, e.Code, e.Msg)
}

// Lib is a loaded NCCL plus CUDA runtime.
type Lib struct {
	api        C.lnccl_api
	path       string
	cudartPath string
	version    int
}

var (
	loadMu sync.Mutex
	loaded = map[string]*Lib{}
)

// Load opens NCCL at path (DefaultLibrary when empty, found through the
// dynamic loader's usual search) and the CUDA runtime (see cudartCandidates),
// once per path. Without them it returns ErrNotAvailable with the reason.
func Load(path string) (*Lib, error) {
	if path == "" {
		path = DefaultLibrary
	}
	loadMu.Lock()
	defer loadMu.Unlock()
	if l, ok := loaded[path]; ok {
		return l, nil
	}
	l := &Lib{path: path}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var missing *C.char
	switch C.lnccl_load(cpath, &l.api, &missing) {
	case 0:
	case -1:
		return nil, fmt.Errorf("%w: dlopen %s: %s (NCCL is needed only for GPU training; the ring backend works without GPUs)",
			ErrNotAvailable, path, C.GoString(missing))
	default:
		return nil, fmt.Errorf("%w: %s lacks symbol %s (not an NCCL library?)", ErrNotAvailable, path, C.GoString(missing))
	}
	var v C.int
	if r := C.lnccl_get_version(&l.api, &v); r != 0 {
		C.lnccl_unload(&l.api)
		return nil, fmt.Errorf("%w: %s: ncclGetVersion failed (%d)", ErrNotAvailable, path, int(r))
	}
	l.version = int(v)
	if l.version < MinVersion {
		C.lnccl_unload(&l.api)
		return nil, fmt.Errorf("%w: %s is NCCL %s; lavit needs ≥ 2.14 (non-blocking communicators)", ErrNotAvailable, path, VersionString(l.version))
	}
	var tried []string
	for _, cand := range cudartCandidates(path) {
		cc := C.CString(cand)
		rc := C.lnccl_load_cudart(cc, &l.api, &missing)
		C.free(unsafe.Pointer(cc))
		if rc == 0 {
			l.cudartPath = cand
			break
		}
		tried = append(tried, fmt.Sprintf("%s (%s)", cand, C.GoString(missing)))
	}
	if l.cudartPath == "" {
		C.lnccl_unload(&l.api)
		return nil, fmt.Errorf("%w: NCCL loaded from %s but no CUDA runtime: tried %s; set LAVIT_CUDART_LIB",
			ErrNotAvailable, path, strings.Join(tried, "; "))
	}
	loaded[path] = l
	return l, nil
}

// cudartCandidates lists where the CUDA runtime may be: $LAVIT_CUDART_LIB,
// next to a pip wheel's NCCL (…/nvidia/nccl/lib → …/nvidia/cuda_runtime/lib),
// in NCCL's own directory, then the loader's search for the usual sonames.
func cudartCandidates(ncclPath string) []string {
	var out []string
	if p := os.Getenv("LAVIT_CUDART_LIB"); p != "" {
		return []string{p}
	}
	names := []string{"libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"}
	dir := filepath.Dir(ncclPath)
	if strings.HasSuffix(dir, filepath.Join("nvidia", "nccl", "lib")) {
		rt := filepath.Join(filepath.Dir(filepath.Dir(dir)), "cuda_runtime", "lib")
		for _, n := range names {
			out = append(out, filepath.Join(rt, n))
		}
	}
	if strings.Contains(ncclPath, "/") {
		for _, n := range names {
			out = append(out, filepath.Join(dir, n))
		}
	}
	return append(out, names...)
}

// WheelCandidates lists NCCL libraries that pip's PyTorch wheels install
// (nvidia/nccl/lib and torch/lib under the usual site-packages
// directories, and under $VIRTUAL_ENV and $CONDA_PREFIX), for a worker
// that was given no --nccl-lib and whose loader finds none.
func WheelCandidates() []string {
	var roots []string
	for _, env := range []string{"VIRTUAL_ENV", "CONDA_PREFIX"} {
		if p := os.Getenv(env); p != "" {
			roots = append(roots, p)
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		roots = append(roots, filepath.Join(home, ".local"))
	}
	roots = append(roots, "/usr/local", "/usr", "/opt/conda")
	var out []string
	for _, root := range roots {
		for _, pattern := range []string{
			"lib/python3*/*-packages/nvidia/nccl/lib/libnccl.so.2",
			"lib/python3*/*-packages/torch/lib/libnccl.so*",
		} {
			m, _ := filepath.Glob(filepath.Join(root, pattern))
			out = append(out, m...)
		}
	}
	return out
}

// VersionString renders an NCCL version code (2.21.5 ↔ 22105).
func VersionString(code int) string {
	if code < 10000 { // NCCL_VERSION(X,Y,Z) = X*1000+Y*100+Z before 2.9
		return fmt.Sprintf("%d.%d.%d", code/1000, code/100%10, code%100)
	}
	return fmt.Sprintf("%d.%d.%d", code/10000, code/100%100, code%100)
}

// Version is the loaded library's version code (NCCL_VERSION_CODE).
func (l *Lib) Version() int { return l.version }

// Path is where NCCL was loaded from.
func (l *Lib) Path() string { return l.path }

// UniqueID makes a fresh unique id for one new communicator. It also
// starts NCCL's bootstrap root in this process, which must live until every
// rank has joined; never reuse an id (make one per generation).
func (l *Lib) UniqueID() ([128]byte, error) {
	var id C.lnccl_unique_id
	var out [128]byte
	if r := C.lnccl_get_unique_id(&l.api, &id); r != 0 {
		return out, l.ncclError("ncclGetUniqueId", Result(r), nil)
	}
	copy(out[:], unsafe.Slice((*byte)(unsafe.Pointer(&id.internal[0])), 128))
	return out, nil
}

// DeviceCount reports how many CUDA devices are visible.
func (l *Lib) DeviceCount() (int, error) {
	var n C.int
	if r := C.lcuda_device_count(&l.api, &n); r != 0 {
		return 0, l.cudaError("cudaGetDeviceCount", int(r))
	}
	return int(n), nil
}

func (l *Lib) ncclError(fn string, r Result, s *C.lnccl_state) error {
	msg := C.GoString(C.lnccl_error_string(&l.api, C.lnccl_result(r)))
	if s != nil {
		if last := C.GoString(C.lnccl_last_error(&l.api, s)); last != "" {
			msg += ": " + last
		}
	}
	return &Error{Func: fn, Code: int(r), Msg: msg}
}

func (l *Lib) cudaError(fn string, r int) error {
	return &Error{Func: fn, Code: r, Msg: C.GoString(C.lcuda_error_string(&l.api, C.int(r)))}
}

// onDevice runs f on a locked OS thread whose current device is device.
func (l *Lib) onDevice(device int, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if r := C.lcuda_set_device(&l.api, C.int(device)); r != 0 {
		return l.cudaError("cudaSetDevice", int(r))
	}
	return f()
}

// DeviceMemory reports device's free and total memory in bytes
// (cudaMemGetInfo; it makes the device's context on first use).
func (l *Lib) DeviceMemory(device int) (free, total uint64, err error) {
	var f, t C.size_t
	err = l.onDevice(device, func() error {
		if r := C.lcuda_mem_get_info(&l.api, &f, &t); r != 0 {
			return l.cudaError("cudaMemGetInfo", int(r))
		}
		return nil
	})
	return uint64(f), uint64(t), err
}

// DeviceAlloc allocates n bytes on device (cudaMalloc).
func (l *Lib) DeviceAlloc(device int, n int) (uintptr, error) {
	var p C.uintptr_t
	err := l.onDevice(device, func() error {
		if r := C.lcuda_malloc(&l.api, &p, C.size_t(n)); r != 0 {
			return l.cudaError("cudaMalloc", int(r))
		}
		return nil
	})
	return uintptr(p), err
}

// DeviceFree frees memory from DeviceAlloc.
func (l *Lib) DeviceFree(device int, p uintptr) error {
	return l.onDevice(device, func() error {
		if r := C.lcuda_free(&l.api, C.uintptr_t(p)); r != 0 {
			return l.cudaError("cudaFree", int(r))
		}
		return nil
	})
}

// CopyToDevice copies src to device memory at dst (synchronous cudaMemcpy).
func (l *Lib) CopyToDevice(device int, dst uintptr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	return l.onDevice(device, func() error {
		if r := C.lcuda_memcpy_htod(&l.api, C.uintptr_t(dst), unsafe.Pointer(&src[0]), C.size_t(len(src))); r != 0 {
			return l.cudaError("cudaMemcpy", int(r))
		}
		return nil
	})
}

// CopyFromDevice copies device memory at src into dst (synchronous).
func (l *Lib) CopyFromDevice(device int, dst []byte, src uintptr) error {
	if len(dst) == 0 {
		return nil
	}
	return l.onDevice(device, func() error {
		if r := C.lcuda_memcpy_dtoh(&l.api, unsafe.Pointer(&dst[0]), C.uintptr_t(src), C.size_t(len(dst))); r != 0 {
			return l.cudaError("cudaMemcpy", int(r))
		}
		return nil
	})
}
