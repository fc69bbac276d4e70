// Package collective owns lavit's collective-communication API: the
// Communicator interface that the trainer calls (AllReduce, ReduceScatter,
// AllGather, Broadcast, Barrier, Abort, Close), its error and deadline
// rules, and the float32 and bfloat16 kernels the CPU backends share.
// Backends live in sub-packages: ring (pure Go over TCP, any machine) and
// nccl (cgo over libnccl.so.2 loaded at run time, GPUs only). See
// DESIGN.md.
//
// Rules every Communicator follows:
//
//   - Every call takes a ctx. A ctx without a deadline gets the
//     communicator's default timeout (DefaultTimeout unless configured), so
//     no call can block forever.
//   - Calls on one communicator are serialised: concurrent callers wait in
//     turn (FIFO is not promised). All ranks must issue the same sequence of
//     calls with the same sizes; a backend may detect a disagreement and
//     fail with ErrMismatch.
//   - After any error the communicator is broken: the error is sticky and
//     every later call returns the same value at once. The error is an
//     *Error naming the rank and, where one is involved, the peer, and wraps
//     ErrAborted, ErrPeerLost, ErrMismatch, ErrClosed,
//     context.DeadlineExceeded or context.Canceled. Recovery is a new
//     communicator (a new generation), never a retry on the broken one.
//   - Abort(err), from any goroutine, breaks the communicator and unblocks
//     every pending call promptly on this rank; peers learn of it through
//     the transport and fail too.
//   - A bad argument (an unknown op, a root out of range, a ReduceScatter
//     or AllGather buffer whose length is not a multiple of Size) breaks
//     the communicator with an "invalid argument" error wrapping
//     ErrAborted: the peers expect the call, so it cannot just be skipped.
//
// ReduceScatter and AllGather (for a sharded optimizer: ZeRO-1/2) see the
// buffer as Size equal blocks, block r = buf[r*n/Size : (r+1)*n/Size] for
// len(buf) = n. ReduceScatter leaves in block Rank() the reduction of that
// block (on the ring, bit for bit what AllReduce leaves there); AllGather
// then spreads every rank's own block to all ranks, so the two in a row
// are an all-reduce.
//
// The ops are Sum, Avg and SumBF16 (AllReduce and ReduceScatter). SumBF16
// reduces a bfloat16 buffer packed two values per float32 word (AddBF16);
// lengths and blocks count words, so a block never splits a pair.
package collective

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
	"unsafe"
)

// DefaultTimeout bounds a call whose ctx has no deadline.
const DefaultTimeout = 5 * time.Minute

// Op is a reduction operation.
type Op int

// Reductions. Avg is the sum divided by the world size. SumBF16 sums a
// packed bfloat16 buffer (two bfloat16s per float32 word, element 2i in the
// low half of word i: see AddBF16), each addition done in float32 and
// rounded to bfloat16, as NCCL sums ncclBfloat16; lengths and blocks are
// still counted in words. There is no bfloat16 average.
//
// SumUint32 adds the words as unsigned 32-bit integers, modulo 2^32
// (ncclUint32, ncclSum): exact and associative, so the result does not
// depend on the order of the additions. Fixed-point sums use it
// (collective/fixedpoint). Max takes the element-wise float32 maximum
// (ncclMax), the same in any order; on the ring a NaN wins, but NCCL's
// max (fmaxf) drops NaNs, so callers that must see one send +Inf instead.
const (
	Sum Op = iota
	Avg
	SumBF16
	SumUint32
	Max
)

