package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

type workerRow struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Device   string `json:"device"`
	Instance string `json:"instance"`
	Devices  []struct {
		Name   string `json:"name"`
		Detail string `json:"detail"`
	} `json:"devices"`
}

type statusDoc struct {
	Leader       string `json:"leader"`
	Coordinators []struct {
		ID     string `json:"id"`
		Leader bool   `json:"leader"`
	} `json:"coordinators"`
}

// TestFleetProcesses runs the built binaries: 3 × `lavit-coord up`,
// 2 × `lavit-worker join`; reads `workers ls --json`; SIGKILLs a worker and
// sees it marked LOST; SIGTERMs the leader and sees leadership handed over;
// stops everything cleanly.
func TestFleetProcesses(t *testing.T) {
	bin := testutil.Binaries(t)
	coordBin := filepath.Join(bin, "lavit-coord")

	c1 := startCoord(t, bin, "c1")
	testutil.WaitFor(t, time.Minute, "c1 ready", c1.ready)
	tokenBytes, err := os.ReadFile(filepath.Join(c1.dataDir, "token"))
	if err != nil {
		t.Fatalf("read generated token: %v", err)
	}
	token := strings.TrimSpace(string(tokenBytes))
	tokenFile := filepath.Join(c1.dataDir, "token")
	// Its output is a pipe, not a terminal: it says where the admin token
	// is, never the token (which would end up in logs).
	if strings.Contains(c1.out.String(), token) {
		t.Fatal("the bootstrap node printed its admin token into its output (a pipe, so a log)")
	}
	if !strings.Contains(c1.out.String(), "saved in "+tokenFile) {
		t.Fatal("the bootstrap node did not say where its admin token is")
	}
	env := []string{"LAVIT_TOKEN_FILE=" + tokenFile}
	c2 := startCoord(t, bin, "c2", "--join", c1.http, "--token-file", tokenFile)
	c3 := startCoord(t, bin, "c3", "--join", c1.http, "--token-file", tokenFile)
	coords := []*coordNode{c1, c2, c3}
	coordURLs := "nats://" + c1.nats + ",nats://" + c2.nats + ",nats://" + c3.nats
	for _, c := range coords {
		testutil.WaitFor(t, time.Minute, c.id+" ready", c.ready)
	}
	testutil.WaitFor(t, time.Minute, "three coordinators in status", func() bool {
		st, err := jsonOut[statusDoc](t, coordBin, env, "status", "--json", "--coord", coordURLs)
		return err == nil && len(st.Coordinators) == 3 && st.Leader != ""
	})

	// The workers join with a worker token of their own, from a file.
	wt := mustJSON[wire.TokenCreateReply](t, coordBin, env, "token", "create", "--role", "worker", "--note", "e2e workers", "--json", "--coord", coordURLs)
	workerTokenFile := filepath.Join(t.TempDir(), "worker-token")
	if err := os.WriteFile(workerTokenFile, []byte(wt.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	workerEnv := []string{"LAVIT_TOKEN_FILE=" + workerTokenFile}
	workerBin := filepath.Join(bin, "lavit-worker")
	w1 := startProc(t, "worker w1", workerBin, workerEnv, "join", "--coord", coordURLs, "--id", "w1", "--device", "cpu")
	w2 := startProc(t, "worker w2", workerBin, workerEnv, "join", "--coord", "nats://"+c2.nats, "--id", "w2", "--device", "cpu")

	states := func() map[string]string {
		rows, err := jsonOut[[]workerRow](t, coordBin, env, "workers", "ls", "--json", "--coord", coordURLs)
		if err != nil {
			t.Logf("workers ls: %v", err)
			return nil
		}
		out := map[string]string{}
		for _, r := range rows {
			out[r.ID] = r.State
		}
		return out
	}
	testutil.WaitFor(t, time.Minute, "both workers IDLE in workers ls", func() bool {
		s := states()
		return s["w1"] == "IDLE" && s["w2"] == "IDLE"
	})

	// SIGKILL w1: marked LOST after the 2 s timeout (plus the checker's tick
	// and the CLI's own latency).
	killed := time.Now()
	w1.cmd.Process.Kill()
	testutil.WaitFor(t, 30*time.Second, "w1 LOST", func() bool { return states()["w1"] == "LOST" })
	t.Logf("w1 marked LOST %s after SIGKILL (timeout 2s)", time.Since(killed).Round(time.Millisecond))
	if s := states(); s["w2"] != "IDLE" {
		t.Fatalf("w2 is %q after w1 died, want IDLE", s["w2"])
	}

	// SIGTERM the leader: it hands leadership over and exits 0.
	st := mustJSON[statusDoc](t, coordBin, env, "status", "--json", "--coord", coordURLs)
	var leader *coordNode
	var rest []*coordNode
	for _, c := range coords {
		if c.id == st.Leader {
			leader = c
		} else {
			rest = append(rest, c)
		}
	}
	if leader == nil {
		t.Fatalf("status names leader %q, not one of ours", st.Leader)
	}
	if code := leader.signalAndWait(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("leader exited %d on SIGTERM", code)
	}
	if !strings.Contains(leader.out.String(), "transferring leadership") {
		t.Error("leader did not transfer leadership before stopping")
	}
	restURLs := "nats://" + rest[0].nats + ",nats://" + rest[1].nats
	testutil.WaitFor(t, 30*time.Second, "a new leader", func() bool {
		st, err := jsonOut[statusDoc](t, coordBin, env, "status", "--json", "--coord", restURLs, "--timeout", "2s")
		return err == nil && st.Leader != "" && st.Leader != leader.id
	})

	// w2 leaves cleanly: exit 0, deregistered.
	if code := w2.signalAndWait(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("worker exited %d on SIGTERM", code)
	}
	rows := mustJSON[[]workerRow](t, coordBin, env, "workers", "ls", "--json", "--coord", restURLs)
	for _, r := range rows {
		if r.ID == "w2" {
			t.Fatal("w2 still listed after a clean stop")
		}
	}
	for _, c := range rest {
		if code := c.signalAndWait(t, syscall.SIGTERM, 15*time.Second); code != 0 {
			t.Fatalf("%s exited %d on SIGTERM", c.id, code)
		}
	}
}

// TestCLIBadInput: clear errors and the documented exit codes.
func TestCLIBadInput(t *testing.T) {
	bin := testutil.Binaries(t)
	coordBin := filepath.Join(bin, "lavit-coord")
	c1 := startCoord(t, bin, "c1")
	testutil.WaitFor(t, time.Minute, "c1 ready", c1.ready)
	adminToken, err := os.ReadFile(filepath.Join(c1.dataDir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	caFingerprint, stderr, code := run(t, coordBin, nil, "ca", "--fingerprint", "--token", strings.TrimSpace(string(adminToken)))
	if caFingerprint = strings.TrimSpace(caFingerprint); code != 0 || len(caFingerprint) != 64 {
		t.Fatalf("ca --fingerprint: %q %s", caFingerprint, stderr)
	}
	data := "file://" + filepath.Join(t.TempDir(), "data") // inside the file roots
	if _, stderr, code := run(t, coordBin, nil, "shards", "synth", "--out", data, "--samples", "20", "--per-shard", "10"); code != 0 {
		t.Fatalf("shards synth: %s", stderr)
	}

	tests := []struct {
		name     string
		bin      string
		args     []string
		wantCode int
		wantText string
	}{
		{"second up on a used data dir", coordBin, []string{"up", "--id", "c1", "--data-dir", c1.dataDir, "--raft-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--nats-addr", "127.0.0.1:0", "--nats-cluster-addr", "127.0.0.1:0"}, 1, "locked by another lavit-coord"},
		{"join and peers", coordBin, []string{"up", "--join", "127.0.0.1:1", "--peers", "a=127.0.0.1:2", "--token", "0123456789abcdef"}, 2, "contradict"},
		{"nats-url and nats-addr", coordBin, []string{"up", "--nats-url", "nats://127.0.0.1:1", "--nats-addr", "127.0.0.1:2"}, 2, "contradicts"},
		{"join without token", coordBin, []string{"up", "--join", "127.0.0.1:1", "--data-dir", t.TempDir()}, 2, "--token"},
		{"unknown flag", coordBin, []string{"up", "--no-such-flag"}, 2, "no-such-flag"},
		{"bad duration", coordBin, []string{"up", "--worker-timeout", "soon"}, 2, "worker-timeout"},
		{"another cluster's token", coordBin, []string{"status", "--coord", "nats://" + c1.nats, "--token", "wrong-token-xxxxxxxx"}, 1, "not a coordinator of this token's cluster"},
		{"forged worker token", coordBin, []string{"status", "--coord", "nats://" + c1.nats, "--token", "lavit.0123456789ab.forged." + caFingerprint}, 1, "the token was refused"},
		{"plaintext to TLS", coordBin, []string{"status", "--coord", "nats://" + c1.nats, "--data-dir", c1.dataDir, "--plaintext-nats"}, 1, "it requires TLS"},
		{"ca from an issued token", coordBin, []string{"ca", "--token", "lavit.0123456789ab.forged." + caFingerprint}, 2, "cannot derive the CA"},
		{"token and token file", coordBin, []string{"status", "--coord", "nats://" + c1.nats, "--token", "x", "--token-file", "/nonexistent"}, 2, "--token and --token-file both given"},
		{"missing token file", coordBin, []string{"status", "--coord", "nats://" + c1.nats, "--token-file", "/nonexistent/token"}, 2, "--token-file: open /nonexistent/token"},
		{"worker with a missing token file", filepath.Join(bin, "lavit-worker"), []string{"join", "--token-file", "/nonexistent/token"}, 2, "--token-file: open /nonexistent/token"},
		{"no coordinator", coordBin, []string{"status", "--coord", "nats://127.0.0.1:1", "--token", "x"}, 1, "connect to coordinator NATS"},
		{"raft remove without id", coordBin, []string{"raft", "remove", "--coord", "nats://" + c1.nats, "--data-dir", c1.dataDir}, 2, "needs one ID"},
		{"worker with bad device", filepath.Join(bin, "lavit-worker"), []string{"join", "--device", "tpu:0", "--token", "x"}, 2, "--device"},
		{"worker with missing torch lib", filepath.Join(bin, "lavit-worker"), []string{"join", "--torch-lib", "/nonexistent/libx.so", "--token", "x"}, 2, "--torch-lib"},
		{"worker with a missing NCCL library", filepath.Join(bin, "lavit-worker"), []string{"join", "--device", "cpu", "--nccl-lib", "/nonexistent/libnccl.so.2", "--token", "x"}, 2, "--nccl-lib: nccl not available: dlopen /nonexistent/libnccl.so.2"},
		{"worker with a library that is not NCCL", filepath.Join(bin, "lavit-worker"), []string{"join", "--device", "cpu", "--nccl-lib", "libm.so.6", "--token", "x"}, 2, "lacks symbol ncclGetVersion (not an NCCL library?)"},
		{"one worker per GPU without GPUs", filepath.Join(bin, "lavit-worker"), []string{"join", "--device", "all", "--token", "x"}, 2, "--device all: no GPU on this host"},
		{"checkpoints outside the file roots", coordBin, []string{"run", "submit", "-f", filepath.Join(testutil.RepoRoot(), "configs", "tiny-stage1.yaml"),
			"--set", "data.url=" + data, "--set", "data.eval_url=", "--set", "checkpoint.url=file:///etc/lavit-checkpoints",
			"--coord", "nats://" + c1.nats, "--data-dir", c1.dataDir}, 1, "checkpoint.url: /etc/lavit-checkpoints lies outside the allowed file roots"},
		{"rotate: finish and abort", coordBin, []string{"token", "rotate", "--finish", "--abort", "--coord", "nats://" + c1.nats, "--data-dir", c1.dataDir}, 2, "--finish and --abort are exclusive"},
		{"rotate: force without finish", coordBin, []string{"token", "rotate", "--force", "--coord", "nats://" + c1.nats, "--data-dir", c1.dataDir}, 2, "--force goes with --finish"},
		{"rotate: finish with no rotation", coordBin, []string{"token", "rotate", "--finish", "--coord", "nats://" + c1.nats, "--data-dir", c1.dataDir}, 1, "no admin token rotation is in progress"},
		{"a bad file root", coordBin, []string{"up", "--data-dir", t.TempDir(), "--file-root", "/nonexistent/root"}, 2, "--file-root \"/nonexistent/root\""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := run(t, tc.bin, nil, tc.args...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantText) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, tc.wantCode, tc.wantText)
			}
		})
	}
	// The first node is untouched by all of that (and no run was created).
	if runs, err := jsonOut[[]json.RawMessage](t, coordBin, nil, "run", "ls", "--json", "--coord", "nats://"+c1.nats, "--data-dir", c1.dataDir); err != nil || len(runs) != 0 {
		t.Fatalf("runs after bad input: %d, %v", len(runs), err)
	}
	if !c1.ready() {
		t.Fatal("c1 not ready after the bad invocations")
	}
	st, err := jsonOut[statusDoc](t, coordBin, nil, "status", "--json", "--coord", "nats://"+c1.nats, "--data-dir", c1.dataDir)
	if err != nil || st.Leader != "c1" {
		t.Fatalf("status after bad input: %+v, %v", st, err)
	}
}
