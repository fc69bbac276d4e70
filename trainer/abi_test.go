package trainer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/internal/testutil"
)

// TestLoadRefusesOtherABIVersion builds a fake shim that has every symbol
// but reports another ABI version, and checks Load refuses it clearly.
func TestLoadRefusesOtherABIVersion(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), "trainer", "shim_loader.c"))
	if err != nil {
		t.Fatal(err)
	}
	var c strings.Builder
	for _, m := range regexp.MustCompile(`LOAD\((\w+)\)`).FindAllStringSubmatch(string(src), -1) {
		if m[1] != "abi_version" {
			fmt.Fprintf(&c, "void lavit_%s(void) {}\n", m[1])
		}
	}
	c.WriteString("int lavit_abi_version(void) { return 999; }\n")
	dir := t.TempDir()
	cfile, lib := filepath.Join(dir, "fake.c"), filepath.Join(dir, "libfake.so")
	os.WriteFile(cfile, []byte(c.String()), 0o644)
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", lib, cfile).CombinedOutput(); err != nil {
		t.Fatalf("build fake shim: %v\n%s", err, out)
	}
	_, err = Load(lib)
	if !errors.Is(err, ErrNotAvailable) || !strings.Contains(err.Error(), "ABI version 999") {
		t.Fatalf("got %v, want an ABI version error", err)
	}
}

// TestCheckpointReadsThisStateFormat: lavit-coord parses states (ckpt
// verify and export) with checkpoint.StateFormat; it must be the format
// the shim writes.
func TestCheckpointReadsThisStateFormat(t *testing.T) {
	if StateFormat != checkpoint.StateFormat {
		t.Fatalf("the shim writes state format %d, checkpoint.StateFormat is %d: bump checkpoint.StateFormat with the shim", StateFormat, checkpoint.StateFormat)
	}
	if StateFormatBlocked != checkpoint.StateFormatBlocked {
		t.Fatalf("the shim writes blocked states in format %d, checkpoint.StateFormatBlocked is %d", StateFormatBlocked, checkpoint.StateFormatBlocked)
	}
}
