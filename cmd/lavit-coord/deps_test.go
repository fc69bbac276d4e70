package main

import (
	"os"
	"os/exec"
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
	testutil.CheckDeps(t, "cmd/lavit-coord", []string{"CGO_ENABLED=0"}, []string{
		"github.com/lavit-org/lavit/trainer",
		"github.com/lavit-org/lavit/collective/nccl",
		"runtime/cgo",
	})
}
