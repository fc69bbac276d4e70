package nccl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/collective/ring"
)

// ringWorld connects n ring ranks in this process, closed when the test ends.
func ringWorld(t *testing.T, n int) []*ring.Comm {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	comms, err := ring.LocalWorld(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range comms {
			c.Close()
		}
	})
	return comms
}

// inParallel runs f for r = 0…n−1 at once and returns each one's error.
func inParallel(n int, f func(r int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() { errs[r] = f(r) })
	}
	wg.Wait()
	return errs
}

// blockCall is one call of TestFakeMatchesRing, run on both backends.
type blockCall struct {
	name  string
	per   int // elements a block (the buffer is world blocks), or 0: size
	size  int // all-reduce only: the whole buffer, any length
	run   func(ctx context.Context, c collective.Communicator, buf []float32) error
	block bool // only block Rank() is defined afterwards (reduce-scatter)
}

// TestFakeMatchesRing: the fake NCCL's AllReduce, ReduceScatter and
// AllGather give, bit for bit, what the ring gives on the same inputs, at
// worlds 1 to 4, for one-element blocks, ragged sizes and buffers of
// several of the fake's 1 MiB chunks; ReduceScatterDevice and
// AllGatherDevice too. A run over the fake then ends where the same run
// over the ring does (the worker's TestNCCLMatchesRing).
func TestFakeMatchesRing(t *testing.T) {
	lib := loadFake(t)
	var calls []blockCall
	for _, op := range []collective.Op{collective.Sum, collective.Avg} {
		for _, per := range []int{1, 333, 200_001} {
			calls = append(calls, blockCall{name: "reducescatter " + op.String(), per: per, block: true,
				run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
					return c.ReduceScatter(ctx, buf, op)
				}})
		}
		for _, size := range []int{1, 1001, 700_001} {
			calls = append(calls, blockCall{name: "allreduce " + op.String(), size: size,
				run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
					return c.AllReduce(ctx, buf, op)
				}})
		}
	}
	for _, per := range []int{1, 333, 200_001} {
		calls = append(calls, blockCall{name: "allgather", per: per,
			run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
				return c.AllGather(ctx, buf)
			}})
		calls = append(calls, blockCall{name: "reducescatter+allgather", per: per,
			run: func(ctx context.Context, c collective.Communicator, buf []float32) error {
				if err := c.ReduceScatter(ctx, buf, collective.Avg); err != nil {
					return err
				}
				return c.AllGather(ctx, buf)
			}})
	}
	for n := 1; n <= 4; n++ {
		fakes := joinWorld(t, lib, n)
		rings := ringWorld(t, n)
		for i, bc := range calls {
			size := bc.size
			if bc.per > 0 {
				size = n * bc.per
			}
			inputs := make([][]float32, n)
			for r := range n {
				inputs[r] = make([]float32, size)
				for j := range inputs[r] {
					inputs[r][j] = float32(math.Sin(float64(j*(r+3)+i))) * float32(r+1)
				}
			}
			matchRing(t, fakes, rings, bc, inputs)
		}
		checkDeviceBlocks(t, lib, fakes, rings)
	}
}

