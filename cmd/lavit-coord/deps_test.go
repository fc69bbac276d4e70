package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// TestBuildsWithoutCgo: lavit-coord must build with CGO_ENABLED=0 (it runs
// in minimal images and never touches libtorch or NCCL).
func TestBuildsWithoutCgo(t *testing.T) {
	out := t.TempDir() + "/lavit-coord"
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, b)
	}
}

// TestNoForbiddenDeps: the coordinator's import graph stays free of the
// packages that need cgo or a GPU (tailscale's deptest idea).
func TestNoForbiddenDeps(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Dir = testutil.RepoRoot() + "/cmd/lavit-coord"
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(b))
	if len(deps) < 10 {
		t.Fatalf("go list returned only %d packages; the check would prove nothing", len(deps))
	}
	forbidden := []string{
		"github.com/lavit-org/lavit/trainer",
		"github.com/lavit-org/lavit/collective/nccl",
		"runtime/cgo",
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("lavit-coord depends on %s", d)
			}
		}
	}
}
