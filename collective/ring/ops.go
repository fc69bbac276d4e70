package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
	"unsafe"

	"github.com/lavit-org/lavit/collective"
)

// Call kinds, as sent in the call header.
const (
	kindAllReduce     byte = 1
	kindBroadcast     byte = 2
	kindBarrier       byte = 3
	kindTransfer      byte = 4
	kindReduceScatter byte = 5
	kindAllGather     byte = 6
)

func kindName(k byte) string {
	switch k {
	case kindAllReduce:
		return "allreduce"
	case kindBroadcast:
		return "broadcast"
	case kindBarrier:
		return "barrier"
	case kindTransfer:
		return "transfer"
	case kindReduceScatter:
		return "reducescatter"
	case kindAllGather:
		return "allgather"
	}
	return fmt.Sprintf("kind(%d)", k)
}

// AllReduce replaces buf on every rank with the element-wise sum (or
// average, or bfloat16 sum of packed pairs for SumBF16) over all ranks.
// See the package collective for the rules.
func (c *Comm) AllReduce(ctx context.Context, buf []float32, op collective.Op) error {
	return c.call(ctx, kindAllReduce, buf, op, 0, whole(len(buf)))
}

// AllReducePart is AllReduce of buf, elements [off, off+len(buf)) of a
// buffer of total elements that the ranks reduce part by part (in the same
// order on every rank): each element is summed exactly as AllReduce of the
// whole buffer sums it, so the parts end bitwise equal to one call on the
// whole. Gradient buckets use it (collective.PartReducer).
func (c *Comm) AllReducePart(ctx context.Context, buf []float32, op collective.Op, off, total int) error {
	return c.call(ctx, kindAllReduce, buf, op, 0, part{off, len(buf), total})
}

// ReduceScatterPart is the reduce-scatter phase of AllReducePart: the
// elements of buf that lie in block r of the whole buffer (total a
// multiple of Size()) end up summed on rank r, bitwise what ReduceScatter
// of the whole leaves there.
func (c *Comm) ReduceScatterPart(ctx context.Context, buf []float32, op collective.Op, off, total int) error {
	return c.call(ctx, kindReduceScatter, buf, op, 0, part{off, len(buf), total})
}

// ReduceScatter leaves in block Rank() of buf (Size() equal blocks) the
// element-wise sum (or average) over all ranks of that block; the other
// blocks are left holding partial sums. It is the reduce-scatter phase of
// AllReduce alone: block r is summed from rank r+1 around the ring,
// ((x_{r+1} + x_{r+2}) + …) + x_r, and for Avg multiplied by 1/Size(), so
// the result is bitwise what AllReduce leaves in block r. SumBF16 sums in
// the same order with collective.AddBF16 (blocks count words).
func (c *Comm) ReduceScatter(ctx context.Context, buf []float32, op collective.Op) error {
	return c.call(ctx, kindReduceScatter, buf, op, 0, whole(len(buf)))
}

// AllGather copies block r of rank r's buf into block r of every rank's
// buf (Size() equal blocks): the all-gather phase of AllReduce alone.
func (c *Comm) AllGather(ctx context.Context, buf []float32) error {
	return c.call(ctx, kindAllGather, buf, collective.Sum, 0, whole(len(buf)))
}

// Broadcast copies root's buf into every rank's buf.
func (c *Comm) Broadcast(ctx context.Context, buf []float32, root int) error {
	return c.call(ctx, kindBroadcast, buf, collective.Sum, root, whole(len(buf)))
}

// Barrier returns once every rank has entered it (a one-element
// all-reduce: every rank's result depends on every rank having sent).
func (c *Comm) Barrier(ctx context.Context) error {
	var one [1]float32
	return c.call(ctx, kindBarrier, one[:], collective.Sum, 0, whole(1))
}

// TransferOnly moves exactly the bytes an AllReduce of buf would, with the
// same chunks and pipeline, but adds nothing: buf ends up holding other
// ranks' data. It measures the transport's limit for benchmarks.
func (c *Comm) TransferOnly(ctx context.Context, buf []float32) error {
	return c.call(ctx, kindTransfer, buf, collective.Sum, 0, whole(len(buf)))
}

// header opens every call on every link, so ranks that disagree about a
// call fail with ErrMismatch instead of exchanging garbage:
//
//	"LC" | kind u8 | op u8 | root u32 | seq u64 | count u64 | off u64 | total u64
//
// (off, total: the part of a whole buffer the call reduces; 0 and count
// for a call on its whole buffer.)
type header struct {
	kind  byte
	op    byte
	root  uint32
	seq   uint64
	count uint64
	off   uint64
	total uint64
}

