package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/worker"
)

// ddpResult is deploy/bench/ddp_reference.py's output: rank 0's mean step
// split in milliseconds.
type ddpResult struct {
	SamplesPerS float64 `json:"samples_per_s"`
	StepMs      float64 `json:"step_ms"`
	DataMs      float64 `json:"data_ms"`
	ComputeMs   float64 `json:"compute_ms"`
	CommMs      float64 `json:"comm_ms"`
}

// runDDP runs the PyTorch DDP reference at world ranks, one thread each.
func runDDP(b *testing.B, python string, world int) ddpResult {
	script := filepath.Join(testutil.RepoRoot(), "deploy", "bench", "ddp_reference.py")
	cmd := exec.Command(python, script, "--world", fmt.Sprint(world), "--global-batch", "8", "--threads", "1", "--steps", "100", "--pin")
	cmd.Env = append(os.Environ(), testutil.ReferenceMalloc...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("DDP reference, world %d: %v", world, err)
	}
	var r ddpResult
	if err := json.Unmarshal(out, &r); err != nil {
		b.Fatalf("DDP reference, world %d: %v: %q", world, err, out)
	}
	return r
}

// BenchmarkVsDDP: lavit against PyTorch DDP (Gloo) on the same model (tiny
// stage 1 in phase A), the same image size and global batch (8), one
// compute thread per rank, each rank pinned to its share of the cores
// (lavit-worker --cpus; the reference's --pin), at worlds 1 and 2 (and 4 on 4 cores or more),
// in one invocation. Each iteration runs lavit (a coordinator and world
// worker processes training 300 steps from synthetic shards; rank 0's
// split over steps 200–299) and then the reference
// (deploy/bench/ddp_reference.py: 100 steps with DDP's reduction off, then
// 100 with it on) back to back, so machine noise hits both alike; the
// reported numbers are medians over the iterations. Per world it reports
// both rates, the ratio lavit/DDP and each side's split: compute, data,
// and for lavit exposed communication (the collectives' time moving
// bytes) apart from idle (waiting in a collective for a slower peer to
// arrive, as the ring measures it), as percentages of the step too; DDP's
// comm is the step with its reduction less the step without, which holds
// both (Gloo does not tell them apart). Run with -benchtime Nx (make
// bench: 3x).
func BenchmarkVsDDP(b *testing.B) {
	python := testutil.ReferencePython(b)
	bin := testutil.Binaries(b)
	data := benchData(b, bin)
	worlds := []int{1, 2}
	if runtime.NumCPU() >= 4 {
		worlds = append(worlds, 4)
	}
	if env := os.Getenv("LAVIT_BENCH_WORLDS"); env != "" {
		worlds = nil
		for _, f := range strings.Split(env, ",") {
			w, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || w < 1 {
				b.Fatalf("LAVIT_BENCH_WORLDS=%q: want a comma-separated list of worlds, like 1,2", env)
			}
			worlds = append(worlds, w)
		}
	}
	cpus, err := worker.AllowedCPUs()
	if err != nil {
		b.Fatal(err)
	}
	sets := []string{"steps=300", "stage1.phase_a_steps=299", "checkpoint.every_steps=0"}
	if env := os.Getenv("LAVIT_BENCH_SET"); env != "" {
		sets = append(sets, strings.Split(env, ";")...) // e.g. collective.bucket_mb=0.25
	}
	for _, world := range worlds {
		var lv, ref []float64
		var lvRuns []wire.StepTiming
		var refRuns []ddpResult
		for i := 0; i < b.N; i++ {
			info := benchRunEach(b, bin, data, world, sets, func(w int) []string {
				return []string{"--threads", "1", "--cpus", worker.FormatCPUList(worker.CPUShare(cpus, world, w))}
			})
			t := *info.Timing
			lvRuns = append(lvRuns, t)
			lv = append(lv, 8000/t.StepMs)
			r := runDDP(b, python, world)
			refRuns = append(refRuns, r)
			ref = append(ref, r.SamplesPerS)
			b.Logf("world %d, round %d: lavit %.1f samples/s (step %.1f ms: compute %.1f, all-reduce %.2f, idle %.2f, data %.2f); DDP %.1f samples/s (step %.1f ms: compute %.1f, comm %.2f, data %.2f)",
				world, i, lv[i], t.StepMs, t.ComputeMs, t.AllReduceMs, t.IdleMs, t.DataMs, r.SamplesPerS, r.StepMs, r.ComputeMs, r.CommMs, r.DataMs)
		}
		p := fmt.Sprintf("w%d_", world)
		lt := medianTiming(lvRuns)
		rt := medianDDP(refRuns)
		b.ReportMetric(testutil.Median(lv), p+"lavit_samples/s")
		b.ReportMetric(testutil.Median(ref), p+"ddp_samples/s")
		b.ReportMetric(testutil.Median(lv)/testutil.Median(ref), p+"lavit/ddp")
		b.ReportMetric(lt.StepMs, p+"lavit_step_ms")
		b.ReportMetric(lt.ComputeMs, p+"lavit_compute_ms")
		b.ReportMetric(lt.AllReduceMs, p+"lavit_exposed_comm_ms")
		b.ReportMetric(lt.IdleMs, p+"lavit_idle_ms")
		b.ReportMetric(lt.DataMs, p+"lavit_data_ms")
		b.ReportMetric(rt.StepMs, p+"ddp_step_ms")
		b.ReportMetric(rt.ComputeMs, p+"ddp_compute_ms")
		b.ReportMetric(rt.CommMs, p+"ddp_comm_ms")
		b.ReportMetric(rt.DataMs, p+"ddp_data_ms")
		b.ReportMetric(medianOf(lvRuns, func(t wire.StepTiming) float64 { return 100 * t.AllReduceMs / t.StepMs }), p+"lavit_exposed_comm_%")
		b.ReportMetric(medianOf(lvRuns, func(t wire.StepTiming) float64 { return 100 * t.IdleMs / t.StepMs }), p+"lavit_idle_%")
		b.ReportMetric(medianOf(refRuns, func(r ddpResult) float64 { return 100 * r.CommMs / r.StepMs }), p+"ddp_comm_%")
	}
}

