package coordinator_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// TestWorkerTokens is the attack suite for a worker token: it runs a
// worker, and is refused everything else (admin verbs, listening to the
// control subjects or others' replies, acting as a worker another token
// registered); an expired or revoked token is refused, and revoking one
// closes its connections. Nothing the refused calls tried has changed.
func TestWorkerTokens(t *testing.T) {
	c := startCluster(t, 1)
	ctx := context.Background()
	admin := c.client(c.token)
	wt, err := wire.CreateToken.Call(ctx, admin, &wire.TokenCreateRequest{Role: "worker", Note: "w1's host"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(wt.Token, "lavit."+wt.ID+".") || wt.Role != "worker" || !wt.Expires.IsZero() {
		t.Fatalf("created %+v", wt)
	}
	list, err := wire.ListTokens.Call(ctx, admin, &wire.TokenListRequest{})
	if err != nil || len(list.Tokens) != 1 || list.Tokens[0].ID != wt.ID || list.Tokens[0].Note != "w1's host" {
		t.Fatalf("token ls: %+v, %v", list, err)
	}

	// It runs a worker.
	startWorker(t, c.natsURLs(), wt.Token, "w1")
	startWorker(t, c.natsURLs(), c.token, "w-admin") // registered with the admin token
	testutil.WaitFor(t, 30*time.Second, "both workers registered", func() bool {
		st := workerStates(c.leader())
		return st["w1"] == wire.WorkerIdle && st["w-admin"] == wire.WorkerIdle
	})

	// Everything else is refused, with a reason.
	perms := &testutil.AsyncErrors{}
	nc, err := nats.Connect(c.natsURLs(), append(wire.ConnectOptions(wt.Token), nats.ErrorHandler(perms.Handler))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	w := &wire.Client{NC: nc, Token: wt.Token, From: "w1"}
	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"run submit", func() error {
			_, err := wire.SubmitRun.Call(ctx, w, &wire.RunSubmitRequest{Spec: []byte(`{}`)})
			return err
		}, "a worker token may not call it"},
		{"run cancel", func() error {
			_, err := wire.CancelRun.Call(ctx, w, &wire.RunCancelRequest{ID: "r-0001"})
			return err
		}, "a worker token may not call it"},
		{"raft join", func() error {
			_, err := wire.JoinRaft.Call(ctx, w, &wire.RaftJoinRequest{ID: "evil", RaftAddr: "127.0.0.1:1"})
			return err
		}, "a worker token may not call it"},
		{"raft remove", func() error {
			_, err := wire.RemoveRaftPeer.Call(ctx, w, &wire.RaftRemoveRequest{ID: "c1"})
			return err
		}, "a worker token may not call it"},
		{"token create", func() error {
			_, err := wire.CreateToken.Call(ctx, w, &wire.TokenCreateRequest{Role: "admin"})
			return err
		}, "a worker token may not call it"},
		{"heartbeat as a worker the admin token registered", func() error {
			wa := &wire.Client{NC: nc, Token: wt.Token, From: "w-admin"}
			_, err := wire.Heartbeat.Call(ctx, wa, &wire.HeartbeatRequest{Instance: "x"})
			return err
		}, `worker "w-admin" was registered with another token`},
		{"deregister a worker the admin token registered", func() error {
			wa := &wire.Client{NC: nc, Token: wt.Token, From: "w-admin"}
			_, err := wire.Deregister.Call(ctx, wa, &wire.DeregisterRequest{Instance: "x"})
			return err
		}, `worker "w-admin" was registered with another token`},
		{"take over a worker id", func() error {
			wa := &wire.Client{NC: nc, Token: wt.Token, From: "w-admin"}
			_, err := wire.Register.Call(ctx, wa, &wire.RegisterRequest{Instance: "evil", Host: "h", Device: "cpu", Capacity: 1})
			return err
		}, `worker "w-admin" was registered with another token`},
	} {
		err := tc.call()
		if !wire.HasCode(err, wire.CodeAuth) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want refused (%s) saying %q", tc.name, err, wire.CodeAuth, tc.want)
		}
	}
	for _, tc := range []struct {
		name string
		try  func() error
		want string
	}{
		{"listen to the control subjects", func() error { _, err := nc.Subscribe("lavit.v1.>", func(*nats.Msg) {}); return err }, `Subscription to "lavit.v1.>"`},
		{"read every reply", func() error { _, err := nc.Subscribe("_INBOX.>", func(*nats.Msg) {}); return err }, `Subscription to "_INBOX.>"`},
		{"join the leader's queue group", func() error {
			_, err := nc.QueueSubscribe(wire.SubjectRegister, wire.LeaderQueue, func(*nats.Msg) {})
			return err
		}, `Subscription to "` + wire.SubjectRegister + `"`},
	} {
		if err := tc.try(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		nc.Flush()
		testutil.WaitFor(t, 10*time.Second, tc.name+" refused", func() bool { return perms.Saw(tc.want) })
	}
	// Nothing changed: one coordinator, the two workers, no runs.
	st, err := wire.GetStatus.Call(ctx, admin, &wire.StatusRequest{})
	if err != nil || len(st.Coordinators) != 1 || st.Workers.Total != 2 {
		t.Fatalf("status after the attempts: %+v, %v", st, err)
	}
	if runs, err := wire.ListRuns.Call(ctx, admin, &wire.RunListRequest{}); err != nil || len(runs.Runs) != 0 {
		t.Fatalf("runs after the attempts: %+v, %v", runs, err)
	}

	// An expired token is refused.
	short, err := wire.CreateToken.Call(ctx, admin, &wire.TokenCreateRequest{Role: "worker", TTLSeconds: 1})
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, "the short token expired", func() bool {
		nc, err := nats.Connect(c.natsURLs(), append(wire.ConnectOptions(short.Token), nats.MaxReconnects(0))...)
		if err == nil {
			nc.Close()
		}
		return errors.Is(err, nats.ErrAuthorization)
	})

	// Revoking closes the token's connections and refuses new ones.
	closed := make(chan struct{})
	nc2, err := nats.Connect(c.natsURLs(), append(wire.ConnectOptions(wt.Token), nats.MaxReconnects(0),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	if _, err := wire.RevokeToken.Call(ctx, admin, &wire.TokenRevokeRequest{ID: wt.ID}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the revoked token's connection is still open after 30 s")
	}
	if nc3, err := nats.Connect(c.natsURLs(), append(wire.ConnectOptions(wt.Token), nats.MaxReconnects(0))...); !errors.Is(err, nats.ErrAuthorization) {
		if nc3 != nil {
			nc3.Close()
		}
		t.Fatalf("connect with the revoked token: %v, want refused", err)
	}
	if _, err := wire.RevokeToken.Call(ctx, admin, &wire.TokenRevokeRequest{ID: wt.ID}); !wire.HasCode(err, wire.CodeUnknown) {
		t.Fatalf("revoking it again: %v, want %s", err, wire.CodeUnknown)
	}
	if _, err := wire.CreateToken.Call(ctx, admin, &wire.TokenCreateRequest{Role: "root"}); !wire.HasCode(err, wire.CodeBadRequest) {
		t.Fatalf("a token of role root: %v, want %s", err, wire.CodeBadRequest)
	}
}
