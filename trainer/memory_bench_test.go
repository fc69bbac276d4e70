package trainer

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lavit-org/lavit/collective/ring"
	"github.com/lavit-org/lavit/internal/testutil"
)

// benchLM is the memory benchmark's medium stage-2 model: Llama-shaped,
// d 768, 6 layers, 12 heads, MLP 2048, LaVIT's vocabulary (48386): about
// 117 M parameters.
func benchLM() Config {
	c := TinyStage2()
	c.Text, c.Eval = nil, ""
	c.LM = &LMConfig{Arch: "llama", Vocab: 48386, DModel: 768, Layers: 6, Heads: 12, MLP: 2048, MaxLen: 256, RopeTheta: 10000, NormEps: 1e-5}
	return c
}

// memSetting is one row of the memory benchmark.
type memSetting struct {
	world, zero int
	ckpt        bool
	precision   string // fp32, or bf16 (gradients reduced in float32)
}

// memResult is what a rank process reports.
type memResult struct {
	peakKB int64   // VmHWM: the process's peak resident memory
	stepMS float64 // median of the timed steps
}

// BenchmarkMemory trains benchLM for a few steps at worlds 1, 2 and 4 (one
// process per rank on this host, a ring over loopback, one libtorch thread
// each), with optim.zero 0, 1 and 2, with and without activation
// checkpointing, one row of 127 tokens per rank per step, and reports each
// setting's peak resident memory per rank (the largest rank's VmHWM) and
// its step time relative to plain data parallelism (fp32, zero 0, no
// checkpointing) at the same world size; in fp32 and in bf16 (gradients
// reduced in float32). The table is also written to
// $LAVIT_REPORT_DIR/memory.md. LAVIT_BENCH_WORLDS (e.g. "1") limits the
// world sizes, LAVIT_BENCH_PRECISIONS (e.g. "bf16") the precisions.
func BenchmarkMemory(b *testing.B) {
	var table strings.Builder
	table.WriteString("| world | precision | zero | activation checkpointing | peak RSS per rank (MiB) | step (ms) | step vs plain DP |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	precisions := []string{PrecisionFP32, PrecisionBF16}
	if p := os.Getenv("LAVIT_BENCH_PRECISIONS"); p != "" {
		precisions = strings.Split(p, ",")
	}
	worlds := []int{1, 2, 4}
	if w := os.Getenv("LAVIT_BENCH_WORLDS"); w != "" { // e.g. "1" for a quick run
		worlds = nil
		for _, f := range strings.Split(w, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 {
				b.Fatalf("LAVIT_BENCH_WORLDS=%q: want world sizes like 1,2,4", w)
			}
			worlds = append(worlds, n)
		}
	}
	for i := 0; i < b.N; i++ {
		for _, world := range worlds {
			var plainMS float64
			for _, precision := range precisions {
				for _, zero := range []int{0, 1, 2} {
					for _, ckpt := range []bool{false, true} {
						s := memSetting{world: world, zero: zero, ckpt: ckpt, precision: precision}
						res := runMemSetting(b, s)
						peak, step := int64(0), res[0].stepMS
						for _, r := range res {
							peak = max(peak, r.peakKB)
						}
						if plainMS == 0 { // the first row: fp32, zero 0, no checkpointing, unless limited
							plainMS = step
						}
						name := fmt.Sprintf("world%d/%s/zero%d/ckpt=%v", world, precision, zero, ckpt)
						b.ReportMetric(float64(peak)/1024, name+"_MiB")
						b.ReportMetric(step/plainMS, name+"_vs_plain")
						fmt.Fprintf(&table, "| %d | %s | %d | %v | %d | %.0f | %.2f× |\n", world, precision, zero, ckpt, peak>>10, step, step/plainMS)
					}
				}
			}
		}
	}
	fmt.Fprint(os.Stderr, "\n"+table.String())
	if dir := os.Getenv("LAVIT_REPORT_DIR"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, "memory.md"), []byte(table.String()), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// runMemSetting starts one process per rank (this test binary, running
// TestMemoryBenchRank) and returns each rank's report.
func runMemSetting(b *testing.B, s memSetting) []memResult {
	b.Helper()
	var peers []string
	for range s.world {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		peers = append(peers, l.Addr().String())
		l.Close() // the rank listens there (a port taken meanwhile fails the run, loudly)
	}
	// Each rank reports, then waits for its stdin to close before it
	// leaves the ring: a rank that closed its ring while a slower peer
	// still read the last all-gather would fail that peer.
	results := make([]memResult, s.world)
	errs := make([]error, s.world)
	cmds := make([]*exec.Cmd, s.world)
	stdins := make([]io.WriteCloser, s.world)
	var wg sync.WaitGroup
	for r := range s.world {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestMemoryBenchRank$", "-test.v", "-test.timeout", "30m")
		cmd.Env = append(os.Environ(), fmt.Sprintf("LAVIT_MEMBENCH=%d,%d,%d,%v,%s,%s", s.world, r, s.zero, s.ckpt, s.precision, strings.Join(peers, ",")))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if stdins[r], err = cmd.StdinPipe(); err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		cmds[r] = cmd
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lines []string
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines = append(lines, sc.Text())
				if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "MEMBENCH "); ok {
					if _, err := fmt.Sscanf(v, "%d %f", &results[r].peakKB, &results[r].stepMS); err != nil {
						errs[r] = err
					}
					go io.Copy(io.Discard, stdout)
					return
				}
			}
			errs[r] = fmt.Errorf("rank %d printed no result:\n%s", r, strings.Join(lines, "\n"))
		}()
	}
	wg.Wait()
	for r := range s.world {
		stdins[r].Close()
	}
	for r, cmd := range cmds {
		if err := cmd.Wait(); err != nil && errs[r] == nil {
			errs[r] = fmt.Errorf("rank %d: %v", r, err)
		}
	}
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	return results
}