const headerLen = 40

func (h header) marshal() []byte {
	b := make([]byte, 0, headerLen)
	b = append(b, 'L', 'C', h.kind, h.op)
	b = binary.LittleEndian.AppendUint32(b, h.root)
	b = binary.LittleEndian.AppendUint64(b, h.seq)
	b = binary.LittleEndian.AppendUint64(b, h.count)
	b = binary.LittleEndian.AppendUint64(b, h.off)
	return binary.LittleEndian.AppendUint64(b, h.total)
}

func (h header) String() string {
	s := fmt.Sprintf("call #%d %s of %d elements", h.seq, kindName(h.kind), h.count)
	if h.total != h.count {
		s += fmt.Sprintf(" at %d of %d", h.off, h.total)
	}
	switch h.kind {
	case kindAllReduce, kindReduceScatter:
		s += ", op " + collective.Op(h.op).String()
	case kindBroadcast:
		s += fmt.Sprintf(", root %d", h.root)
	}
	return s
}

// mismatchError: the previous rank's header differs from ours.
type mismatchError struct{ msg string }

func (e *mismatchError) Error() string { return e.msg }

// check compares the previous rank's header b with ours.
func (h header) check(b []byte, prev int) error {
	if b[0] != 'L' || b[1] != 'C' {
		return &mismatchError{fmt.Sprintf("rank %d sent no call header (stream out of step)", prev)}
	}
	got := header{kind: b[2], op: b[3], root: binary.LittleEndian.Uint32(b[4:]),
		seq: binary.LittleEndian.Uint64(b[8:]), count: binary.LittleEndian.Uint64(b[16:]),
		off: binary.LittleEndian.Uint64(b[24:]), total: binary.LittleEndian.Uint64(b[32:])}
	if got != h {
		return &mismatchError{fmt.Sprintf("rank %d is in %s, this rank in %s", prev, got, h)}
	}
	return nil
}

// addBlock is how many elements the receiver reads and adds at a time
// (64 KiB): small enough that a block just read is still in the CPU's
// cache when it is added (reading a whole 512 KiB chunk first cost 2–3
// points of the 64 MiB all-reduce's share of the transfer limit).
const addBlock = 16 << 10

// addSlots is how many received blocks may wait for the adder.
const addSlots = 8

// asyncAddMin is the call size (elements) from which an adder goroutine
// adds while the receiver reads on: +1–2 points of the transfer limit at
// 64 MiB on two cores, but a goroutine hand-over per block would add
// ~10 µs to small calls, where latency is everything.
const asyncAddMin = 1 << 20

// errStopped: a goroutine of a call stopped because the communicator broke.
var errStopped = errors.New("stopped")

// call runs one collective: wait for our turn, check, exchange.
func (c *Comm) call(ctx context.Context, kind byte, buf []float32, op collective.Op, root int, pt part) error {
	name := kindName(kind)
	ctx, cancel := collective.WithDeadline(ctx, c.cfg.Timeout)
	defer cancel()
	held, failure := collective.AwaitTurn(ctx, c.turn, c.broken, c.rank, name)
	if failure != nil {
		return c.fail(failure) // our peers expect this call: skipping it breaks the ring
	}
	if !held {
		return c.Err()
	}
	defer func() { <-c.turn }()
	if err := c.Err(); err != nil {
		return err
	}
	var bad *collective.Error
	switch kind {
	case kindAllReduce:
		if bad = collective.CheckPart(c.rank, name, pt.off, pt.n, pt.total); bad == nil {
			bad = collective.CheckOp(c.rank, name, op)
		}
	case kindReduceScatter:
		if bad = collective.CheckPart(c.rank, name, pt.off, pt.n, pt.total); bad == nil {
			bad = collective.CheckBlocks(c.rank, c.size, name, pt.total)
		}
		if bad == nil {
			bad = collective.CheckOp(c.rank, name, op)
		}
	case kindAllGather:
		bad = collective.CheckBlocks(c.rank, c.size, name, len(buf))
	case kindBroadcast:
		bad = collective.CheckRoot(c.rank, c.size, name, root)
	}
	if bad != nil {
		return c.fail(bad)
	}
	c.seq++
	if c.size == 1 {
		return nil // every call on one rank leaves buf as it is
	}
	h := header{kind: kind, op: byte(op), root: uint32(root), seq: c.seq, count: uint64(len(buf)), off: uint64(pt.off), total: uint64(pt.total)}
	end, err := c.begin(ctx)
	if err != nil {
		return err
	}
	defer end()

	chunk := c.chunkElems(len(buf), kind)
	avg := op == collective.Avg
	add := collective.AddFloat32
	switch {
	case kind == kindTransfer:
		add = nil
	case op == collective.SumBF16:
		add = collective.AddBF16
	case op == collective.SumUint32:
		add = collective.AddUint32
	case op == collective.Max:
		add = collective.MaxFloat32
	}
	var p plan
	switch kind {
	case kindBroadcast:
		p = broadcastPlan(len(buf), c.size, c.rank, root, chunk)
	case kindReduceScatter:
		p = ringPlan(pt, c.size, c.rank, chunk, reduceScatter, avg)
	case kindAllGather:
		p = ringPlan(pt, c.size, c.rank, chunk, allGather, false)
	default: // all-reduce, barrier, transfer-only
		p = ringPlan(pt, c.size, c.rank, chunk, bothPhases, kind == kindAllReduce && avg)
	}
	if c.scratch == nil && kind != kindBroadcast && kind != kindAllGather {
		c.scratch = make([]float32, addSlots*addBlock)
	}
	c.callStart = time.Now()
	return c.exchange(ctx, name, h, buf, p, add)
}

