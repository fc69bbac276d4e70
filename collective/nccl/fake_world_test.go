package nccl

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/internal/testutil"
)

// joinWorld joins every rank of a fresh id in this process (the fake spans
// threads as it spans processes) and wraps them as Communicators.
func joinWorld(t *testing.T, lib *Lib, n int) []*Collective {
	t.Helper()
	id, err := lib.UniqueID()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make([]*Collective, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			c, err := NewComm(ctx, lib, 0, r, n, id)
			errs[r] = err
			if err == nil {
				out[r] = NewCollective(c)
			}
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	t.Cleanup(func() {
		for _, c := range out {
			c.Close()
		}
	})
	return out
}

func onEach(comms []*Collective, f func(r int, c *Collective) error) []error {
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Go(func() { errs[r] = f(r, c) })
	}
	wg.Wait()
	return errs
}

// TestFakeWorlds: host-buffer all-reduce (sum and average) and broadcast at
// worlds 2 to 4, for sizes from empty to several of the fake's chunks;
// every rank ends with the same bits: the float32 sum in the ring's order
// (segment k from rank k+1 around the ring to rank k), times 1/n for an
// average.
func TestFakeWorlds(t *testing.T) {
	lib := loadFake(t)
	for _, n := range []int{2, 3, 4} {
		comms := joinWorld(t, lib, n)
		for _, size := range []int{0, 1, 1000, 300_000, 700_001} {
			for _, op := range []collective.Op{collective.Sum, collective.Avg} {
				bufs := make([][]float32, n)
				for r := range bufs {
					bufs[r] = make([]float32, size)
					for i := range bufs[r] {
						bufs[r][i] = float32(math.Sin(float64(i*(r+3)))) * float32(r+1)
					}
				}
				want := make([]float32, size)
				base, extra := size/n, size%n
				for k := range n {
					off, cnt := k*base+min(k, extra), base
					if k < extra {
						cnt++
					}
					for i := off; i < off+cnt; i++ {
						s := bufs[(k+1)%n][i]
						for j := 2; j <= n; j++ {
							s += bufs[(k+j)%n][i]
						}
						if op == collective.Avg {
							s *= 1 / float32(n)
						}
						want[i] = s
					}
				}
				for r, err := range onEach(comms, func(r int, c *Collective) error { return c.AllReduce(context.Background(), bufs[r], op) }) {
					if err != nil {
						t.Fatalf("world %d size %d %v rank %d: %v", n, size, op, r, err)
					}
					for i := range want {
						if math.Float32bits(bufs[r][i]) != math.Float32bits(want[i]) {
							t.Fatalf("world %d size %d %v rank %d: element %d = %v, want %v", n, size, op, r, i, bufs[r][i], want[i])
						}
					}
				}
			}
		}
		root := n - 1
		bufs := make([][]float32, n)
		for r := range bufs {
			bufs[r] = []float32{float32(r), float32(10 * r), float32(100 * r)}
		}
		for r, err := range onEach(comms, func(r int, c *Collective) error { return c.Broadcast(context.Background(), bufs[r], root) }) {
			if err != nil || bufs[r][2] != float32(100*root) {
				t.Fatalf("world %d broadcast from %d: rank %d has %v (%v)", n, root, r, bufs[r], err)
			}
		}
		for r, err := range onEach(comms, func(_ int, c *Collective) error { return c.Barrier(context.Background()) }) {
			if err != nil {
				t.Fatalf("world %d barrier rank %d: %v", n, r, err)
			}
		}
	}
}

