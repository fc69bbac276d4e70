// Package trainer is the Go side of lavit's libtorch binding: it loads the
// C++ shim (trainer/csrc, built by `make torch`) at run time with dlopen, and
// wraps its C ABI in a small Go API: Model, Step, Grads, ApplyGrads, State,
// Load, Eval, Tokenize, Close. Code that does not train never loads it, so
// the binaries build and run without libtorch.
package trainer

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "shim_loader.h"
*/
import "C"

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"unsafe"
)

// ABIVersion is the shim ABI this package speaks (LAVIT_ABI_VERSION).
const ABIVersion = C.LAVIT_ABI_VERSION

// StateFormat is the layout version of the state blobs the shim writes and
// reads (LAVIT_STATE_FORMAT); it changes only with the layout, not with the
// ABI, so checkpoints outlive ABI changes.
const StateFormat = C.LAVIT_STATE_FORMAT

// StateFormatBlocked is the layout version of a blocked state
// (Model.StatePart, LAVIT_STATE_FORMAT_BLOCKED).
const StateFormatBlocked = C.LAVIT_STATE_FORMAT_BLOCKED

// LibraryName is the shim's file name; `make torch` builds it into bin/.
const LibraryName = "liblavit_torch.so"

// ErrNotAvailable means the libtorch shim could not be loaded.
var ErrNotAvailable = errors.New("libtorch shim not available")

// Lib is a loaded shim.
type Lib struct {
	api  C.lavit_api
	path string
}

// BuildInfo describes the libtorch the shim was built against.
type BuildInfo struct {
	Torch   string `json:"torch"`
	CUDA    bool   `json:"cuda"`
	Threads int    `json:"threads"`
	ABI     int    `json:"abi"`
	// Deterministic reports whether libtorch's deterministic algorithms
	// are on for the process (SetDeterministic).
	Deterministic bool `json:"deterministic"`
}

var (
	loadMu sync.Mutex
	loaded = map[string]*Lib{}
)

// FindLibrary resolves where the shim is: an explicit path is used as is
// (a wrong --torch-lib is an error, never silently replaced); otherwise
// $LAVIT_TORCH_LIB, else next to the running executable, else ./bin.
func FindLibrary(explicit string) (string, error) {
	candidates := []string{explicit}
	if explicit == "" {
		candidates = []string{os.Getenv("LAVIT_TORCH_LIB")}
		if exe, err := os.Executable(); err == nil {
			candidates = append(candidates, filepath.Join(filepath.Dir(exe), LibraryName))
		}
		candidates = append(candidates, filepath.Join("bin", LibraryName))
	}
	var tried []string
	for _, c := range candidates {
		if c == "" {
			continue
		}
		tried = append(tried, c)
		if _, err := os.Stat(c); err == nil {
			return filepath.Abs(c)
		}
	}
	return "", fmt.Errorf("%w: %s not found (tried %v); build it with `make torch` or pass --torch-lib / LAVIT_TORCH_LIB", ErrNotAvailable, LibraryName, tried)
}

// Load opens the shim (once per path) and checks its ABI version. Before the
// first load it sets OPENBLAS_NUM_THREADS=1 unless the environment sets it
// (OpenBLAS ignores torch's thread setting) and raises glibc's malloc
// thresholds (allocation churn otherwise dominates small steps).
func Load(path string) (*Lib, error) {
	resolved, err := FindLibrary(path)
	if err != nil {
		return nil, err
	}
	loadMu.Lock()
	defer loadMu.Unlock()
	if l, ok := loaded[resolved]; ok {
		return l, nil
	}
	if os.Getenv("OPENBLAS_NUM_THREADS") == "" {
		os.Setenv("OPENBLAS_NUM_THREADS", "1")
	}
	C.c_tune_malloc()
	cpath := C.CString(resolved)
	defer C.free(unsafe.Pointer(cpath))
	l := &Lib{path: resolved}
	var missing *C.char
	switch C.shim_load(cpath, &l.api, &missing) {
	case 0:
	case -1:
		return nil, fmt.Errorf("%w: dlopen %s: %s", ErrNotAvailable, resolved, C.GoString(missing))
	default:
		return nil, fmt.Errorf("%w: %s lacks symbol %s (built from other sources?)", ErrNotAvailable, resolved, C.GoString(missing))
	}
	if v := int(C.c_abi_version(&l.api)); v != ABIVersion {
		return nil, fmt.Errorf("%w: %s speaks ABI version %d, this binary needs %d; rebuild it with `make torch`", ErrNotAvailable, resolved, v, ABIVersion)
	}
	loaded[resolved] = l
	return l, nil
}

// Path is where the shim was loaded from.
func (l *Lib) Path() string { return l.path }

// lastError returns the shim's message for the last failure on this thread.
// Callers lock the OS thread around the call and this read.
func (l *Lib) lastError(what string) error {
	return fmt.Errorf("%s: %s", what, C.GoString(C.c_last_error(&l.api)))
}

// takeString copies and frees a string the shim allocated.
func (l *Lib) takeString(s *C.char) string {
	if s == nil {
		return ""
	}
	defer C.c_free_string(&l.api, s)
	return C.GoString(s)
}

// BuildInfo reports the libtorch version and CUDA availability.
func (l *Lib) BuildInfo() (BuildInfo, error) {
	var bi BuildInfo
	s := l.takeString(C.c_build_info(&l.api))
	if s == "" {
		return bi, errors.New("build info unavailable")
	}
	return bi, json.Unmarshal([]byte(s), &bi)
}

// SetThreads sets libtorch's intra-op threads for the process.
func (l *Lib) SetThreads(n int) error {
	return withThread(func() error {
		if C.c_set_threads(&l.api, C.int(n)) != 0 {
			return l.lastError("set threads")
		}
		return nil
	})
}

// SetDeterministic turns libtorch's deterministic algorithms on or off
// for the process (lavit_set_deterministic): bitwise-reproducible runs
// need them on a GPU, where some kernels otherwise add in a different
// order from run to run.
func (l *Lib) SetDeterministic(on bool) error {
	return withThread(func() error {
		if C.c_set_deterministic(&l.api, cFlag(on)) != 0 {
			return l.lastError("set deterministic algorithms")
		}
		return nil
	})
}

// trimHeap returns the C heap's free memory to the system (malloc_trim):
// a measurement of a step's peak memory starts from a heap holding no
// freed pages the step could reuse unseen.
func trimHeap() { C.c_trim_heap() }
