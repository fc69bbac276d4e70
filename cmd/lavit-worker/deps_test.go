package main

import (
	"slices"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// TestNoControlPlaneDeps: the worker binary talks to the coordinators over
// NATS but links none of their server side: no raft, no raft log, no NATS
// server, no coordinator package.
func TestNoControlPlaneDeps(t *testing.T) {
	deps := testutil.CheckDeps(t, "cmd/lavit-worker", nil, []string{
		"github.com/hashicorp/raft",
		"github.com/hashicorp/raft-wal",
		"github.com/nats-io/nats-server",
		"github.com/lavit-org/lavit/coordinator",
		"github.com/lavit-org/lavit/internal/natsembed",
	})
	// It must link what it needs: the NATS client and the trainer.
	for _, want := range []string{"github.com/nats-io/nats.go", "github.com/lavit-org/lavit/trainer"} {
		if !slices.Contains(deps, want) {
			t.Errorf("lavit-worker does not depend on %s: the dependency list is not what this test expects", want)
		}
	}
}