// TestFakeAbortReachesPeers: a rank that aborts fails its peers' pending
// call with ErrPeerLost (NCCL's remote error), never a hang.
func TestFakeAbortReachesPeers(t *testing.T) {
	lib := loadFake(t)
	comms := joinWorld(t, lib, 3)
	done := make(chan error, 2)
	for r := 1; r < 3; r++ {
		go func() { done <- comms[r].AllReduce(context.Background(), make([]float32, 10), collective.Sum) }()
	}
	comms[0].Abort(errors.New("test: rank 0 gives up"))
	comms[0].Close() // ncclCommAbort on its thread
	for range 2 {
		select {
		case err := <-done:
			if !errors.Is(err, collective.ErrPeerLost) {
				t.Fatalf("peer's call: %v, want ErrPeerLost", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a peer's call hangs after rank 0 aborted")
		}
	}
}

// The cross-process test runs ranks 1 and 2 in child processes of the test
// binary (TestHelperFakeRank), rank 0 here.
const fakeRankEnv = "LAVIT_FAKE_NCCL_RANK"

// TestHelperFakeRank is a child rank of TestFakeSpansProcesses: it joins,
// all-reduces one buffer, prints its sum, reduce-scatters and all-gathers
// another, prints it, and, as rank 2, then waits to be killed.
func TestHelperFakeRank(t *testing.T) {
	spec := os.Getenv(fakeRankEnv)
	if spec == "" {
		t.Skip("a helper of TestFakeSpansProcesses")
	}
	parts := strings.Split(spec, ",") // rank,world,idhex,lib
	rank, _ := strconv.Atoi(parts[0])
	world, _ := strconv.Atoi(parts[1])
	raw, _ := hex.DecodeString(parts[2])
	var id [128]byte
	copy(id[:], raw)
	lib, err := Load(parts[3])
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	comm, err := NewComm(ctx, lib, 0, rank, world, id)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCollective(comm)
	buf := []float32{float32(rank + 1), float32(10 * (rank + 1))}
	if err := c.AllReduce(ctx, buf, collective.Sum); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("rank %d sum %v %v\n", rank, buf[0], buf[1])
	blocks := scatterInput(rank)
	if err := c.ReduceScatter(ctx, blocks, collective.Sum); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("rank %d block %v\n", rank, blocks[rank])
	if err := c.AllGather(ctx, blocks); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("rank %d gathered %v %v %v\n", rank, blocks[0], blocks[1], blocks[2])
	if rank == 2 {
		fmt.Println("rank 2 waits to be killed")
		select {}
	}
	// Rank 1 takes part in the next call, which fails once rank 2 dies.
	err = c.AllReduce(ctx, buf, collective.Sum)
	fmt.Printf("rank %d second call: %v\n", rank, err)
}

// scatterInput is rank's buffer of three one-element blocks for the
// reduce-scatter of TestFakeSpansProcesses: block i holds (i+1)·(rank+1),
// so the sum of block i over three ranks is 6·(i+1).
func scatterInput(rank int) []float32 {
	return []float32{float32(rank + 1), float32(2 * (rank + 1)), float32(3 * (rank + 1))}
}

// TestFakeSpansProcesses: a world of three ranks in three processes
// all-reduces, reduce-scatters and all-gathers; when one process is
// killed, the survivors' next call fails with ErrPeerLost.
func TestFakeSpansProcesses(t *testing.T) {
	lib := loadFake(t)
	id, err := lib.UniqueID()
	if err != nil {
		t.Fatal(err)
	}
	var outs [3]*testutil.SyncBuffer
	var cmds [3]*exec.Cmd
	for r := 1; r <= 2; r++ {
		outs[r] = &testutil.SyncBuffer{}
		cmds[r] = exec.Command(os.Args[0], "-test.run", "^TestHelperFakeRank$", "-test.v")
		cmds[r].Env = append(os.Environ(), fmt.Sprintf("%s=%d,3,%s,%s", fakeRankEnv, r, hex.EncodeToString(id[:]), lib.Path()))
		cmds[r].Stdout, cmds[r].Stderr = outs[r], outs[r]
		if err := cmds[r].Start(); err != nil {
			t.Fatal(err)
		}
		defer cmds[r].Process.Kill()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	comm, err := NewComm(ctx, lib, 0, 0, 3, id)
	if err != nil {
		t.Fatalf("rank 0: %v\nrank 1: %s\nrank 2: %s", err, outs[1], outs[2])
	}
	c := NewCollective(comm)
	defer c.Close()
	buf := []float32{1, 10}
	if err := c.AllReduce(ctx, buf, collective.Sum); err != nil {
		t.Fatal(err)
	}
	if buf[0] != 6 || buf[1] != 60 {
		t.Fatalf("rank 0: sum %v, want [6 60]", buf)
	}
	blocks := scatterInput(0)
	if err := c.ReduceScatter(ctx, blocks, collective.Sum); err != nil {
		t.Fatal(err)
	}
	if blocks[0] != 6 {
		t.Fatalf("rank 0: reduce-scatter left block 0 = %v, want 6", blocks[0])
	}
	if err := c.AllGather(ctx, blocks); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(blocks, []float32{6, 12, 18}) {
		t.Fatalf("rank 0: all-gather gave %v, want [6 12 18]", blocks)
	}
	testutil.WaitFor(t, time.Minute, "the children's results", func() bool {
		return strings.Contains(outs[1].String(), "rank 1 sum 6 60") && strings.Contains(outs[1].String(), "rank 1 block 12") &&
			strings.Contains(outs[1].String(), "rank 1 gathered 6 12 18") &&
			strings.Contains(outs[2].String(), "rank 2 block 18") && strings.Contains(outs[2].String(), "rank 2 gathered 6 12 18") &&
			strings.Contains(outs[2].String(), "rank 2 waits to be killed")
	})
	cmds[2].Process.Signal(syscall.SIGKILL)
	cmds[2].Wait()
	err = c.AllReduce(ctx, buf, collective.Sum)
	if !errors.Is(err, collective.ErrPeerLost) {
		t.Fatalf("rank 0 after rank 2 was killed: %v, want ErrPeerLost", err)
	}
	testutil.WaitFor(t, time.Minute, "rank 1 to see the loss too", func() bool {
		return strings.Contains(outs[1].String(), "rank 1 second call: ") && strings.Contains(outs[1].String(), "peer lost")
	})
}
