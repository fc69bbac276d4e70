package ring

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoCgo: the ring and the collective API use no cgo (and never the
// nccl package), so cgo-free binaries such as lavit-coord may use them.
func TestNoCgo(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{len .CgoFiles}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	ours := 0
	for _, line := range lines {
		path, ncgo, _ := strings.Cut(line, " ")
		if !strings.HasPrefix(path, "github.com/lavit-org/lavit/") {
			continue
		}
		ours++
		if ncgo != "0" || strings.HasSuffix(path, "/collective/nccl") {
			t.Errorf("collective/ring depends on %s (%s cgo files)", path, ncgo)
		}
	}
	if ours < 2 {
		t.Fatalf("found %d lavit packages among %d deps; the check would prove nothing", ours, len(lines))
	}
}
