package coordinator

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestRunStateDiagram: coordinator/DESIGN.md draws the run state machine;
// it must be runTransitions, line for line, so the one diagram never goes
// stale.
func TestRunStateDiagram(t *testing.T) {
	var b strings.Builder
	for _, from := range []string{RunPending, RunRunning, RunPaused, RunFailed, RunCancelled, RunCompleted} {
		next := runTransitions[from]
		to := strings.Join(next, " | ")
		if len(next) == 0 {
			to = "(final)"
		}
		fmt.Fprintf(&b, "%-9s → %s\n", from, to)
	}
	design, err := os.ReadFile("DESIGN.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(design), b.String()) {
		t.Errorf("coordinator/DESIGN.md does not draw runTransitions; its \"Run states\" block should read:\n%s", b.String())
	}
}
