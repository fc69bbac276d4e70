package trainer

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// BenchmarkOpProfile: the operators of one rank's share of the tiny
// stage-1 step at world 2 (4 samples, phase A, one thread), lavit's
// (ProfileSteps: begin, finish, apply in C++) beside the PyTorch DDP
// reference's (deploy/bench/ddp_reference.py --trace, world 1), each
// under libtorch's legacy profiler for 10 steps, and each side's step
// time without the profiler (lavit: BenchSteps; the reference: its step
// with DDP's reduction off). The call counts are exact; the profiler's
// times are not shown: its cost per operator differed between the C++
// and the Python process (10× against 3× inflation here), so they do not
// compare. It writes the table to $LAVIT_REPORT_DIR/profile.md (make
// bench: bench-out/profile.md). Run with -benchtime 1x.
func BenchmarkOpProfile(b *testing.B) {
	py := testutil.ReferencePython(b)
	lib := loadLib(b)
	if err := lib.SetThreads(1); err != nil {
		b.Fatal(err)
	}
	const steps = 10
	dir := b.TempDir()
	for i := 0; i < b.N; i++ {
		m, err := lib.NewModel(TinyStage1(), "cpu", 21)
		if err != nil {
			b.Fatal(err)
		}
		_, batch := SyntheticBatch(0, 0, 8, 0, 4) // rank 0's half of a global batch of 8
		lavitTrace := filepath.Join(dir, "lavit.json")
		err = m.ProfileSteps(batch, steps, lavitTrace)
		m.Close()
		if err != nil {
			b.Fatal(err)
		}
		ddpTrace := filepath.Join(dir, "ddp.json")
		cmd := exec.Command(py, filepath.Join(testutil.RepoRoot(), "deploy", "bench", "ddp_reference.py"),
			"--world", "1", "--global-batch", "4", "--threads", "1", "--warmup", "10", "--steps", "10",
			"--trace", ddpTrace, "--trace-steps", fmt.Sprint(steps))
		cmd.Env = append(os.Environ(), testutil.ReferenceMalloc...)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("DDP reference: %v", err)
		}
		var refTiming struct {
			ComputeMs float64 `json:"compute_ms"`
		}
		if err := json.Unmarshal(out, &refTiming); err != nil {
			b.Fatalf("DDP reference's output: %v: %q", err, out)
		}
		m, err = lib.NewModel(TinyStage1(), "cpu", 21)
		if err != nil {
			b.Fatal(err)
		}
		var lvTimes []float64
		for range 5 {
			ms, err := m.BenchSteps(batch, 20)
			if err != nil {
				b.Fatal(err)
			}
			lvTimes = append(lvTimes, ms)
		}
		m.Close()
		lv, err := ReadOpProfile(lavitTrace)
		if err != nil {
			b.Fatalf("lavit's trace: %v", err)
		}
		ref, err := ReadOpProfile(ddpTrace)
		if err != nil {
			b.Fatalf("the reference's trace: %v", err)
		}
		lvMs := testutil.Median(lvTimes)
		table, lvCalls, refCalls := profileTable(lv, ref, steps, 30)
		table += fmt.Sprintf("\nStep time without the profiler (one thread, 4 samples): lavit %.1f ms (median of 5 × 20 steps), the reference %.1f ms (100 steps).\n", lvMs, refTiming.ComputeMs)
		if dir := os.Getenv("LAVIT_REPORT_DIR"); dir != "" {
			if err := os.WriteFile(filepath.Join(dir, "profile.md"), []byte(table), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		b.Log("\n" + table)
		b.ReportMetric(lvCalls, "lavit_ops/step")
		b.ReportMetric(refCalls, "ddp_ops/step")
		b.ReportMetric(lvMs, "lavit_ms/step")
		b.ReportMetric(refTiming.ComputeMs, "ddp_ms/step")
	}
}

// profileTable prints the operators of two profiles side by side, calls
// per step, the most called first, and returns each side's calls per step.
func profileTable(lv, ref []OpStat, steps, top int) (string, float64, float64) {
	type pair struct{ lv, ref int }
	rows := map[string]*pair{}
	var names []string
	var lvCalls, refCalls int
	for _, o := range lv {
		rows[o.Name] = &pair{lv: o.Calls}
		names = append(names, o.Name)
		lvCalls += o.Calls
	}
	for _, o := range ref {
		if rows[o.Name] == nil {
			rows[o.Name] = &pair{}
			names = append(names, o.Name)
		}
		rows[o.Name].ref = o.Calls
		refCalls += o.Calls
	}
	most := func(n string) int { return max(rows[n].lv, rows[n].ref) }
	sort.SliceStable(names, func(i, j int) bool { return most(names[i]) > most(names[j]) })
	s := float64(steps)
	var sb strings.Builder
	sb.WriteString("| operator | lavit calls/step | DDP calls/step |\n| --- | --- | --- |\n")
	for _, n := range names[:min(top, len(names))] {
		fmt.Fprintf(&sb, "| %s | %.0f | %.0f |\n", n, float64(rows[n].lv)/s, float64(rows[n].ref)/s)
	}
	fmt.Fprintf(&sb, "| **all operators** (%d kinds; %d) | %.0f | %.0f |\n", len(lv), len(ref), float64(lvCalls)/s, float64(refCalls)/s)
	return sb.String(), float64(lvCalls) / s, float64(refCalls) / s
}
