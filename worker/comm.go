package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/collective/nccl"
	"github.com/lavit-org/lavit/collective/ring"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/trainer"
)

// stepComm is the generation's collective as the step loop uses it: every
// all-reduce (sum) under the run's collective timeout, timed and split
// into moving bytes and idling (waiting in the collective for a slower
// peer to arrive, measured by the ring). A world of one has no
// communicator; its reduce is a no-op.
type stepComm struct {
	comm    collective.Communicator // nil in a world of one
	timeout time.Duration
	waiter  interface{ LastWait() time.Duration } // nil if the backend does not measure it
	device  deviceReducer                         // NCCL's in-place device path; nil for the ring
	sharder deviceSharder                         // NCCL's device reduce-scatter and all-gather (ZeRO); nil for the ring
	parts   collective.PartReducer                // the ring's part reductions (gradient buckets); nil for NCCL
	// gradOp sums the gradient buffer: collective.Sum, or SumBF16 for a
	// model whose gradients are bf16 (collective.reduce_dtype bf16).
	gradOp collective.Op

	busy, idle time.Duration // since the last take
}

// deviceReducer is a collective that can sum device memory in place.
type deviceReducer interface {
	AllReduceDevice(ctx context.Context, ptr uintptr, n int, op collective.Op) error
}

// deviceSharder is a collective that can reduce-scatter and all-gather
// device memory in place (ZeRO on NCCL).
type deviceSharder interface {
	ReduceScatterDevice(ctx context.Context, ptr uintptr, n int, op collective.Op) error
	AllGatherDevice(ctx context.Context, ptr uintptr, n int) error
}

func newStepComm(comm collective.Communicator, timeout time.Duration, gradsBF16 bool) *stepComm {
	c := &stepComm{comm: comm, timeout: timeout, gradOp: collective.Sum}
	if gradsBF16 {
		c.gradOp = collective.SumBF16
	}
	c.waiter, _ = comm.(interface{ LastWait() time.Duration })
	c.device, _ = comm.(deviceReducer)
	c.sharder, _ = comm.(deviceSharder)
	c.parts, _ = comm.(collective.PartReducer)
	return c
}

// reduce sums buf over the ranks in place (a trainer.Reducer).
func (c *stepComm) reduce(ctx context.Context, buf []float32) error {
	return c.allReduce(collective.Sum)(ctx, buf)
}

// reduceGrads sums the gradient buffer over the ranks in place, with the
// gradients' sum (gradOp).
func (c *stepComm) reduceGrads(ctx context.Context, buf []float32) error {
	return c.allReduce(c.gradOp)(ctx, buf)
}

// scatter reduce-scatters the gradient buffer (rank r keeps the sum of
// block r), with the gradients' sum.
func (c *stepComm) scatter(ctx context.Context, buf []float32) error {
	return c.reduceScatter(c.gradOp)(ctx, buf)
}

// allReduce is a timed all-reduce with op, as a trainer.Reducer.
func (c *stepComm) allReduce(op collective.Op) trainer.Reducer {
	return func(ctx context.Context, buf []float32) error {
		return c.timed(ctx, func(ctx context.Context) error { return c.comm.AllReduce(ctx, buf, op) })
	}
}

// reduceScatter is a timed reduce-scatter with op, as a trainer.Reducer.
func (c *stepComm) reduceScatter(op collective.Op) trainer.Reducer {
	return func(ctx context.Context, buf []float32) error {
		return c.timed(ctx, func(ctx context.Context) error { return c.comm.ReduceScatter(ctx, buf, op) })
	}
}

// gather all-gathers buf (block r from rank r).
func (c *stepComm) gather(ctx context.Context, buf []float32) error {
	return c.timed(ctx, func(ctx context.Context) error { return c.comm.AllGather(ctx, buf) })
}

// timed runs one collective call under the run's timeout, adding its time
// to busy and idle (a world of one has nothing to do).
func (c *stepComm) timed(ctx context.Context, call func(context.Context) error) error {
	if c.comm == nil {
		return nil
	}
	began := time.Now()
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	err := call(cctx)
	took := time.Since(began)
	wait := time.Duration(0)
	if c.waiter != nil {
		wait = min(c.waiter.LastWait(), took)
	}
	c.busy += took - wait
	c.idle += wait
	return err
}

