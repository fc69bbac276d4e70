package ring

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/internal/testutil"
)

// testSecret is the ring secret of tests that build their Configs by
// hand (a helper process has to know it too).
var testSecret = []byte("lavit ring test secret, 32 bytes")

// listeners opens n listeners on loopback, closed when the test ends,
// and returns them with their addresses.
func listeners(t *testing.T, n int) ([]*Listener, []string) {
	t.Helper()
	ls := make([]*Listener, n)
	addrs := make([]string, n)
	for i := range ls {
		l, err := Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		ls[i], addrs[i] = l, l.Addr()
	}
	return ls, addrs
}

// world connects n ranks on loopback and closes them when the test ends.
func world(t testing.TB, n int, edit func(*Config)) []*Comm {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if edit == nil {
		edit = func(*Config) {}
	}
	comms, err := localWorld(ctx, n, edit)
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

// onAll runs f on every rank at once and returns each rank's error.
func onAll(comms []*Comm, f func(r int, c *Comm) error) []error {
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Go(func() { errs[r] = f(r, c) })
	}
	wg.Wait()
	return errs
}

func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 60*time.Second)
}

func inCall(c *Comm) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inCall
}

// randomInputs makes n ranks' buffers of size random floats in [-1, 1),
// the float64 reference of their reduction by op, and the matching sum of
// magnitudes (the scale of the float32 rounding error).
func randomInputs(n, size int, op collective.Op, seed uint64) (bufs [][]float32, want, mag []float64) {
	bufs = make([][]float32, n)
	want = make([]float64, size)
	mag = make([]float64, size)
	for r := range n {
		rng := rand.New(rand.NewPCG(seed, uint64(r)))
		bufs[r] = make([]float32, size)
		for i := range bufs[r] {
			v := rng.Float32()*2 - 1
			bufs[r][i] = v
			want[i] += float64(v)
			mag[i] += math.Abs(float64(v))
		}
	}
	if op == collective.Avg {
		for i := range want {
			want[i] /= float64(n)
			mag[i] /= float64(n)
		}
	}
	return bufs, want, mag
}

// closeTo reports whether got is want up to float32 rounding: relative to
// the sum of magnitudes, since float32 sums in a different order differ by
// a few ulps of the largest partial sum.
func closeTo(got float32, want, mag float64) bool {
	return math.Abs(float64(got)-want) <= 1e-5*mag+1e-30
}

// checkAllReduce runs one all-reduce of size random floats on every rank
// and compares each rank's result with a float64 reference.
func checkAllReduce(t *testing.T, comms []*Comm, size int, op collective.Op, seed uint64) {
	t.Helper()
	n := len(comms)
	bufs, want, mag := randomInputs(n, size, op, seed)
	ctx, cancel := callCtx()
	defer cancel()
	for r, err := range onAll(comms, func(r int, c *Comm) error { return c.AllReduce(ctx, bufs[r], op) }) {
		if err != nil {
			t.Fatalf("world %d, %d floats, %v: rank %d: %v", n, size, op, r, err)
		}
	}
	for r := range n {
		for i, got := range bufs[r] {
			if !closeTo(got, want[i], mag[i]) {
				t.Fatalf("world %d, %d floats, %v: rank %d [%d] = %v, want %v (off by %.3g)", n, size, op, r, i, got, want[i], math.Abs(float64(got)-want[i]))
			}
		}
	}
}

func TestAllReduce(t *testing.T) {
	// 1<<16+3 is not divisible by the world size nor by the 16Ki-element
	// minimum chunk, so segments and chunks have ragged ends.
	sizes := []int{1, 2, 3, 7, 1000, 1<<16 + 3}
	for n := 1; n <= 8; n++ {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			comms := world(t, n, nil)
			seed := uint64(100 * n)
			for _, size := range sizes { // repeated calls on one communicator
				for _, op := range []collective.Op{collective.Sum, collective.Avg} {
					seed++
					checkAllReduce(t, comms, size, op, seed)
				}
			}
			checkAllReduce(t, comms, 1000, collective.Sum, seed+1) // same size again
		})
	}
}

