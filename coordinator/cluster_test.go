package coordinator_test

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lavit-org/lavit/coordinator"
	"github.com/lavit-org/lavit/internal/clusterca"
	"github.com/lavit-org/lavit/internal/datadir"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/worker"
)

// TestLeaderFailover: three coordinators over real TCP raft and real
// embedded NATS, two workers; kill the leader; a new leader answers the
// workers' heartbeats (the time it took is logged: 3 s by design, but a
// loaded machine may take longer) and no worker is marked lost.
func TestLeaderFailover(t *testing.T) {
	c := startCluster(t, 3)
	w1 := startWorker(t, c.natsURLs(), c.token, "w1")
	w2 := startWorker(t, c.natsURLs(), c.token, "w2")
	old := c.leader()
	testutil.WaitFor(t, 30*time.Second, "both workers IDLE", func() bool {
		st := workerStates(old)
		return st["w1"] == wire.WorkerIdle && st["w2"] == wire.WorkerIdle
	})
	since := map[string]time.Time{}
	for _, w := range old.Workers() {
		since[w.ID] = w.Since
	}

	killed := time.Now()
	if err := old.Kill(); err != nil {
		t.Fatalf("kill leader: %v", err)
	}
	delete(c.nodes, old.ID())

	for _, w := range []*runningAgent{w1, w2} {
		testutil.WaitFor(t, 30*time.Second, "heartbeats answered by a new leader", func() bool {
			return w.Leader() != old.ID() && w.LastReply().After(killed)
		})
	}
	t.Logf("failover: heartbeats answered by %s %s after the kill", w1.Leader(), time.Since(killed).Round(time.Millisecond))

	// Nobody may be marked lost. A canary registers with the new leader
	// now and never heartbeats: once it is LOST, the new leader's liveness
	// check has run past the worker timeout counted from after the
	// takeover, when w1 and w2 would have expired too had the failover
	// cost them their clocks.
	leader := c.leader()
	cl := c.client(c.token)
	cl.From = "canary"
	reg := &wire.RegisterRequest{Instance: "i-canary", Host: "h", Device: "cpu", Capacity: 1}
	if _, err := wire.Register.Call(context.Background(), cl, reg); err != nil {
		t.Fatalf("register the canary with the new leader: %v", err)
	}
	testutil.WaitFor(t, 30*time.Second, "the silent canary to be marked LOST", func() bool {
		st := workerStates(leader)
		for _, id := range []string{"w1", "w2"} {
			if st[id] != wire.WorkerIdle {
				t.Fatalf("worker %s is %s after the failover", id, st[id])
			}
		}
		return st["canary"] == wire.WorkerLost
	})
	for _, w := range leader.Workers() {
		if w.ID == "canary" {
			continue
		}
		if w.State != wire.WorkerIdle || !w.Since.Equal(since[w.ID]) {
			t.Errorf("worker %s changed state during the failover: %s since %s (was IDLE since %s)", w.ID, w.State, w.Since, since[w.ID])
		}
	}
}

func TestWorkerLostAndBack(t *testing.T) {
	c := startCluster(t, 1)
	leader := c.leader()
	w := startWorker(t, c.natsURLs(), c.token, "w1")
	testutil.WaitFor(t, 30*time.Second, "w1 IDLE", func() bool { return workerStates(leader)["w1"] == wire.WorkerIdle })

	// A worker that stops heartbeating (without deregistering) is LOST
	// after the timeout. Simulate by registering by hand and going silent.
	cl := c.client(c.token)
	cl.From = "silent"
	ctx := context.Background()
	reg := &wire.RegisterRequest{Instance: "i1", Host: "h", Device: "cpu", Capacity: 1}
	if _, err := wire.Register.Call(ctx, cl, reg); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testutil.WaitFor(t, 30*time.Second, "silent worker LOST", func() bool { return workerStates(leader)["silent"] == wire.WorkerLost })
	t.Logf("marked lost %s after its last heartbeat", time.Since(start).Round(time.Millisecond))
	if workerStates(leader)["w1"] != wire.WorkerIdle {
		t.Fatal("a heartbeating worker was marked lost too")
	}

	// It comes back with a heartbeat: IDLE again, committed.
	hb := &wire.HeartbeatRequest{Instance: "i1", Seq: 1, State: wire.WorkerIdle}
	if _, err := wire.Heartbeat.Call(ctx, cl, hb); err != nil {
		t.Fatal(err)
	}
	if st := workerStates(leader)["silent"]; st != wire.WorkerIdle {
		t.Fatalf("after a heartbeat the worker is %s, want IDLE", st)
	}

	// A clean stop deregisters.
	if err := w.stop(t); err != nil {
		t.Fatalf("worker stop: %v", err)
	}
	if _, ok := workerStates(leader)["w1"]; ok {
		t.Fatal("a cleanly stopped worker is still registered")
	}
}

