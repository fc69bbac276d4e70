package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// procCPU returns a process's user+system CPU time from /proc.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the ")" that ends the command name; utime and stime are
	// fields 14 and 15 of the whole line, in clock ticks (100 per second).
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// BenchmarkLeaderCPU runs a real `lavit-coord up` process as the leader and
// W simulated workers heartbeating every 500 ms from this process, then
// reads the leader's CPU time over a 10 s window: how many workers one
// coordinator carries. With TLS (the default) and without
// (--plaintext-nats), to show what TLS costs. One iteration per case
// (-benchtime=1x).
func BenchmarkLeaderCPU(b *testing.B) {
	for _, workers := range []int{100, 1000} {
		for _, plaintext := range []bool{false, true} {
			name := fmt.Sprintf("workers=%d/%s", workers, map[bool]string{false: "tls", true: "plaintext"}[plaintext])
			b.Run(name, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					leaderCPU(b, workers, plaintext)
				}
			})
		}
	}
}

func leaderCPU(b *testing.B, workers int, plaintext bool) {
	b.StopTimer()
	bin := testutil.Binaries(b)
	args := []string{"--log-level", "warn"}
	connect := wire.ConnectOptions
	if plaintext {
		args = append(args, "--plaintext-nats")
		connect = wire.PlaintextConnectOptions
	}
	c := startCoord(b, bin, "c1", args...)
	defer c.signalAndWait(b, syscall.SIGTERM, 15*time.Second)
	testutil.WaitFor(b, 20*time.Second, "ready", c.ready)
	tok, err := os.ReadFile(filepath.Join(c.dataDir, "token"))
	if err != nil {
		b.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))

	const perConn = 50
	var conns []*nats.Conn
	for i := 0; i < (workers+perConn-1)/perConn; i++ {
		nc, err := nats.Connect("nats://"+c.nats, connect(token)...)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		conns = append(conns, nc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var beats, failures int
	for w := 0; w < workers; w++ {
		cl := &wire.Client{NC: conns[w/perConn], Token: token, From: fmt.Sprintf("sim-%d", w)}
		reg := &wire.RegisterRequest{Instance: "i", Host: "sim", Device: "cpu", Capacity: 1}
		if _, err := wire.Register.Call(ctx, cl, reg); err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func(offset time.Duration) {
			defer wg.Done()
			time.Sleep(offset) // spread the fleet over the interval
			tick := time.NewTicker(500 * time.Millisecond)
			defer tick.Stop()
			hb := &wire.HeartbeatRequest{Instance: "i", State: wire.WorkerIdle}
			for {
				callCtx, cc := context.WithTimeout(ctx, 2*time.Second)
				_, err := wire.Heartbeat.Call(callCtx, cl, hb)
				cc()
				if ctx.Err() != nil {
					return
				}
				mu.Lock()
				if err != nil {
					failures++
				} else {
					beats++
				}
				mu.Unlock()
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}(time.Duration(w) * 500 * time.Millisecond / time.Duration(workers))
	}
	time.Sleep(time.Second) // let the fleet settle
	pid := c.cmd.Process.Pid
	cpu0, _ := procCPU(pid)
	mu.Lock()
	beats0 := beats
	mu.Unlock()
	const window = 10 * time.Second
	b.StartTimer()
	time.Sleep(window)
	b.StopTimer()
	cpu1, _ := procCPU(pid)
	mu.Lock()
	n, fails := beats-beats0, failures
	mu.Unlock()
	cancel()
	wg.Wait()
	if fails > 0 {
		b.Errorf("%d heartbeats failed", fails)
	}
	used := cpu1 - cpu0
	pct := 100 * used.Seconds() / window.Seconds()
	b.ReportMetric(pct, "leader_cpu_%")
	b.ReportMetric(float64(used.Microseconds())/float64(max(n, 1)), "cpu_µs/heartbeat")
	b.ReportMetric(float64(n)/window.Seconds(), "heartbeats/s")
	if pct > 0 {
		b.ReportMetric(float64(workers)*100/pct, "workers/core")
	}
}