func TestAllReduceEmptyBuffer(t *testing.T) {
	comms := world(t, 3, nil)
	ctx, cancel := callCtx()
	defer cancel()
	for r, err := range onAll(comms, func(_ int, c *Comm) error { return c.AllReduce(ctx, nil, collective.Sum) }) {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	checkAllReduce(t, comms, 5, collective.Sum, 1) // still in step
}

func TestAllReduce64MiB(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB all-reduce skipped in -short mode")
	}
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			checkAllReduce(t, world(t, n, nil), 16<<20, collective.Sum, uint64(n))
		})
	}
}

// TestAllReduceLargeCallsAddAsync covers the adder goroutine of large calls
// (≥ asyncAddMin elements): ragged sizes, sum and average, worlds up to 8,
// then small calls (inline adds) on the same communicator.
func TestAllReduceLargeCallsAddAsync(t *testing.T) {
	if testing.Short() {
		t.Skip("large all-reduces skipped in -short mode")
	}
	for _, n := range []int{2, 3, 5, 8} {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			comms := world(t, n, nil)
			for i, op := range []collective.Op{collective.Sum, collective.Avg} {
				checkAllReduce(t, comms, asyncAddMin+12345, op, uint64(10*n+i))
			}
			checkAllReduce(t, comms, 1000, collective.Avg, uint64(n))
		})
	}
}

func TestSmallChunksManySteps(t *testing.T) {
	// The smallest chunk forces many chunks per segment on a mid-size buffer.
	comms := world(t, 5, func(c *Config) { c.ChunkBytes = minChunkBytes })
	for i, size := range []int{5*(minChunkBytes/4)*3 + 11, 123457} {
		checkAllReduce(t, comms, size, collective.Avg, uint64(i))
	}
}

func TestBroadcast(t *testing.T) {
	for n := 1; n <= 5; n++ {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			comms := world(t, n, nil)
			for _, size := range []int{1, 7, 1<<16 + 3} {
				for root := range n {
					bufs := make([][]float32, n)
					rng := rand.New(rand.NewPCG(uint64(size), uint64(root)))
					for r := range n {
						bufs[r] = make([]float32, size)
						for i := range bufs[r] {
							bufs[r][i] = rng.Float32()
						}
					}
					want := append([]float32(nil), bufs[root]...)
					ctx, cancel := callCtx()
					errs := onAll(comms, func(r int, c *Comm) error { return c.Broadcast(ctx, bufs[r], root) })
					cancel()
					for r := range n {
						if errs[r] != nil {
							t.Fatalf("size %d root %d: rank %d: %v", size, root, r, errs[r])
						}
						for i := range want {
							if bufs[r][i] != want[i] {
								t.Fatalf("size %d root %d: rank %d [%d] = %v, want %v", size, root, r, i, bufs[r][i], want[i])
							}
						}
					}
				}
			}
		})
	}
}

