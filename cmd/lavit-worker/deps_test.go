package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// TestNoControlPlaneDeps: the worker binary talks to the coordinators over
// NATS but links none of their server side (tailscale's deptest idea): no
// raft, no raft log, no NATS server, no coordinator package.
func TestNoControlPlaneDeps(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Dir = testutil.RepoRoot() + "/cmd/lavit-worker"
	cmd.Env = os.Environ()
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(b))
	if len(deps) < 10 {
		t.Fatalf("go list returned only %d packages; the check would prove nothing", len(deps))
	}
	// It must link what it needs: the NATS client and the trainer.
	for _, want := range []string{"github.com/nats-io/nats.go", "github.com/lavit-org/lavit/trainer"} {
		found := false
		for _, d := range deps {
			found = found || d == want
		}
		if !found {
			t.Errorf("lavit-worker does not depend on %s: the dependency list is not what this test expects", want)
		}
	}
	forbidden := []string{
		"github.com/hashicorp/raft",
		"github.com/hashicorp/raft-wal",
		"github.com/nats-io/nats-server",
		"github.com/lavit-org/lavit/coordinator",
		"github.com/lavit-org/lavit/internal/natsembed",
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("lavit-worker depends on %s", d)
			}
		}
	}
}
