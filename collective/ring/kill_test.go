package ring

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/internal/testutil"
)

const (
	helperEnv     = "LAVIT_RING_HELPER_PEERS"
	killBufFloats = 3 << 19 // 6 MiB per rank: calls last long enough to be cut; 3 and 4 blocks
	// killDetectTime bounds how long a rank takes to see a killed peer: a
	// reset arrives in milliseconds; the bound only tells that from the
	// calls' 60 s deadline, so it is generous for a loaded machine.
	killDetectTime = 30 * time.Second
)

// helperRank is the rank the helper process plays.
const helperRank = 2

// TestHelperRank is not a test: TestPeerKilledMidAllReduce re-executes the
// test binary to run it as rank 2 of the world in its own process. The
// environment holds every rank's address, with an empty slot for its own.
func TestHelperRank(t *testing.T) {
	env := os.Getenv(helperEnv)
	if env == "" {
		t.Skip("helper process for TestPeerKilledMidAllReduce")
	}
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("ADDR %s\n", l.Addr())
	peers := strings.Split(env, ",")
	peers[helperRank] = l.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Connect(ctx, l, Config{Rank: helperRank, Size: len(peers), Peers: peers, Run: "kill", Generation: 1, Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]float32, killBufFloats)
	for i := 0; ctx.Err() == nil; i++ { // until the parent kills us
		if err := killCall(ctx, c, buf, i); err != nil {
			t.Fatal(err)
		}
	}
}

// killCall is call i of the kill test's loop: every rank cycles through
// AllReduce, ReduceScatter and AllGather, so the kill may cut any of them.
func killCall(ctx context.Context, c *Comm, buf []float32, i int) error {
	switch i % 3 {
	case 0:
		return c.AllReduce(ctx, buf, collective.Avg)
	case 1:
		return c.ReduceScatter(ctx, buf, collective.Avg)
	}
	return c.AllGather(ctx, buf)
}

// TestPeerKilledMidAllReduce runs rank 2 in a child process, kills it with
// SIGKILL while every rank loops over all-reduces, reduce-scatters and
// all-gathers, and checks that every
// surviving rank's call fails promptly naming rank 2: directly for its
// neighbours (ranks 1 and 3, or 1 and 0 in a world of 3), through the
// notices for the others.
func TestPeerKilledMidAllReduce(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip("inside the helper")
	}
	for _, n := range []int{3, 4} {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) { killOne(t, n) })
	}
}

func killOne(t *testing.T, n int) {
	local := make([]int, 0, n-1) // the ranks in this process
	for r := range n {
		if r != helperRank {
			local = append(local, r)
		}
	}
	ls := make([]*Listener, n)
	peers := make([]string, n)
	for _, r := range local {
		l, err := Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ls[r], peers[r] = l, l.Addr()
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRank$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(peers, ","))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addr <- a
			}
		}
	}()
	select {
	case peers[helperRank] = <-addr:
	case <-time.After(30 * time.Second):
		t.Fatal("helper rank did not report its address")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	comms := make([]*Comm, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for _, r := range local {
		wg.Go(func() {
			comms[r], errs[r] = Connect(ctx, ls[r], Config{Rank: r, Size: n, Peers: peers, Run: "kill", Generation: 1, Secret: testSecret})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, r := range local {
		defer comms[r].Close()
	}

	// Every local rank cycles through the calls with a far deadline, so only
	// the kill can end them.
	completed := make([]atomic.Int32, n)
	results := make([]chan error, n)
	for _, r := range local {
		results[r] = make(chan error, 1)
		go func() {
			buf := make([]float32, killBufFloats)
			for i := 0; ; i++ {
				if err := killCall(ctx, comms[r], buf, i); err != nil {
					results[r] <- err
					return
				}
				completed[r].Add(1)
			}
		}()
	}
	testutil.WaitFor(t, 30*time.Second, "an all-reduce, a reduce-scatter and an all-gather completed on every local rank", func() bool {
		for _, r := range local {
			if completed[r].Load() < 3 {
				return false
			}
		}
		return true
	})
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	killed := time.Now()
	for _, r := range local {
		err := waitErr(t, results[r], killDetectTime, fmt.Sprintf("rank %d after rank %d was killed", r, helperRank))
		t.Logf("rank %d after %s: %v", r, time.Since(killed), err)
		var ce *collective.Error
		if !errors.Is(err, collective.ErrPeerLost) || !errors.As(err, &ce) || ce.Peer != helperRank || !strings.Contains(err.Error(), "peer rank 2") {
			t.Errorf("rank %d: %v; want ErrPeerLost naming rank %d", r, err, helperRank)
		}
	}
}
