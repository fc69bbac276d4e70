package testutil

import (
	"os"
	"os/exec"
	"slices"
	"testing"
)

// ReferenceMalloc is the glibc setting the PyTorch reference
// (deploy/bench/ddp_reference.py) runs under: lavit's own thresholds
// (trainer.Load sets 32 MiB and 256 MiB). Without them, on this kind of VM,
// the Python process hands freed tensor memory back to the kernel and
// faults it in again every step (2.5–3× slower; trainer/DESIGN.md,
// "Throughput against PyTorch DDP").
var ReferenceMalloc = []string{"MALLOC_MMAP_THRESHOLD_=33554432", "MALLOC_TRIM_THRESHOLD_=268435456"}

// ReferencePython is the Python that runs the PyTorch reference:
// $LAVIT_BENCH_PYTHON, or Debian's /usr/bin/python3 (python3-torch
// installs torch for it). It fails the benchmark, saying what to install,
// when that Python has no PyTorch with Gloo.
func ReferencePython(t testing.TB) string {
	t.Helper()
	py := os.Getenv("LAVIT_BENCH_PYTHON")
	if py == "" {
		py = "/usr/bin/python3"
	}
	if out, err := exec.Command(py, "-c", "import torch.distributed as d; assert d.is_gloo_available()").CombinedOutput(); err != nil {
		t.Fatalf("the DDP reference needs PyTorch with Gloo for %s (Debian: apt-get install python3-torch; or set LAVIT_BENCH_PYTHON): %v: %s", py, err, out)
	}
	return py
}

// Median is the middle value of xs (the upper middle for an even count).
func Median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