// TestMemoryBenchRank is one rank of BenchmarkMemory (it skips unless
// asked): builds benchLM, shards it, trains one warm-up and three timed
// steps, and prints its peak resident memory and median step time.
func TestMemoryBenchRank(t *testing.T) {
	spec := os.Getenv("LAVIT_MEMBENCH")
	if spec == "" {
		t.Skip("run by BenchmarkMemory")
	}
	f := strings.Split(spec, ",")
	world, _ := strconv.Atoi(f[0])
	rank, _ := strconv.Atoi(f[1])
	zero, _ := strconv.Atoi(f[2])
	ckpt := f[3] == "true"
	precision := f[4]
	peers := f[5:]
	lib := loadLib(t)
	m := newModel(t, lib, benchLM(), 1)
	if err := m.SetPrecision(precision, PrecisionFP32); err != nil {
		t.Fatal(err)
	}
	if err := m.SetShard(rank, world, zero); err != nil {
		t.Fatal(err)
	}
	if err := m.SetActivationCheckpointing(ckpt); err != nil {
		t.Fatal(err)
	}
	red := Local
	if world > 1 {
		l, err := ring.Listen(peers[rank])
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		c, err := ring.Connect(ctx, l, ring.Config{Rank: rank, Size: world, Peers: peers, Run: "membench", Generation: 1, Secret: []byte("membench ring secret (loopback)"), Timeout: 10 * time.Minute})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		red = ringReduce(c)
	}
	const T = 127
	batch := func(step int) *Batch {
		b := lmRows([]int64{int64(step*world + rank)}, T, func(_, k int) int64 { return int64((rank*7919 + step*104729 + k*31) % 48386) })
		b.Step, b.GlobalBatch = int64(step), int64(world)
		return b
	}
	var ms []float64
	for step := range 4 {
		began := time.Now()
		if _, err := m.Step(context.Background(), batch(step), red, nil); err != nil {
			t.Fatal(err)
		}
		if step > 0 { // the first allocates the optimizer's state
			ms = append(ms, float64(time.Since(began).Microseconds())/1000)
		}
	}
	fmt.Printf("MEMBENCH %d %.1f\n", statusKB(t, "VmHWM"), testutil.Median(ms))
	// Stay in the ring until every rank has reported (the parent closes
	// stdin then).
	io.Copy(io.Discard, os.Stdin)
}