// begin arms the connections' deadlines for one call and makes ctx's end
// interrupt it. The returned func disarms.
func (c *Comm) begin(ctx context.Context) (func(), error) {
	deadline, _ := ctx.Deadline()
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.callID++
	id := c.callID
	c.inCall = true
	c.next.SetWriteDeadline(deadline)
	c.prev.SetReadDeadline(deadline)
	c.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		if c.inCall && c.callID == id && c.err == nil {
			past := time.Unix(1, 0)
			c.next.SetWriteDeadline(past)
			c.prev.SetReadDeadline(past)
		}
		c.mu.Unlock()
	})
	return func() {
		stop()
		c.mu.Lock()
		c.inCall = false
		c.mu.Unlock()
	}, nil
}

// chunkElems picks the pipeline chunk: about chunksPerSeg chunks per
// segment, between minChunkBytes and cfg.ChunkBytes.
func (c *Comm) chunkElems(total int, kind byte) int {
	seg := total
	if kind != kindBroadcast {
		seg = (total + c.size - 1) / c.size
	}
	ch := (seg + chunksPerSeg - 1) / chunksPerSeg
	return max(min(ch, c.cfg.ChunkBytes/4), minChunkBytes/4)
}

// exchange runs plan p: a sender goroutine writes to the next rank while
// this goroutine reads from the previous one, reduces with add (nil: no
// adds, TransferOnly), and hands finished chunks to the sender.
func (c *Comm) exchange(ctx context.Context, name string, h header, buf []float32, p plan, add func(dst, src []float32)) error {
	fwd := make(chan span, p.nfwd)
	sent := make(chan struct{}, len(p.first)+p.nfwd)
	sendDone := make(chan error, 1)
	go func() {
		err := c.sendLoop(buf, h.marshal(), p, fwd, sent)
		if err != nil && err != errStopped {
			if !isTimeout(err) {
				// The next connection broke. The monitor reads that same
				// connection and may find a notice saying why (e.g. the
				// next rank gave up because another rank died): let it
				// speak first.
				select {
				case <-c.broken:
				case <-time.After(noticeWait):
				}
			}
			err = c.ioError(ctx, name, c.nextRank, "sending to", err)
		}
		sendDone <- err
	}()
	err := c.recvLoop(h, buf, p, fwd, sent, add)
	if err != nil && err != errStopped {
		err = c.ioError(ctx, name, c.prevRank, "receiving from", err)
	}
	serr := <-sendDone // never leave a goroutine touching buf
	if err == nil && serr == nil {
		return nil
	}
	return c.Err()
}

func (c *Comm) sendLoop(buf []float32, hdr []byte, p plan, fwd <-chan span, sent chan<- struct{}) error {
	pending := hdr // goes out with the first chunk in one writev
	write := func(s span) error {
		b := bytesOf(buf[s.off : s.off+s.n])
		if pending != nil {
			bufs := net.Buffers{pending, b}
			pending = nil
			_, err := bufs.WriteTo(c.next)
			return err
		}
		_, err := c.next.Write(b)
		return err
	}
	for _, s := range p.first {
		if err := write(s); err != nil {
			return err
		}
		sent <- struct{}{}
	}
	for range p.nfwd {
		select {
		case s := <-fwd:
			if err := write(s); err != nil {
				return err
			}
			sent <- struct{}{}
		case <-c.broken:
			return errStopped
		}
	}
	if pending != nil {
		_, err := c.next.Write(pending)
		return err
	}
	return nil
}

