package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/testutil"
)

// proc is a running lavit binary.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *testutil.SyncBuffer
	done chan struct{}
	err  error
}

func startProc(t testing.TB, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), out: &testutil.SyncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("---- output of %s ----\n%s", name, p.out.String())
		}
	})
	return p
}

// signalAndWait sends sig and waits for the exit; it returns the exit code.
func (p *proc) signalAndWait(t testing.TB, sig syscall.Signal, timeout time.Duration) int {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s of %s", p.name, timeout, sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

// run runs a binary to completion and returns its stdout, stderr and exit code.
func run(t testing.TB, bin string, env []string, args ...string) (string, string, int) {
	t.Helper()
	return runIn(t, "", bin, env, args...)
}

// runIn is run in the working directory dir ("" = this process's).
func runIn(t testing.TB, dir, bin string, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Env = dir, append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run %s %v: %v", bin, args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

// coordNode is one `lavit-coord up` process and its addresses.
type coordNode struct {
	*proc
	id, dataDir, raft, http, nats, natsCluster string
	bin                                        string
	env, args                                  []string
}

func startCoord(t testing.TB, bin, id string, extra ...string) *coordNode {
	t.Helper()
	return startCoordEnv(t, bin, id, nil, extra...)
}

// restart starts the node again with the same data dir, ports and flags
// (after it was killed).
func (n *coordNode) restart(t testing.TB) {
	t.Helper()
	n.proc = startProc(t, "coord "+n.id+" (restarted)", filepath.Join(n.bin, "lavit-coord"), n.env, n.args...)
}

// startCoordEnv is startCoord with extra environment (S3 credentials).
func startCoordEnv(t testing.TB, bin, id string, env []string, extra ...string) *coordNode {
	t.Helper()
	n := &coordNode{
		id:          id,
		dataDir:     filepath.Join(t.TempDir(), id),
		raft:        fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
		http:        fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
		nats:        fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
		natsCluster: fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
	}
	args := append([]string{"up", "--id", id, "--data-dir", n.dataDir, "--raft-addr", n.raft,
		"--http-addr", n.http, "--nats-addr", n.nats, "--nats-cluster-addr", n.natsCluster,
		"--file-root", os.TempDir()}, extra...) // the tests' data and checkpoints
	n.bin, n.env, n.args = bin, env, args
	n.proc = startProc(t, "coord "+id, filepath.Join(bin, "lavit-coord"), env, args...)
	return n
}

// probeClient asks the probes as Kubernetes does over HTTPS: without
// verifying the certificate (the probes tell nothing secret).
var probeClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

// ready polls /readyz.
func (n *coordNode) ready() bool {
	resp, err := probeClient.Get("https://" + n.http + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// mustJSON is jsonOut for a call that must succeed: a loaded machine can
// time a single call out, so it tries again until it succeeds or a minute
// has passed.
func mustJSON[T any](t testing.TB, bin string, env []string, args ...string) T {
	t.Helper()
	var v T
	var last error
	testutil.WaitFor(t, time.Minute, fmt.Sprintf("%v to succeed", args), func() bool {
		v, last = jsonOut[T](t, bin, env, args...)
		return last == nil
	})
	return v
}

func jsonOut[T any](t testing.TB, bin string, env []string, args ...string) (T, error) {
	t.Helper()
	var v T
	stdout, stderr, code := run(t, bin, env, args...)
	if code != 0 {
		return v, fmt.Errorf("%v exited %d: %s", args, code, strings.TrimSpace(stderr))
	}
	if err := json.Unmarshal([]byte(stdout), &v); err != nil {
		return v, fmt.Errorf("%v: bad JSON %q: %v", args, stdout, err)
	}
	return v, nil
}