// reduction is what the model's step sums its buffers with: host buffers
// through reduce, and a GPU model's gradients in place on the device when
// the collective can (NCCL), else staged through the host.
func (c *stepComm) reduction() trainer.Reduce {
	r := trainer.Reduce{Host: c.reduce, Grads: c.reduceGrads, Scatter: c.scatter, Gather: c.gather,
		// A bitwise step's exact reductions (trainer/bitwise.go).
		Max: c.allReduce(collective.Max), Words: c.allReduce(collective.SumUint32), WordsScatter: c.reduceScatter(collective.SumUint32)}
	if c.parts != nil { // the ring: gradient buckets with the bits of one call
		r.GradsPart = func(ctx context.Context, buf []float32, off, total int) error {
			return c.timed(ctx, func(ctx context.Context) error { return c.parts.AllReducePart(ctx, buf, c.gradOp, off, total) })
		}
		r.ScatterPart = func(ctx context.Context, buf []float32, off, total int) error {
			return c.timed(ctx, func(ctx context.Context) error { return c.parts.ReduceScatterPart(ctx, buf, c.gradOp, off, total) })
		}
	}
	if c.device != nil {
		r.Device = c.reduceDevice
	}
	if c.sharder != nil {
		r.DeviceScatter = func(ctx context.Context, ptr uintptr, n int) error {
			return c.timedDevice(ctx, func(ctx context.Context) error { return c.sharder.ReduceScatterDevice(ctx, ptr, n, c.gradOp) })
		}
		r.DeviceGather = func(ctx context.Context, ptr uintptr, n int) error {
			return c.timedDevice(ctx, func(ctx context.Context) error { return c.sharder.AllGatherDevice(ctx, ptr, n) })
		}
	}
	return r
}

// reduceDevice sums n float32s of device memory at ptr over the ranks in
// place (a trainer.DeviceReducer), timed like reduce.
func (c *stepComm) reduceDevice(ctx context.Context, ptr uintptr, n int) error {
	return c.timedDevice(ctx, func(ctx context.Context) error { return c.device.AllReduceDevice(ctx, ptr, n, c.gradOp) })
}

// timedDevice runs one device collective call under the run's timeout,
// counted as busy (NCCL cannot tell waiting from moving bytes).
func (c *stepComm) timedDevice(ctx context.Context, call func(context.Context) error) error {
	began := time.Now()
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	err := call(cctx)
	c.busy += time.Since(began)
	return err
}

// take returns the collective time since the last take, split into moving
// bytes and waiting for a slower peer, and starts counting afresh.
func (c *stepComm) take() (busy, idle time.Duration) {
	busy, idle = c.busy, c.idle
	c.busy, c.idle = 0, 0
	return busy, idle
}

// abortWhenDone makes ctx's end unblock a pending collective call (leaving
// the job must never hang in an all-reduce). Call the returned func to
// stop watching.
func (c *stepComm) abortWhenDone(ctx context.Context) (stop func() bool) {
	if c.comm == nil {
		return func() bool { return true }
	}
	return context.AfterFunc(ctx, func() { c.comm.Abort(errors.New("the job was stopped")) })
}

// agreeOnStep checks that every rank restored the same step (each rank
// fills its slot of a vector summed over the ranks).
func (c *stepComm) agreeOnStep(ctx context.Context, rank, world int, step int64) error {
	if c.comm == nil {
		return nil
	}
	buf := make([]float32, world)
	buf[rank] = float32(step) + 1
	if err := c.reduce(ctx, buf); err != nil {
		return fmt.Errorf("agree on the restored step: %w", err)
	}
	c.take()
	for k, v := range buf {
		if int64(v)-1 != step {
			return fmt.Errorf("rank %d restored step %d, this rank step %d: the ranks disagree (a checkpoint part changed while they read it?)", k, int64(v)-1, step)
		}
	}
	return nil
}

func (c *stepComm) close() {
	if c.comm != nil {
		c.comm.Close()
	}
}

// joinCollective rendezvouses through the coordinator and joins the
// generation's collective: the ring or NCCL, as the run's backend says. A
// world of one needs none and gets a nil communicator.
func (t *Trainer) joinCollective(ctx context.Context, j *Job, timeout time.Duration) (collective.Communicator, error) {
	d := j.Desired
	if d.World == 1 {
		return nil, nil
	}
	switch d.Backend {
	case wire.BackendNCCL:
		return t.joinNCCL(ctx, j, timeout)
	case wire.BackendRing, "":
		return t.joinRing(ctx, j, timeout)
	}
	return nil, fmt.Errorf("collective.backend %q: this worker knows ring and nccl", d.Backend)
}