func TestWorkerWaitsForCoordinator(t *testing.T) {
	// Start the worker first, pointed at a port where nothing listens yet.
	cfg := nodeConfig(t, "c1")
	port := testutil.FreePort(t)
	cfg.NATSAddr = "127.0.0.1:" + strconv.Itoa(port)
	cfg.Token = "a-token-that-is-long-enough"
	wlog := &testutil.SyncBuffer{}
	w := startWorker(t, "nats://"+cfg.NATSAddr, cfg.Token, "early", func(c *worker.Config) {
		c.Logger = slog.New(slog.NewTextHandler(wlog, nil))
	})
	testutil.WaitFor(t, 30*time.Second, "the worker to fail to reach NATS once", func() bool {
		return strings.Contains(wlog.String(), "waiting for a coordinator: cannot reach NATS")
	})
	s, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Kill() })
	// The registry and the worker's own view settle independently (the
	// reply may still be in flight when the FSM has applied), so wait for both.
	testutil.WaitFor(t, 15*time.Second, "early worker registered and answered by c1", func() bool {
		return workerStates(s)["early"] == wire.WorkerIdle && w.Leader() == "c1"
	})
}

func TestRaftMembershipVerbs(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.client(c.token)
	ctx := context.Background()

	peers, err := wire.ListRaftPeers.Call(ctx, cl, &wire.RaftPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(peers.Peers) != 3 {
		t.Fatalf("peers = %+v, want 3", peers.Peers)
	}

	// Transfer leadership to a named follower.
	old := c.leader()
	target := "c2"
	if old.ID() == "c2" {
		target = "c3"
	}
	if _, err := wire.TransferLeadership.Call(ctx, cl, &wire.RaftTransferRequest{ID: target}); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	testutil.WaitFor(t, 30*time.Second, target+" leads", func() bool { return c.nodes[target].IsLeader() })

	// Unknown ids are refused with a clear error.
	_, err = wire.RemoveRaftPeer.Call(ctx, cl, &wire.RaftRemoveRequest{ID: "nope"})
	if !wire.HasCode(err, wire.CodeBadRequest) {
		t.Fatalf("remove unknown: %v, want bad_request", err)
	}

	// Remove a follower.
	victim := "c1"
	if target == "c1" {
		victim = "c3"
	}
	if _, err := wire.RemoveRaftPeer.Call(ctx, cl, &wire.RaftRemoveRequest{ID: victim}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	testutil.WaitFor(t, 30*time.Second, "two peers left", func() bool {
		peers, err := wire.ListRaftPeers.Call(ctx, cl, &wire.RaftPeersRequest{})
		return err == nil && len(peers.Peers) == 2
	})
}

func TestJoinRefusesWrongToken(t *testing.T) {
	c := startCluster(t, 1)
	s1 := c.nodes["c1"]
	cfg := nodeConfig(t, "intruder")
	cfg.Join = s1.HTTPAddr()
	cfg.Token = "wrong-token-0123456789"
	_, err := coordinator.New(cfg)
	// The wrong token derives another CA: the joining node refuses the
	// member's certificate before it sends the token anywhere.
	if !errors.Is(err, clusterca.ErrWrongCluster) {
		t.Fatalf("join with a wrong token: %v, want the wrong cluster's CA refused", err)
	}
	st, _ := s1.Status()
	if len(st.Coordinators) != 1 {
		t.Fatalf("cluster has %d coordinators after a refused join", len(st.Coordinators))
	}
}

func TestDataDirInUse(t *testing.T) {
	first := nodeConfig(t, "c1")
	s, err := coordinator.New(first)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Kill()
	testutil.WaitFor(t, 10*time.Second, "ready", func() bool { return s.Ready() == "" })
	second := nodeConfig(t, "c1")
	second.DataDir = first.DataDir
	_, err = coordinator.New(second)
	if !errors.Is(err, datadir.ErrInUse) {
		t.Fatalf("second New on a used data dir: %v, want ErrDataDirInUse", err)
	}
	if s.Ready() != "" {
		t.Fatalf("first node not ready after the refused second start: %s", s.Ready())
	}
}

// TestRestartKeepsState: a node restarted on its data dir rejoins with its
// state (durable log, stable id) and the cluster goes on.
func TestRestartKeepsState(t *testing.T) {
	cfg := nodeConfig(t, "solo")
	cfg.RaftAddr = "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	s, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "ready", func() bool { return s.Ready() == "" })
	c := &cluster{t: t, nodes: map[string]*coordinator.Server{"solo": s}, token: s.Token()}
	cl := c.client(s.Token())
	cl.From = "w9"
	reg := &wire.RegisterRequest{Instance: "i", Host: "h", Device: "cpu", Capacity: 1}
	if _, err := wire.Register.Call(context.Background(), cl, reg); err != nil {
		t.Fatal(err)
	}
	before, _ := s.Status()
	cl.NC.Close()
	if err := s.Shutdown(); err != nil {
		t.Fatal(err)
	}

	s2, err := coordinator.New(cfg) // same data dir and raft address; no token flag
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Cleanup(func() { s2.Kill() })
	testutil.WaitFor(t, 10*time.Second, "ready after restart", func() bool { return s2.Ready() == "" })
	after, _ := s2.Status()
	if after.ClusterID != before.ClusterID {
		t.Fatalf("cluster id changed across restart: %s → %s", before.ClusterID, after.ClusterID)
	}
	if _, ok := workerStates(s2)["w9"]; !ok {
		t.Fatal("worker registry lost across restart")
	}
	if s2.Token() != s.Token() {
		t.Fatal("join token changed across restart")
	}
}
