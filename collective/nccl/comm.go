package nccl

/*
#include <stdlib.h>
#include "nccl_loader.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"github.com/lavit-org/lavit/collective"
)

const (
	cudaSuccess       = 0
	cudaErrorNotReady = 600
	// Poll intervals: start fast (a small collective takes microseconds),
	// back off to pollMax, and to pollSlow once a wait passes slowAfter.
	pollMin   = 10 * time.Microsecond
	pollMax   = time.Millisecond
	pollSlow  = 10 * time.Millisecond
	slowAfter = time.Second
	// finalizeTimeout bounds Close's graceful ncclCommFinalize.
	finalizeTimeout = 30 * time.Second
)

// Comm is one rank of an NCCL communicator on one device. Calls are
// serialised; after any error the communicator is aborted and every later
// call returns the same sticky *collective.Error.
type Comm struct {
	lib    *Lib
	rank   int
	size   int
	device int
	state  *C.lnccl_state // C memory: comm, stream, config, id

	work chan func()   // run on the locked worker thread
	turn chan struct{} // serialises calls

	mu      sync.Mutex
	err     error
	broken  chan struct{} // closed when err is set
	aborted bool          // ncclCommAbort done
	quit    bool          // worker told to exit
}

// NewComm joins rank of a size-rank communicator identified by id, on
// device. It returns when every rank has joined, or fails (aborting the
// half-made communicator) when ctx ends; a ctx without deadline gets
// collective.DefaultTimeout.
func NewComm(ctx context.Context, lib *Lib, device, rank, size int, id [128]byte) (*Comm, error) {
	if size < 1 || rank < 0 || rank >= size {
		return nil, fmt.Errorf("nccl: rank %d of size %d", rank, size)
	}
	ctx, cancel := collective.WithDeadline(ctx, 0)
	defer cancel()
	c := &Comm{
		lib: lib, rank: rank, size: size, device: device,
		state:  (*C.lnccl_state)(C.calloc(1, C.size_t(unsafe.Sizeof(C.lnccl_state{})))),
		work:   make(chan func(), 4),
		turn:   make(chan struct{}, 1),
		broken: make(chan struct{}),
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&c.state.id.internal[0])), 128), id[:])
	go c.worker()
	err := c.exec(func() error {
		if r := C.lcuda_set_device(&lib.api, C.int(device)); r != cudaSuccess {
			return lib.cudaError("cudaSetDevice", int(r))
		}
		if r := C.lcuda_stream_create(&lib.api, c.state); r != cudaSuccess {
			return lib.cudaError("cudaStreamCreateWithFlags", int(r))
		}
		r := Result(C.lnccl_comm_init(&lib.api, c.state, C.int(size), C.int(rank)))
		if r != Success && r != InProgress {
			C.lcuda_stream_destroy(&lib.api, c.state)
			return lib.ncclError("ncclCommInitRankConfig", r, nil)
		}
		if err := c.pollAsync(ctx, "ncclCommInitRankConfig"); err != nil {
			C.lnccl_comm_abort(&lib.api, c.state)
			C.lcuda_stream_destroy(&lib.api, c.state)
			return err
		}
		return nil
	})
	if err != nil {
		c.stopWorker()
		C.free(unsafe.Pointer(c.state))
		return nil, fmt.Errorf("nccl: rank %d of %d on device %d: %w", rank, size, device, err)
	}
	return c, nil
}

// worker runs closures on one OS thread for the communicator's life. The
// thread stays locked when the goroutine exits, so Go discards it along
// with its CUDA state.
func (c *Comm) worker() {
	runtime.LockOSThread()
	for f := range c.work {
		f()
		c.mu.Lock()
		quit := c.quit
		c.mu.Unlock()
		if quit {
			return
		}
	}
}

// exec runs f on the worker thread and waits for it.
func (c *Comm) exec(f func() error) error {
	res := make(chan error, 1)
	c.work <- func() { res <- f() }
	return <-res
}

// stopWorker makes the worker exit after the closure it runs next. If the
// queue is full it has a next closure already.
func (c *Comm) stopWorker() {
	c.mu.Lock()
	c.quit = true
	c.mu.Unlock()
	select {
	case c.work <- func() {}:
	default:
	}
}

// pollAsync waits, on the worker thread, until the communicator's pending
// non-blocking work (init, enqueue, finalize) is no longer in progress.
func (c *Comm) pollAsync(ctx context.Context, what string) error {
	return c.poll(ctx, func() (bool, error) { return c.asyncDone(what) })
}

// asyncDone asks NCCL once whether the communicator's pending work (what)
// is done: true when it is, false while in progress, an error when it or
// the communicator failed. Worker thread only.
func (c *Comm) asyncDone(what string) (bool, error) {
	if r := Result(C.lnccl_comm_get_async_error(&c.lib.api, c.state)); r != Success {
		return false, c.lib.ncclError("ncclCommGetAsyncError", r, c.state)
	}
	switch a := Result(c.state.async); a {
	case Success:
		return true, nil
	case InProgress:
		return false, nil
	default:
		return false, c.lib.ncclError(what, a, c.state)
	}
}

// poll calls done until it reports true or an error, sleeping between
// tries, and gives up when ctx ends or the communicator breaks.
func (c *Comm) poll(ctx context.Context, done func() (bool, error)) error {
	start := time.Now()
	sleep := pollMin
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.broken:
			return errBroken
		default:
		}
		time.Sleep(sleep)
		limit := pollMax
		if time.Since(start) > slowAfter {
			limit = pollSlow
		}
		sleep = min(2*sleep, limit)
	}
}

var errBroken = errors.New("communicator broken")

// Rank is this rank's index.
func (c *Comm) Rank() int { return c.rank }

// Size is the number of ranks.
func (c *Comm) Size() int { return c.size }

// Err returns the sticky error, or nil.
func (c *Comm) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// AllReduce reduces count elements of dtype at devPtr in place across all
// ranks. Ops and types must agree (see ncclOp): collective.SumBF16 needs
// dtype BFloat16 (count in bfloat16s) and collective.SumUint32 needs
// Uint32, both ncclSum; Avg (ncclAvg) and Max (ncclMax) need Float32; a
// BFloat16 buffer reduces by sum only, a Uint32 one by SumUint32 only.
func (c *Comm) AllReduce(ctx context.Context, devPtr uintptr, count int, dtype DataType, op collective.Op) error {
	const name = "allreduce"
	if bad := collective.CheckOp(c.rank, name, op); bad != nil {
		return c.fail(bad)
	}
	nop, err := ncclOp(dtype, op)
	if err != nil {
		return c.fail(&collective.Error{Rank: c.rank, Peer: -1, Call: name, Kind: collective.ErrAborted, Err: err})
	}
	return c.call(ctx, name, func() Result {
		return Result(C.lnccl_all_reduce(&c.lib.api, c.state, C.uintptr_t(devPtr), C.size_t(count), C.int(dtype), nop))
	})
}

// NCCL reduction ops (nccl.h's ncclRedOp_t) that lavit uses.
const (
	ncclSum = 0
	ncclMax = 2
	ncclAvg = 4
)

// ncclOp is the ncclRedOp_t of a valid op on dtype: ncclSum for Sum,
// SumBF16 and SumUint32, ncclAvg for Avg, ncclMax for Max. SumBF16 only on
// BFloat16 and BFloat16 only by sum (lavit has no bfloat16 average or
// maximum); SumUint32 only on Uint32 and Uint32 only by SumUint32; Avg and
// Max only on Float32. Anything else is an invalid argument.
func ncclOp(dtype DataType, op collective.Op) (C.int, error) {
	switch {
	case op == collective.SumBF16 && dtype != BFloat16:
		return 0, fmt.Errorf("invalid argument: op %v needs data type BFloat16 (%d), got %d", op, int(BFloat16), int(dtype))
	case op == collective.SumUint32 && dtype != Uint32:
		return 0, fmt.Errorf("invalid argument: op %v needs data type Uint32 (%d), got %d", op, int(Uint32), int(dtype))
	case dtype == BFloat16 && op != collective.Sum && op != collective.SumBF16:
		return 0, fmt.Errorf("invalid argument: op %v on bfloat16: bfloat16 buffers reduce by sum only (%v)", op, collective.SumBF16)
	case dtype == Uint32 && op != collective.SumUint32:
		return 0, fmt.Errorf("invalid argument: op %v on uint32: uint32 buffers reduce by %v only", op, collective.SumUint32)
	case (op == collective.Avg || op == collective.Max) && dtype != Float32:
		return 0, fmt.Errorf("invalid argument: op %v needs data type Float32 (%d), got %d", op, int(Float32), int(dtype))
	case op == collective.Avg:
		return ncclAvg, nil
	case op == collective.Max:
		return ncclMax, nil
	}
	return ncclSum, nil
}

// ReduceScatter reduces count elements at devPtr, Size() equal blocks,
// across all ranks and leaves this rank's block of the result in place
// (ncclReduceScatter with recvbuff = devPtr + Rank()·count/Size()
// elements). count must be a multiple of Size(); the other blocks are
// scratch, as in collective.Communicator. Ops and types as in AllReduce.
func (c *Comm) ReduceScatter(ctx context.Context, devPtr uintptr, count int, dtype DataType, op collective.Op) error {
	const name = "reducescatter"
	if bad := collective.CheckBlocks(c.rank, c.size, name, count); bad != nil {
		return c.fail(bad)
	}
	if bad := collective.CheckOp(c.rank, name, op); bad != nil {
		return c.fail(bad)
	}
	size, err := dtype.elemSize()
	if err != nil {
		return c.fail(&collective.Error{Rank: c.rank, Peer: -1, Call: name, Kind: collective.ErrAborted, Err: err})
	}
	nop, err := ncclOp(dtype, op)
	if err != nil {
		return c.fail(&collective.Error{Rank: c.rank, Peer: -1, Call: name, Kind: collective.ErrAborted, Err: err})
	}
	return c.call(ctx, name, func() Result {
		return Result(C.lnccl_reduce_scatter(&c.lib.api, c.state, C.uintptr_t(devPtr), C.size_t(count/c.size), C.size_t(size), C.int(c.rank), C.int(dtype), nop))
	})
}

// AllGather copies block r of rank r's count elements at devPtr (Size()
// equal blocks) into block r at every rank's devPtr, in place
// (ncclAllGather with sendbuff = devPtr + Rank()·count/Size() elements).
// count must be a multiple of Size().
func (c *Comm) AllGather(ctx context.Context, devPtr uintptr, count int, dtype DataType) error {
	const name = "allgather"
	if bad := collective.CheckBlocks(c.rank, c.size, name, count); bad != nil {
		return c.fail(bad)
	}
	size, err := dtype.elemSize()
	if err != nil {
		return c.fail(&collective.Error{Rank: c.rank, Peer: -1, Call: name, Kind: collective.ErrAborted, Err: err})
	}
	return c.call(ctx, name, func() Result {
		return Result(C.lnccl_all_gather(&c.lib.api, c.state, C.uintptr_t(devPtr), C.size_t(count/c.size), C.size_t(size), C.int(c.rank), C.int(dtype)))
	})
}

// Broadcast copies root's count elements at devPtr to every rank's devPtr.
func (c *Comm) Broadcast(ctx context.Context, devPtr uintptr, count int, dtype DataType, root int) error {
	if bad := collective.CheckRoot(c.rank, c.size, "broadcast", root); bad != nil {
		return c.fail(bad)
	}
	return c.call(ctx, "broadcast", func() Result {
		return Result(C.lnccl_broadcast(&c.lib.api, c.state, C.uintptr_t(devPtr), C.size_t(count), C.int(dtype), C.int(root)))
	})
}

// call enqueues one operation on the comm's stream and polls the stream
// and NCCL's async error until it completes, aborting on any failure.
func (c *Comm) call(ctx context.Context, name string, enqueue func() Result) error {
	ctx, cancel := collective.WithDeadline(ctx, 0)
	defer cancel()
	held, failure := collective.AwaitTurn(ctx, c.turn, c.broken, c.rank, name)
	if failure != nil {
		return c.fail(failure)
	}
	if !held {
		return c.Err()
	}
	defer func() { <-c.turn }()
	if err := c.Err(); err != nil {
		return err
	}
	var failed *collective.Error
	c.exec(func() error {
		classify := func(err error) *collective.Error {
			e := &collective.Error{Rank: c.rank, Peer: -1, Call: name, Kind: collective.ErrAborted, Err: err}
			var ne *Error
			switch {
			case errors.Is(err, errBroken):
				return nil // Abort got there first; its error stands
			case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
				e.Kind, e.Err = err, nil
			case errors.As(err, &ne) && ne.Code == int(RemoteError):
				e.Kind = collective.ErrPeerLost
			}
			return e
		}
		if r := enqueue(); r != Success && r != InProgress {
			failed = classify(c.lib.ncclError("nccl "+name, r, c.state))
			return nil
		}
		if err := c.pollAsync(ctx, "nccl "+name); err != nil {
			failed = classify(err)
			return nil
		}
		err := c.poll(ctx, func() (bool, error) {
			switch r := int(C.lcuda_stream_query(&c.lib.api, c.state)); r {
			case cudaSuccess:
				return true, nil
			case cudaErrorNotReady:
			default:
				return false, c.lib.cudaError("cudaStreamQuery", r)
			}
			// A peer's failure shows here while our stream waits on it.
			if r := Result(C.lnccl_comm_get_async_error(&c.lib.api, c.state)); r == Success {
				if a := Result(c.state.async); a != Success && a != InProgress {
					return false, c.lib.ncclError("nccl "+name, a, c.state)
				}
			}
			return false, nil
		})
		if err != nil {
			failed = classify(err)
		}
		return nil
	})
	if failed != nil {
		c.fail(failed)
	}
	if err := c.Err(); err != nil {
		c.exec(func() error { c.abortOnThread(); return nil })
		return err
	}
	return nil
}

// fail sets the sticky error (first one wins) and returns it.
func (c *Comm) fail(e *collective.Error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = e
		close(c.broken)
	}
	return c.err
}

// abortOnThread runs ncclCommAbort once; worker thread only.
func (c *Comm) abortOnThread() {
	c.mu.Lock()
	done := c.aborted
	c.aborted = true
	c.mu.Unlock()
	if !done {
		C.lnccl_comm_abort(&c.lib.api, c.state)
	}
}

// Abort breaks the communicator with err: a pending call stops polling at
// once and the communicator is aborted (ncclCommAbort) on its thread.
// Peers notice through NCCL only if they talk to this rank; the caller
// should also tell them out of band (the coordinator does).
func (c *Comm) Abort(err error) {
	c.fail(collective.AbortError(c.rank, err))
	select { // idle worker: abort now; busy: the poll loop sees broken
	case c.work <- func() { c.abortOnThread() }:
	default:
	}
}

// Close finalizes and destroys the communicator when it is healthy and
// idle, else aborts it (a call in flight is cut short); then it destroys
// the stream and stops the thread. Later calls return ErrClosed.
func (c *Comm) Close() error {
	c.mu.Lock()
	if c.quit {
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	select {
	case c.turn <- struct{}{}: // idle
	default:
		c.fail(&collective.Error{Rank: c.rank, Peer: -1, Kind: collective.ErrClosed})
		c.turn <- struct{}{} // the call in flight stops and aborts
	}
	defer func() { <-c.turn }()
	graceful := c.Err() == nil
	c.fail(&collective.Error{Rank: c.rank, Peer: -1, Kind: collective.ErrClosed})
	var err error
	c.exec(func() error {
		// An Abort that raced this Close may have run on the thread
		// since graceful was read: a communicator aborted (and freed)
		// is not finalized too.
		c.mu.Lock()
		aborted := c.aborted
		c.mu.Unlock()
		if graceful && !aborted {
			err = c.finalizeOnThread()
		}
		c.abortOnThread() // no-op after a clean destroy
		C.lcuda_stream_destroy(&c.lib.api, c.state)
		return nil
	})
	c.stopWorker()
	C.free(unsafe.Pointer(c.state))
	c.state = nil
	return err
}

// finalizeOnThread flushes and destroys the communicator (worker thread).
func (c *Comm) finalizeOnThread() error {
	// Pass &c.lib.api itself (not a copy of the pointer): cgo then checks
	// only that field, not the whole Lib with its Go strings.
	if r := Result(C.lnccl_comm_finalize(&c.lib.api, c.state)); r != Success && r != InProgress {
		return c.lib.ncclError("ncclCommFinalize", r, c.state)
	}
	deadline := time.Now().Add(finalizeTimeout)
	for {
		// Not c.poll: Close has broken the communicator already.
		done, err := c.asyncDone("ncclCommFinalize")
		if err != nil {
			return err
		}
		if done {
			C.lnccl_comm_destroy(&c.lib.api, c.state)
			c.mu.Lock()
			c.aborted = true // destroyed: nothing left to abort
			c.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nccl: finalize rank %d: no progress in %s; aborted", c.rank, finalizeTimeout)
		}
		time.Sleep(pollMax)
	}
}