func TestBarrierWaitsForEveryRank(t *testing.T) {
	const n = 4
	comms := world(t, n, nil)
	var entered atomic.Int32
	ctx, cancel := callCtx()
	defer cancel()
	errs := make(chan error, n)
	for r := range n - 1 {
		go func() {
			entered.Add(1)
			err := comms[r].Barrier(ctx)
			if err == nil && entered.Load() != n {
				err = fmt.Errorf("rank %d left the barrier with only %d ranks in", r, entered.Load())
			}
			errs <- err
		}()
	}
	// The last rank enters only once the others are blocked inside.
	testutil.WaitFor(t, 10*time.Second, "ranks 0-2 inside the barrier", func() bool {
		return inCall(comms[0]) && inCall(comms[1]) && inCall(comms[2])
	})
	entered.Add(1)
	if err := comms[n-1].Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	for range n - 1 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestConcurrentCallersAreSerialised(t *testing.T) {
	const n, callers, rounds, size = 3, 2, 15, 1005
	comms := world(t, n, nil)
	ctx, cancel := callCtx()
	defer cancel()
	// Every caller on rank r sends the same values, so however the turns
	// pair up across ranks the sum is known; interleaved calls would
	// corrupt the streams (or fail the call-header check).
	var wg sync.WaitGroup
	errs := make(chan error, n*callers)
	for r := range n {
		for range callers {
			wg.Go(func() {
				buf := make([]float32, size)
				for range rounds {
					for i := range buf {
						buf[i] = float32(r*size + i)
					}
					if err := comms[r].AllReduce(ctx, buf, collective.Sum); err != nil {
						errs <- err
						return
					}
					for i, got := range buf {
						want := float32(0)
						for q := range n {
							want += float32(q*size + i)
						}
						if got != want {
							errs <- fmt.Errorf("rank %d [%d] = %v, want %v", r, i, got, want)
							return
						}
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// waitErr waits for a call's result, failing the test if it hangs.
func waitErr(t *testing.T, ch <-chan error, limit time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(limit):
		t.Fatalf("%s: no return within %s", what, limit)
		return nil
	}
}

// bufferCalls are the calls on a buffer, for tests that put each through
// the same scenario.
var bufferCalls = []struct {
	name string
	call func(ctx context.Context, c *Comm, buf []float32) error
}{
	{"allreduce", func(ctx context.Context, c *Comm, buf []float32) error { return c.AllReduce(ctx, buf, collective.Sum) }},
	{"reducescatter", func(ctx context.Context, c *Comm, buf []float32) error {
		return c.ReduceScatter(ctx, buf, collective.Avg)
	}},
	{"allgather", func(ctx context.Context, c *Comm, buf []float32) error { return c.AllGather(ctx, buf) }},
}

func TestAbortUnblocksEveryRank(t *testing.T) {
	for _, bc := range bufferCalls {
		t.Run(bc.name, func(t *testing.T) { abortUnblocks(t, bc.call) })
	}
}

func abortUnblocks(t *testing.T, call func(context.Context, *Comm, []float32) error) {
	comms := world(t, 3, nil)
	ctx, cancel := callCtx() // far away: only Abort can end these calls
	defer cancel()
	results := make([]chan error, 3)
	for r := range 2 { // rank 2 never calls, so ranks 0 and 1 block
		results[r] = make(chan error, 1)
		go func() { results[r] <- call(ctx, comms[r], make([]float32, 3<<18)) }()
	}
	testutil.WaitFor(t, 10*time.Second, "ranks 0 and 1 inside AllReduce", func() bool {
		return inCall(comms[0]) && inCall(comms[1])
	})
	cause := errors.New("operator pressed stop")
	start := time.Now()
	comms[1].Abort(cause)
	err1 := waitErr(t, results[1], 30*time.Second, "aborting rank 1")
	err0 := waitErr(t, results[0], 30*time.Second, "rank 0")
	t.Logf("returned after %s; rank 1: %v; rank 0: %v", time.Since(start), err1, err0)
	if !errors.Is(err1, collective.ErrAborted) || !errors.Is(err1, cause) {
		t.Errorf("aborting rank: %v, want ErrAborted wrapping the cause", err1)
	}
	if err0 == nil {
		t.Error("rank 0 returned nil after rank 1 aborted")
	}
	// Rank 2 was never in a call; its next call fails at once.
	testutil.WaitFor(t, 30*time.Second, "rank 2 to learn of the abort", func() bool { return comms[2].Err() != nil })
	if err := comms[2].AllReduce(ctx, make([]float32, 10), collective.Sum); !errors.Is(err, collective.ErrAborted) {
		t.Errorf("rank 2: %v, want ErrAborted", err)
	}
	// Sticky: the same error again, at once.
	if again := comms[1].Barrier(ctx); again != err1 {
		t.Errorf("rank 1 again: %v, want the sticky %v", again, err1)
	}
}

func TestDeadlineWhenPeerNeverCalls(t *testing.T) {
	for _, bc := range bufferCalls {
		t.Run(bc.name, func(t *testing.T) { deadlineWhenPeerNeverCalls(t, bc.call) })
	}
}

func deadlineWhenPeerNeverCalls(t *testing.T, call func(context.Context, *Comm, []float32) error) {
	comms := world(t, 2, nil)
	const limit = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- call(ctx, comms[0], make([]float32, 1000)) }()
	err := waitErr(t, done, limit+30*time.Second, "rank 0")
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	var ce *collective.Error
	if !errors.As(err, &ce) || ce.Rank != 0 || ce.Peer != 1 {
		t.Errorf("error %v should name rank 0 and peer 1", err)
	}
	if took < limit-10*time.Millisecond {
		t.Errorf("returned after %s, before the %s deadline", took, limit)
	}
	// The idle peer is told, and its next call fails at once.
	testutil.WaitFor(t, 30*time.Second, "rank 1 to learn of rank 0's failure", func() bool { return comms[1].Err() != nil })
	if err := comms[1].Barrier(context.Background()); !errors.Is(err, collective.ErrAborted) {
		t.Errorf("rank 1: %v, want ErrAborted", err)
	}
}

func TestDefaultTimeoutApplies(t *testing.T) {
	comms := world(t, 2, func(c *Config) { c.Timeout = 200 * time.Millisecond })
	done := make(chan error, 1)
	go func() { done <- comms[1].Barrier(context.Background()) }() // no deadline of its own
	if err := waitErr(t, done, 30*time.Second, "rank 1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded from the configured timeout", err)
	}
}

func TestMismatchedCallsFail(t *testing.T) {
	comms := world(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs := onAll(comms, func(r int, c *Comm) error { return c.AllReduce(ctx, make([]float32, 10+r), collective.Sum) })
	mismatch := 0
	for r, err := range errs {
		if err == nil {
			t.Fatalf("rank %d: nil error for mismatched sizes", r)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("rank %d: %v: a mismatch should be caught, not time out", r, err)
		}
		if errors.Is(err, collective.ErrMismatch) {
			mismatch++
		}
	}
	if mismatch == 0 {
		t.Fatalf("no rank reported ErrMismatch: %v", errs)
	}
	if !strings.Contains(errs[0].Error()+errs[1].Error(), "11 elements") {
		t.Errorf("errors should say what each rank called: %v", errs)
	}
}

func TestCloseTellsPeers(t *testing.T) {
	comms := world(t, 3, nil)
	comms[1].Close()
	for _, r := range []int{0, 2} {
		testutil.WaitFor(t, 30*time.Second, fmt.Sprintf("rank %d to see rank 1 close", r), func() bool { return comms[r].Err() != nil })
		var ce *collective.Error
		if err := comms[r].Err(); !errors.Is(err, collective.ErrPeerLost) || !errors.As(err, &ce) || ce.Peer != 1 {
			t.Errorf("rank %d: %v, want ErrPeerLost naming rank 1", r, err)
		}
	}
	if err := comms[1].AllReduce(context.Background(), make([]float32, 3), collective.Sum); !errors.Is(err, collective.ErrClosed) {
		t.Errorf("call after Close: %v, want ErrClosed", err)
	}
}

func TestSizeOneIsLocal(t *testing.T) {
	c, err := Connect(context.Background(), nil, Config{Rank: 0, Size: 1})
	if err != nil {
		t.Fatal(err)
	}
	buf := []float32{1, 2, 3}
	ctx := context.Background()
	if err := c.AllReduce(ctx, buf, collective.Avg); err != nil || buf[0] != 1 || buf[2] != 3 {
		t.Fatalf("avg of one rank: %v %v", buf, err)
	}
	if err := c.ReduceScatter(ctx, buf, collective.Avg); err != nil || buf[0] != 1 || buf[2] != 3 {
		t.Fatalf("reduce-scatter of one rank: %v %v", buf, err)
	}
	if err := c.AllGather(ctx, buf); err != nil || buf[0] != 1 || buf[2] != 3 {
		t.Fatalf("all-gather of one rank: %v %v", buf, err)
	}
	if err := c.Broadcast(ctx, buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Broadcast(ctx, buf, 1); err == nil {
		t.Fatal("broadcast from root 1 of a world of 1: no error")
	}
	if err := c.Barrier(ctx); err == nil {
		t.Fatal("a bad call should leave the communicator broken")
	}
	c.Close()
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Rank: 0, Size: 0}, "size"},
		{Config{Rank: 2, Size: 2, Peers: []string{"a", "b"}, Secret: testSecret}, "rank"},
		{Config{Rank: 0, Size: 2, Peers: []string{"a"}, Secret: testSecret}, "peer addresses"},
		{Config{Rank: 0, Size: 2, Peers: []string{"a", "b"}}, "a secret of 0 bytes, want at least 16"},
		{Config{Rank: 0, Size: 2, Peers: []string{"a", "b"}, Secret: []byte("short")}, "a secret of 5 bytes"},
		{Config{Rank: 0, Size: 1, ChunkBytes: 3}, "chunk"},
		{Config{Rank: 0, Size: 1, Run: strings.Repeat("x", 300)}, "run name"},
	} {
		if _, err := Connect(context.Background(), nil, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error about %s", tc.cfg, err, tc.want)
		}
	}
}

// TestHandshakeRefusals: the acceptor's verdict on each kind of dialler.
// Members (the same secret) are refused with a reason when they are of
// another run, generation, size or rank; a dialler without the secret
// gets no reason at all; a wrong protocol version is named.
func TestHandshakeRefusals(t *testing.T) {
	cfg := Config{Rank: 1, Size: 3, Run: "run-a", Generation: 7, Secret: testSecret}
	good := hello{Size: 3, Rank: 0, Generation: 7, Run: "run-a"}
	for _, tc := range []struct {
		name   string
		edit   func(*hello)
		secret []byte
		want   string // in the refusal; "" = accepted
		client error  // the dialler's error, when not a RefusedError
	}{
		{"accepted", func(*hello) {}, testSecret, "", nil},
		{"other run", func(h *hello) { h.Run = "run-b" }, testSecret, `run "run-b"`, nil},
		{"stale generation", func(h *hello) { h.Generation = 6 }, testSecret, "generation 6, this ring is generation 7", nil},
		{"wrong size", func(h *hello) { h.Size = 4 }, testSecret, "world size 4", nil},
		{"wrong rank", func(h *hello) { h.Rank = 2 }, testSecret, "rank 2 dialled rank 1", nil},
		{"another secret", func(*hello) {}, []byte("another generation's secret!!"), "proof of the ring secret did not verify", errUnknownSecret},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := good
			tc.edit(&h)
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			deadline := time.Now().Add(5 * time.Second)
			type res struct {
				reason string
				auth   bool
				err    error
			}
			srv := make(chan res, 1)
			go func() {
				r, auth, err := serverHandshake(b, cfg, deadline, nil)
				b.Close()
				srv <- res{r, auth, err}
			}()
			cerr := clientHandshake(a, h, tc.secret, 1, deadline)
			s := <-srv
			if s.err != nil {
				t.Fatalf("server: %v", s.err)
			}
			switch {
			case tc.want == "":
				if cerr != nil || s.reason != "" || !s.auth {
					t.Fatalf("refused a good hello: %v / %q", cerr, s.reason)
				}
			case tc.client != nil:
				if !errors.Is(cerr, tc.client) || s.auth || !strings.Contains(s.reason, tc.want) {
					t.Fatalf("client %v, server %q (authenticated %v); want %v and %q", cerr, s.reason, s.auth, tc.client, tc.want)
				}
				if strings.Contains(cerr.Error(), "run-a") || strings.Contains(cerr.Error(), "7") {
					t.Errorf("a dialler without the secret learned about the ring: %v", cerr)
				}
			default:
				var refused *RefusedError
				if !errors.As(cerr, &refused) || !strings.Contains(cerr.Error(), tc.want) || !strings.Contains(s.reason, tc.want) {
					t.Fatalf("client %v, server %q; want a refusal with %q", cerr, s.reason, tc.want)
				}
			}
		})
	}
}

// TestStrangerLearnsNothing: raw bytes from a process without the secret
// (a port scanner, an HTTP client, a replayed dialler opening) get the
// acceptor's opening and at most one status byte: never the run, the
// generation or a reason; and an acceptor that cannot prove it holds the
// secret is refused by the dialler.
func TestStrangerLearnsNothing(t *testing.T) {
	cfg := Config{Rank: 1, Size: 2, Run: "secret-run-name", Generation: 4242, Secret: testSecret}
	for _, tc := range []struct {
		name string
		send func(conn net.Conn) // what the stranger writes
	}{
		{"http", func(conn net.Conn) { conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) }},
		{"opening then a forged hello", func(conn net.Conn) {
			open, _, _ := opening(helloMagic)
			conn.Write(open)
			fields := hello{Size: 2, Rank: 0, Generation: 4242, Run: "secret-run-name"}.marshal()
			conn.Write(append(fields, make([]byte, macLen)...))
		}},
		{"opening then silence", func(conn net.Conn) {
			open, _, _ := opening(helloMagic)
			conn.Write(open)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			go func() {
				serverHandshake(b, cfg, time.Now().Add(time.Second), nil)
				b.Close()
			}()
			go tc.send(a)
			got, _ := io.ReadAll(a)
			if len(got) > openingLen+1 {
				t.Fatalf("the stranger read %d bytes: %q", len(got), got)
			}
			for _, secret := range []string{"secret-run-name", "4242"} {
				if strings.Contains(string(got), secret) {
					t.Fatalf("the stranger read %q", got)
				}
			}
		})
	}
	t.Run("impostor acceptor", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		go func() { // answers like an acceptor, accepts without a valid MAC
			defer b.Close()
			readOpening(b, helloMagic)
			open, _, _ := opening(answerMagic)
			b.Write(open)
			readHello(b)
			io.ReadFull(b, make([]byte, macLen))
			b.Write(append([]byte{statusAccepted}, make([]byte, macLen)...))
		}()
		err := clientHandshake(a, hello{Size: 2, Rank: 0, Generation: 1, Run: "r"}, testSecret, 1, time.Now().Add(5*time.Second))
		if !errors.Is(err, errBadAcceptor) {
			t.Fatalf("dialler: %v, want %v", err, errBadAcceptor)
		}
	})
}