// joinNCCL makes rank 0's unique id (posted at the rendezvous, where every
// member picks it up) and joins the NCCL communicator on this worker's
// device.
func (t *Trainer) joinNCCL(ctx context.Context, j *Job, timeout time.Duration) (collective.Communicator, error) {
	d := j.Desired
	if t.NCCL == nil {
		return nil, errors.New("collective.backend nccl: this worker has no NCCL library (start lavit-worker join with --nccl-lib, or run the run with backend ring)")
	}
	device, err := deviceIndex(j.Device)
	if err != nil {
		return nil, err
	}
	req := wire.RendezvousRequest{Instance: j.Instance, Run: d.Run, Generation: d.Generation, Rank: d.Rank}
	if d.Rank == 0 {
		id, err := t.NCCL.UniqueID()
		if err != nil {
			return nil, fmt.Errorf("nccl unique id: %w", err)
		}
		req.NCCLID = id[:]
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply, err := Rendezvous(rctx, j.Client, req)
	if err != nil {
		return nil, err
	}
	var id [128]byte
	if copy(id[:], reply.NCCLID) != len(id) {
		return nil, fmt.Errorf("rendezvous for run %s generation %d: the NCCL id has %d bytes, want %d", d.Run, d.Generation, len(reply.NCCLID), len(id))
	}
	comm, err := nccl.NewComm(rctx, t.NCCL, device, d.Rank, d.World, id)
	if err != nil {
		return nil, fmt.Errorf("join the NCCL communicator: %w", err)
	}
	j.Log.Info("nccl communicator joined", "device", device, "nccl", nccl.VersionString(t.NCCL.Version()))
	return nccl.NewCollective(comm), nil
}

// deviceIndex is the CUDA device index of a worker's device: N for cuda:N,
// 0 for the CPU (a CPU worker reaches NCCL only through a fake library).
func deviceIndex(device string) (int, error) {
	rest, ok := strings.CutPrefix(device, "cuda:")
	if !ok {
		return 0, nil
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("device %q: want cuda:N", device)
	}
	return n, nil
}

// joinRing rendezvouses through the coordinator and connects the ring.
func (t *Trainer) joinRing(ctx context.Context, j *Job, timeout time.Duration) (collective.Communicator, error) {
	d := j.Desired
	listen := t.ListenAddr
	if listen == "" {
		// The address this host reaches the coordinators from: peers
		// reach it there, and nothing listens on other interfaces.
		host, err := routeHost(j.CoordURL)
		if err != nil {
			return nil, err
		}
		listen = net.JoinHostPort(host, "0")
	}
	l, err := ring.Listen(listen)
	if err != nil {
		return nil, fmt.Errorf("ring listener: %w", err)
	}
	addr, err := advertiseAddr(t.Advertise, l.Addr(), j.CoordURL)
	if err != nil {
		l.Close()
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply, err := Rendezvous(rctx, j.Client, wire.RendezvousRequest{Instance: j.Instance, Run: d.Run, Generation: d.Generation, Rank: d.Rank, Addr: addr})
	if err != nil {
		l.Close()
		return nil, err
	}
	comm, err := ring.Connect(rctx, l, ring.Config{Rank: d.Rank, Size: d.World, Peers: reply.Peers, Run: d.Run, Generation: d.Generation,
		Secret: reply.RingSecret, Timeout: timeout, Logger: j.Log})
	l.Close()
	if err != nil {
		return nil, fmt.Errorf("connect the ring: %w", err)
	}
	j.Log.Info("ring connected", "peers", reply.Peers)
	return comm, nil
}

// advertiseAddr is the host:port peers dial: the explicit one, else the
// listener's port on the address this host uses to reach the coordinators.
func advertiseAddr(explicit, listenAddr, coordURL string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	host, port, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return listenAddr, nil
	}
	local, err := routeHost(coordURL)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(local, port), nil
}

// routeHost is this host's address on the route to the first coordinator
// URL (127.0.0.1 when the URL names no host).
func routeHost(coordURL string) (string, error) {
	first, _, _ := strings.Cut(coordURL, ",")
	u, err := url.Parse(first)
	if err != nil || u.Host == "" {
		return "127.0.0.1", nil
	}
	conn, err := net.Dial("udp", u.Host) // no packet is sent: this picks the route
	if err != nil {
		return "", fmt.Errorf("find this host's address towards %s: %w (set --collective-listen and --collective-advertise)", u.Host, err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP.String(), nil
}