// addJob is one step of the receiver's work after a read: add a received
// block into the buffer (src nil: nothing to add), then, at the end of a
// chunk, hand the chunk to the sender.
type addJob struct {
	dst, src []float32
	slot     int   // the scratch slot src lives in
	scale    bool  // multiply dst by 1/n after the add
	forward  *span // forward this chunk once done
}

func (c *Comm) recvLoop(h header, buf []float32, p plan, fwd chan<- span, sent <-chan struct{}, add func(dst, src []float32)) error {
	var hb [headerLen]byte
	if _, err := io.ReadFull(c.prev, hb[:]); err != nil {
		return err
	}
	c.lastWait.Store(int64(time.Since(c.callStart)))
	if err := h.check(hb[:], c.prevRank); err != nil {
		return err
	}
	scale := float32(1) / float32(c.size)
	free := make(chan int, addSlots) // scratch slots not holding a pending block
	for i := range addSlots {
		free <- i
	}
	finish := func(j addJob) {
		if j.src != nil {
			if add != nil {
				add(j.dst, j.src)
				if j.scale {
					collective.ScaleFloat32(j.dst, scale)
				}
			}
			free <- j.slot
		}
		if j.forward != nil {
			fwd <- *j.forward
		}
	}
	deliver := finish // small calls: add inline (no hand-over latency)
	if len(buf) >= asyncAddMin {
		// Large calls: an adder goroutine adds and forwards, in order,
		// while this one reads on, so reads and adds use both cores.
		jobs := make(chan addJob, addSlots)
		adderDone := make(chan struct{})
		go func() {
			defer close(adderDone)
			for j := range jobs {
				finish(j)
			}
		}()
		defer func() { close(jobs); <-adderDone }() // never leave it touching buf
		deliver = func(j addJob) { jobs <- j }
	}
	nsent := 0
	for _, it := range p.recv {
		// Never overwrite what our sender may still be reading (the adds
		// into it are done: the sender only sends finished chunks).
		for nsent < it.waitSent {
			select {
			case <-sent:
				nsent++
			case <-c.broken:
				return errStopped
			}
		}
		dst := buf[it.off : it.off+it.n]
		var last addJob // the chunk's last job: it carries the forward
		if it.reduce {
			// Read and add a block at a time, so the block is still in
			// the CPU's cache when it is added.
			for o := 0; o < it.n; o += addBlock {
				m := min(addBlock, it.n-o)
				var slot int
				select {
				case slot = <-free:
				case <-c.broken:
					return errStopped
				}
				sc := c.scratch[slot*addBlock : slot*addBlock+m]
				if _, err := io.ReadFull(c.prev, bytesOf(sc)); err != nil {
					return err
				}
				j := addJob{dst: dst[o : o+m], src: sc, slot: slot, scale: it.scale}
				if o+m < it.n {
					deliver(j)
				} else {
					last = j
				}
			}
		} else if _, err := io.ReadFull(c.prev, bytesOf(dst)); err != nil {
			return err
		}
		if it.forward {
			last.forward = &it.span
		}
		if last.src != nil || last.forward != nil {
			deliver(last)
		}
	}
	return nil
}

// ioError classifies a failed read or write, breaks the communicator and
// returns the sticky error (which may be an earlier, truer cause).
func (c *Comm) ioError(ctx context.Context, name string, peer int, dir string, err error) error {
	if sticky := c.Err(); sticky != nil {
		return sticky
	}
	e := &collective.Error{Rank: c.rank, Peer: peer, Call: name}
	deadline, _ := ctx.Deadline()
	var mm *mismatchError
	switch {
	case errors.As(err, &mm):
		e.Kind, e.Err = collective.ErrMismatch, err
	case ctx.Err() != nil:
		e.Kind, e.Err = ctx.Err(), fmt.Errorf("%s rank %d", dir, peer)
	case errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(deadline):
		e.Kind, e.Err = context.DeadlineExceeded, fmt.Errorf("%s rank %d", dir, peer)
	default:
		e.Kind, e.Err = collective.ErrPeerLost, fmt.Errorf("%s rank %d: %w", dir, peer, err)
	}
	return c.fail(e)
}

// bytesOf views f as its bytes (host order, little endian on every host
// that may join a ring).
func bytesOf(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
}
