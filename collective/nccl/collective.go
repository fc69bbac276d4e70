package nccl

import (
	"context"
	"fmt"
	"sync"
	"unsafe"

	"github.com/lavit-org/lavit/collective"
)

// Collective is an NCCL communicator behind the collective.Communicator
// contract, so the worker drives it like the ring: host buffers (the step's
// statistics, and every buffer of a CPU model) travel through a scratch
// buffer on the communicator's device, and AllReduceDevice,
// ReduceScatterDevice and AllGatherDevice work on device memory where it is
// (a GPU model's gradients, a sharded optimizer's parameters). The same rules hold:
// deadlines, serialised calls, sticky errors, Abort from any goroutine.
type Collective struct {
	comm *Comm

	mu      sync.Mutex // guards the scratch buffer across calls
	scratch uintptr
	cap     int // bytes
}

// NewCollective wraps a joined communicator; Close closes it.
func NewCollective(c *Comm) *Collective { return &Collective{comm: c} }

var _ collective.Communicator = (*Collective)(nil)

// Rank is this rank's index.
func (c *Collective) Rank() int { return c.comm.Rank() }

// Size is the number of ranks.
func (c *Collective) Size() int { return c.comm.Size() }

// Err returns the sticky error, or nil.
func (c *Collective) Err() error { return c.comm.Err() }

// AllReduceDevice reduces n float32s at ptr, device memory on the
// communicator's device, in place across all ranks (see elems for the
// NCCL type and count of each op). With collective.SumBF16 the n words
// hold 2n packed bfloat16s (ncclBfloat16, ncclSum); with
// collective.SumUint32 they are n uint32s (ncclUint32, ncclSum).
func (c *Collective) AllReduceDevice(ctx context.Context, ptr uintptr, n int, op collective.Op) error {
	count, dtype := elems(n, op)
	return c.comm.AllReduce(ctx, ptr, count, dtype, op)
}

// ReduceScatterDevice reduces n float32s at ptr (device memory, Size()
// equal blocks) across all ranks and leaves this rank's block of the
// result in place (see Comm.ReduceScatter). With collective.SumBF16 the n
// words hold 2n packed bfloat16s; n must still be a multiple of Size(), so
// a block is whole words (2n/Size() bfloat16s a rank). Other ops as in
// AllReduceDevice.
func (c *Collective) ReduceScatterDevice(ctx context.Context, ptr uintptr, n int, op collective.Op) error {
	if bad := collective.CheckBlocks(c.comm.rank, c.comm.size, "reducescatter", n); bad != nil {
		return c.comm.fail(bad)
	}
	count, dtype := elems(n, op)
	return c.comm.ReduceScatter(ctx, ptr, count, dtype, op)
}

// elems is how a reduction of n float32 words with op reaches NCCL: n
// Float32s (Sum, Avg, Max), for collective.SumUint32 n Uint32s (the
// words' bits), for collective.SumBF16 2n BFloat16s.
func elems(n int, op collective.Op) (int, DataType) {
	switch op {
	case collective.SumBF16:
		return 2 * n, BFloat16
	case collective.SumUint32:
		return n, Uint32
	}
	return n, Float32
}

// AllGatherDevice fills every block r of the n float32s at ptr (device
// memory, Size() equal blocks) with block r of rank r's (see
// Comm.AllGather).
func (c *Collective) AllGatherDevice(ctx context.Context, ptr uintptr, n int) error {
	return c.comm.AllGather(ctx, ptr, n, Float32)
}

// AllReduce reduces a host buffer across all ranks, through the device.
func (c *Collective) AllReduce(ctx context.Context, buf []float32, op collective.Op) error {
	return c.staged(buf, func(dev uintptr) error { return c.AllReduceDevice(ctx, dev, len(buf), op) })
}

// ReduceScatter leaves this rank's block of the reduction of a host buffer
// in place, through the device (see collective.Communicator).
func (c *Collective) ReduceScatter(ctx context.Context, buf []float32, op collective.Op) error {
	return c.staged(buf, func(dev uintptr) error { return c.ReduceScatterDevice(ctx, dev, len(buf), op) })
}

// AllGather fills every block r of a host buffer with rank r's block,
// through the device (see collective.Communicator).
func (c *Collective) AllGather(ctx context.Context, buf []float32) error {
	return c.staged(buf, func(dev uintptr) error { return c.comm.AllGather(ctx, dev, len(buf), Float32) })
}

// Broadcast copies root's host buffer to every rank's, through the device.
func (c *Collective) Broadcast(ctx context.Context, buf []float32, root int) error {
	return c.staged(buf, func(dev uintptr) error { return c.comm.Broadcast(ctx, dev, len(buf), Float32, root) })
}

// Barrier returns once every rank has entered it (a one-float all-reduce).
func (c *Collective) Barrier(ctx context.Context) error {
	return c.AllReduce(ctx, make([]float32, 1), collective.Sum)
}

// staged copies buf to the device scratch buffer, runs op on it and copies
// the result back.
func (c *Collective) staged(buf []float32, op func(dev uintptr) error) error {
	if err := c.comm.Err(); err != nil {
		return err
	}
	if len(buf) == 0 {
		return op(0)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	lib, dev := c.comm.lib, c.comm.device
	bytes := 4 * len(buf)
	if c.cap < bytes {
		if c.scratch != 0 {
			lib.DeviceFree(dev, c.scratch)
			c.scratch, c.cap = 0, 0
		}
		p, err := lib.DeviceAlloc(dev, bytes)
		if err != nil {
			return fmt.Errorf("nccl: device scratch of %d bytes: %w", bytes, err)
		}
		c.scratch, c.cap = p, bytes
	}
	host := unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), bytes)
	if err := lib.CopyToDevice(dev, c.scratch, host); err != nil {
		return err
	}
	if err := op(c.scratch); err != nil {
		return err
	}
	return lib.CopyFromDevice(dev, host, c.scratch)
}

// Abort breaks the communicator (see Comm.Abort).
func (c *Collective) Abort(err error) { c.comm.Abort(err) }

// Close closes the communicator and frees the scratch buffer.
func (c *Collective) Close() error {
	err := c.comm.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.scratch != 0 {
		c.comm.lib.DeviceFree(c.comm.device, c.scratch)
		c.scratch, c.cap = 0, 0
	}
	return err
}