// String is the op's name: "sum", "avg", "sum-bf16", "sum-uint32", "max".
func (o Op) String() string {
	switch o {
	case Sum:
		return "sum"
	case Avg:
		return "avg"
	case SumBF16:
		return "sum-bf16"
	case SumUint32:
		return "sum-uint32"
	case Max:
		return "max"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// Valid reports whether o is a known operation.
func (o Op) Valid() bool { return o >= Sum && o <= Max }

// Sentinel errors; test with errors.Is.
var (
	// ErrAborted: this rank or a peer called Abort, or a peer gave up on
	// the communicator (its deadline passed, it saw a mismatch).
	ErrAborted = errors.New("collective aborted")
	// ErrPeerLost: a peer's process or connection is gone.
	ErrPeerLost = errors.New("collective peer lost")
	// ErrMismatch: ranks disagree about the call (kind, size, root, op or
	// sequence number).
	ErrMismatch = errors.New("collective call mismatch")
	// ErrClosed: Close was called on this communicator.
	ErrClosed = errors.New("collective closed")
)

// Communicator is one rank's handle on a group of Size ranks.
type Communicator interface {
	// Rank is this member's index, 0 ≤ Rank < Size.
	Rank() int
	// Size is the number of ranks.
	Size() int
	// AllReduce replaces buf on every rank with the element-wise reduction
	// of all ranks' bufs. Every rank must pass the same length and op.
	// With SumBF16, buf holds packed bfloat16 pairs (see Op).
	AllReduce(ctx context.Context, buf []float32, op Op) error
	// ReduceScatter reduces buf element-wise across the ranks and leaves
	// block Rank() of the result in block Rank() of buf. len(buf) must be a
	// multiple of Size(); buf is Size() equal blocks. The other blocks are
	// scratch: their contents afterwards are undefined.
	ReduceScatter(ctx context.Context, buf []float32, op Op) error
	// AllGather fills every block r of buf with block r of rank r's buf
	// (len(buf) a multiple of Size(); on entry only block Rank() matters).
	AllGather(ctx context.Context, buf []float32) error
	// Broadcast copies root's buf into every other rank's buf.
	Broadcast(ctx context.Context, buf []float32, root int) error
	// Barrier returns once every rank has entered it.
	Barrier(ctx context.Context) error
	// Abort breaks the communicator with err (wrapped with ErrAborted) and
	// unblocks pending calls. Safe from any goroutine, any number of times.
	Abort(err error)
	// Close releases the connections; later calls return ErrClosed.
	Close() error
}

// PartReducer is a Communicator that can reduce a buffer part by part
// with the bits of one call on the whole (the ring: each element is summed
// in the order a call on the whole buffer sums it). Gradient buckets use
// it, so reducing them during backward trains exactly what one reduction
// after backward trains; buf is elements [off, off+len(buf)) of a whole
// buffer of total elements, and every rank reduces the same parts in the
// same order.
type PartReducer interface {
	// AllReducePart is AllReduce of one part of the whole buffer.
	AllReducePart(ctx context.Context, buf []float32, op Op, off, total int) error
	// ReduceScatterPart is ReduceScatter of one part: the part's elements
	// in block Rank() of the whole (total a multiple of Size()) are summed.
	ReduceScatterPart(ctx context.Context, buf []float32, op Op, off, total int) error
}

// Error is the sticky error of a broken communicator.
type Error struct {
	Rank int    // the rank that reports it
	Peer int    // the peer involved, or -1
	Call string // the call that failed ("allreduce", …), or "" outside a call
	Kind error  // ErrAborted, ErrPeerLost, ErrMismatch, ErrClosed or a context error
	Err  error  // the cause, may be nil
}

func (e *Error) Error() string {
	s := fmt.Sprintf("rank %d", e.Rank)
	if e.Call != "" {
		s += ": " + e.Call
	}
	s += ": " + e.Kind.Error()
	if e.Peer >= 0 {
		s += fmt.Sprintf(" (peer rank %d)", e.Peer)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap lets errors.Is see both the kind and the cause.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// WithDeadline returns ctx unchanged when it has a deadline, else ctx with
// timeout d (DefaultTimeout when d ≤ 0).
func WithDeadline(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	if d <= 0 {
		d = DefaultTimeout
	}
	return context.WithTimeout(ctx, d)
}

// AwaitTurn waits for a call's turn on a communicator whose calls are
// serialised by turn (a channel of capacity 1: the caller holding the turn
// has put a token in, and takes it out when done). held is true once the
// token is in. If broken closes first, held is false and failure nil: the
// caller returns its sticky error. If ctx ends first, failure names the
// rank and call: the peers expect this call, so the caller must break the
// communicator with it.
func AwaitTurn(ctx context.Context, turn chan<- struct{}, broken <-chan struct{}, rank int, call string) (held bool, failure *Error) {
	select {
	case turn <- struct{}{}:
		return true, nil
	case <-broken:
		return false, nil
	case <-ctx.Done():
		return false, &Error{Rank: rank, Peer: -1, Call: call, Kind: ctx.Err(),
			Err: errors.New("still waiting for an earlier call on this rank")}
	}
}

// CheckOp returns the error an all-reduce with an unknown op breaks the
// communicator with (its peers expect the call), or nil for a valid op.
func CheckOp(rank int, call string, op Op) *Error {
	if op.Valid() {
		return nil
	}
	return &Error{Rank: rank, Peer: -1, Call: call, Kind: ErrAborted, Err: fmt.Errorf("invalid argument: unknown op %v", op)}
}

// CheckRoot is CheckOp for a broadcast root outside [0, size).
func CheckRoot(rank, size int, call string, root int) *Error {
	if root >= 0 && root < size {
		return nil
	}
	return &Error{Rank: rank, Peer: -1, Call: call, Kind: ErrAborted, Err: fmt.Errorf("invalid argument: root %d out of range [0, %d)", root, size)}
}

// CheckBlocks is CheckOp for a ReduceScatter or AllGather buffer of n
// elements that cannot be cut into size equal blocks.
func CheckBlocks(rank, size int, call string, n int) *Error {
	if size > 0 && n%size == 0 {
		return nil
	}
	return &Error{Rank: rank, Peer: -1, Call: call, Kind: ErrAborted,
		Err: fmt.Errorf("invalid argument: buffer of %d elements is not a multiple of the world size %d (one equal block per rank)", n, size)}
}

// CheckPart is CheckOp for a part [off, off+n) that does not lie in a
// whole buffer of total elements (PartReducer).
func CheckPart(rank int, call string, off, n, total int) *Error {
	if off >= 0 && n >= 0 && total >= 0 && off <= total-n {
		return nil
	}
	return &Error{Rank: rank, Peer: -1, Call: call, Kind: ErrAborted,
		Err: fmt.Errorf("invalid argument: part of %d elements at %d does not lie in a buffer of %d", n, off, total)}
}

// AbortError is the error Abort(err) breaks a communicator with (err nil
// means "aborted").
func AbortError(rank int, err error) *Error {
	if err == nil {
		err = errors.New("aborted")
	}
	return &Error{Rank: rank, Peer: -1, Kind: ErrAborted, Err: err}
}

// AddFloat32 sets dst[i] += src[i]. It panics if the lengths differ.
func AddFloat32(dst, src []float32) {
	if len(dst) != len(src) {
		panic(fmt.Sprintf("collective.AddFloat32: len(dst) %d != len(src) %d", len(dst), len(src)))
	}
	i := addFast(dst, src) // AVX2 or SSE on amd64
	// Eight independent adds per iteration; the array-pointer conversions
	// leave one bounds check per eight elements.
	for ; i+8 <= len(dst); i += 8 {
		d := (*[8]float32)(dst[i : i+8])
		s := (*[8]float32)(src[i : i+8])
		d[0] += s[0]
		d[1] += s[1]
		d[2] += s[2]
		d[3] += s[3]
		d[4] += s[4]
		d[5] += s[5]
		d[6] += s[6]
		d[7] += s[7]
	}
	for ; i < len(dst); i++ {
		dst[i] += src[i]
	}
}

// ScaleFloat32 sets dst[i] *= s.
func ScaleFloat32(dst []float32, s float32) {
	i := 0
	for ; i+8 <= len(dst); i += 8 {
		d := (*[8]float32)(dst[i : i+8])
		d[0] *= s
		d[1] *= s
		d[2] *= s
		d[3] *= s
		d[4] *= s
		d[5] *= s
		d[6] *= s
		d[7] *= s
	}
	for ; i < len(dst); i++ {
		dst[i] *= s
	}
}

// AddUint32 adds src to dst word by word as unsigned 32-bit integers
// (the bits of each float32), modulo 2^32: the kernel of SumUint32.
func AddUint32(dst, src []float32) {
	if len(dst) != len(src) {
		panic(fmt.Sprintf("collective.AddUint32: len(dst) %d != len(src) %d", len(dst), len(src)))
	}
	d := unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(dst))), len(dst))
	s := unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(src))), len(src))
	for i := range d {
		d[i] += s[i]
	}
}

// MaxFloat32 leaves in dst the element-wise maximum of dst and src: the
// kernel of Max. A NaN in either gives NaN, so any order of a reduction
// gives the same bits.
func MaxFloat32(dst, src []float32) {
	if len(dst) != len(src) {
		panic(fmt.Sprintf("collective.MaxFloat32: len(dst) %d != len(src) %d", len(dst), len(src)))
	}
	src = src[:len(dst)]
	for i, d := range dst {
		switch s := src[i]; {
		case d != d: // NaN stays
		case s != s || s > d || (s == d && math.Signbit(float64(d))): // +0 over -0
			dst[i] = s
		}
	}
}