// TestSilentConnectionsDoNotDelayTheRing: strangers that connect to a
// rank's listener and say nothing (more of them than handshakes run at
// once) do not keep its previous rank out: the ring still connects.
func TestSilentConnectionsDoNotDelayTheRing(t *testing.T) {
	ls, peers := listeners(t, 2)
	for range maxPendingHandshakes + 4 {
		conn, err := net.Dial("tcp", peers[1])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	comms := make([]*Comm, 2)
	errs := onAll(comms, func(r int, _ *Comm) error {
		c, err := Connect(ctx, ls[r], Config{Rank: r, Size: 2, Peers: peers, Run: "run", Generation: 1, Secret: testSecret})
		comms[r] = c
		return err
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, c := range comms {
		defer c.Close()
	}
	checkAllReduce(t, comms, 100, collective.Sum, 3)
}

func TestBadMagicRejected(t *testing.T) {
	if _, _, err := readOpening(strings.NewReader("GET / HTTP/1.1\r\n\r\n.........................."), helloMagic); err == nil || !strings.Contains(err.Error(), "magic") {
		t.Fatalf("got %v", err)
	}
}

// TestStaleGenerationCannotJoin: rank 0 is a leftover of generation 1
// (holding that generation's secret); rank 1 is in generation 2. Neither
// takes the other's proof: each dials again (the other may be a rank of
// another generation about to catch up) and fails by its deadline, saying
// that the peer did not accept this generation's secret, never having
// connected.
func TestStaleGenerationCannotJoin(t *testing.T) {
	ls, peers := listeners(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	gens := []uint64{1, 2}
	secrets := [][]byte{NewSecret(), NewSecret()}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Go(func() {
			c, err := Connect(ctx, ls[r], Config{Rank: r, Size: 2, Peers: peers, Run: "run", Generation: gens[r], Secret: secrets[r]})
			if c != nil {
				c.Close()
			}
			errs[r] = err
		})
	}
	wg.Wait()
	for r, err := range errs {
		t.Logf("rank %d (generation %d): %v", r, gens[r], err)
		if err == nil || !strings.Contains(err.Error(), "did not accept this generation's ring secret") {
			t.Errorf("rank %d (generation %d): %v, want an error saying its peer did not take its secret", r, gens[r], err)
		}
	}
}

// TestStaleRankRefusedWhileRingForms: rank 1 of generation 2 is accepting
// when a generation-1 "rank 0" (the old secret) dials it: the stale rank
// is not let in, and rank 1 keeps waiting for the real rank 0.
func TestStaleRankRefusedWhileRingForms(t *testing.T) {
	ls, addrs := listeners(t, 3)
	peers := addrs[:2]
	secret := NewSecret()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	comms := make([]*Comm, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	connect := func(r int) {
		wg.Go(func() {
			comms[r], errs[r] = Connect(ctx, ls[r], Config{Rank: r, Size: 2, Peers: peers, Run: "run", Generation: 2, Secret: secret})
		})
	}
	connect(1)
	staleCtx, staleCancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer staleCancel()
	_, staleErr := Connect(staleCtx, ls[2], Config{Rank: 0, Size: 2, Peers: []string{ls[2].Addr(), peers[1]}, Run: "run", Generation: 1, Secret: NewSecret()})
	if staleErr == nil || !strings.Contains(staleErr.Error(), "did not accept this generation's ring secret") {
		t.Fatalf("stale rank: %v, want it kept out for its secret", staleErr)
	}
	connect(0)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, c := range comms {
		defer c.Close()
	}
	checkAllReduce(t, comms, 100, collective.Sum, 9)
}

func TestPlanBalances(t *testing.T) {
	// What rank r sends must be exactly what rank r+1 receives, span by
	// span, for every shape and phase; and every forward must have a
	// sender slot.
	for _, ph := range []phases{bothPhases, reduceScatter, allGather} {
		for n := 2; n <= 6; n++ {
			for _, total := range []int{0, 1, 2, n - 1, n, n + 1, 97, 1000} {
				for _, chunk := range []int{1, 3, 16} {
					for r := range n {
						// The whole buffer, and parts of it (AllReducePart).
						for _, pt := range []part{whole(total), {total / 3, total / 4, total}, {1, max(total-2, 0), total}} {
							if pt.off+pt.n > total {
								continue
							}
							p := ringPlan(pt, n, r, chunk, ph, false)
							q := ringPlan(pt, n, (r+1)%n, chunk, ph, false)
							sent := append([]span(nil), p.first...)
							for _, it := range p.recv {
								if it.forward {
									sent = append(sent, it.span)
								}
							}
							if len(sent) != len(q.recv) {
								t.Fatalf("phases %d n=%d total=%d chunk=%d: rank %d sends %d chunks, rank %d receives %d", ph, n, total, chunk, r, len(sent), (r+1)%n, len(q.recv))
							}
							for i := range sent {
								if sent[i] != q.recv[i].span {
									t.Fatalf("phases %d n=%d total=%d chunk=%d: chunk %d sent as %v, received as %v", ph, n, total, chunk, i, sent[i], q.recv[i].span)
								}
							}
						}
					}
				}
			}
		}
	}
}

// TestPlanPhases: an all-reduce plan is the reduce-scatter plan followed by
// the all-gather plan (so ReduceScatter sums exactly as AllReduce does);
// the reduce-scatter ends on rank r with block r reduced (the only chunks
// it keeps), and the all-gather starts by sending block r and receives
// every other block.
func TestPlanPhases(t *testing.T) {
	for n := 2; n <= 6; n++ {
		for _, per := range []int{1, 5, 40} {
			total := n * per
			for r := range n {
				const chunk = 3
				all := ringPlan(whole(total), n, r, chunk, bothPhases, true)
				rs := ringPlan(whole(total), n, r, chunk, reduceScatter, true)
				ag := ringPlan(whole(total), n, r, chunk, allGather, false)
				where := fmt.Sprintf("n=%d total=%d rank %d", n, total, r)
				if !slices.Equal(all.first, rs.first) {
					t.Fatalf("%s: all-reduce sends first %v, reduce-scatter %v", where, all.first, rs.first)
				}
				if len(all.recv) != len(rs.recv)+len(ag.recv) {
					t.Fatalf("%s: all-reduce receives %d chunks, the phases %d + %d", where, len(all.recv), len(rs.recv), len(ag.recv))
				}
				for i, it := range all.recv {
					var want recvItem
					if i < len(rs.recv) {
						want = rs.recv[i]
						want.forward = true // on into the all-gather
					} else {
						want = ag.recv[i-len(rs.recv)]
						want.waitSent = it.waitSent // only the joined plan overwrites what it sent
					}
					if it != want {
						t.Fatalf("%s: receive %d is %+v in the all-reduce, %+v in its phase", where, i, it, want)
					}
				}
				block := span{r * per, per}
				var kept []span
				for _, it := range rs.recv {
					if !it.forward {
						if !it.reduce || !it.scale {
							t.Fatalf("%s: the last reduce-scatter step %+v does not reduce and scale", where, it)
						}
						kept = append(kept, it.span)
					}
				}
				if !slices.Equal(kept, chunks(block, chunk)) {
					t.Fatalf("%s: reduce-scatter ends with %v, want block %v", where, kept, block)
				}
				if !slices.Equal(ag.first, chunks(block, chunk)) {
					t.Fatalf("%s: all-gather sends first %v, want block %v", where, ag.first, block)
				}
				got := 0
				for _, it := range ag.recv {
					if it.reduce || it.waitSent != 0 || (it.off < block.off+block.n && block.off < it.off+it.n) {
						t.Fatalf("%s: all-gather receive %+v (own block %v)", where, it, block)
					}
					got += it.n
				}
				if got != total-per {
					t.Fatalf("%s: all-gather receives %d elements, want %d", where, got, total-per)
				}
			}
		}
	}
}

// TestLastWaitMeasuresALatePeer: the rank that enters an all-reduce early
// reports waiting for the late one, at least the time between the two
// calls' starts (as the calls themselves clocked them, so on any machine);
// the late one waits less.
func TestLastWaitMeasuresALatePeer(t *testing.T) {
	comms := world(t, 2, nil)
	done := make(chan error, 1)
	go func() { done <- comms[0].AllReduce(context.Background(), make([]float32, 1000), collective.Sum) }()
	testutil.WaitFor(t, 30*time.Second, "rank 0 inside AllReduce", func() bool { return inCall(comms[0]) })
	// Rank 1 is late on purpose: the delay is the test's input, no event
	// stands behind it.
	time.Sleep(200 * time.Millisecond)
	if err := comms[1].AllReduce(context.Background(), make([]float32, 1000), collective.Sum); err != nil {
		t.Fatal(err)
	}
	if err := waitErr(t, done, 30*time.Second, "rank 0"); err != nil {
		t.Fatal(err)
	}
	gap := comms[1].callStart.Sub(comms[0].callStart) // both calls are over
	early, late := comms[0].LastWait(), comms[1].LastWait()
	t.Logf("rank 1 started %v after rank 0; rank 0 waited %v, rank 1 %v", gap, early, late)
	if early < gap {
		t.Errorf("early rank waited %v, less than the %v until the late rank started", early, gap)
	}
	if late >= early {
		t.Errorf("late rank waited %v, the early one %v; want the late one to wait less", late, early)
	}
}

func TestPairedShare(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		allreduce, limit []time.Duration
		want             float64
	}{
		{ms(10, 20, 40), ms(9, 18, 36), 0.9},        // drift moves both of a pair
		{ms(10, 10, 10, 10), ms(5, 8, 9, 10), 0.85}, // even count: mean of the middle two
		{nil, nil, 0},
	}
	for _, tt := range tests {
		if got := pairedShare(tt.allreduce, tt.limit); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("pairedShare(%v, %v) = %v, want %v", tt.allreduce, tt.limit, got, tt.want)
		}
	}
}