// medianOf is each run's f, median over the runs.
func medianOf[T any](runs []T, f func(T) float64) float64 {
	xs := make([]float64, len(runs))
	for i, r := range runs {
		xs[i] = f(r)
	}
	return testutil.Median(xs)
}

// medianTiming is each field's median over the runs.
func medianTiming(ts []wire.StepTiming) wire.StepTiming {
	return wire.StepTiming{
		DataMs:      medianOf(ts, func(t wire.StepTiming) float64 { return t.DataMs }),
		ComputeMs:   medianOf(ts, func(t wire.StepTiming) float64 { return t.ComputeMs }),
		AllReduceMs: medianOf(ts, func(t wire.StepTiming) float64 { return t.AllReduceMs }),
		IdleMs:      medianOf(ts, func(t wire.StepTiming) float64 { return t.IdleMs }),
		StepMs:      medianOf(ts, func(t wire.StepTiming) float64 { return t.StepMs }),
	}
}

// medianDDP is each field's median over the reference's runs.
func medianDDP(rs []ddpResult) ddpResult {
	return ddpResult{
		SamplesPerS: medianOf(rs, func(r ddpResult) float64 { return r.SamplesPerS }),
		StepMs:      medianOf(rs, func(r ddpResult) float64 { return r.StepMs }),
		DataMs:      medianOf(rs, func(r ddpResult) float64 { return r.DataMs }),
		ComputeMs:   medianOf(rs, func(r ddpResult) float64 { return r.ComputeMs }),
		CommMs:      medianOf(rs, func(r ddpResult) float64 { return r.CommMs }),
	}
}
