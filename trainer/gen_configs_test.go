package trainer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/lavit-org/lavit/internal/testutil"
)

// TestWriteShippedConfigs regenerates configs/models from the Go
// definitions when LAVIT_WRITE_CONFIGS=1 (go generate style); otherwise it
// does nothing.
func TestWriteShippedConfigs(t *testing.T) {
	if os.Getenv("LAVIT_WRITE_CONFIGS") != "1" {
		t.Skip("set LAVIT_WRITE_CONFIGS=1 to regenerate configs/models")
	}
	for name, c := range map[string]Config{"tiny-stage1": TinyStage1(), "tiny-stage2": TinyStage2(), "tiny-stage2-continuous": TinyStage2Continuous()} {
		b, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(testutil.RepoRoot(), "configs", "models", name+".json"), append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
