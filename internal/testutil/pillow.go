package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// PillowPython is a Python with Pillow (webp included), the independent
// reference for image decoding and LaVIT's bicubic resize:
// $LAVIT_PILLOW_PYTHON, or Debian's /usr/bin/python3 (python3-pil, which
// make deps installs). It fails the test, saying what to install, when
// that Python has no Pillow with webp.
func PillowPython(t testing.TB) string {
	t.Helper()
	py := os.Getenv("LAVIT_PILLOW_PYTHON")
	if py == "" {
		py = "/usr/bin/python3"
	}
	if out, err := exec.Command(py, "-c", "from PIL import features; assert features.check('webp')").CombinedOutput(); err != nil {
		t.Fatalf("the image reference needs Pillow with webp for %s (run make deps, or apt-get install python3-pil; or set LAVIT_PILLOW_PYTHON): %v: %s", py, err, out)
	}
	return py
}