// matchRing runs bc on the fake NCCL world and on the ring world, each
// rank on a copy of its inputs, and fails unless every rank's defined
// words have the same bits over both. It returns each rank's buffer.
func matchRing(t *testing.T, fakes []*Collective, rings []*ring.Comm, bc blockCall, inputs [][]float32) [][]float32 {
	t.Helper()
	n, size := len(fakes), len(inputs[0])
	where := fmt.Sprintf("world %d, %s of %d", n, bc.name, size)
	results := map[string][][]float32{}
	for _, backend := range []string{"nccl", "ring"} {
		bufs := make([][]float32, n)
		var wg sync.WaitGroup
		errs := make([]error, n)
		for r := range n {
			bufs[r] = slices.Clone(inputs[r])
			var c collective.Communicator = fakes[r]
			if backend == "ring" {
				c = rings[r]
			}
			wg.Go(func() { errs[r] = bc.run(context.Background(), c, bufs[r]) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("%s over %s: %v", where, backend, err)
		}
		results[backend] = bufs
	}
	for r := range n {
		lo, hi := 0, size
		if bc.block {
			lo, hi = r*bc.per, (r+1)*bc.per
		}
		for j := lo; j < hi; j++ {
			got, want := results["nccl"][r][j], results["ring"][r][j]
			if math.Float32bits(got) != math.Float32bits(want) {
				t.Fatalf("%s: rank %d [%d] = %#08x over the fake NCCL, %#08x over the ring", where, r, j, math.Float32bits(got), math.Float32bits(want))
			}
		}
	}
	return results["nccl"]
}

// checkDeviceBlocks runs ReduceScatterDevice (sum) then AllGatherDevice on
// device buffers and compares the result with the ring's, bit for bit.
func checkDeviceBlocks(t *testing.T, lib *Lib, fakes []*Collective, rings []*ring.Comm) {
	t.Helper()
	n, per := len(fakes), 1001
	inputs := make([][]float32, n)
	want := make([][]float32, n)
	for r := range n {
		inputs[r] = make([]float32, n*per)
		for j := range inputs[r] {
			inputs[r][j] = float32(math.Cos(float64(j+r))) / float32(r+1)
		}
		want[r] = slices.Clone(inputs[r])
	}
	ctx := context.Background()
	steps := []func(r int) error{
		func(r int) error { return rings[r].ReduceScatter(ctx, want[r], collective.Sum) },
		func(r int) error { return rings[r].AllGather(ctx, want[r]) },
	}
	for _, step := range steps {
		if err := errors.Join(inParallel(n, step)...); err != nil {
			t.Fatalf("world %d ring: %v", n, err)
		}
	}
	errs := onEach(fakes, func(r int, c *Collective) error {
		dev, err := lib.DeviceAlloc(0, 4*n*per)
		if err != nil {
			return err
		}
		defer lib.DeviceFree(0, dev)
		if err := lib.CopyToDevice(0, dev, floatBytes(inputs[r])); err != nil {
			return err
		}
		if err := c.ReduceScatterDevice(ctx, dev, n*per, collective.Sum); err != nil {
			return err
		}
		if err := c.AllGatherDevice(ctx, dev, n*per); err != nil {
			return err
		}
		return lib.CopyFromDevice(0, floatBytes(inputs[r]), dev)
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("world %d device path rank %d: %v", n, r, err)
		}
		for j := range want[r] {
			if math.Float32bits(inputs[r][j]) != math.Float32bits(want[r][j]) {
				t.Fatalf("world %d device path rank %d [%d] = %v, ring %v", n, r, j, inputs[r][j], want[r][j])
			}
		}
	}
}

// TestFakeBlocksInvalidLength: a buffer that is not a multiple of the world
// size breaks the communicator with an invalid-argument error naming the
// problem, before anything reaches NCCL; the error is sticky.
func TestFakeBlocksInvalidLength(t *testing.T) {
	lib := loadFake(t)
	for _, tc := range []struct {
		name string
		call func(c *Collective) error
	}{
		{"reducescatter", func(c *Collective) error {
			return c.ReduceScatter(context.Background(), make([]float32, 7), collective.Sum)
		}},
		{"allgather device", func(c *Collective) error { return c.AllGatherDevice(context.Background(), 0, 7) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := fakeLog(t)
			comms := joinWorld(t, lib, 2)
			err := tc.call(comms[1])
			if !errors.Is(err, collective.ErrAborted) || !strings.Contains(err.Error(), "invalid argument: buffer of 7 elements is not a multiple of the world size 2") {
				t.Fatalf("got %v, want ErrAborted naming the invalid length", err)
			}
			if again := comms[1].AllReduce(context.Background(), make([]float32, 2), collective.Sum); again != err {
				t.Fatalf("next call: %v, want the sticky %v", again, err)
			}
			if strings.Contains(log(), "op") {
				t.Fatalf("lifecycle %q: an invalid call reached the fake", log())
			}
		})
	}
}

// TestLoadNeedsBlockCalls: a library without ncclReduceScatter or
// ncclAllGather is not an NCCL lavit can use, and the error names the
// missing symbol.
func TestLoadNeedsBlockCalls(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc to build the stub libraries")
	}
	all := []string{"ncclGetVersion", "ncclGetUniqueId", "ncclCommInitRankConfig", "ncclCommGetAsyncError",
		"ncclCommAbort", "ncclCommFinalize", "ncclCommDestroy", "ncclAllReduce", "ncclBroadcast",
		"ncclReduceScatter", "ncclAllGather", "ncclGetErrorString"}
	for _, missing := range []string{"ncclReduceScatter", "ncclAllGather"} {
		t.Run(missing, func(t *testing.T) {
			dir := t.TempDir()
			var src strings.Builder
			for _, sym := range all {
				if sym != missing {
					fmt.Fprintf(&src, "int %s(void) { return 0; }\n", sym)
				}
			}
			c, so := filepath.Join(dir, "stub.c"), filepath.Join(dir, "libnccl.so.2")
			if err := os.WriteFile(c, []byte(src.String()), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", so, c).CombinedOutput(); err != nil {
				t.Fatalf("build the stub: %v\n%s", err, out)
			}
			_, err := Load(so)
			if !errors.Is(err, ErrNotAvailable) || !strings.Contains(err.Error(), "lacks symbol "+missing) {
				t.Fatalf("got %v, want ErrNotAvailable naming %s", err, missing)
			}
		})
	}
}
