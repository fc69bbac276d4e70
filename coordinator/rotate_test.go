package coordinator_test

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/coordinator"
	"github.com/lavit-org/lavit/internal/clusterca"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// TestAdminTokenRotation rotates the admin token, and with it the
// cluster CA, on a running 3-coordinator cluster with a worker: during
// the rotation both tokens and both CAs work; a node restarted in the
// middle comes back; finishing needs the new token and every
// coordinator on the new CA (a stopped one is named); afterwards the old
// token and the old CA are refused everywhere (a connection, a client
// pinned to the old CA, a raft handshake with an old-CA certificate),
// a worker token re-pinned to the new CA works, every node saved the new
// token, and a node restarted after the finish rejoins. An aborted
// rotation's token is refused.
func TestAdminTokenRotation(t *testing.T) {
	configs := map[string]coordinator.Config{}
	c := startClusterWith(t, 3, func(cfg *coordinator.Config) {
		cfg.RaftAddr = "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t)) // stable across restarts
		configs[cfg.NodeID] = *cfg
	})
	ctx := context.Background()
	oldToken := c.token
	oldCA, err := clusterca.Derive(oldToken)
	if err != nil {
		t.Fatal(err)
	}
	admin := c.client(oldToken)
	wt, err := wire.CreateToken.Call(ctx, admin, &wire.TokenCreateRequest{Role: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	startWorker(t, c.natsURLs(), wt.Token, "w1")
	testutil.WaitFor(t, 30*time.Second, "w1 registered", func() bool { return workerStates(c.leader())["w1"] == wire.WorkerIdle })

	start, err := wire.RotateToken.Call(ctx, admin, &wire.TokenRotateRequest{Action: wire.RotateStart})
	if err != nil {
		t.Fatal(err)
	}
	newToken := start.Token
	newCA, err := clusterca.Derive(newToken)
	if err != nil || newCA.Fingerprint() != start.CAFingerprint || start.CAFingerprint == oldCA.Fingerprint() {
		t.Fatalf("start: %+v, %v", start, err)
	}
	presents := func(s *coordinator.Server, ca *clusterca.CA) bool {
		conn, err := tls.Dial("tcp", s.HTTPAddr(), ca.ClientTLS())
		if err == nil {
			conn.Close()
		}
		return err == nil
	}
	testutil.WaitFor(t, 30*time.Second, "every coordinator presents the next CA", func() bool {
		for _, s := range c.nodes {
			if !presents(s, newCA) || !presents(s, oldCA) {
				return false
			}
		}
		return true
	})

	// During the rotation: both admin tokens, and the old CA's pins.
	for name, tok := range map[string]string{"old admin token": oldToken, "new admin token": newToken} {
		if _, err := wire.GetStatus.Call(ctx, connect(t, c, tok), &wire.StatusRequest{}); err != nil {
			t.Errorf("during the rotation, status with the %s: %v", name, err)
		}
	}
	connect(t, c, wt.Token) // pinned to the old CA
	wt2, err := wire.CreateToken.Call(ctx, admin, &wire.TokenCreateRequest{Role: "worker"})
	if err != nil || !strings.HasSuffix(wt2.Token, "."+newCA.Fingerprint()) {
		t.Fatalf("a token made during the rotation should pin the next CA: %v", err)
	}
	if _, err := wire.RotateToken.Call(ctx, admin, &wire.TokenRotateRequest{Action: wire.RotateStart}); !wire.HasCode(err, wire.CodeConflict) {
		t.Errorf("a second start: %v, want a conflict", err)
	}

	// A node restarted mid-rotation comes back (it saved the next token).
	restart := func(id string) {
		t.Helper()
		if err := c.nodes[id].Shutdown(); err != nil {
			t.Fatal(err)
		}
		cfg := configs[id]
		cfg.Join, cfg.Token = "", "" // the data dir has the cluster and the token
		s, err := coordinator.New(cfg)
		if err != nil {
			t.Fatalf("restart %s: %v", id, err)
		}
		c.nodes[id] = s
		c.waitFormed(3)
	}
	restart("c3")

	// Finishing needs the new token, and every coordinator on the new CA.
	if _, err := wire.RotateToken.Call(ctx, admin, &wire.TokenRotateRequest{Action: wire.RotateFinish}); !wire.HasCode(err, wire.CodeAuth) {
		t.Fatalf("finish with the old token: %v, want refused", err)
	}
	newAdmin := connect(t, c, newToken)
	var follower string
	for id, s := range c.nodes {
		if !s.IsLeader() {
			follower = id
		}
	}
	if err := c.nodes[follower].Shutdown(); err != nil {
		t.Fatal(err)
	}
	_, err = wire.RotateToken.Call(ctx, newAdmin, &wire.TokenRotateRequest{Action: wire.RotateFinish})
	if !wire.HasCode(err, wire.CodeUnavailable) || !strings.Contains(err.Error(), follower) {
		t.Fatalf("finish with %s down: %v, want refused naming it", follower, err)
	}
	cfg := configs[follower]
	cfg.Join, cfg.Token = "", ""
	if c.nodes[follower], err = coordinator.New(cfg); err != nil {
		t.Fatal(err)
	}
	c.waitFormed(3)
	if _, err := wire.RotateToken.Call(ctx, newAdmin, &wire.TokenRotateRequest{Action: wire.RotateFinish}); err != nil {
		t.Fatalf("finish: %v", err)
	}

	// Afterwards: only the new token and the new CA.
	testutil.WaitFor(t, 30*time.Second, "every coordinator on the new token and CA only", func() bool {
		for _, s := range c.nodes {
			if s.Token() != newToken || presents(s, oldCA) || !presents(s, newCA) {
				return false
			}
		}
		return true
	})
	c.token = newToken
	for id, s := range c.nodes {
		dir := configs[id].DataDir
		if b, err := os.ReadFile(filepath.Join(dir, "token")); err != nil || strings.TrimSpace(string(b)) != newToken {
			t.Errorf("%s: <data-dir>/token is not the new token (%v)", id, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "token.next")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: token.next is still there (%v)", id, err)
		}
		if _, err := nats.Connect(s.NATSURL(), append(wire.ConnectOptions(oldToken), nats.MaxReconnects(0))...); !errors.Is(err, clusterca.ErrWrongCluster) {
			t.Errorf("%s: a client of the old admin token: %v, want the old CA refused", id, err)
		}
		if _, err := nats.Connect(s.NATSURL(), nats.Token(oldToken), nats.Secure(newCA.ClientTLS()), nats.MaxReconnects(0)); !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("%s: the old admin token over the new CA: %v, want an authorization violation", id, err)
		}
		if _, err := nats.Connect(s.NATSURL(), append(wire.ConnectOptions(wt.Token), nats.MaxReconnects(0))...); !errors.Is(err, clusterca.ErrWrongCluster) {
			t.Errorf("%s: a worker token pinned to the old CA: %v, want refused", id, err)
		}
	}
	cred, _ := wire.SplitToken(wt.Token)
	connect(t, c, cred+"."+newCA.Fingerprint()) // re-pinned
	oldKeys, err := clusterca.NewKeyring("intruder", oldCA)
	if err != nil {
		t.Fatal(err)
	}
	for id, cfg := range configs {
		if refusedRaft(t, cfg.RaftAddr, oldKeys.MutualTLS()) == nil {
			t.Errorf("%s: a raft handshake with an old-CA certificate was accepted", id)
		}
	}
	if st := workerStates(c.leader()); st["w1"] != wire.WorkerIdle {
		t.Errorf("w1 after the rotation: %q, want still idle", st["w1"])
	}
	restart(follower)

	// An aborted rotation's token is refused.
	aborted, err := wire.RotateToken.Call(ctx, newAdmin, &wire.TokenRotateRequest{Action: wire.RotateStart})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wire.RotateToken.Call(ctx, newAdmin, &wire.TokenRotateRequest{Action: wire.RotateAbort}); err != nil {
		t.Fatal(err)
	}
	probe := &wire.Client{NC: newAdmin.NC, Token: aborted.Token, From: "test"}
	if _, err := wire.GetStatus.Call(ctx, probe, &wire.StatusRequest{}); !wire.HasCode(err, wire.CodeAuth) {
		t.Errorf("status with an aborted rotation's token: %v, want refused", err)
	}
}

// connect opens a control client that holds token, on its own TLS pin.
func connect(t *testing.T, c *cluster, token string) *wire.Client {
	t.Helper()
	nc, err := nats.Connect(c.natsURLs(), append(wire.ConnectOptions(token), nats.MaxReconnects(0))...)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return &wire.Client{NC: nc, Token: token, From: "test"}
}

// refusedRaft dials a raft port with cfg and returns the error that ends
// the connection (nil if the server kept it open and answered nothing
// within a few seconds, which counts as accepted).
func refusedRaft(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	// TLS 1.3: the server checks the client's certificate after the
	// client's handshake returns, and says so with an alert.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}
