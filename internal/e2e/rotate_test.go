package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// TestTokenRotateCLI rotates the admin token and the cluster CA of a
// running coordinator through the CLI: both tokens work during the
// rotation, finishing needs the new one, and afterwards the old token
// (and the old CA) are refused while the data dir holds the new token.
func TestTokenRotateCLI(t *testing.T) {
	bin := testutil.Binaries(t)
	coordBin := filepath.Join(bin, "lavit-coord")
	c1 := startCoord(t, bin, "c1")
	testutil.WaitFor(t, time.Minute, "c1 ready", c1.ready)
	tokenPath := filepath.Join(c1.dataDir, "token")
	oldToken := readTrimmed(t, tokenPath)
	oldFile := filepath.Join(t.TempDir(), "old-token")
	if err := os.WriteFile(oldFile, []byte(oldToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	coord := []string{"--coord", "nats://" + c1.nats}
	withToken := func(file string, args ...string) []string {
		return append(append(args, coord...), "--token-file", file)
	}
	oldCA, _, _ := run(t, coordBin, nil, "ca", "--fingerprint", "--token-file", oldFile)

	rot := mustJSON[wire.TokenRotateReply](t, coordBin, nil, withToken(oldFile, "token", "rotate", "--json")...)
	if rot.Token == "" || rot.Token == oldToken || len(rot.CAFingerprint) != 64 || rot.CAFingerprint == strings.TrimSpace(oldCA) {
		t.Fatalf("rotate start: %+v (old CA %s)", rot, oldCA)
	}
	newFile := filepath.Join(t.TempDir(), "new-token")
	if err := os.WriteFile(newFile, []byte(rot.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The coordinator saves the new token as it applies the start, which
	// may come after its reply.
	testutil.WaitFor(t, time.Minute, "token.next in the data dir to hold the new token", func() bool {
		b, err := os.ReadFile(filepath.Join(c1.dataDir, "token.next"))
		return err == nil && strings.TrimSpace(string(b)) == rot.Token
	})
	// During the rotation both tokens work, each pinning its own CA, and
	// status says a rotation is in progress.
	for _, f := range []string{oldFile, newFile} {
		st := mustJSON[wire.Status](t, coordBin, nil, withToken(f, "status", "--json")...)
		if !st.AdminRotationSince.Equal(rot.Started) {
			t.Fatalf("status during the rotation: admin_rotation_since %v, want %v", st.AdminRotationSince, rot.Started)
		}
	}
	if _, stderr, code := run(t, coordBin, nil, withToken(oldFile, "token", "rotate")...); code != 1 || !strings.Contains(stderr, "in progress") {
		t.Fatalf("a second start: exit %d, %s", code, stderr)
	}
	if _, stderr, code := run(t, coordBin, nil, withToken(oldFile, "token", "rotate", "--finish")...); code != 1 || !strings.Contains(stderr, "call it with the new admin token") {
		t.Fatalf("finish with the old token: exit %d, %s", code, stderr)
	}

	fin := mustJSON[wire.TokenRotateReply](t, coordBin, nil, withToken(newFile, "token", "rotate", "--finish", "--json")...)
	if fin.CAFingerprint != rot.CAFingerprint {
		t.Fatalf("finish pins CA %s, start announced %s", fin.CAFingerprint, rot.CAFingerprint)
	}
	testutil.WaitFor(t, time.Minute, "the data dir to hold the new token", func() bool {
		b, err := os.ReadFile(tokenPath)
		_, nextErr := os.Stat(filepath.Join(c1.dataDir, "token.next"))
		return err == nil && strings.TrimSpace(string(b)) == rot.Token && os.IsNotExist(nextErr)
	})
	if st := mustJSON[wire.Status](t, coordBin, nil, withToken(newFile, "status", "--json")...); !st.AdminRotationSince.IsZero() {
		t.Fatalf("status after the rotation still reports one since %v", st.AdminRotationSince)
	}
	mustJSON[statusDoc](t, coordBin, nil, append([]string{"status", "--json", "--data-dir", c1.dataDir}, coord...)...)
	// The old token, and the old CA it pins, are refused.
	if _, stderr, code := run(t, coordBin, nil, withToken(oldFile, "status")...); code != 1 || !strings.Contains(stderr, "not a coordinator of this token's cluster") {
		t.Fatalf("old token after the rotation: exit %d, %s", code, stderr)
	}
	if ca, _, _ := run(t, coordBin, nil, "ca", "--fingerprint", "--data-dir", c1.dataDir); strings.TrimSpace(ca) != rot.CAFingerprint {
		t.Fatalf("ca --fingerprint after the rotation: %s, want %s", ca, rot.CAFingerprint)
	}
}

func readTrimmed(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
